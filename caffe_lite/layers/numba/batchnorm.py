"""numba kernels of BatchNorm (layers/normalization.py), and of BatchNorm -> Scale (-> ReLU)
run as one step (layers/fusion.py).  Importing this module needs numba.

Arrays are (N, C, S), channels [c0, c1) per call.  Sums of a channel are float32 vector sums
per image, added up in float64.  `in_place`: y is x's memory (then only y is touched, so the
compiler's overlap test does not fall back to scalar code)."""
import numpy as np
from numba import njit

from ._native import arguments, f32_1, f32_3, readonly, task
from ._planes import _ELEMENTWISE, _REDUCTION, _F, _sum, _sum_prod, _sum_sq_dev


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def batch_norm_train_forward(x, y, xnorm, mean, var, eps, in_place, c0, c1):
    """Batch statistics (mean, biased var, written per channel) and
    y = xnorm = (x - mean) / sqrt(var + eps), var computed from x - mean as Caffe does."""
    n_n, _, s_n = x.shape
    m = n_n * s_n
    for c in range(c0, c1):
        src = y if in_place else x
        tot = 0.0
        for n in range(n_n):
            tot += _sum(src[n, c])
        mu = _F(tot / m) if m > 0 else _F(0)
        tot = 0.0
        for n in range(n_n):
            tot += _sum_sq_dev(src[n, c], mu)
        v = _F(tot / m) if m > 0 else _F(0)
        mean[c] = mu
        var[c] = v
        sd = np.sqrt(v + eps)
        for n in range(n_n):
            out = y[n, c]
            keep = xnorm[n, c]
            if in_place:
                for i in range(s_n):
                    t = (out[i] - mu) / sd
                    out[i] = t
                    keep[i] = t
            else:
                a = x[n, c]
                for i in range(s_n):
                    t = (a[i] - mu) / sd
                    out[i] = t
                    keep[i] = t


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def batch_norm_train_backward(dy, y, dx, std, in_place, c0, c1):
    """dx = (dy - y * mean(dy * y) - mean(dy)) / std, means per channel over (N, S)."""
    n_n, _, s_n = dy.shape
    m = n_n * s_n
    for c in range(c0, c1):
        src = dx if in_place else dy
        t1 = 0.0
        t2 = 0.0
        for n in range(n_n):
            t1 += _sum_prod(src[n, c], y[n, c])
            t2 += _sum(src[n, c])
        mdyy = _F(t1 / m) if m > 0 else _F(0)
        mdy = _F(t2 / m) if m > 0 else _F(0)
        sd = std[c]
        for n in range(n_n):
            out = dx[n, c]
            yy = y[n, c]
            if in_place:
                for i in range(s_n):
                    out[i] = (out[i] - yy[i] * mdyy - mdy) / sd
            else:
                d = dy[n, c]
                for i in range(s_n):
                    out[i] = (d[i] - yy[i] * mdyy - mdy) / sd


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def batch_norm_global_forward(x, y, mean, std, in_place, c0, c1):
    """y = (x - mean) / std with given per-channel mean and std."""
    n_n, _, s_n = x.shape
    for c in range(c0, c1):
        mu = mean[c]
        sd = std[c]
        for n in range(n_n):
            out = y[n, c]
            if in_place:
                for i in range(s_n):
                    out[i] = (out[i] - mu) / sd
            else:
                a = x[n, c]
                for i in range(s_n):
                    out[i] = (a[i] - mu) / sd


# --------------------------------------------------------------------------------------------
# BatchNorm -> Scale (-> ReLU) run as one step on (N, C, S) arrays (see fusion.py): the same
# arithmetic as the three layers, with the activations read and written fewer times.
# --------------------------------------------------------------------------------------------

@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def bn_scale_train_forward(x, y, xnorm, mean, var, eps, scale, bias, has_bias, relu,
                           in_place, c0, c1):
    """BatchNorm (batch statistics, as batch_norm_train_forward; xnorm kept), then
    y = xnorm * scale + bias, then y = max(y, 0) when `relu`."""
    n_n, _, s_n = x.shape
    m = n_n * s_n
    for c in range(c0, c1):
        src = y if in_place else x
        tot = 0.0
        for n in range(n_n):
            tot += _sum(src[n, c])
        mu = _F(tot / m) if m > 0 else _F(0)
        tot = 0.0
        for n in range(n_n):
            tot += _sum_sq_dev(src[n, c], mu)
        v = _F(tot / m) if m > 0 else _F(0)
        mean[c] = mu
        var[c] = v
        sd = np.sqrt(v + eps)
        sv = scale[c]
        bv = bias[c] if has_bias else _F(0)
        z = _F(0)
        for n in range(n_n):
            out = y[n, c]
            keep = xnorm[n, c]
            a = out if in_place else x[n, c]
            if in_place:
                for i in range(s_n):
                    t = (out[i] - mu) / sd
                    keep[i] = t
                    u = t * sv + bv
                    out[i] = max(u, z) if relu else u
            else:
                for i in range(s_n):
                    t = (a[i] - mu) / sd
                    keep[i] = t
                    u = t * sv + bv
                    out[i] = max(u, z) if relu else u


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def bn_scale_global_forward(x, y, mean, std, scale, bias, has_bias, relu, in_place, c0, c1):
    """y = ((x - mean) / std) * scale + bias (then max(y, 0)), BatchNorm on global stats."""
    n_n, _, s_n = x.shape
    z = _F(0)
    for c in range(c0, c1):
        mu = mean[c]
        sd = std[c]
        sv = scale[c]
        bv = bias[c] if has_bias else _F(0)
        for n in range(n_n):
            out = y[n, c]
            if in_place:
                for i in range(s_n):
                    u = ((out[i] - mu) / sd) * sv + bv
                    out[i] = max(u, z) if relu else u
            else:
                a = x[n, c]
                for i in range(s_n):
                    u = ((a[i] - mu) / sd) * sv + bv
                    out[i] = max(u, z) if relu else u


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_REDUCTION)
def _masked_sums(d, yy, xn, relu):
    """sum(g * xn) and sum(g) with g = d * (yy > 0) when relu, else d."""
    s1 = _F(0)
    s2 = _F(0)
    z = _F(0)
    for i in range(d.shape[0]):
        g = d[i]
        if relu:
            g = g if yy[i] > 0 else z * g
        s1 += g * xn[i]
        s2 += g
    return s1, s2


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def bn_scale_train_backward(tdiff, y, xnorm, std, scale, xdiff, sums, relu, same, c0, c1):
    """Backward of BatchNorm -> Scale (-> ReLU) on the shared top T.  tdiff (T's diff) holds
    dy on entry; with g = dy * (y > 0) (or dy): sums[0, c] = sum(g * xnorm), sums[1, c] =
    sum(g) (the Scale gradients), d = g * scale is left in tdiff (as the unfused Scale
    leaves it), and the BatchNorm input gradient (d - xnorm * mean(d * xnorm) - mean(d)) / std
    goes to xdiff.  same: xdiff is tdiff's memory (BatchNorm in place too)."""
    n_n, _, s_n = tdiff.shape
    m = n_n * s_n
    z = _F(0)
    for c in range(c0, c1):
        t1 = 0.0
        t2 = 0.0
        for n in range(n_n):
            a, b = _masked_sums(tdiff[n, c], y[n, c], xnorm[n, c], relu)
            t1 += a
            t2 += b
        sums[0, c] = _F(t1)
        sums[1, c] = _F(t2)
        sv = scale[c]
        mdyy = _F(sv * t1 / m) if m > 0 else _F(0)
        mdy = _F(sv * t2 / m) if m > 0 else _F(0)
        sd = std[c]
        for n in range(n_n):
            td = tdiff[n, c]
            yy = y[n, c]
            xn = xnorm[n, c]
            if same:
                for i in range(s_n):
                    g = td[i]
                    if relu:
                        g = g if yy[i] > 0 else z * g
                    d = g * sv
                    td[i] = (d - xn[i] * mdyy - mdy) / sd
            else:
                out = xdiff[n, c]
                for i in range(s_n):
                    g = td[i]
                    if relu:
                        g = g if yy[i] > 0 else z * g
                    d = g * sv
                    td[i] = d
                    out[i] = (d - xn[i] * mdyy - mdy) / sd


@task
def bn_scale_global_forward_task(args, r0, r1, slot):
    p = arguments(args)
    x, i = f32_3(p, 0)
    y, i = f32_3(p, i)
    mean, i = f32_1(p, i)
    std, i = f32_1(p, i)
    scale, i = f32_1(p, i)
    bias, i = f32_1(p, i)
    bn_scale_global_forward(readonly(x), y, mean, std, readonly(scale), readonly(bias),
                            p[i] != 0, p[i + 1] != 0, p[i + 2] != 0, r0, r1)
