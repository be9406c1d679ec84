"""numba im2col / col2im, 2-D (layers/im2col.py's GemmEngine).  Importing this module needs
numba.

x rows (R, H, W), columns (R, K, OH, OW) with K = kh * kw taps;
g = (kh, kw, sh, sw, ph, pw, dh, dw); rows [r0, r1) per call."""
import numpy as np
from numba import njit

from ._native import arguments, f32_3, f32_4, i64_1, readonly, task
from ._planes import _ELEMENTWISE, _F, _fill_phased, _unfill_phased


@njit(nogil=True, cache=True, boundscheck=False)
def im2col(x, col, g, r0, r1):
    """col[r, tap, oh, ow] = x[r, oh*sh - ph + i*dh, ow*sw - pw + j*dw], 0 outside x."""
    kh, kw, sh, sw, ph, pw, dh, dw = g
    oh_n, ow_n = col.shape[2], col.shape[3]
    buf = np.zeros(((oh_n - 1) * sh + (kh - 1) * dh + 1, sw, ow_n + ((kw - 1) * dw) // sw),
                   _F)
    for r in range(r0, r1):
        _fill_phased(buf, x[r], ph, pw)
        for i in range(kh):
            for j in range(kw):
                dst = col[r, i * kw + j]
                p, q = (j * dw) % sw, (j * dw) // sw
                for oh in range(oh_n):
                    src = buf[oh * sh + i * dh, p, q:]
                    out = dst[oh]
                    for ow in range(ow_n):
                        out[ow] = src[ow]


@task
def im2col_task(args, r0, r1, slot):
    p = arguments(args)
    x, i = f32_3(p, 0)
    col, i = f32_4(p, i)
    g, i = i64_1(p, i)
    im2col(readonly(x), col, g, r0, r1)


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def col2im(col, dx, g, r0, r1):
    """dx[r] = the sum of every column entry at the input position it was taken from."""
    kh, kw, sh, sw, ph, pw, dh, dw = g
    h, wd = dx.shape[1], dx.shape[2]
    oh_n, ow_n = col.shape[2], col.shape[3]
    hp = (oh_n - 1) * sh + (kh - 1) * dh + 1
    wq = ow_n + ((kw - 1) * dw) // sw
    acc = np.zeros((max(hp, ph + h), sw, max(wq, (pw + wd + sw - 1) // sw)), _F)
    for r in range(r0, r1):
        acc[:, :, :] = 0
        for i in range(kh):
            for j in range(kw):
                src = col[r, i * kw + j]
                p, q = (j * dw) % sw, (j * dw) // sw
                for oh in range(oh_n):
                    dst = acc[oh * sh + i * dh, p, q:]
                    s_row = src[oh]
                    for ow in range(ow_n):
                        dst[ow] += s_row[ow]
        _unfill_phased(acc, dx[r], ph, pw)


@task
def col2im_task(args, r0, r1, slot):
    p = arguments(args)
    col, i = f32_4(p, 0)
    dx, i = f32_3(p, i)
    g, i = i64_1(p, i)
    col2im(col, dx, g, r0, r1)
