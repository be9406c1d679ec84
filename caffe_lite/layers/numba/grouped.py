"""numba direct kernels of the grouped convolution with few channels per group, 2-D
(layers/im2col.py's GemmEngine, when a group's weight matrix has few rows: a ResNeXt block's
3x3 with 4 channels per group).  Importing this module needs numba.

With 4 input and 4 output channels per group, im2col + matrix products multiply (4 x 36) by
(36 x positions) per image and group: too small for BLAS, and the columns cost more memory
traffic than the products.  Here each (image, group) pair copies its Cg input planes into
phase-split zero-bordered buffers once (_fill_phased) and every (output, input) channel pair
is a correlation over the whole plane, in cache.  The planes are kept in "flat" form
(_fill_split: phase-split on both axes, rows of wq values, a few of them past the output's
width), so that every tap is one unit-stride run over all of a plane's outputs, long enough
to vectorise (a 28-wide row is not: most of it would run in the scalar remainder); the
extra columns are computed and dropped.

Work is split by rows r = image * G + group of x (R, Cg, H, W), y / dy (R, Og, OH, OW);
weights w (G, Og, Cg, K) with K = kh * kw; g = (kh, kw, sh, sw, ph, pw, dh, dw); rows
[r0, r1) per call."""
import numpy as np
from numba import njit

from ._native import arguments, f32_4, i64_1, readonly, task
from ._planes import _ELEMENTWISE, _F, _fill_split, _flat_weight_sums, _tap_bases


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def _flat_taps(bflat, bases, wk, out, n, flip, accumulate):
    """out[k] (+)= sum over taps t of wk[t] * bflat[bases[t] + k] for k < n, the kernel
    rotated by 180 degrees (wk[K - 1 - t]) when `flip`."""
    kc = bases.shape[0]
    if kc == 9:
        if flip:
            w0, w1, w2, w3, w4, w5, w6, w7, w8 = (wk[8], wk[7], wk[6], wk[5], wk[4], wk[3],
                                                  wk[2], wk[1], wk[0])
        else:
            w0, w1, w2, w3, w4, w5, w6, w7, w8 = (wk[0], wk[1], wk[2], wk[3], wk[4], wk[5],
                                                  wk[6], wk[7], wk[8])
        b0, b1, b2 = bflat[bases[0]:], bflat[bases[1]:], bflat[bases[2]:]
        b3, b4, b5 = bflat[bases[3]:], bflat[bases[4]:], bflat[bases[5]:]
        b6, b7, b8 = bflat[bases[6]:], bflat[bases[7]:], bflat[bases[8]:]
        if accumulate:
            for k in range(n):
                out[k] += (w0 * b0[k] + w1 * b1[k] + w2 * b2[k] + w3 * b3[k] + w4 * b4[k]
                           + w5 * b5[k] + w6 * b6[k] + w7 * b7[k] + w8 * b8[k])
        else:
            for k in range(n):
                out[k] = (w0 * b0[k] + w1 * b1[k] + w2 * b2[k] + w3 * b3[k] + w4 * b4[k]
                          + w5 * b5[k] + w6 * b6[k] + w7 * b7[k] + w8 * b8[k])
        return
    if not accumulate:
        for k in range(n):
            out[k] = 0
    for t in range(kc):
        wt = wk[kc - 1 - t] if flip else wk[t]
        bt = bflat[bases[t]:]
        for k in range(n):
            out[k] += wt * bt[k]


@njit(nogil=True, cache=True, boundscheck=False)
def _split_buffers(planes, oh_n, ow_n, g):
    """Zeroed (planes, sh, sw, hq, wq) buffers for _fill_split, and the taps' bases."""
    kh, kw, sh, sw, ph, pw, dh, dw = g
    hq = oh_n + ((kh - 1) * dh) // sh + 1
    wq = ow_n + ((kw - 1) * dw) // sw
    return (np.zeros((planes, sh, sw, hq, wq), _F), _tap_bases(kh, kw, sh, sw, dh, dw, hq, wq))


@njit(nogil=True, cache=True, boundscheck=False)
def _unflatten(acc, plane):
    """plane[i, j] = acc[i * wq + j]: a flat result's rows without their extra columns."""
    oh_n, ow_n = plane.shape
    wq = acc.shape[0] // oh_n
    for i in range(oh_n):
        src = acc[i * wq:]
        dst = plane[i]
        for j in range(ow_n):
            dst[j] = src[j]


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def grouped_forward(x, w, y, g, r0, r1):
    """y[r, o] = sum over c of the correlation of x[r, c] with w[group, o, c] (overwritten)."""
    ph, pw = g[4], g[5]
    groups, og_n, cg_n = w.shape[0], w.shape[1], w.shape[2]
    oh_n, ow_n = y.shape[2], y.shape[3]
    bufs, bases = _split_buffers(cg_n, oh_n, ow_n, g)
    flat = bufs.reshape(cg_n, -1)
    n = oh_n * bufs.shape[4]
    acc = np.empty(n, _F)
    for r in range(r0, r1):
        wg = w[r % groups]
        for c in range(cg_n):
            _fill_split(bufs[c], x[r, c], ph, pw)
        for o in range(og_n):
            for c in range(cg_n):
                _flat_taps(flat[c], bases, wg[o, c], acc, n, False, c > 0)
            _unflatten(acc, y[r, o])


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def grouped_weight(x, dy, gw, g, r0, r1):
    """gw[r, o, c, tap] = the weight sums of row r alone (overwritten; the caller adds the
    images up)."""
    ph, pw = g[4], g[5]
    og_n, cg_n = gw.shape[1], gw.shape[2]
    oh_n, ow_n = dy.shape[2], dy.shape[3]
    bufs, bases = _split_buffers(cg_n, oh_n, ow_n, g)
    flat = bufs.reshape(cg_n, -1)
    wq = bufs.shape[4]
    n = oh_n * wq
    drows = np.zeros((og_n, n), _F)  # dy rows of length wq, zeros after each row
    for r in range(r0, r1):
        for c in range(cg_n):
            _fill_split(bufs[c], x[r, c], ph, pw)
        for o in range(og_n):
            d = dy[r, o]
            for oh in range(oh_n):
                dst = drows[o, oh * wq:]
                src = d[oh]
                for ow in range(ow_n):
                    dst[ow] = src[ow]
            for c in range(cg_n):
                _flat_weight_sums(flat[c], bases, drows[o], n, gw[r, o, c])


@njit(nogil=True, cache=True, boundscheck=False)
def direct_backward_data(g):
    """Whether grouped_backward_data covers geometry g: stride 1 with pads within the
    kernel's reach, where the input gradient is a plain correlation of the zero-bordered dy
    with the rotated kernel."""
    kh, kw, sh, sw, ph, pw, dh, dw = g
    return sh == 1 and sw == 1 and ph <= (kh - 1) * dh and pw <= (kw - 1) * dw


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def grouped_backward_data(dy, w, dx, g, r0, r1):
    """dx[r, c] (overwritten) = sum over o of the correlation of dy[r, o], bordered by
    extent - 1 - pad, with w[group, o, c] rotated by 180 degrees (direct_backward_data(g))."""
    kh, kw, sh, sw, ph, pw, dh, dw = g
    groups, og_n, cg_n = w.shape[0], w.shape[1], w.shape[2]
    h, wd = dx.shape[2], dx.shape[3]
    transposed = np.array([kh, kw, 1, 1, 0, 0, dh, dw], np.int64)
    bufs, bases = _split_buffers(og_n, h, wd, transposed)
    flat = bufs.reshape(og_n, -1)
    n = h * bufs.shape[4]
    acc = np.empty(n, _F)
    pt, pl = (kh - 1) * dh - ph, (kw - 1) * dw - pw
    for r in range(r0, r1):
        wg = w[r % groups]
        for o in range(og_n):
            _fill_split(bufs[o], dy[r, o], pt, pl)
        for c in range(cg_n):
            for o in range(og_n):
                _flat_taps(flat[o], bases, wg[o, c], acc, n, True, o > 0)
            _unflatten(acc, dx[r, c])


# Native tasks (_native.py): every argument but the geometry is a 4-D float32 array
@task
def grouped_forward_task(args, r0, r1, slot):
    p = arguments(args)
    x, i = f32_4(p, 0)
    w, i = f32_4(p, i)
    y, i = f32_4(p, i)
    g, i = i64_1(p, i)
    grouped_forward(readonly(x), readonly(w), y, g, r0, r1)


@task
def grouped_weight_task(args, r0, r1, slot):
    p = arguments(args)
    x, i = f32_4(p, 0)
    dy, i = f32_4(p, i)
    gw, i = f32_4(p, i)
    g, i = i64_1(p, i)
    grouped_weight(readonly(x), readonly(dy), gw, g, r0, r1)


@task
def grouped_backward_data_task(args, r0, r1, slot):
    p = arguments(args)
    dy, i = f32_4(p, 0)
    w, i = f32_4(p, i)
    dx, i = f32_4(p, i)
    g, i = i64_1(p, i)
    grouped_backward_data(readonly(dy), readonly(w), dx, g, r0, r1)
