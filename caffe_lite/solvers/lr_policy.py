"""Caffe's learning-rate policies (SGDSolver::GetLearningRate)."""
import math

from ..errors import SolverError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def check_policy(param):
    p = param.lr_policy
    if p not in POLICIES:
        raise SolverError(f"unknown lr_policy '{p}'; known: {', '.join(POLICIES)}")
    if p in ("step", "sigmoid") and param.stepsize <= 0:
        raise SolverError(f"lr_policy '{p}' needs stepsize > 0, got {param.stepsize}")
    if p == "poly" and param.max_iter <= 0:
        raise SolverError(f"lr_policy 'poly' needs max_iter > 0, got {param.max_iter}")


def learning_rate(param, it, current_step):
    """(rate, new current_step) at iteration `it`.

    `current_step` is solver state: multistep advances it at most one step per call, as
    Caffe does, which is why it is saved in snapshots."""
    p, base = param.lr_policy, param.base_lr
    if p == "fixed":
        rate = base
    elif p == "step":
        current_step = it // param.stepsize
        rate = base * param.gamma ** current_step
    elif p == "exp":
        rate = base * param.gamma ** it
    elif p == "inv":
        rate = base * (1.0 + param.gamma * it) ** (-param.power)
    elif p == "multistep":
        if current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
            current_step += 1
        rate = base * param.gamma ** current_step
    elif p == "poly":
        rate = base * (1.0 - it / float(param.max_iter)) ** param.power
    elif p == "sigmoid":
        rate = base * (1.0 / (1.0 + math.exp(-param.gamma * (it - param.stepsize))))
    else:
        raise SolverError(f"unknown lr_policy '{p}'")
    return rate, current_step
