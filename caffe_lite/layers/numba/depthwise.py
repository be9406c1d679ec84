"""numba kernels of the depthwise convolution, 2-D (layers/depthwise.py's DepthwiseEngine).
Importing this module needs numba.

x rows (R, H, W) with R = num * C; output rows (R, M, OH, OW); weights (C * M, K) with
K = kh * kw; the channel of row r is r % C, output channel c * M + m;
g = (C, M, kh, kw, sh, sw, ph, pw, dh, dw).  Each kernel works on rows [r0, r1) so that the
caller can split the work over its thread pool (they release the GIL); they allocate per call,
never per row.

`depthwise_forward` / `depthwise_backward` dispatch to one function per strategy:
  * `_*_half3`: 3x3, pad 1, stride 2 on planes of even width (even / odd column phases);
  * `_*_same3`: 3x3, pad 1, stride 1 (or 2 on odd widths up to _SAME3_WIDTH / 2), the
    margined flat form;
  * `_*_general`: any kernel, stride, pad and dilation (phase-split rows; a flat form for the
    weight sums of narrow planes; polyphase input gradient)."""
import numpy as np
from numba import njit

from ._native import arguments, f32_1, f32_2, f32_3, f32_4, i64_1, readonly, task
from ._planes import (_ELEMENTWISE, _REDUCTION, _F, _correlate, _fill_phased, _fill_split,
                      _flat_weight_sums, _tap_bases, _weight_sums)


# --------------------------------------------------------------------------------------------
# The general strategy.  Rows of output: a plane is copied into a phase-split zero-bordered buffer (_fill_phased) and
# each output row is one unit-stride loop over the taps (nine multiply-adds per element for
# 3x3).  Narrow planes (the late layers, 14x14 and 7x7) take their weight sums in "flat" form
# instead: a buffer split by phase on both axes, B[u % sh, v % sw, u // sh, v // sw], in
# which every tap is one unit-stride run over all outputs of the plane at once, so the loop
# is long enough to vectorise (the row length's extra columns are computed and dropped).  The
# input gradient is a correlation of the zero-bordered dy with the rotated kernel; above
# stride 1, one per phase of the input (polyphase), with the taps that reach that phase.
# --------------------------------------------------------------------------------------------

_NARROW = 24  # planes narrower than this use the flat form for the weight sums
# At stride 2, odd widths up to this wide (as the stride-1 grid they compute) use the margined
# form.  Stride 1 and even widths at stride 2 use it at any width: single-threaded on a Zen 5
# VM (1 MiB L2 per core), 2026-12-05, 16-32 channels, general / margined in us, forward | backward:
# stride 1 120x160 113 / 94 | 205 / 143, 480x640 1392 / 1363 | 2909 / 2369; stride 2
# (half grid) 120x160 184 / 103 | 439 / 155, 240x320 250 / 217 | 780 / 336, 480x640
# 551 / 633 | 3054 / 1235.  (128 had been the limit for all, from before the half grid.)
_SAME3_WIDTH = 128


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def _flat_correlate_taps(bflat, offs, taps, cnt, wk, out, n):
    """out[k] = sum over t < cnt of wk[taps[t]] * bflat[offs[t] + k], k < n."""
    if cnt == 9:
        w0, w1, w2 = wk[taps[0]], wk[taps[1]], wk[taps[2]]
        w3, w4, w5 = wk[taps[3]], wk[taps[4]], wk[taps[5]]
        w6, w7, w8 = wk[taps[6]], wk[taps[7]], wk[taps[8]]
        b0, b1, b2 = bflat[offs[0]:], bflat[offs[1]:], bflat[offs[2]:]
        b3, b4, b5 = bflat[offs[3]:], bflat[offs[4]:], bflat[offs[5]:]
        b6, b7, b8 = bflat[offs[6]:], bflat[offs[7]:], bflat[offs[8]:]
        for k in range(n):
            out[k] = (w0 * b0[k] + w1 * b1[k] + w2 * b2[k] + w3 * b3[k] + w4 * b4[k]
                      + w5 * b5[k] + w6 * b6[k] + w7 * b7[k] + w8 * b8[k])
        return
    if cnt == 4:
        w0, w1, w2, w3 = wk[taps[0]], wk[taps[1]], wk[taps[2]], wk[taps[3]]
        b0, b1, b2, b3 = bflat[offs[0]:], bflat[offs[1]:], bflat[offs[2]:], bflat[offs[3]:]
        for k in range(n):
            out[k] = w0 * b0[k] + w1 * b1[k] + w2 * b2[k] + w3 * b3[k]
        return
    if cnt == 2:
        w0, w1 = wk[taps[0]], wk[taps[1]]
        b0, b1 = bflat[offs[0]:], bflat[offs[1]:]
        for k in range(n):
            out[k] = w0 * b0[k] + w1 * b1[k]
        return
    for k in range(n):
        out[k] = 0
    for t in range(cnt):
        wt = wk[taps[t]]
        bt = bflat[offs[t]:]
        for k in range(n):
            out[k] += wt * bt[k]


# --------------------------------------------------------------------------------------------
# 3x3, pad 1, stride 1 or 2 (MobileNet's layers), forward and both gradients, "margined
# form": the plane is copied whole, unpadded, into a flat buffer after wd + 1 zeros, so that
# tap (i, j) of output k reads buffer[k + i * wd + j]: every tap is one unit-stride run over
# the whole plane, however small, and the output is written in place, flat.  A tap
# left of column 0 (right of column wd - 1) reads the neighbouring row's end instead of the
# padding: a column mask drops those taps (a select, not a multiply by 0, so that an infinity
# there cannot turn into NaN).
# --------------------------------------------------------------------------------------------

@njit(nogil=True, cache=True, boundscheck=False)
def _column_masks(h, wd):
    """False on the first (left) and the last (right) column of a flat h x wd plane."""
    left = np.ones(h * wd, np.bool_)
    right = np.ones(h * wd, np.bool_)
    for i in range(h):
        left[i * wd] = False
        right[i * wd + wd - 1] = False
    return left, right


@njit(nogil=True, cache=True, boundscheck=False)
def _fill_margined(buf, plane, wd):
    """buf[wd + 1 + k] = plane[k] (plane flat); the zeros around it stay."""
    dst = buf[wd + 1:]
    for k in range(plane.shape[0]):
        dst[k] = plane[k]


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def _same3_correlate(buf, wk, out, left, right, wd, flip, accumulate):
    """out[k] (+)= the 3x3 stride-1 pad-1 correlation of the margined plane in buf at flat
    output k (kernel rotated by 180 degrees when `flip`)."""
    if flip:
        w0, w1, w2, w3, w4, w5, w6, w7, w8 = (wk[8], wk[7], wk[6], wk[5], wk[4], wk[3],
                                              wk[2], wk[1], wk[0])
    else:
        w0, w1, w2, w3, w4, w5, w6, w7, w8 = (wk[0], wk[1], wk[2], wk[3], wk[4], wk[5],
                                              wk[6], wk[7], wk[8])
    b0, b1, b2 = buf, buf[1:], buf[2:]
    b3, b4, b5 = buf[wd:], buf[wd + 1:], buf[wd + 2:]
    b6, b7, b8 = buf[2 * wd:], buf[2 * wd + 1:], buf[2 * wd + 2:]
    for k in range(out.shape[0]):
        lv = w0 * b0[k] + w3 * b3[k] + w6 * b6[k]
        rv = w2 * b2[k] + w5 * b5[k] + w8 * b8[k]
        v = (lv if left[k] else _F(0)) + (w1 * b1[k] + w4 * b4[k] + w7 * b7[k]) + (
            rv if right[k] else _F(0))
        if accumulate:
            out[k] += v
        else:
            out[k] = v


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_REDUCTION)
def _same3_weight_sums(buf, d, left, right, wd, gw):
    """gw[tap] = sum over outputs k of d[k] * (tap's input of output k).  (A masked tap adds
    0 times the neighbouring row's value, which is NaN where that is infinite, as in the flat
    form's weight sums.)"""
    b0, b1, b2 = buf, buf[1:], buf[2:]
    b3, b4, b5 = buf[wd:], buf[wd + 1:], buf[wd + 2:]
    b6, b7, b8 = buf[2 * wd:], buf[2 * wd + 1:], buf[2 * wd + 2:]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = _F(0)
    for k in range(d.shape[0]):
        v = d[k]
        vl = v if left[k] else _F(0)
        vr = v if right[k] else _F(0)
        s0 += vl * b0[k]
        s1 += v * b1[k]
        s2 += vr * b2[k]
        s3 += vl * b3[k]
        s4 += v * b4[k]
        s5 += vr * b5[k]
        s6 += vl * b6[k]
        s7 += v * b7[k]
        s8 += vr * b8[k]
    gw[0], gw[1], gw[2], gw[3], gw[4] = s0, s1, s2, s3, s4
    gw[5], gw[6], gw[7], gw[8] = s5, s6, s7, s8


# Stride 2 on planes of even width: the columns split into even and odd ones (two margined
# buffers of width hw = wd / 2), outputs on the "half grid" (every input row, every output
# column; the odd rows are dropped) so that each tap is again one unit-stride run.  dy goes
# onto the even rows of the half grid; dx comes out as both column phases of a half-grid row.

@njit(nogil=True, cache=True, boundscheck=False)
def _fill_phases(eb, ob, plane, hw):
    """eb[hw + 1 + k] = plane[2 k], ob[hw + 1 + k] = plane[2 k + 1] (plane flat)."""
    de = eb[hw + 1:]
    do = ob[hw + 1:]
    for k in range(plane.shape[0] // 2):
        de[k] = plane[2 * k]
        do[k] = plane[2 * k + 1]


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def _half_correlate(eb, ob, wk, z, left, hw):
    """z[k] = the stride-2 output of input row k // hw, column k % hw."""
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = (wk[0], wk[1], wk[2], wk[3], wk[4], wk[5],
                                          wk[6], wk[7], wk[8])
    p0, e0, q0 = ob, eb[1:], ob[1:]
    p1, e1, q1 = ob[hw:], eb[hw + 1:], ob[hw + 1:]
    p2, e2, q2 = ob[2 * hw:], eb[2 * hw + 1:], ob[2 * hw + 1:]
    for k in range(z.shape[0]):
        lv = w0 * p0[k] + w3 * p1[k] + w6 * p2[k]
        z[k] = (lv if left[k] else _F(0)) + (w1 * e0[k] + w4 * e1[k] + w7 * e2[k]) + (
            w2 * q0[k] + w5 * q1[k] + w8 * q2[k])


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_REDUCTION)
def _half_weight_sums(eb, ob, d, left, hw, gw):
    """gw[tap] = sum over the half grid of d[k] * (tap's input of output k)."""
    p0, e0, q0 = ob, eb[1:], ob[1:]
    p1, e1, q1 = ob[hw:], eb[hw + 1:], ob[hw + 1:]
    p2, e2, q2 = ob[2 * hw:], eb[2 * hw + 1:], ob[2 * hw + 1:]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = _F(0)
    for k in range(d.shape[0]):
        v = d[k]
        vl = v if left[k] else _F(0)
        s0 += vl * p0[k]
        s1 += v * e0[k]
        s2 += v * q0[k]
        s3 += vl * p1[k]
        s4 += v * e1[k]
        s5 += v * q1[k]
        s6 += vl * p2[k]
        s7 += v * e2[k]
        s8 += v * q2[k]
    gw[0], gw[1], gw[2], gw[3], gw[4] = s0, s1, s2, s3, s4
    gw[5], gw[6], gw[7], gw[8] = s5, s6, s7, s8


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def _half_transpose(db, wk, dx, right, hw, accumulate):
    """dx[2 k], dx[2 k + 1] (+)= the input gradient at half-grid position k (both column
    phases), from dy on the half grid margined in db."""
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = (wk[0], wk[1], wk[2], wk[3], wk[4], wk[5],
                                          wk[6], wk[7], wk[8])
    a0, c0 = db[2 * hw + 1:], db[2 * hw + 2:]  # dy one half-grid row below, for tap row 0
    a1, c1 = db[hw + 1:], db[hw + 2:]
    a2, c2 = db[1:], db[2:]
    for k in range(dx.shape[0] // 2):
        ev = w1 * a0[k] + w4 * a1[k] + w7 * a2[k]
        rv = w0 * c0[k] + w3 * c1[k] + w6 * c2[k]
        od = (w2 * a0[k] + w5 * a1[k] + w8 * a2[k]) + (rv if right[k] else _F(0))
        if accumulate:
            dx[2 * k] += ev
            dx[2 * k + 1] += od
        else:
            dx[2 * k] = ev
            dx[2 * k + 1] = od


@njit(nogil=True, cache=True, boundscheck=False)
def _is_same3(g, wd):
    """Whether the margined form applies.  At stride 2 an even width takes the half grid;
    an odd one computes the stride-1 outputs and keeps every other one (output (oh, ow) is
    stride-1 output (2 oh, 2 ow)): four times the multiply-adds, but all vectorised."""
    c_n, m_n, kh, kw, sh, sw, ph, pw, dh, dw = g
    full = sh == 2 and wd % 2 == 1  # computes the whole stride-1 grid
    return ((2 * wd <= _SAME3_WIDTH if full else True) and kh == 3 and kw == 3 and sh == sw
            and sh <= 2 and ph == 1 and pw == 1 and dh == 1 and dw == 1)


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def _dw_fwd_half3(x, w, bias, y, g, r0, r1):
    """3x3, pad 1, stride 2 on an even width: even / odd column phases, a half grid."""
    c_n, m_n, kh, kw, sh, sw, ph, pw, dh, dw = g
    oh_n, ow_n = y.shape[2], y.shape[3]
    has_bias = bias.shape[0] > 0
    h, wd = x.shape[1], x.shape[2]
    hw = wd // 2
    n = h * hw
    left, right = _column_masks(h, hw)
    eb = np.zeros(n + 2 * hw + 2, _F)
    ob = np.zeros(n + 2 * hw + 2, _F)
    z = np.empty(n, _F)
    for r in range(r0, r1):
        c = r % c_n
        _fill_phases(eb, ob, x[r].reshape(2 * n), hw)
        for m in range(m_n):
            o = c * m_n + m
            bv = bias[o] if has_bias else _F(0)
            _half_correlate(eb, ob, w[o], z, left, hw)
            for oh in range(oh_n):
                src = z[2 * oh * hw:]
                row = y[r, m, oh]
                for ow in range(ow_n):
                    row[ow] = src[ow] + bv


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def _dw_fwd_same3(x, w, bias, y, g, r0, r1):
    """3x3, pad 1, stride 1 (or 2 on an odd width, every other stride-1 output): the
    margined flat form."""
    c_n, m_n, kh, kw, sh, sw, ph, pw, dh, dw = g
    oh_n, ow_n = y.shape[2], y.shape[3]
    has_bias = bias.shape[0] > 0
    h, wd = x.shape[1], x.shape[2]
    n = h * wd
    left, right = _column_masks(h, wd)
    buf = np.zeros(n + 2 * wd + 2, _F)
    full = np.empty(n if sh > 1 else 0, _F)
    for r in range(r0, r1):
        c = r % c_n
        _fill_margined(buf, x[r].reshape(n), wd)
        for m in range(m_n):
            o = c * m_n + m
            bv = bias[o] if has_bias else _F(0)
            if sh == 1:
                out = y[r, m].reshape(n)
                _same3_correlate(buf, w[o], out, left, right, wd, False, False)
                if has_bias:
                    for k in range(n):
                        out[k] += bv
                continue
            _same3_correlate(buf, w[o], full, left, right, wd, False, False)
            for oh in range(oh_n):
                src = full[2 * oh * wd:]
                row = y[r, m, oh]
                for ow in range(ow_n):
                    row[ow] = src[2 * ow] + bv


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def _dw_fwd_general(x, w, bias, y, g, r0, r1):
    """Any kernel, stride, pad and dilation: phase-split rows (_fill_phased)."""
    c_n, m_n, kh, kw, sh, sw, ph, pw, dh, dw = g
    oh_n, ow_n = y.shape[2], y.shape[3]
    has_bias = bias.shape[0] > 0
    buf = np.zeros(((oh_n - 1) * sh + (kh - 1) * dh + 1, sw, ow_n + ((kw - 1) * dw) // sw),
                   _F)
    for r in range(r0, r1):
        c = r % c_n
        _fill_phased(buf, x[r], ph, pw)
        for m in range(m_n):
            o = c * m_n + m
            out = y[r, m]
            _correlate(buf, w[o], out, kh, kw, sh, dh, dw, False, False)
            if has_bias:
                bv = bias[o]
                for oh in range(oh_n):
                    row = out[oh]
                    for ow in range(ow_n):
                        row[ow] += bv


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def depthwise_forward(x, w, bias, y, g, r0, r1):
    if _is_same3(g, x.shape[2]):
        if g[4] == 2 and x.shape[2] % 2 == 0:
            _dw_fwd_half3(x, w, bias, y, g, r0, r1)
        else:
            _dw_fwd_same3(x, w, bias, y, g, r0, r1)
    else:
        _dw_fwd_general(x, w, bias, y, g, r0, r1)


@task
def depthwise_forward_task(args, r0, r1, slot):
    p = arguments(args)
    x, i = f32_3(p, 0)
    w, i = f32_2(p, i)
    bias, i = f32_1(p, i)
    y, i = f32_4(p, i)
    g, i = i64_1(p, i)
    depthwise_forward(readonly(x), readonly(w), readonly(bias), y, g, r0, r1)


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def _dw_bwd_half3(x, dy, w, dx, gw, want_dx, want_dw, g, r0, r1):
    """3x3, pad 1, stride 2 on an even width (as _dw_fwd_half3)."""
    c_n, m_n = g[0], g[1]
    h, wd = x.shape[1], x.shape[2]
    oh_n, ow_n = dy.shape[2], dy.shape[3]
    hw = wd // 2
    n = h * hw
    left, right = _column_masks(h, hw)
    eb = np.zeros(n + 2 * hw + 2, _F)
    ob = np.zeros(n + 2 * hw + 2, _F)
    db = np.zeros(n + 2 * hw + 2, _F)
    dhalf = db[hw + 1:hw + 1 + n]  # dy on the even rows; the odd ones stay zero
    for r in range(r0, r1):
        c = r % c_n
        if want_dw:
            _fill_phases(eb, ob, x[r].reshape(2 * n), hw)
        for m in range(m_n):
            for oh in range(oh_n):
                src = dy[r, m, oh]
                row = dhalf[2 * oh * hw:]
                for ow in range(ow_n):
                    row[ow] = src[ow]
            if want_dw:
                _half_weight_sums(eb, ob, dhalf, left, hw, gw[r, m])
            if want_dx:
                _half_transpose(db, w[c * m_n + m], dx[r].reshape(2 * n), right, hw,
                                m > 0)


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def _dw_bwd_same3(x, dy, w, dx, gw, want_dx, want_dw, g, r0, r1):
    """3x3, pad 1, stride 1 or 2 (as _dw_fwd_same3)."""
    c_n, m_n, sh = g[0], g[1], g[4]
    h, wd = x.shape[1], x.shape[2]
    oh_n, ow_n = dy.shape[2], dy.shape[3]
    # dy goes in the margined buffer, at stride 2 onto the even positions of the full
    # grid (the odd ones stay zero): the gradients are then those of stride 1.
    n = h * wd
    left, right = _column_masks(h, wd)
    xbuf = np.zeros(n + 2 * wd + 2, _F)
    dbuf = np.zeros(n + 2 * wd + 2, _F)
    dfull = dbuf[wd + 1:wd + 1 + n]
    for r in range(r0, r1):
        c = r % c_n
        if want_dw:
            _fill_margined(xbuf, x[r].reshape(n), wd)
        for m in range(m_n):
            if sh == 1:
                d = dy[r, m].reshape(n)
                if want_dx:
                    _fill_margined(dbuf, d, wd)
            else:
                d = dfull
                for oh in range(oh_n):
                    src = dy[r, m, oh]
                    row = dfull[2 * oh * wd:]
                    for ow in range(ow_n):
                        row[2 * ow] = src[ow]
            if want_dw:
                _same3_weight_sums(xbuf, d, left, right, wd, gw[r, m])
            if want_dx:
                _same3_correlate(dbuf, w[c * m_n + m], dx[r].reshape(n), left, right,
                                 wd, True, m > 0)


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def _dw_bwd_general(x, dy, w, dx, gw, want_dx, want_dw, g, r0, r1):
    """Any geometry: weight sums on phase-split rows (a flat form for narrow planes), the input
    gradient as a correlation with the rotated kernel (polyphase above stride 1)."""
    c_n, m_n, kh, kw, sh, sw, ph, pw, dh, dw = g
    h, wd = x.shape[1], x.shape[2]
    oh_n, ow_n = dy.shape[2], dy.shape[3]
    kc = kh * kw
    # --- weight sums: x in a row buffer (wide planes) or a flat buffer (narrow ones)
    flat = ow_n < _NARROW
    hq = oh_n + ((kh - 1) * dh) // sh + 1
    wq = ow_n + ((kw - 1) * dw) // sw
    xrows = np.zeros(((oh_n - 1) * sh + (kh - 1) * dh + 1, sw, wq)
                     if want_dw and not flat else (1, 1, 1), _F)
    xsplit = np.zeros((sh, sw, hq, wq) if want_dw and flat else (1, 1, 1, 1), _F)
    xflat = xsplit.reshape(-1)
    xbases = _tap_bases(kh, kw, sh, sw, dh, dw, hq, wq)
    n = oh_n * wq
    drows = np.zeros(n if want_dw and flat else 1, _F)  # dy rows of length wq, zeros after
    # --- input gradient: dx[sh*u + a, sw*v + b] = sum over taps with (a + ph - i*dh) % sh == 0
    # and (b + pw - j*dw) % sw == 0 of w[i, j] * dy[u + di, v + dj], di = (a + ph - i*dh) // sh,
    # dy in a zero-bordered buffer with top / left border pt / pl = -min(di) / -min(dj).
    pt = 0
    pl = 0
    dmax = 0
    emax = 0
    for i in range(kh):
        for a in range(sh):
            if (a + ph - i * dh) % sh == 0:
                pt = max(pt, -((a + ph - i * dh) // sh))
                dmax = max(dmax, (a + ph - i * dh) // sh)
    for j in range(kw):
        for b in range(sw):
            if (b + pw - j * dw) % sw == 0:
                pl = max(pl, -((b + pw - j * dw) // sw))
                emax = max(emax, (b + pw - j * dw) // sw)
    # stride 1 (pad within the kernel's reach): the rotated-kernel correlation on rows, dy
    # bordered by pt, pl = extent - 1 - pad
    direct = sh == 1 and sw == 1 and ph <= (kh - 1) * dh and pw <= (kw - 1) * dw
    dpad = np.zeros((h + (kh - 1) * dh, 1, wd + (kw - 1) * dw)
                    if want_dx and direct else (1, 1, 1), _F)
    hu = (h + sh - 1) // sh
    wv = (wd + sw - 1) // sw
    row_len = max(wv + emax + pl, ow_n + pl)
    dsplit = np.zeros((1, 1, max(hu + dmax + pt, oh_n + pt) + 1, row_len)
                      if want_dx and not direct else (1, 1, 1, 1), _F)
    dflat = dsplit.reshape(-1)
    acc = np.empty(hu * row_len if want_dx and not direct else 1, _F)
    taps = np.empty((sh * sw, kc), np.int64)
    offs = np.empty((sh * sw, kc), np.int64)
    counts = np.zeros(sh * sw, np.int64)
    for a in range(sh):
        for b in range(sw):
            q = a * sw + b
            for i in range(kh):
                if (a + ph - i * dh) % sh != 0:
                    continue
                di = (a + ph - i * dh) // sh
                for j in range(kw):
                    if (b + pw - j * dw) % sw != 0:
                        continue
                    dj = (b + pw - j * dw) // sw
                    taps[q, counts[q]] = i * kw + j
                    offs[q, counts[q]] = (di + pt) * row_len + dj + pl
                    counts[q] += 1
    for r in range(r0, r1):
        c = r % c_n
        if want_dw:
            if flat:
                _fill_split(xsplit, x[r], ph, pw)
            else:
                _fill_phased(xrows, x[r], ph, pw)
        for m in range(m_n):
            d = dy[r, m]
            if want_dw:
                if flat:
                    for oh in range(oh_n):
                        dst = drows[oh * wq:]
                        src = d[oh]
                        for ow in range(ow_n):
                            dst[ow] = src[ow]
                    _flat_weight_sums(xflat, xbases, drows, n, gw[r, m])
                else:
                    _weight_sums(xrows, d, gw[r, m], kh, kw, sh, dh, dw)
            if not want_dx:
                continue
            wk = w[c * m_n + m]
            out = dx[r]
            if direct:
                _fill_phased(dpad, d, pt, pl)
                _correlate(dpad, wk, out, kh, kw, 1, dh, dw, True, m > 0)
                continue
            _fill_split(dsplit, d, pt, pl)
            for a in range(sh):
                rows_a = (h - a + sh - 1) // sh
                for b in range(sw):
                    cols_b = (wd - b + sw - 1) // sw
                    if rows_a <= 0 or cols_b <= 0:
                        continue
                    q = a * sw + b
                    cnt = counts[q]
                    if cnt == 0:
                        if m == 0:
                            for u in range(rows_a):
                                row = out[a + u * sh, b:]
                                for v in range(cols_b):
                                    row[v * sw] = 0
                        continue
                    _flat_correlate_taps(dflat, offs[q], taps[q], cnt, wk, acc,
                                         rows_a * row_len)
                    for u in range(rows_a):
                        src = acc[u * row_len:]
                        row = out[a + u * sh, b:]
                        if sw == 2:  # a constant step: no wraparound test per element
                            if m == 0:
                                for v in range(cols_b):
                                    row[2 * v] = src[v]
                            else:
                                for v in range(cols_b):
                                    row[2 * v] += src[v]
                        elif m == 0:
                            for v in range(cols_b):
                                row[v * sw] = src[v]
                        else:
                            for v in range(cols_b):
                                row[v * sw] += src[v]


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def depthwise_backward(x, dy, w, dx, gw, want_dx, want_dw, g, r0, r1):
    """dx rows (overwritten) and per-row weight sums gw (R, M, K) (overwritten) for rows
    [r0, r1)."""
    if _is_same3(g, x.shape[2]):
        if g[4] == 2 and x.shape[2] % 2 == 0:
            _dw_bwd_half3(x, dy, w, dx, gw, want_dx, want_dw, g, r0, r1)
        else:
            _dw_bwd_same3(x, dy, w, dx, gw, want_dx, want_dw, g, r0, r1)
    else:
        _dw_bwd_general(x, dy, w, dx, gw, want_dx, want_dw, g, r0, r1)


@task
def depthwise_backward_task(args, r0, r1, slot):
    p = arguments(args)
    x, i = f32_3(p, 0)
    dy, i = f32_4(p, i)
    w, i = f32_2(p, i)
    dx, i = f32_3(p, i)
    gw, i = f32_3(p, i)
    want_dx, want_dw = p[i] != 0, p[i + 1] != 0
    g, i = i64_1(p, i + 2)
    depthwise_backward(readonly(x), readonly(dy), readonly(w), dx, gw, want_dx, want_dw, g,
                       r0, r1)
