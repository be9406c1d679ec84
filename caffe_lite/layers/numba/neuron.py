"""numba kernels of the neuron layers (layers/neuron.py).  Importing this module needs numba.

Flat ranges [i0, i1) per call."""
from numba import njit

from ._planes import _ELEMENTWISE, _F


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def relu_backward(dy, x, dx, in_place, i0, i1):
    """(dy * 0 where x <= 0 keeps numpy's -0 and NaN.)"""
    z = _F(0)
    xs = x[i0:i1]
    out = dx[i0:i1]
    if in_place:
        for i in range(out.shape[0]):
            out[i] = out[i] if xs[i] > 0 else z * out[i]
    else:
        d = dy[i0:i1]
        for i in range(out.shape[0]):
            out[i] = d[i] if xs[i] > 0 else z * d[i]
