"""numba kernels of products with few rows: an InnerProduct on a batch of 1 to 8, whose weight
is stored (num_output, K), and a convolution with few output positions (the patches are the
rows).  Importing this module needs numba.

OpenBLAS's sgemm takes 3-6x longer than this loop on 2 to 8 rows (a 2 x 784 by 784 x 300
product: 57 us against 13, measured 2026-12-05 on the Zen 5 VM), and its sgemv no less time on
one.  Split over columns (output channels) [n0, n1), the kernels run on the spinning workers as
native tasks, and they apply a fused layer's bias and activation to their columns while these
are in cache.  Sums are reassociated and contracted (FMA): results equal BLAS's to float32
rounding."""
import numpy as np
from numba import njit

from ._native import arguments, f32_1, f32_2, f32_3, f32_4, i64_1, readonly, task
from ._planes import _ELEMENTWISE, _REDUCTION, _affine_act_run, _sum_prod


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_REDUCTION)
def rows_by_transposed(x, w, y, scale, shift, kind, slope, keep, affine, has_keep, n0, n1):
    """y[:, n0:n1] = x (M, K) times w[n0:n1] (N, K) transposed; y (M, N).  Four columns at a
    time, so that each element of x loaded serves four weights' rows.  With `affine`, the
    columns then get the tail of a fused InnerProduct (layers/fusion.py Epilogue, as
    numba/neuron.py affine_act_rows applies it): v = y * scale + shift per column, copied to
    keep with has_keep, then kind 1 ReLU, 2 negative slope (PReLU), 0 nothing."""
    rows = x.shape[0]
    n = n0
    while n + 4 <= n1:
        w0, w1, w2, w3 = w[n], w[n + 1], w[n + 2], w[n + 3]
        for m in range(rows):
            ym = y[m]
            ym[n], ym[n + 1], ym[n + 2], ym[n + 3] = _dot4(x[m], w0, w1, w2, w3)
        n += 4
    for j in range(n, n1):
        wj = w[j]
        for m in range(rows):
            y[m, j] = _sum_prod(wj, x[m])
    if affine:
        for m in range(rows):
            _tail(y[m, n0:n1], scale[n0:n1], shift[n0:n1], kind, slope[n0:n1],
                  keep[m, n0:n1], has_keep)


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_REDUCTION, inline="always")
def _dot4(v, w0, w1, w2, w3):
    """The dot products of v with four rows (each element of v loaded once for the four)."""
    s0 = s1 = s2 = s3 = np.float32(0)
    for k in range(v.shape[0]):
        e = v[k]
        s0 += w0[k] * e
        s1 += w1[k] * e
        s2 += w2[k] * e
        s3 += w3[k] * e
    return s0, s1, s2, s3


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE, inline="always")
def _tail(row, scale, shift, kind, slope, kept, has_keep):
    z = np.float32(0)
    for c in range(row.shape[0]):
        row[c] = row[c] * scale[c] + shift[c]
    if has_keep:
        for c in range(row.shape[0]):
            kept[c] = row[c]
    if kind == 1:
        for c in range(row.shape[0]):
            v = row[c]
            row[c] = z if v < z else v
    elif kind == 2:
        for c in range(row.shape[0]):
            v = row[c]
            row[c] = v * slope[c] if v < z else v


@task
def rows_by_transposed_task(args, r0, r1, slot):
    p = arguments(args)
    x, i = f32_2(p, 0)
    w, i = f32_2(p, i)
    y, i = f32_2(p, i)
    scale, i = f32_1(p, i)
    shift, i = f32_1(p, i)
    kind = p[i]
    slope, i = f32_1(p, i + 1)
    keep, i = f32_2(p, i)
    rows_by_transposed(readonly(x), readonly(w), y, scale, shift, kind, slope, keep,
                       p[i] != 0, p[i + 1] != 0, r0, r1)


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_REDUCTION)
def positions(x, w, y, g, patches, scale, shift, kind, slope, keep, affine, has_keep, n0, n1,
              slot=0):
    """A convolution (group 1) with few output positions: output channels [n0, n1) of y
    (N, O, OH * OW) from x (N, C, H, W) and w (O, C * kh * kw), g = (kh, kw, sh, sw, ph, pw,
    dh, dw, OW).  Each image's patches are gathered into patches[slot] (OH * OW, C * kh * kw),
    each then multiplied by four weight rows at a time; with `affine`, each channel then gets
    the tail of a fused Convolution (layers/fusion.py Epilogue; keep as y)."""
    kh, kw, sh, sw, ph, pw, dh, dw = g[:8]
    ow_n = g[8]
    c_n, h, wd = x.shape[1], x.shape[2], x.shape[3]
    p_n = y.shape[2]
    taps = kh * kw
    rows = patches[slot]
    z = np.float32(0)
    for i in range(x.shape[0]):
        xi, yi = x[i], y[i]
        for m in range(p_n):
            row = rows[m]
            for a in range(kh):
                r = (m // ow_n) * sh - ph + a * dh
                for b in range(kw):
                    col = (m % ow_n) * sw - pw + b * dw
                    if 0 <= r < h and 0 <= col < wd:
                        for c in range(c_n):
                            row[c * taps + a * kw + b] = xi[c, r, col]
                    else:
                        for c in range(c_n):
                            row[c * taps + a * kw + b] = z
        n = n0
        while n + 4 <= n1:
            w0, w1, w2, w3 = w[n], w[n + 1], w[n + 2], w[n + 3]
            for m in range(p_n):
                yi[n, m], yi[n + 1, m], yi[n + 2, m], yi[n + 3, m] = \
                    _dot4(rows[m], w0, w1, w2, w3)
            n += 4
        for j in range(n, n1):
            wj = w[j]
            for m in range(p_n):
                yi[j, m] = _sum_prod(wj, rows[m])
        if affine:
            for j in range(n0, n1):
                _affine_act_run(yi[j], scale[j], shift[j], kind, slope[j], keep[i, j],
                                has_keep)


@task
def positions_task(args, r0, r1, slot):
    p = arguments(args)
    x, i = f32_4(p, 0)
    w, i = f32_2(p, i)
    y, i = f32_3(p, i)
    g, i = i64_1(p, i)
    patches, i = f32_3(p, i)
    scale, i = f32_1(p, i)
    shift, i = f32_1(p, i)
    kind = p[i]
    slope, i = f32_1(p, i + 1)
    keep, i = f32_3(p, i)
    positions(readonly(x), readonly(w), y, g, patches, scale, shift, kind, slope, keep,
              p[i] != 0, p[i + 1] != 0, r0, r1, slot)
