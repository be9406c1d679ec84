"""Nesterov's accelerated gradient (Caffe's NesterovSolver):
h' = momentum * h + local_rate * g;  step = (1 + momentum) * h' - momentum * h."""
import numpy as np

from .solver import Solver


class NesterovSolver(Solver):
    type = "Nesterov"

    def compute_update_value(self, i, rate):
        blob = self.net.learnable_params[i]
        m = np.float32(self.param.momentum)
        g, h = blob.diff, self.history[i]
        h_old = self.scratch(i)
        np.multiply(h, m, out=h_old)            # momentum * h (old)
        g *= self.local_rate(i, rate)
        h *= m
        h += g                                  # h'
        np.multiply(h, np.float32(1) + m, out=g)
        g -= h_old
