"""The SGD solver's update as one compiled pass (solvers/sgd.py), beside the solver as Caffe's
SGDUpdate kernel sits beside sgd_solver.cpp.  Importing this module needs numba; reached
through `layers.jit.kernels("sgd")`.

One parameter over flat ranges [i0, i1): Caffe's regularisation, the pruning mask, momentum
and data -= step, in one pass.  No fast-math flags: every float32 operation rounds exactly as
the numpy sequence it replaces."""
import numpy as np
from numba import njit


@njit(nogil=True, cache=True, boundscheck=False)
def sgd_update(data, diff, hist, mask, decay, l1, rate, momentum, i0, i1):
    """(One loop per case, over views starting at i0: a branch or an index numba cannot
    prove non-negative inside the loop would keep it from vectorising.)"""
    d = data[i0:i1]
    g = diff[i0:i1]
    h = hist[i0:i1]
    n = d.shape[0]
    if decay != 0:
        if l1:
            for i in range(n):
                g[i] = g[i] + np.sign(d[i]) * decay
        else:
            for i in range(n):
                g[i] = g[i] + d[i] * decay
    if mask.shape[0] > 0:
        mk = mask[i0:i1]
        for i in range(n):
            v = (g[i] * mk[i]) * rate
            u = h[i] * momentum + v
            h[i] = u
            g[i] = u
            d[i] = (d[i] - u) * mk[i]
    else:
        for i in range(n):
            v = g[i] * rate
            u = h[i] * momentum + v
            h[i] = u
            g[i] = u
            d[i] = d[i] - u
