"""SGD with momentum (Caffe's SGDSolver):  h = momentum * h + local_rate * g;  step = h."""
import numpy as np

from .solver import Solver

_NO_MASK = np.zeros(0, np.float32)
_NO_MASK.flags.writeable = False  # the same array type as a mask's cpu view


class SGDSolver(Solver):
    type = "SGD"

    def compute_update_value(self, i, rate):
        blob = self.net.learnable_params[i]
        g, h = blob.diff, self.history[i]
        g *= self.local_rate(i, rate)
        h *= np.float32(self.param.momentum)
        h += g
        np.copyto(g, h)

    def fused_update(self, i, rate):
        """Decay, mask, momentum and data -= step in one pass (solvers/numba_sgd.py
        sgd_update), with the float32 roundings of the steps above."""
        from ..layers import jit
        from ..layers.parallel import run_flat
        blob = self.net.learnable_params[i]
        data, diff, hist = blob.data.reshape(-1), blob.diff.reshape(-1), self.history[i].reshape(-1)
        mask = blob.cpu_mask.reshape(-1) if blob.has_mask else _NO_MASK
        p = self.param
        decay = np.float32(p.weight_decay * self.net.params_weight_decay[i])
        if decay and p.regularization_type not in ("L1", "L2"):
            return False  # apply_update reports the unknown type
        k = jit.kernels("sgd")
        l1 = p.regularization_type == "L1"
        lr = self.local_rate(i, rate)
        m = np.float32(p.momentum)
        run_flat(data.size, lambda a, b: k.sgd_update(data, diff, hist, mask, decay, l1, lr, m,
                                                      a, b))
        return True
