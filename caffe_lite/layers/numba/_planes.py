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
