"""numba kernels for the CPU layers (see jit.py).  Importing this module needs numba.

Every kernel works on a range of rows [r0, r1) so that the caller can split the work over its
thread pool (the kernels release the GIL); they never allocate per row, only per call.
Floating-point contraction (FMA) is allowed everywhere; reductions may also be reassociated
(vectorised partial sums).  NaN and infinity propagate as in numpy (no 'fast' NaN/inf flags).
"""
import numpy as np
from numba import njit

_ELEMENTWISE = {"contract"}
_REDUCTION = {"contract", "reassoc"}
_F = np.float32


# --------------------------------------------------------------------------------------------
# Zero-bordered copies of a plane with columns split by phase modulo the horizontal stride:
# padded column c lives at buf[row, c % s, c // s], so a strided tap's values for consecutive
# outputs are consecutive in memory.  (Used by im2col / col2im.)
# --------------------------------------------------------------------------------------------

@njit(nogil=True, cache=True, boundscheck=False)
def _fill_phased(buf, plane, ph, pw):
    """buf[ph + i, (pw + j) % s, (pw + j) // s] = plane[i, j] where it fits (s = buf.shape[1],
    pads >= 0); the rest of buf is left as it is.

    (Inner loops index views with the loop variable alone: an index numba cannot prove
    non-negative gets a wraparound test that stops vectorisation.)"""
    hp, s, wq = buf.shape
    h, w = plane.shape
    jmax = min(w, s * wq - pw)
    imax = min(h, hp - ph)
    # One loop per case: a branch inside the row loop kept the copies from vectorising.
    if s == 1:
        for i in range(imax):
            src = plane[i]
            dst = buf[i + ph, 0, pw:]
            for j in range(jmax):
                dst[j] = src[j]
    elif s == 2:  # even and odd columns in one pass
        e, o = pw % 2, (pw + 1) % 2
        e0, o0 = pw // 2, (pw + 1) // 2
        half = jmax // 2
        for i in range(imax):
            src = plane[i]
            de = buf[i + ph, e, e0:]
            do = buf[i + ph, o, o0:]
            for c in range(half):
                de[c] = src[2 * c]
                do[c] = src[2 * c + 1]
            if jmax % 2:
                de[half] = src[jmax - 1]
    else:
        for i in range(imax):
            src = plane[i]
            for p in range(s):
                j0 = (p - pw) % s          # first column of this phase
                n = (jmax - j0 + s - 1) // s
                dst = buf[i + ph, p, (j0 + pw) // s:]
                sp = src[j0:]
                for k in range(n):
                    dst[k] = sp[k * s]


@njit(nogil=True, cache=True, boundscheck=False)
def _unfill_phased(buf, plane, ph, pw):
    """plane[i, j] = buf[ph + i, (pw + j) % s, (pw + j) // s]: the inverse of _fill_phased
    (buf must cover the whole plane)."""
    s = buf.shape[1]
    h, w = plane.shape
    for i in range(h):
        dst = plane[i]
        for p in range(s):
            j0 = (p - pw) % s
            n = (w - j0 + s - 1) // s
            src = buf[i + ph, p, (j0 + pw) // s:]
            dp = dst[j0:]
            for k in range(n):
                dp[k * s] = src[k]


# --------------------------------------------------------------------------------------------
# Depthwise convolution, 2-D.  x rows (R, H, W) with R = num * C; output rows (R, M, OH, OW);
# weights (C * M, K) with K = kh * kw; channel of row r is r % C, output channel c * M + m.
# g = (C, M, kh, kw, sh, sw, ph, pw, dh, dw).
#
# Rows of output: a plane is copied into a phase-split zero-bordered buffer (_fill_phased) and
# each output row is one unit-stride loop over the taps (nine multiply-adds per element for
# 3x3).  Narrow planes (the late layers, 14x14 and 7x7) take their weight sums in "flat" form
# instead: a buffer split by phase on both axes, B[u % sh, v % sw, u // sh, v // sw], in
# which every tap is one unit-stride run over all outputs of the plane at once, so the loop
# is long enough to vectorise (the row length's extra columns are computed and dropped).  The
# input gradient is a correlation of the zero-bordered dy with the rotated kernel; above
# stride 1, one per phase of the input (polyphase), with the taps that reach that phase.
# --------------------------------------------------------------------------------------------

_NARROW = 24  # planes narrower than this use the flat form for the weight sums
_SAME3_WIDTH = 128  # planes up to this wide (half at stride 2) use the margined form


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def _correlate(buf, wk, out, kh, kw, sh, dh, dw, flip, accumulate):
    """out[oh, ow] (+)= sum over taps of wk[tap] * padded[oh*sh + i*dh, ow*sw + j*dw] (buf is
    the phase-split padded plane of _fill_phased), the kernel rotated by 180 degrees when
    `flip`."""
    oh_n, ow_n = out.shape
    s = buf.shape[1]
    k = kh * kw
    if kh == 3 and kw == 3 and dh == 1 and dw == 1:
        if flip:
            w0, w1, w2, w3, w4, w5, w6, w7, w8 = (wk[8], wk[7], wk[6], wk[5], wk[4], wk[3],
                                                  wk[2], wk[1], wk[0])
        else:
            w0, w1, w2, w3, w4, w5, w6, w7, w8 = (wk[0], wk[1], wk[2], wk[3], wk[4], wk[5],
                                                  wk[6], wk[7], wk[8])
        if s == 1:
            for oh in range(oh_n):
                r = oh * sh
                a, b, c = buf[r, 0], buf[r + 1, 0], buf[r + 2, 0]
                row = out[oh]
                for ow in range(ow_n):
                    v = (w0 * a[ow] + w1 * a[ow + 1] + w2 * a[ow + 2]
                         + w3 * b[ow] + w4 * b[ow + 1] + w5 * b[ow + 2]
                         + w6 * c[ow] + w7 * c[ow + 1] + w8 * c[ow + 2])
                    if accumulate:
                        row[ow] += v
                    else:
                        row[ow] = v
            return
        # Stride 2 and up: tap j reads phase j % s from column j // s on.
        p1, q1, p2, q2 = 1 % s, 1 // s, 2 % s, 2 // s
        for oh in range(oh_n):
            r = oh * sh
            a0, a1, a2 = buf[r, 0], buf[r, p1, q1:], buf[r, p2, q2:]
            b0, b1, b2 = buf[r + 1, 0], buf[r + 1, p1, q1:], buf[r + 1, p2, q2:]
            c0, c1, c2 = buf[r + 2, 0], buf[r + 2, p1, q1:], buf[r + 2, p2, q2:]
            row = out[oh]
            for ow in range(ow_n):
                v = (w0 * a0[ow] + w1 * a1[ow] + w2 * a2[ow]
                     + w3 * b0[ow] + w4 * b1[ow] + w5 * b2[ow]
                     + w6 * c0[ow] + w7 * c1[ow] + w8 * c2[ow])
                if accumulate:
                    row[ow] += v
                else:
                    row[ow] = v
        return
    for oh in range(oh_n):
        row = out[oh]
        if not accumulate:
            row[:] = 0
        for i in range(kh):
            for j in range(kw):
                t = i * kw + j
                wv = wk[k - 1 - t] if flip else wk[t]
                src = buf[oh * sh + i * dh, (j * dw) % s, (j * dw) // s:]
                for ow in range(ow_n):
                    row[ow] += wv * src[ow]


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_REDUCTION)
def _weight_sums(buf, d, gw, kh, kw, sh, dh, dw):
    """gw[tap] = sum over outputs of d[oh, ow] * padded[oh*sh + i*dh, ow*sw + j*dw]."""
    oh_n, ow_n = d.shape
    s = buf.shape[1]
    if kh == 3 and kw == 3 and dh == 1 and dw == 1:
        p1, q1, p2, q2 = 1 % s, 1 // s, 2 % s, 2 // s
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = _F(0)
        for oh in range(oh_n):
            r = oh * sh
            a0, a1, a2 = buf[r, 0], buf[r, p1, q1:], buf[r, p2, q2:]
            b0, b1, b2 = buf[r + 1, 0], buf[r + 1, p1, q1:], buf[r + 1, p2, q2:]
            c0, c1, c2 = buf[r + 2, 0], buf[r + 2, p1, q1:], buf[r + 2, p2, q2:]
            dr = d[oh]
            for ow in range(ow_n):
                v = dr[ow]
                s0 += v * a0[ow]
                s1 += v * a1[ow]
                s2 += v * a2[ow]
                s3 += v * b0[ow]
                s4 += v * b1[ow]
                s5 += v * b2[ow]
                s6 += v * c0[ow]
                s7 += v * c1[ow]
                s8 += v * c2[ow]
        gw[0], gw[1], gw[2], gw[3], gw[4] = s0, s1, s2, s3, s4
        gw[5], gw[6], gw[7], gw[8] = s5, s6, s7, s8
        return
    for i in range(kh):
        for j in range(kw):
            acc = _F(0)
            for oh in range(oh_n):
                src = buf[oh * sh + i * dh, (j * dw) % s, (j * dw) // s:]
                dr = d[oh]
                for ow in range(ow_n):
                    acc += dr[ow] * src[ow]
            gw[i * kw + j] = acc


@njit(nogil=True, cache=True, boundscheck=False)
def _fill_split(buf, plane, ph, pw):
    """buf (sh, sw, HQ, WQ) <- plane (H, W) at padded position (i + ph, j + pw), where it
    fits; the rest of buf is left as it is (zero borders stay zero).  (One loop per case:
    a branch inside the row loop kept the copies from vectorising.)"""
    sh, sw, hq, wq = buf.shape
    h, w = plane.shape
    jmax = min(w, sw * wq - pw)
    imax = min(h, sh * hq - ph)
    for a in range(sh):
        i0 = (a - ph) % sh               # first plane row whose padded row has phase a
        q0 = (i0 + ph) // sh
        nrows = (imax - i0 + sh - 1) // sh
        if sw == 1:
            b2 = buf[a, 0]
            for k in range(nrows):
                src = plane[i0 + k * sh]
                dst = b2[q0 + k, pw:]
                for j in range(jmax):
                    dst[j] = src[j]
        elif sw == 2:
            be = buf[a, pw % 2]
            bo = buf[a, (pw + 1) % 2]
            e0, o0 = pw // 2, (pw + 1) // 2
            half = jmax // 2
            for k in range(nrows):
                src = plane[i0 + k * sh]
                de = be[q0 + k, e0:]
                do = bo[q0 + k, o0:]
                for c in range(half):
                    de[c] = src[2 * c]
                    do[c] = src[2 * c + 1]
                if jmax % 2:
                    de[half] = src[jmax - 1]
        else:
            for k in range(nrows):
                src = plane[i0 + k * sh]
                for p in range(sw):
                    j0 = (p - pw) % sw
                    n = (jmax - j0 + sw - 1) // sw
                    dst = buf[a, p, q0 + k, (j0 + pw) // sw:]
                    sp = src[j0:]
                    for c in range(n):
                        dst[c] = sp[c * sw]


@njit(nogil=True, cache=True, boundscheck=False)
def _tap_bases(kh, kw, sh, sw, dh, dw, hq, wq):
    """Flat offset in a (sh, sw, hq, wq) buffer of each tap's value for output (0, 0)."""
    bases = np.empty(kh * kw, np.int64)
    for i in range(kh):
        for j in range(kw):
            plane = (i * dh) % sh * sw + (j * dw) % sw
            bases[i * kw + j] = (plane * hq + (i * dh) // sh) * wq + (j * dw) // sw
    return bases


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


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_REDUCTION)
def _flat_weight_sums(bflat, bases, d, n, gw):
    """gw[t] = sum over k < n of d[k] * bflat[bases[t] + k]."""
    kc = bases.shape[0]
    if kc == 9:
        b0, b1, b2 = bflat[bases[0]:], bflat[bases[1]:], bflat[bases[2]:]
        b3, b4, b5 = bflat[bases[3]:], bflat[bases[4]:], bflat[bases[5]:]
        b6, b7, b8 = bflat[bases[6]:], bflat[bases[7]:], bflat[bases[8]:]
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = _F(0)
        for k in range(n):
            v = d[k]
            s0 += v * b0[k]
            s1 += v * b1[k]
            s2 += v * b2[k]
            s3 += v * b3[k]
            s4 += v * b4[k]
            s5 += v * b5[k]
            s6 += v * b6[k]
            s7 += v * b7[k]
            s8 += v * b8[k]
        gw[0], gw[1], gw[2], gw[3], gw[4] = s0, s1, s2, s3, s4
        gw[5], gw[6], gw[7], gw[8] = s5, s6, s7, s8
        return
    for t in range(kc):
        bt = bflat[bases[t]:]
        acc = _F(0)
        for k in range(n):
            acc += d[k] * bt[k]
        gw[t] = acc


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
    return ((2 * wd if full else wd) <= _SAME3_WIDTH and kh == 3 and kw == 3 and sh == sw
            and sh <= 2 and ph == 1 and pw == 1 and dh == 1 and dw == 1)


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def depthwise_forward(x, w, bias, y, g, r0, r1):
    c_n, m_n, kh, kw, sh, sw, ph, pw, dh, dw = g
    oh_n, ow_n = y.shape[2], y.shape[3]
    has_bias = bias.shape[0] > 0
    h, wd = x.shape[1], x.shape[2]
    if _is_same3(g, wd) and sh == 2 and wd % 2 == 0:
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
        return
    if _is_same3(g, wd):
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
        return
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
def depthwise_backward(x, dy, w, dx, gw, want_dx, want_dw, g, r0, r1):
    """dx rows (overwritten) and per-row weight sums gw (R, M, K) (overwritten) for rows
    [r0, r1)."""
    c_n, m_n, kh, kw, sh, sw, ph, pw, dh, dw = g
    h, wd = x.shape[1], x.shape[2]
    oh_n, ow_n = dy.shape[2], dy.shape[3]
    kc = kh * kw
    if _is_same3(g, wd) and sh == 2 and wd % 2 == 0:
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
        return
    if _is_same3(g, wd):
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
        return
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


# --------------------------------------------------------------------------------------------
# im2col / col2im, 2-D: x rows (R, H, W), columns (R, K, OH, OW) with K = kh * kw taps.
# g = (kh, kw, sh, sw, ph, pw, dh, dw).
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Pooling, 2-D: x rows (R, H, W), outputs (R, OH, OW); g = (kh, kw, sh, sw, ph, pw).  Taps are
# numbered i * kw + j over the kernel window, in Caffe's (row-major) order.  Flat form, as
# the depthwise weight sums: a plane in a phase-split buffer (bordered with -inf for MAX, 0
# for AVE), every tap one unit-stride run over all outputs of the plane.  A window clipped to
# the input (Caffe's loops) is the same as the bordered window: the border never wins a max
# and adds nothing to a sum.
# --------------------------------------------------------------------------------------------

@njit(nogil=True, cache=True, boundscheck=False)
def _unfill_split(buf, plane, ph, pw):
    """plane[i, j] = buf[(i + ph) % sh, (j + pw) % sw, (i + ph) // sh, (j + pw) // sw]."""
    sh, sw, hq, wq = buf.shape
    h, w = plane.shape
    for i in range(h):
        u = i + ph
        dst = plane[i]
        for p in range(sw):
            j0 = (p - pw) % sw
            n = (w - j0 + sw - 1) // sw
            src = buf[u % sh, p, u // sh, (j0 + pw) // sw:]
            dp = dst[j0:]
            if sw == 1:
                for k in range(n):
                    dp[k] = src[k]
            elif sw == 2:
                for k in range(n):
                    dp[2 * k] = src[k]
            else:
                for k in range(n):
                    dp[k * sw] = src[k]


@njit(nogil=True, cache=True, boundscheck=False)
def _pool_buffer_shape(h, w, oh_n, ow_n, kh, kw, sh, sw, ph, pw):
    hq = max(oh_n + (kh - 1) // sh + 1, (ph + h + sh - 1) // sh)
    wq = max(ow_n + (kw - 1) // sw, (pw + w + sw - 1) // sw)
    return hq, wq


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
    hq, wq = _pool_buffer_shape(h, w, oh_n, ow_n, kh, kw, sh, sw, ph, pw)
    buf = np.full((sh, sw, hq, wq), -np.inf, np.float32)
    bflat = buf.reshape(-1)
    bases = _tap_bases(kh, kw, sh, sw, 1, 1, hq, wq)
    n = oh_n * wq
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
    for r in range(r0, r1):
        out = dx[r]
        out[:, :] = 0
        for oh in range(oh_n):
            dr = dy[r, oh]
            cr = choice[r, oh]
            for ow in range(ow_n):
                t = cr[ow]
                if t != none:
                    out[oh * sh - ph + t // kw, ow * sw - pw + t % kw] += dr[ow]


@njit(nogil=True, cache=True, boundscheck=False)
def ave_pool_forward(x, y, pool_size, g, r0, r1):
    """y = (sum over the window, taps in row-major order) / pool_size."""
    kh, kw, sh, sw, ph, pw = g
    h, w = x.shape[1], x.shape[2]
    oh_n, ow_n = y.shape[1], y.shape[2]
    hq, wq = _pool_buffer_shape(h, w, oh_n, ow_n, kh, kw, sh, sw, ph, pw)
    buf = np.zeros((sh, sw, hq, wq), np.float32)
    bflat = buf.reshape(-1)
    bases = _tap_bases(kh, kw, sh, sw, 1, 1, hq, wq)
    n = oh_n * wq
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


# --------------------------------------------------------------------------------------------
# BatchNorm on (N, C, S) arrays, channels [c0, c1).  Sums of a channel are float32 vector sums
# per image, added up in float64.  `in_place`: y is x's memory (then only y is touched, so the
# compiler's overlap test does not fall back to scalar code).
# --------------------------------------------------------------------------------------------

@njit(nogil=True, cache=True, boundscheck=False, fastmath=_REDUCTION)
def _sum(a):
    s = _F(0)
    for i in range(a.shape[0]):
        s += a[i]
    return s


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_REDUCTION)
def _sum_sq_dev(a, mu):
    s = _F(0)
    for i in range(a.shape[0]):
        d = a[i] - mu
        s += d * d
    return s


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_REDUCTION)
def _sum_prod(a, b):
    s = _F(0)
    for i in range(a.shape[0]):
        s += a[i] * b[i]
    return s


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


# --------------------------------------------------------------------------------------------
# Scale: rows (outer * dim, inner) of bottom[0]; row r uses scale[r % dim] (and bias).
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# ReLU backward with slope 0: dx = dy * (x > 0), over flat ranges [i0, i1).
# --------------------------------------------------------------------------------------------

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
# The SGD solver's update of one parameter, over flat ranges [i0, i1): Caffe's regularisation,
# the pruning mask, momentum and data -= step, in one pass.  No fast-math flags: every float32
# operation rounds exactly as the numpy sequence it replaces (solvers/sgd.py).
# --------------------------------------------------------------------------------------------

@njit(nogil=True, cache=True, boundscheck=False)
def sgd_update(data, diff, hist, mask, decay, l1, rate, momentum, i0, i1):
    """(One loop per case, over views starting at i0: a branch or an index numba cannot
    prove non-negative inside the loop would keep it from vectorising.)"""
    d = data[i0:i1]
    g = diff[i0:i1]
    h = hist[i0:i1]
    n = d.shape[0]
    if decay != 0:
        if l1:
            for i in range(n):
                g[i] = g[i] + np.sign(d[i]) * decay
        else:
            for i in range(n):
                g[i] = g[i] + d[i] * decay
    if mask.shape[0] > 0:
        mk = mask[i0:i1]
        for i in range(n):
            v = (g[i] * mk[i]) * rate
            u = h[i] * momentum + v
            h[i] = u
            g[i] = u
            d[i] = (d[i] - u) * mk[i]
    else:
        for i in range(n):
            v = g[i] * rate
            u = h[i] * momentum + v
            h[i] = u
            g[i] = u
            d[i] = d[i] - u
