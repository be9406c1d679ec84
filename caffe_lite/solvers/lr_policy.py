"""Caffe's learning-rate policies (SGDSolver::GetLearningRate)."""
import math

from ..errors import SolverError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def check_policy(param):
    """The policy's own fields, then its rate at both ends of the run (every policy is
    monotonic between them, multistep at each step): a rate that overflows or is not a finite
    real number is an error now rather than at that iteration."""
    p = param.lr_policy
    if p not in POLICIES:
        raise SolverError(f"unknown lr_policy '{p}'; known: {', '.join(POLICIES)}")
    for name in ("base_lr", "gamma", "power"):
        if not math.isfinite(getattr(param, name)):
            raise SolverError(f"{name} must be finite, got {getattr(param, name):g}")
    if param.base_lr < 0:
        raise SolverError(f"base_lr must be >= 0, got {param.base_lr:g}")
    if p in ("step", "sigmoid") and param.stepsize <= 0:
        raise SolverError(f"lr_policy '{p}' needs stepsize > 0, got {param.stepsize}")
    if p == "poly" and param.max_iter <= 0:
        raise SolverError(f"lr_policy 'poly' needs max_iter > 0, got {param.max_iter}")
    if p in ("step", "exp", "multistep", "inv") and param.gamma < 0:
        raise SolverError(f"lr_policy '{p}' needs gamma >= 0, got {param.gamma:g}")
    if p == "poly" and param.power < 0:
        raise SolverError(f"lr_policy 'poly' needs power >= 0, got {param.power:g} (the rate "
                          "would divide by zero at max_iter)")
    last = max(param.max_iter, 0)
    steps = {v for v in param.stepvalue if 0 <= v <= last} if p == "multistep" else set()
    step = 0
    for it in sorted({0, last} | steps):
        _, step = learning_rate(param, it, step)


def learning_rate(param, it, current_step):
    """(rate, new current_step) at iteration `it`; SolverError when the policy's arithmetic
    overflows or gives a rate that is not a finite real number.

    `current_step` is solver state: multistep advances it at most one step per call, as
    Caffe does, which is why it is saved in snapshots."""
    try:
        rate, current_step = _rate(param, it, current_step)
    except (OverflowError, ZeroDivisionError) as exc:
        rate, detail = None, str(exc)
    else:
        detail = f"{rate}"
    if not isinstance(rate, float) or not math.isfinite(rate):
        raise SolverError(f"lr_policy '{param.lr_policy}' (base_lr {param.base_lr:g}, gamma "
                          f"{param.gamma:g}, power {param.power:g}, stepsize {param.stepsize}) "
                          f"gives no usable learning rate at iteration {it}: {detail}")
    return rate, current_step


def _rate(param, it, current_step):
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
