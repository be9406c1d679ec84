"""numba kernels of Scale (layers/scale_bias.py).  Importing this module needs numba.

Rows (outer * dim, inner) of bottom[0]; row r uses scale[r % dim] (and bias); rows [r0, r1)
per call."""
from numba import njit

from ._planes import _ELEMENTWISE, _REDUCTION, _F, _sum, _sum_prod


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def scale_forward(x, scale, bias, y, keep, has_bias, in_place, r0, r1):
    """y = x * scale (+ bias); in place, x is first copied to keep (for the scale gradient)."""
    dim = scale.shape[0]
    for r in range(r0, r1):
        sv = scale[r % dim]
        bv = bias[r % dim] if has_bias else _F(0)
        out = y[r]
        if in_place:
            kp = keep[r]
            for i in range(out.shape[0]):
                v = out[i]
                kp[i] = v
                out[i] = v * sv + bv
        else:
            a = x[r]
            for i in range(out.shape[0]):
                out[i] = a[i] * sv + bv


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_REDUCTION)
def scale_backward(dy, x, scale, dx, sums, want_scale, want_bias, want_dx, in_place, r0, r1):
    """Per row: sums[0, r] = sum(dy * x), sums[1, r] = sum(dy); dx = dy * scale.  In place
    dx is dy's memory (the sums are taken before it is overwritten)."""
    dim = scale.shape[0]
    for r in range(r0, r1):
        d = dx[r] if in_place else dy[r]
        if want_scale:
            sums[0, r] = _sum_prod(d, x[r])
        if want_bias:
            sums[1, r] = _sum(d)
        if want_dx:
            sv = scale[r % dim]
            out = dx[r]
            if in_place:
                for i in range(out.shape[0]):
                    out[i] = out[i] * sv
            else:
                for i in range(out.shape[0]):
                    out[i] = d[i] * sv
