"""RMSProp (Caffe's RMSPropSolver):
h = rms_decay * h + (1 - rms_decay) * g^2;  step = local_rate * g / (sqrt(h) + delta)."""
import numpy as np

from ..errors import SolverError
from .solver import Solver


class RMSPropSolver(Solver):
    type = "RMSProp"

    def check_param(self):
        p = self.param
        if p.momentum != 0:
            raise SolverError(f"RMSProp does not use momentum (got momentum: {p.momentum}); "
                              "use rms_decay")
        if not 0 <= p.rms_decay < 1:
            raise SolverError(f"rms_decay must be in [0, 1), got {p.rms_decay}")

    def compute_update_value(self, i, rate):
        blob = self.net.learnable_params[i]
        d = np.float32(self.param.rms_decay)
        g, h, t = blob.diff, self.history[i], self.scratch(i)
        np.multiply(g, g, out=t)
        t *= np.float32(1) - d
        h *= d
        h += t
        np.sqrt(h, out=t)
        t += np.float32(self.param.delta)
        np.divide(g, t, out=g)
        g *= self.local_rate(i, rate)
