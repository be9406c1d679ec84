"""numba transforms of the Winograd convolution F(4x4, 3x3) (layers/winograd.py).  Importing
this module needs numba.

A 3x3 stride-1 convolution computes each 4x4 output tile from a 6x6 input tile d:
Y = A^T [(G g G^T) * (B^T d B)] A, where g is the filter and * the elementwise product of two
6x6 arrays; summed over input channels, the elementwise products are 36 matrix products
(output channels x input channels times input channels x tiles).  These kernels transform the
input tiles (B^T d B) and the products back (A^T m A); the matrices are Lavin & Gray's:

    B^T = [4  0 -5  0  1  0]    A^T = [1  1  1  1  1  0]
          [0 -4 -4  1  1  0]          [0  1 -1  2 -2  0]
          [0  4 -4 -1  1  0]          [0  1  1  4  4  0]
          [0 -2 -1  2  1  0]          [0  1 -1  8 -8  1]
          [0  2 -1 -2  1  0]
          [0  4  0 -5  0  1]

Each half of a transform is written out as one loop over all tiles of a plane (or of a run of
planes) at unit stride, so that it vectorises, in float32 (fastmath only contracts: the
results do not depend on the vector width)."""
import numpy as np
from numba import njit

from ._native import arguments, f32_2, f32_3, f32_4, readonly, task

_ELEMENTWISE = {"contract"}
_F = np.float32


@njit(inline="always", fastmath=_ELEMENTWISE)
def _bt(d0, d1, d2, d3, d4, d5):
    """B^T d of 6 values, in float32 (an integer literal times a float32 is a float64)."""
    two, four, five = _F(2), _F(4), _F(5)
    return (four * d0 - five * d2 + d4, -four * d1 - four * d2 + d3 + d4,
            four * d1 - four * d2 - d3 + d4, -two * d1 - d2 + two * d3 + d4,
            two * d1 - d2 - two * d3 + d4, four * d1 - five * d3 + d5)


@njit(inline="always", fastmath=_ELEMENTWISE)
def _at(m0, m1, m2, m3, m4, m5):
    """A^T m of 6 values, in float32."""
    s12, d12 = m1 + m2, m1 - m2
    s34, d34 = m3 + m4, m3 - m4
    return m0 + s12 + s34, d12 + _F(2) * d34, s12 + _F(4) * s34, d12 + _F(8) * d34 + m5


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def input_transform(x, v, ph, pw, th_n, tw_n, rows, buf, r0, r1):
    """v[a * 6 + b, c, n * T + t] = (B^T d B)[a, b] of tile t = th * tw_n + tw of plane
    (n, c) of x (N, C, H, W), for planes r = n * C + c in [r0, r1).

    Both halves run over all tiles of the plane at unit stride.  The zero-padded plane p is
    stored by row phase, rows[i, s * 4 * tw_n + k] = p[4 * s + i, k] (k < 4 * tw_n; scratch
    (4, (th_n + 1) * 4 * tw_n + 2), zeroed once per call), so that the columns of all tiles of
    row phase i lie along one row of it: the row half (d B) is one loop over the tiles
    t = s * tw_n + tw of the th_n + 1 tile rows s, into buf[i * 6 + b, t] (scratch
    (24, T + tw_n)); the last tile of a tile row, whose columns 4 and 5 are those of the next
    row there, is done again from x.  The column half reads rows 4 and 5 of a tile as row
    phases 0 and 1 of the tile below, tw_n further along buf."""
    c_n, h, w = x.shape[1], x.shape[2], x.shape[3]
    t_n = th_n * tw_n
    w4 = 4 * tw_n
    rows[:, :] = 0
    ih, iw = min(h, 4 * (th_n + 1) - ph), min(w, w4 - pw)
    for r in range(r0, r1):
        n = r // c_n
        c = r - n * c_n
        plane = x[n, c]
        for i in range(ih):
            k = i + ph
            src = plane[i]
            dst = rows[k % 4, (k // 4) * w4 + pw:]
            for j in range(iw):
                dst[j] = src[j]
        # row half, tile rows 0..th_n for row phases 0 and 1, 0..th_n - 1 for 2 and 3
        for i in range(4):
            src = rows[i]
            b0, b1, b2 = buf[i * 6], buf[i * 6 + 1], buf[i * 6 + 2]
            b3, b4, b5 = buf[i * 6 + 3], buf[i * 6 + 4], buf[i * 6 + 5]
            for t in range(t_n + tw_n if i < 2 else t_n):
                q = 4 * t
                b0[t], b1[t], b2[t], b3[t], b4[t], b5[t] = _bt(
                    src[q], src[q + 1], src[q + 2], src[q + 3], src[q + 4], src[q + 5])
            for s in range(th_n + 1 if i < 2 else th_n):
                t = s * tw_n + tw_n - 1
                q = 4 * t
                k, j = 4 * s + i - ph, w4 - pw
                inside = 0 <= k < h
                d4 = x[n, c, k, j] if inside and 0 <= j < w else _F(0)
                d5 = x[n, c, k, j + 1] if inside and 0 <= j + 1 < w else _F(0)
                b0[t], b1[t], b2[t], b3[t], b4[t], b5[t] = _bt(
                    src[q], src[q + 1], src[q + 2], src[q + 3], d4, d5)
        # column half into v (views of contiguous rows: their unit stride is known)
        t0, t1 = n * t_n, (n + 1) * t_n
        for b in range(6):
            e0, e1, e2, e3 = buf[b], buf[6 + b], buf[12 + b], buf[18 + b]
            e4, e5 = buf[b, tw_n:], buf[6 + b, tw_n:]
            v0, v1, v2 = v[b, c, t0:t1], v[6 + b, c, t0:t1], v[12 + b, c, t0:t1]
            v3, v4, v5 = v[18 + b, c, t0:t1], v[24 + b, c, t0:t1], v[30 + b, c, t0:t1]
            for t in range(t_n):
                v0[t], v1[t], v2[t], v3[t], v4[t], v5[t] = _bt(
                    e0[t], e1[t], e2[t], e3[t], e4[t], e5[t])


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def output_transform(m, y, th_n, tw_n, buf, rows, r0, r1):
    """y[n, o] <- A^T m A of every tile, for planes r = o * N + n in [r0, r1); m (36, O, N * T)
    holds the 36 products.

    Planes go channel by channel: the tiles of consecutive images of one channel are
    consecutive in m, so a run of up to P = buf.shape[1] // T of them is done in one pass whose
    loops go over all their tiles (short loops cost more in setup than in work).  The column
    half (a: 6 -> p: 4) goes at unit stride into buf[p * 6 + b, t] ((24, P * T) scratch), the
    row half (b: 6 -> q: 4) into rows[p, 4 * t + q] ((4, 4 * P * T) scratch: output row
    4 * th + p of a plane's tiles is rows[p, th * 4 * tw_n:], so each output row is then one
    contiguous copy; the tiles overhang the output where its size is not a multiple of 4)."""
    n_n, h, w = y.shape[0], y.shape[2], y.shape[3]
    t_n = th_n * tw_n
    w4 = 4 * tw_n
    most = max(1, buf.shape[1] // t_n)
    r = r0
    while r < r1:
        o = r // n_n
        n0 = r - o * n_n
        n1 = min(n_n, n0 + most, n0 + r1 - r)
        r += n1 - n0
        t0, t1 = n0 * t_n, n1 * t_n
        for b in range(6):
            m0, m1, m2 = m[b, o, t0:t1], m[6 + b, o, t0:t1], m[12 + b, o, t0:t1]
            m3, m4, m5 = m[18 + b, o, t0:t1], m[24 + b, o, t0:t1], m[30 + b, o, t0:t1]
            g0, g1, g2, g3 = buf[b], buf[6 + b], buf[12 + b], buf[18 + b]
            for t in range(t1 - t0):
                g0[t], g1[t], g2[t], g3[t] = _at(m0[t], m1[t], m2[t], m3[t], m4[t], m5[t])
        for p in range(4):
            g0, g1, g2 = buf[p * 6], buf[p * 6 + 1], buf[p * 6 + 2]
            g3, g4, g5 = buf[p * 6 + 3], buf[p * 6 + 4], buf[p * 6 + 5]
            dst = rows[p]
            for t in range(t1 - t0):
                q = 4 * t
                dst[q], dst[q + 1], dst[q + 2], dst[q + 3] = _at(
                    g0[t], g1[t], g2[t], g3[t], g4[t], g5[t])
        for n in range(n0, n1):
            plane = y[n, o]
            for i in range(h):
                src = rows[i % 4, ((n - n0) * th_n + i // 4) * w4:]
                dst = plane[i]
                for j in range(w):
                    dst[j] = src[j]


# Native tasks (_native.py)
@task
def input_transform_task(args, r0, r1, slot):
    p = arguments(args)
    x, i = f32_4(p, 0)
    v, i = f32_3(p, i)
    ph, pw, th_n, tw_n = p[i], p[i + 1], p[i + 2], p[i + 3]
    rows, i = f32_2(p, i + 4)
    buf, i = f32_2(p, i)
    input_transform(readonly(x), v, ph, pw, th_n, tw_n, rows, buf, r0, r1)


@task
def output_transform_task(args, r0, r1, slot):
    p = arguments(args)
    m, i = f32_3(p, 0)
    y, i = f32_4(p, i)
    th_n, tw_n = p[i], p[i + 1]
    buf, i = f32_2(p, i + 2)
    rows, i = f32_2(p, i)
    output_transform(m, y, th_n, tw_n, buf, rows, r0, r1)
