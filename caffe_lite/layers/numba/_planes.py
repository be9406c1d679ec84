"""Plane helpers shared by the numba kernel families (depthwise, im2col, pooling, BatchNorm,
Scale): zero-bordered, phase-split copies of a plane and float32 vector sums.  Importing this
module needs numba.

Kernels in the family files call these, so numba's on-disk cache of a family depends on this
file too; numba itself only watches each kernel's own file, so `layers.jit` drops the families'
cached code whenever this file's contents change (see jit._check_shared_cache).

Floating-point contraction (FMA) is allowed everywhere; reductions may also be reassociated
(vectorised partial sums).  NaN and infinity propagate as in numpy (no 'fast' NaN/inf flags).
Inner loops index views with the loop variable alone: an index numba cannot prove
non-negative gets a wraparound test that stops vectorisation."""
import numpy as np
from numba import njit

_ELEMENTWISE = {"contract"}
_REDUCTION = {"contract", "reassoc"}
_F = np.float32


# --------------------------------------------------------------------------------------------
# Zero-bordered copies of a plane with columns split by phase modulo the horizontal stride:
# padded column c lives at buf[row, c % s, c // s], so a strided tap's values for consecutive
# outputs are consecutive in memory (im2col / col2im, the depthwise row form).
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
# Correlations of a phase-split plane (_fill_phased) with one kernel, and the kernel's weight
# sums against a plane of output gradients (the depthwise and grouped convolutions).
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Phase-split on both axes: B[u % sh, v % sw, u // sh, v // sw], in which every tap of a
# strided window is one unit-stride run over all outputs of a plane (the flat forms of the
# depthwise weight sums and of pooling).
# --------------------------------------------------------------------------------------------

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
# float32 vector sums (reassociated): the per-image sums of BatchNorm and Scale.
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


# One channel's row of a fused Convolution's tail (numba/neuron.py's comment says what it
# computes): the Epilogue's kernels and numba/dense.py's convolution on few positions.
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
    elif kind == 1:
        for i in range(n):
            v = row[i] * a + b
            row[i] = z if v < z else v
    else:
        for i in range(n):
            v = row[i] * a + b
            row[i] = v * sl if v < z else v
