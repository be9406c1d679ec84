"""SGD with momentum (Caffe's SGDSolver):  h = momentum * h + local_rate * g;  step = h."""
import numpy as np

from .solver import Solver


class SGDSolver(Solver):
    type = "SGD"

    def compute_update_value(self, i, rate):
        blob = self.net.learnable_params[i]
        g, h = blob.diff, self.history[i]
        g *= self.local_rate(i, rate)
        h *= np.float32(self.param.momentum)
        h += g
        np.copyto(g, h)
