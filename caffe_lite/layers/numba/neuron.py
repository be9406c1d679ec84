"""numba kernels of the neuron layers (layers/neuron.py) and of the activation that ends a fused
Convolution (layers/fusion.py).  Importing this module needs numba."""
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


# --------------------------------------------------------------------------------------------
# The tail of a fused Convolution / InnerProduct (layers/fusion.py Epilogue): per channel
# v = y * scale + shift (scale / shift of size 0: 1 / 0), then the activation: kind 0 none,
# 1 ReLU with slope[0] (leaky), 2 PReLU (slope per channel, or slope[0] shared).  `keep` (size
# 0: none) receives v before the activation.  NaN stays NaN (a comparison that is false for
# NaN picks v); one loop per case so that each vectorises.
# --------------------------------------------------------------------------------------------

@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def _affine_act_run(row, a, b, kind, sl, kp, has_keep):
    z = _F(0)
    n = row.shape[0]
    if has_keep:
        for i in range(n):
            kp[i] = row[i] * a + b
    if kind == 0:
        for i in range(n):
            row[i] = row[i] * a + b
    elif sl == 0:
        for i in range(n):
            v = row[i] * a + b
            row[i] = z if v < z else v
    else:
        for i in range(n):
            v = row[i] * a + b
            row[i] = v * sl if v < z else v


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def affine_act(y, scale, shift, kind, slope, keep, r0, r1):
    """y (N, C, S) over rows r = n * C + c in [r0, r1)."""
    c_n = y.shape[1]
    has_scale = scale.shape[0] > 0
    has_shift = shift.shape[0] > 0
    has_keep = keep.shape[0] > 0
    per_channel = slope.shape[0] > 1
    for r in range(r0, r1):
        n = r // c_n
        c = r - n * c_n
        a = scale[c] if has_scale else _F(1)
        b = shift[c] if has_shift else _F(0)
        sl = _F(0)
        if kind != 0:
            sl = slope[c] if per_channel else slope[0]
        kp = keep[n, c] if has_keep else y[n, c]
        _affine_act_run(y[n, c], a, b, kind, sl, kp, has_keep)


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def affine_act_rows(y, scale, shift, kind, slope, keep, r0, r1):
    """The same on y (N, C) (an InnerProduct's output), rows n in [r0, r1), vectorised over
    the channels."""
    c_n = y.shape[1]
    has_scale = scale.shape[0] > 0
    has_shift = shift.shape[0] > 0
    has_keep = keep.shape[0] > 0
    per_channel = slope.shape[0] > 1
    z = _F(0)
    s0 = slope[0] if slope.shape[0] > 0 else z
    for n in range(r0, r1):
        row = y[n]
        if has_scale and has_shift:
            for c in range(c_n):
                row[c] = row[c] * scale[c] + shift[c]
        elif has_scale:
            for c in range(c_n):
                row[c] = row[c] * scale[c]
        elif has_shift:
            for c in range(c_n):
                row[c] = row[c] + shift[c]
        if has_keep:
            kp = keep[n]
            for c in range(c_n):
                kp[c] = row[c]
        if kind == 0:
            continue
        if per_channel:
            for c in range(c_n):
                v = row[c]
                row[c] = v * slope[c] if v < z else v
        elif s0 == 0:
            for c in range(c_n):
                v = row[c]
                row[c] = z if v < z else v
        else:
            for c in range(c_n):
                v = row[c]
                row[c] = v * s0 if v < z else v
