"""AdaDelta (Caffe's AdaDeltaSolver), with Caffe's use of `momentum` as the decay rho:
h_g = rho * h_g + (1 - rho) * g^2
u   = g * sqrt((h_u + delta) / (h_g + delta))
h_u = rho * h_u + (1 - rho) * u^2
step = local_rate * u"""
import numpy as np

from .solver import Solver


class AdaDeltaSolver(Solver):
    type = "AdaDelta"
    history_per_param = 2   # gradient history, then update history (Caffe's layout)

    def compute_update_value(self, i, rate):
        blob = self.net.learnable_params[i]
        rho = np.float32(self.param.momentum)
        one_minus = np.float32(1) - rho
        delta = np.float32(self.param.delta)
        g, t = blob.diff, self.scratch(i)
        hg, hu = self.history[i], self.history[i + self.n_params]
        np.multiply(g, g, out=t)
        t *= one_minus
        hg *= rho
        hg += t
        np.add(hu, delta, out=t)
        t /= hg + delta
        np.sqrt(t, out=t)
        g *= t                                  # u
        np.multiply(g, g, out=t)
        t *= one_minus
        hu *= rho
        hu += t
        g *= self.local_rate(i, rate)
