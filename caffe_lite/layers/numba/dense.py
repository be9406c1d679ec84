"""numba kernel of a product with few rows: an InnerProduct on a batch of 1 to 8, whose weight
is stored (num_output, K).  Importing this module needs numba.

OpenBLAS's sgemm takes 3-6x longer than this loop on 2 to 8 rows (a 2 x 784 by 784 x 300
product: 57 us against 13, measured 2026-12-05 on the Zen 5 VM), and its sgemv no less time on
one.  Split over columns [n0, n1), it runs on the spinning workers as a native task, and it
applies a fused InnerProduct's bias and activation to its columns while they are in cache.
Sums are reassociated and contracted (FMA): results equal BLAS's to float32 rounding."""
import numpy as np
from numba import njit

from ._native import arguments, f32_1, f32_2, readonly, task
from ._planes import _ELEMENTWISE, _REDUCTION


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_REDUCTION)
def rows_by_transposed(x, w, y, scale, shift, kind, slope, keep, affine, has_keep, n0, n1):
    """y[:, n0:n1] = x (M, K) times w[n0:n1] (N, K) transposed; y (M, N).  Four columns at a
    time, so that each element of x loaded serves four weights' rows.  With `affine`, the
    columns then get the tail of a fused InnerProduct (layers/fusion.py Epilogue, as
    numba/neuron.py affine_act_rows applies it): v = y * scale + shift per column, copied to
    keep with has_keep, then kind 1 ReLU, 2 negative slope (PReLU), 0 nothing."""
    rows, k_n = x.shape
    n = n0
    while n + 4 <= n1:
        w0, w1, w2, w3 = w[n], w[n + 1], w[n + 2], w[n + 3]
        for m in range(rows):
            xm = x[m]
            s0 = s1 = s2 = s3 = np.float32(0)
            for k in range(k_n):
                v = xm[k]
                s0 += w0[k] * v
                s1 += w1[k] * v
                s2 += w2[k] * v
                s3 += w3[k] * v
            ym = y[m]
            ym[n] = s0
            ym[n + 1] = s1
            ym[n + 2] = s2
            ym[n + 3] = s3
        n += 4
    for j in range(n, n1):
        wj = w[j]
        for m in range(rows):
            xm = x[m]
            s = np.float32(0)
            for k in range(k_n):
                s += wj[k] * xm[k]
            y[m, j] = s
    if affine:
        for m in range(rows):
            _tail(y[m, n0:n1], scale[n0:n1], shift[n0:n1], kind, slope[n0:n1],
                  keep[m, n0:n1], has_keep)


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
