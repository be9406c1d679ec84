"""Adam (Caffe's AdamSolver), beta1 = momentum, beta2 = momentum2, eps = delta:
m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
step = local_rate * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps),  t = iter + 1"""
import math

import numpy as np

from .solver import Solver


class AdamSolver(Solver):
    type = "Adam"
    history_per_param = 2   # m, then v (Caffe's layout)

    def compute_update_value(self, i, rate):
        p = self.param
        b1, b2 = np.float32(p.momentum), np.float32(p.momentum2)
        blob = self.net.learnable_params[i]
        g, t = blob.diff, self.scratch(i)
        m, v = self.history[i], self.history[i + self.n_params]
        step = self.iter + 1
        correction = math.sqrt(1.0 - float(b2) ** step) / (1.0 - float(b1) ** step)
        m *= b1
        np.multiply(g, np.float32(1) - b1, out=t)
        m += t
        np.multiply(g, g, out=t)
        t *= np.float32(1) - b2
        v *= b2
        v += t
        np.sqrt(v, out=t)
        t += np.float32(p.delta)
        np.divide(m, t, out=g)
        g *= np.float32(self.local_rate(i, rate) * correction)
