"""numba kernels of the neuron layers (layers/neuron.py) and of the activation that ends a fused
Convolution (layers/fusion.py).  Importing this module needs numba."""
from numba import njit

from ._native import arguments, f32_1, f32_2, f32_3, readonly, task
from ._planes import _ELEMENTWISE, _F, _affine_act_run


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def relu_forward(x, y, i0, i1):
    """y = 0 where x < 0, else x (Caffe's std::max(x, 0): NaN and -0 stay), over [i0, i1)
    of flat arrays (x may be y)."""
    z = _F(0)
    xs = x[i0:i1]
    out = y[i0:i1]
    for i in range(out.shape[0]):
        v = xs[i]
        out[i] = z if v < z else v


@task
def relu_forward_task(args, r0, r1, slot):
    p = arguments(args)
    x, i = f32_1(p, 0)
    y, i = f32_1(p, i)
    relu_forward(readonly(x), y, r0, r1)


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def add_forward(a, b, y, i0, i1):
    """y = a + b over [i0, i1) of flat arrays (Eltwise SUM, a pair of bottoms at a time; b
    may be y)."""
    xa, xb, out = a[i0:i1], b[i0:i1], y[i0:i1]
    for i in range(out.shape[0]):
        out[i] = xa[i] + xb[i]


@task
def add_forward_task(args, r0, r1, slot):
    p = arguments(args)
    a, i = f32_1(p, 0)
    b, i = f32_1(p, i)
    y, i = f32_1(p, i)
    add_forward(readonly(a), b, y, r0, r1)


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
# The tail of a fused Convolution / InnerProduct (layers/fusion.py Epilogue): per channel c,
# v = y * scale[c] + shift[c] (1 and 0 when the group has none: exact), then the activation:
# kind 0 none, 1 ReLU (slope 0: v < 0 gives 0, as max(v, 0)), 2 leaky ReLU / PReLU (v < 0
# gives v * slope[c]).  With has_keep, keep receives v before the activation (PReLU's
# backward reads it).  NaN stays NaN (the comparison is false for it); one loop per case so
# that each vectorises.
# --------------------------------------------------------------------------------------------

@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def affine_act(y, scale, shift, kind, slope, keep, has_keep, r0, r1):
    """y (N, C, S) over rows r = n * C + c in [r0, r1); keep as y."""
    c_n = y.shape[1]
    for r in range(r0, r1):
        n = r // c_n
        c = r - n * c_n
        _affine_act_run(y[n, c], scale[c], shift[c], kind, slope[c], keep[n, c], has_keep)


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def affine_act_rows(y, scale, shift, kind, slope, keep, has_keep, r0, r1):
    """The same on y (N, C) (an InnerProduct's output), rows n in [r0, r1), vectorised over
    the channels."""
    c_n = y.shape[1]
    z = _F(0)
    for n in range(r0, r1):
        row = y[n]
        for c in range(c_n):
            row[c] = row[c] * scale[c] + shift[c]
        if has_keep:
            kp = keep[n]
            for c in range(c_n):
                kp[c] = row[c]
        if kind == 1:
            for c in range(c_n):
                v = row[c]
                row[c] = z if v < z else v
        elif kind == 2:
            for c in range(c_n):
                v = row[c]
                row[c] = v * slope[c] if v < z else v


@task
def affine_act_task(args, r0, r1, slot):
    p = arguments(args)
    y, i = f32_3(p, 0)
    scale, i = f32_1(p, i)
    shift, i = f32_1(p, i)
    kind = p[i]
    slope, i = f32_1(p, i + 1)
    keep, i = f32_3(p, i)
    affine_act(y, scale, shift, kind, slope, keep, p[i] != 0, r0, r1)


@task
def affine_act_rows_task(args, r0, r1, slot):
    p = arguments(args)
    y, i = f32_2(p, 0)
    scale, i = f32_1(p, i)
    shift, i = f32_1(p, i)
    kind = p[i]
    slope, i = f32_1(p, i + 1)
    keep, i = f32_2(p, i)
    affine_act_rows(y, scale, shift, kind, slope, keep, p[i] != 0, r0, r1)
