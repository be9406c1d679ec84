"""Solvers: Caffe's six update rules over one training loop (solver.py)."""
from .adadelta import AdaDeltaSolver
from .adagrad import AdaGradSolver
from .adam import AdamSolver
from .nesterov import NesterovSolver
from .rmsprop import RMSPropSolver
from .sgd import SGDSolver
from .solver import Solver, get_solver, solver_from_type
from .params import load_solver_param

SOLVERS = {c.type: c for c in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,
                               AdaDeltaSolver, AdamSolver)}

__all__ = ["Solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
           "AdaDeltaSolver", "AdamSolver", "SOLVERS", "get_solver", "solver_from_type",
           "load_solver_param"]
