"""AdaGrad (Caffe's AdaGradSolver):  h += g^2;  step = local_rate * g / (sqrt(h) + delta)."""
import numpy as np

from ..errors import SolverError
from .solver import Solver


class AdaGradSolver(Solver):
    type = "AdaGrad"

    def check_param(self):
        if self.param.momentum != 0:
            raise SolverError(f"AdaGrad does not use momentum (got momentum: "
                              f"{self.param.momentum}); remove it from the solver")

    def compute_update_value(self, i, rate):
        blob = self.net.learnable_params[i]
        g, h, t = blob.diff, self.history[i], self.scratch(i)
        np.multiply(g, g, out=t)
        h += t
        np.sqrt(h, out=t)
        t += np.float32(self.param.delta)
        np.divide(g, t, out=g)
        g *= self.local_rate(i, rate)
