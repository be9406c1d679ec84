"""numba kernels of Pooling, 2-D (layers/pooling.py).  Importing this module needs numba.

x rows (R, H, W), outputs (R, OH, OW); g = (kh, kw, sh, sw, ph, pw).  Taps are numbered
i * kw + j over the kernel window, in Caffe's (row-major) order.  Flat form, as the depthwise
weight sums: a plane in a phase-split buffer (bordered with -inf for MAX, 0 for AVE), every
tap one unit-stride run over all outputs of the plane.  A window clipped to the input (Caffe's
loops) is the same as the bordered window: the border never wins a max and adds nothing to a
sum."""
import numpy as np
from numba import njit

from ._native import arguments, f32_1, f32_2, f32_3, f32_4, i16_3, i64_1, readonly, task
from ._planes import _fill_split, _tap_bases


@njit(nogil=True, cache=True, boundscheck=False)
def _pool_buffer_shape(h, w, oh_n, ow_n, kh, kw, sh, sw, ph, pw):
    hq = max(oh_n + (kh - 1) // sh + 1, (ph + h + sh - 1) // sh)
    wq = max(ow_n + (kw - 1) // sw, (pw + w + sw - 1) // sw)
    return hq, wq


@njit(nogil=True, cache=True, boundscheck=False)
def _flat_form(h, w, oh_n, ow_n, g, border):
    """The flat form's buffers: the phase-split plane (bordered with `border`), its flat view,
    each tap's offset in it, the row pitch wq and the run length n = oh_n * wq."""
    kh, kw, sh, sw, ph, pw = g
    hq, wq = _pool_buffer_shape(h, w, oh_n, ow_n, kh, kw, sh, sw, ph, pw)
    buf = np.full((sh, sw, hq, wq), border, np.float32)
    return buf, buf.reshape(-1), _tap_bases(kh, kw, sh, sw, 1, 1, hq, wq), wq, oh_n * wq


@njit(inline="always")
def _above(m, v):
    """v if v > m else m: Caffe's strict '>' (NaN never wins), the vector max instruction."""
    return v if v > m else m


@njit(nogil=True, cache=True, boundscheck=False)
def _max_pool_2x2(x, y, choice, none, r0, r1):
    """max_pool_forward for 2x2 windows at stride 2 tiling the plane exactly (LeNet's, VGG's):
    four fixed taps per output, branch-free after if-conversion, so the row loop vectorises."""
    lowest = -np.finfo(np.float32).max
    oh_n, ow_n = y.shape[1], y.shape[2]
    for r in range(r0, r1):
        for oh in range(oh_n):
            a = x[r, 2 * oh]
            b = x[r, 2 * oh + 1]
            yr = y[r, oh]
            cr = choice[r, oh]
            for ow in range(ow_n):
                best = lowest
                t = none
                v = a[2 * ow]
                if v > best:
                    best, t = v, 0
                v = a[2 * ow + 1]
                if v > best:
                    best, t = v, 1
                v = b[2 * ow]
                if v > best:
                    best, t = v, 2
                v = b[2 * ow + 1]
                if v > best:
                    best, t = v, 3
                yr[ow] = best
                cr[ow] = t


@njit(nogil=True, cache=True, boundscheck=False)
def max_pool_forward(x, y, choice, g, none, r0, r1):
    """y = the first maximum in row-major order over each window (strict '>' from -FLT_MAX,
    so NaN and -inf never win); choice = its tap, `none` if none."""
    kh, kw, sh, sw, ph, pw = g
    h, w = x.shape[1], x.shape[2]
    oh_n, ow_n = y.shape[1], y.shape[2]
    if (kh == kw == sh == sw == 2 and ph == pw == 0 and h == 2 * oh_n and w == 2 * ow_n):
        _max_pool_2x2(x, y, choice, none, r0, r1)
        return
    if ow_n < 8:  # tiny planes: window by window (the flat form's setup would dominate)
        lowest = -np.finfo(np.float32).max
        for r in range(r0, r1):
            plane = x[r]
            for oh in range(oh_n):
                hs = oh * sh - ph
                i0, i1 = max(0, -hs), min(kh, h - hs)
                yr = y[r, oh]
                cr = choice[r, oh]
                for ow in range(ow_n):
                    ws = ow * sw - pw
                    j0, j1 = max(0, -ws), min(kw, w - ws)
                    best = lowest
                    t_best = none
                    for i in range(i0, i1):
                        row = plane[hs + i]
                        for j in range(j0, j1):
                            v = row[ws + j]
                            if v > best:
                                best = v
                                t_best = i * kw + j
                    yr[ow] = best
                    cr[ow] = t_best
        return
    buf, bflat, bases, wq, n = _flat_form(h, w, oh_n, ow_n, g, -np.inf)
    best = np.empty(n, np.float32)
    tap = np.empty(n, np.int32)
    lowest = -np.finfo(np.float32).max
    for r in range(r0, r1):
        _fill_split(buf, x[r], ph, pw)
        for k in range(n):
            best[k] = lowest
            tap[k] = none
        for t in range(kh * kw):
            bt = bflat[bases[t]:]
            for k in range(n):
                v = bt[k]
                better = v > best[k]
                best[k] = v if better else best[k]
                tap[k] = t if better else tap[k]
        for oh in range(oh_n):
            yr = y[r, oh]
            cr = choice[r, oh]
            sb = best[oh * wq:]
            st = tap[oh * wq:]
            for ow in range(ow_n):
                yr[ow] = sb[ow]
                cr[ow] = st[ow]


@njit(nogil=True, cache=True, boundscheck=False)
def max_pool_backward(dy, choice, dx, g, none, r0, r1):
    """dx = 0, plus each output's gradient at the input its window chose (a scatter, output
    by output: cheaper than the flat form for the small planes pooling sees)."""
    kh, kw, sh, sw, ph, pw = g
    oh_n, ow_n = dy.shape[1], dy.shape[2]
    # (tap -> row and column offsets from tables: a division by kw per output was most of
    # the time)
    ti = np.empty(kh * kw, np.int64)
    tj = np.empty(kh * kw, np.int64)
    for t in range(kh * kw):
        ti[t], tj[t] = t // kw, t % kw
    # windows that do not overlap send at most one gradient to an input: a store, not an add
    tiles = sh >= kh and sw >= kw
    for r in range(r0, r1):
        out = dx[r]
        out[:, :] = 0
        for oh in range(oh_n):
            dr = dy[r, oh]
            cr = choice[r, oh]
            top = oh * sh - ph
            if tiles:
                for ow in range(ow_n):
                    t = cr[ow]
                    if t != none:
                        out[top + ti[t], ow * sw - pw + tj[t]] = dr[ow]
            else:
                for ow in range(ow_n):
                    t = cr[ow]
                    if t != none:
                        out[top + ti[t], ow * sw - pw + tj[t]] += dr[ow]


@njit(nogil=True, cache=True, boundscheck=False)
def ave_pool_forward(x, y, pool_size, g, r0, r1):
    """y = (sum over the window, taps in row-major order) / pool_size."""
    kh, kw, sh, sw, ph, pw = g
    h, w = x.shape[1], x.shape[2]
    oh_n, ow_n = y.shape[1], y.shape[2]
    buf, bflat, bases, wq, n = _flat_form(h, w, oh_n, ow_n, g, 0.0)
    acc = np.empty(n, np.float32)
    for r in range(r0, r1):
        _fill_split(buf, x[r], ph, pw)
        acc[:] = 0
        for t in range(kh * kw):
            bt = bflat[bases[t]:]
            for k in range(n):
                acc[k] += bt[k]
        for oh in range(oh_n):
            yr = y[r, oh]
            sa = acc[oh * wq:]
            ps = pool_size[oh]
            for ow in range(ow_n):
                yr[ow] = sa[ow] / ps[ow]


@njit(nogil=True, cache=True, boundscheck=False)
def plane_means(x, y, r0, r1):
    """y[r] = (sum of row r of x (R, H * W), in order) / (H * W) for r in [r0, r1): global AVE
    pooling, whose one window Caffe adds up tap by tap.  Eight planes are summed side by side,
    so that one plane's additions (in order) need not wait for each other."""
    n = x.shape[1]
    size = np.float32(n)
    z = np.float32(0)
    r = r0
    while r + 8 <= r1:
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = z
        x0, x1, x2, x3 = x[r], x[r + 1], x[r + 2], x[r + 3]
        x4, x5, x6, x7 = x[r + 4], x[r + 5], x[r + 6], x[r + 7]
        for i in range(n):
            s0 += x0[i]
            s1 += x1[i]
            s2 += x2[i]
            s3 += x3[i]
            s4 += x4[i]
            s5 += x5[i]
            s6 += x6[i]
            s7 += x7[i]
        y[r], y[r + 1], y[r + 2], y[r + 3] = s0 / size, s1 / size, s2 / size, s3 / size
        y[r + 4], y[r + 5], y[r + 6], y[r + 7] = s4 / size, s5 / size, s6 / size, s7 / size
        r += 8
    for q in range(r, r1):
        s = z
        xq = x[q]
        for i in range(n):
            s += xq[i]
        y[q] = s / size


@njit(nogil=True, cache=True, boundscheck=False)
def ave_pool_backward(dy, dx, pool_size, g, r0, r1):
    """dx = the sum, over the windows (clipped to the input) containing each input, of
    dy / pool_size."""
    kh, kw, sh, sw, ph, pw = g
    h, w = dx.shape[1], dx.shape[2]
    oh_n, ow_n = dy.shape[1], dy.shape[2]
    for r in range(r0, r1):
        out = dx[r]
        out[:, :] = 0
        for oh in range(oh_n):
            hs = oh * sh - ph
            i0, i1 = max(0, -hs), min(kh, h - hs)
            for ow in range(ow_n):
                ws = ow * sw - pw
                j0, j1 = max(0, -ws), min(kw, w - ws)
                v = dy[r, oh, ow] / pool_size[oh, ow]
                for i in range(i0, i1):
                    row = out[hs + i]
                    for j in range(j0, j1):
                        row[ws + j] += v



@njit(nogil=True, cache=True, boundscheck=False)
def max_pool_channels_last(x, y, choice, g, none, xt, yt, tt, n0, n1):
    """max_pool_forward on small planes, images [n0, n1) of x (N, C, H, W): each image is
    turned channels-last (xt (H, W, C)), so that every tap of every window is one unit-stride
    loop over the channels (yt, tt (OH, OW, C): the maxima and their taps), and back.  Small
    planes leave the flat form's loops too short to vectorise; a channel loop is as long as
    the layer is wide.  Same semantics: the first maximum in row-major tap order."""
    kh, kw, sh, sw, ph, pw = g
    c_n, h, w = x.shape[1], x.shape[2], x.shape[3]
    oh_n, ow_n = y.shape[2], y.shape[3]
    lowest = -np.finfo(np.float32).max
    for n in range(n0, n1):
        for c in range(c_n):
            plane = x[n, c]
            for i in range(h):
                for j in range(w):
                    xt[i, j, c] = plane[i, j]
        for oh in range(oh_n):
            hs = oh * sh - ph
            for ow in range(ow_n):
                ws = ow * sw - pw
                best = yt[oh, ow]
                tap = tt[oh, ow]
                for c in range(c_n):
                    best[c] = lowest
                    tap[c] = none
                for i in range(max(0, -hs), min(kh, h - hs)):
                    for j in range(max(0, -ws), min(kw, w - ws)):
                        src = xt[hs + i, ws + j]
                        t = i * kw + j
                        for c in range(c_n):
                            v = src[c]
                            better = v > best[c]
                            best[c] = v if better else best[c]
                            tap[c] = t if better else tap[c]
        for c in range(c_n):
            yp = y[n, c]
            cp = choice[n, c]
            for oh in range(oh_n):
                for ow in range(ow_n):
                    yp[oh, ow] = yt[oh, ow, c]
                    cp[oh, ow] = tt[oh, ow, c]


# --------------------------------------------------------------------------------------------
# MAX windows without the argmax: the forward of a layer whose backward never runs (a net
# with no loss, Net._prune_backward) and that has no mask top.  Same maxima as above: the
# chain `v if v > best else best` from -FLT_MAX is Caffe's strict '>' (NaN and -inf never
# win), and it compiles to the vector max instruction.
# --------------------------------------------------------------------------------------------

@njit(nogil=True, cache=True, boundscheck=False)
def _max_values_separable(x, y, g, r0, r1):
    """max_pool_values at horizontal strides > 1: per output row, the column maxima over the
    window's rows (unit stride, no padded copy), then the maxima of kw consecutive ones (a
    -inf border stands for the padding).  Half the time of the flat form at stride 2."""
    kh, kw, sh, sw, ph, pw = g
    h, w = x.shape[1], x.shape[2]
    oh_n, ow_n = y.shape[1], y.shape[2]
    lowest = -np.finfo(np.float32).max
    width = max(pw + w, (ow_n - 1) * sw + kw)
    vm = np.full(width, -np.inf, np.float32)
    col = vm[pw:pw + w]
    for r in range(r0, r1):
        plane = x[r]
        for oh in range(oh_n):
            hs = oh * sh - ph
            i0, i1 = max(0, -hs), min(kh, h - hs)
            if i1 - i0 == 3:
                a, b, c = plane[hs + i0], plane[hs + i0 + 1], plane[hs + i0 + 2]
                for j in range(w):
                    col[j] = _above(_above(_above(lowest, a[j]), b[j]), c[j])
            elif i1 - i0 == 2:
                a, b = plane[hs + i0], plane[hs + i0 + 1]
                for j in range(w):
                    col[j] = _above(_above(lowest, a[j]), b[j])
            else:
                for j in range(w):
                    col[j] = lowest
                for i in range(i0, i1):
                    src = plane[hs + i]
                    for j in range(w):
                        col[j] = _above(col[j], src[j])
            yr = y[r, oh]
            if kw == 3 and sw == 2:
                for ow in range(ow_n):
                    m = _above(lowest, vm[2 * ow])
                    yr[ow] = _above(_above(m, vm[2 * ow + 1]), vm[2 * ow + 2])
            elif kw == 3 and sw == 1:
                for ow in range(ow_n):
                    yr[ow] = _above(_above(_above(lowest, vm[ow]), vm[ow + 1]), vm[ow + 2])
            else:
                for ow in range(ow_n):
                    m = lowest
                    base = ow * sw
                    for j in range(kw):
                        v = vm[base + j]
                        m = v if v > m else m
                    yr[ow] = m


@njit(nogil=True, cache=True, boundscheck=False)
def max_pool_values(x, y, g, r0, r1):
    """y = the maximum over each window, planes [r0, r1) of x (R, H, W); y (R, OH, OW).
    Without the argmax the maximum is order-free: stride-1 windows run in the flat form
    (every tap one run over the whole plane; a 3x3 window in one pass over nine runs),
    strided ones separably (_max_values_separable)."""
    kh, kw, sh, sw, ph, pw = g
    h, w = x.shape[1], x.shape[2]
    oh_n, ow_n = y.shape[1], y.shape[2]
    if (kh == kw == sh == sw == 2 and ph == pw == 0 and h == 2 * oh_n and w == 2 * ow_n):
        lowest = -np.finfo(np.float32).max
        for r in range(r0, r1):
            for oh in range(oh_n):
                a = x[r, 2 * oh]
                b = x[r, 2 * oh + 1]
                yr = y[r, oh]
                for ow in range(ow_n):
                    m = _above(_above(lowest, a[2 * ow]), a[2 * ow + 1])
                    yr[ow] = _above(_above(m, b[2 * ow]), b[2 * ow + 1])
        return
    lowest = -np.finfo(np.float32).max
    if ow_n < 8:  # tiny planes: window by window, no buffers to allocate
        for r in range(r0, r1):
            plane = x[r]
            for oh in range(oh_n):
                hs = oh * sh - ph
                yr = y[r, oh]
                for ow in range(ow_n):
                    ws = ow * sw - pw
                    m = lowest
                    for i in range(max(0, -hs), min(kh, h - hs)):
                        row = plane[hs + i]
                        for j in range(max(0, -ws), min(kw, w - ws)):
                            v = row[ws + j]
                            m = v if v > m else m
                    yr[ow] = m
        return
    if sw > 1:
        _max_values_separable(x, y, g, r0, r1)
        return
    buf, bflat, bases, wq, n = _flat_form(h, w, oh_n, ow_n, g, -np.inf)
    best = np.empty(n, np.float32)
    for r in range(r0, r1):
        _fill_split(buf, x[r], ph, pw)
        if kh * kw == 9:
            b0, b1, b2 = bflat[bases[0]:], bflat[bases[1]:], bflat[bases[2]:]
            b3, b4, b5 = bflat[bases[3]:], bflat[bases[4]:], bflat[bases[5]:]
            b6, b7, b8 = bflat[bases[6]:], bflat[bases[7]:], bflat[bases[8]:]
            for k in range(n):
                m = _above(_above(_above(lowest, b0[k]), b1[k]), b2[k])
                m = _above(_above(_above(m, b3[k]), b4[k]), b5[k])
                best[k] = _above(_above(_above(m, b6[k]), b7[k]), b8[k])
        else:
            for k in range(n):
                best[k] = lowest
            for t in range(kh * kw):
                bt = bflat[bases[t]:]
                for k in range(n):
                    v = bt[k]
                    best[k] = v if v > best[k] else best[k]
        for oh in range(oh_n):
            yr = y[r, oh]
            sb = best[oh * wq:]
            for ow in range(ow_n):
                yr[ow] = sb[ow]


@njit(nogil=True, cache=True, boundscheck=False)
def max_pool_values_channels_last(x, y, g, xt, yt, n0, n1):
    """max_pool_values on small planes, images [n0, n1) of x (N, C, H, W), channels-last as
    max_pool_channels_last (xt (H, W, C'), yt (OH, OW, C'), C' >= C; see channels_last_width)."""
    kh, kw, sh, sw, ph, pw = g
    c_n, h, w = x.shape[1], x.shape[2], x.shape[3]
    oh_n, ow_n = y.shape[2], y.shape[3]
    lowest = -np.finfo(np.float32).max
    for n in range(n0, n1):
        for i in range(h):
            for j in range(w):
                dst = xt[i, j]
                for c in range(c_n):
                    dst[c] = x[n, c, i, j]
        for oh in range(oh_n):
            hs = oh * sh - ph
            for ow in range(ow_n):
                ws = ow * sw - pw
                best = yt[oh, ow]
                for c in range(c_n):
                    best[c] = lowest
                for i in range(max(0, -hs), min(kh, h - hs)):
                    for j in range(max(0, -ws), min(kw, w - ws)):
                        src = xt[hs + i, ws + j]
                        for c in range(c_n):
                            v = src[c]
                            best[c] = v if v > best[c] else best[c]
        for c in range(c_n):
            yp = y[n, c]
            for oh in range(oh_n):
                for ow in range(ow_n):
                    yp[oh, ow] = yt[oh, ow, c]


# Native tasks (_native.py) of the forward kernels
@task
def max_pool_values_task(args, r0, r1, slot):
    p = arguments(args)
    x, i = f32_3(p, 0)
    y, i = f32_3(p, i)
    g, i = i64_1(p, i)
    max_pool_values(readonly(x), y, g, r0, r1)


@task
def ave_pool_forward_task(args, r0, r1, slot):
    p = arguments(args)
    x, i = f32_3(p, 0)
    y, i = f32_3(p, i)
    pool_size, i = f32_2(p, i)
    g, i = i64_1(p, i)
    ave_pool_forward(readonly(x), y, pool_size, g, r0, r1)


@task
def plane_means_task(args, r0, r1, slot):
    p = arguments(args)
    x, i = f32_2(p, 0)
    y, i = f32_1(p, i)
    plane_means(readonly(x), y, r0, r1)


@task
def max_pool_values_channels_last_task(args, r0, r1, slot):
    p = arguments(args)
    x, i = f32_4(p, 0)
    y, i = f32_4(p, i)
    g, i = i64_1(p, i)
    xt, i = f32_3(p, i)
    yt, i = f32_3(p, i)
    max_pool_values_channels_last(readonly(x), y, g, xt, yt, r0, r1)


@task
def max_pool_backward_task(args, r0, r1, slot):
    """(choice as int16, what Pooling keeps unless a plane has 32767 taps or more)"""
    p = arguments(args)
    dy, i = f32_3(p, 0)
    choice, i = i16_3(p, i)
    dx, i = f32_3(p, i)
    g, i = i64_1(p, i)
    max_pool_backward(readonly(dy), choice, dx, g, p[i], r0, r1)


@task
def ave_pool_backward_task(args, r0, r1, slot):
    p = arguments(args)
    dy, i = f32_3(p, 0)
    dx, i = f32_3(p, i)
    pool_size, i = f32_2(p, i)
    g, i = i64_1(p, i)
    ave_pool_backward(readonly(dy), dx, pool_size, g, r0, r1)
