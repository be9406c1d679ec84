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

Each transform is written out, one loop over a row of tiles, so that it vectorises."""
import numpy as np
from numba import njit

from ._native import arguments, f32_2, f32_3, f32_4, readonly, task

_ELEMENTWISE = {"contract"}
_F = np.float32


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def input_transform(x, v, ph, pw, th_n, tw_n, buf, rows, r0, r1):
    """v[a * 6 + b, c, n * T + t] = (B^T d B)[a, b] of tile t = th * tw_n + tw of plane
    (n, c) of x (N, C, H, W), for planes r = n * C + c in [r0, r1).  buf: (36, T) scratch;
    rows: (th_n * 4 + 2, tw_n * 4 + 2) scratch for the zero-bordered plane (its border is
    written once per call, the interior per plane)."""
    c_n, h, w = x.shape[1], x.shape[2], x.shape[3]
    t_n = th_n * tw_n
    hp, wp = rows.shape
    rows[:, :] = 0
    ih, iw = min(h, hp - ph), min(w, wp - pw)
    for r in range(r0, r1):
        n = r // c_n
        c = r - n * c_n
        plane = x[n, c]
        for i in range(ih):
            for j in range(iw):
                rows[i + ph, j + pw] = plane[i, j]
        # row transform of every tile: buf[i * 6 + b, t]
        for th in range(th_n):
            for i in range(6):
                src = rows[4 * th + i]
                k = i * 6
                for tw in range(tw_n):
                    t = th * tw_n + tw
                    q = 4 * tw
                    d0, d1, d2 = src[q], src[q + 1], src[q + 2]
                    d3, d4, d5 = src[q + 3], src[q + 4], src[q + 5]
                    buf[k, t] = 4 * d0 - 5 * d2 + d4
                    buf[k + 1, t] = -4 * d1 - 4 * d2 + d3 + d4
                    buf[k + 2, t] = 4 * d1 - 4 * d2 - d3 + d4
                    buf[k + 3, t] = -2 * d1 - d2 + 2 * d3 + d4
                    buf[k + 4, t] = 2 * d1 - d2 - 2 * d3 + d4
                    buf[k + 5, t] = 4 * d1 - 5 * d3 + d5
        # column transform over all tiles of the plane (unit stride), into v
        base = n * t_n
        for b in range(6):
            for t in range(t_n):
                d0, d1, d2 = buf[b, t], buf[6 + b, t], buf[12 + b, t]
                d3, d4, d5 = buf[18 + b, t], buf[24 + b, t], buf[30 + b, t]
                v[b, c, base + t] = 4 * d0 - 5 * d2 + d4
                v[6 + b, c, base + t] = -4 * d1 - 4 * d2 + d3 + d4
                v[12 + b, c, base + t] = 4 * d1 - 4 * d2 - d3 + d4
                v[18 + b, c, base + t] = -2 * d1 - d2 + 2 * d3 + d4
                v[24 + b, c, base + t] = 2 * d1 - d2 - 2 * d3 + d4
                v[30 + b, c, base + t] = 4 * d1 - 5 * d3 + d5


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_ELEMENTWISE)
def output_transform(m, y, th_n, tw_n, buf, out, r0, r1):
    """y[n, o] <- A^T m A of every tile, for planes r = n * O + o in [r0, r1); m (36, O, N * T)
    holds the 36 products.  buf: (24, T) scratch; out: (th_n * 4, tw_n * 4) scratch (the
    tiles overhang the output where its size is not a multiple of 4)."""
    o_n, h, w = y.shape[1], y.shape[2], y.shape[3]
    t_n = th_n * tw_n
    for r in range(r0, r1):
        n = r // o_n
        o = r - n * o_n
        base = n * t_n
        # column transform (a: 6 -> p: 4) of each column b, over all tiles: buf[p * 6 + b, t]
        for b in range(6):
            for t in range(t_n):
                m0, m1, m2 = m[b, o, base + t], m[6 + b, o, base + t], m[12 + b, o, base + t]
                m3, m4 = m[18 + b, o, base + t], m[24 + b, o, base + t]
                m5 = m[30 + b, o, base + t]
                s12, d12 = m1 + m2, m1 - m2
                s34, d34 = m3 + m4, m3 - m4
                buf[b, t] = m0 + s12 + s34
                buf[6 + b, t] = d12 + 2 * d34
                buf[12 + b, t] = s12 + 4 * s34
                buf[18 + b, t] = d12 + 8 * d34 + m5
        # row transform (b: 6 -> q: 4), tile by tile into `out`
        for th in range(th_n):
            for p in range(4):
                k = p * 6
                dst = out[4 * th + p]
                for tw in range(tw_n):
                    t = th * tw_n + tw
                    g0, g1, g2 = buf[k, t], buf[k + 1, t], buf[k + 2, t]
                    g3, g4, g5 = buf[k + 3, t], buf[k + 4, t], buf[k + 5, t]
                    s12, d12 = g1 + g2, g1 - g2
                    s34, d34 = g3 + g4, g3 - g4
                    q = 4 * tw
                    dst[q] = g0 + s12 + s34
                    dst[q + 1] = d12 + 2 * d34
                    dst[q + 2] = s12 + 4 * s34
                    dst[q + 3] = d12 + 8 * d34 + g5
        for i in range(h):
            for j in range(w):
                y[n, o, i, j] = out[i, j]


# Native tasks (_native.py)
@task
def input_transform_task(args, r0, r1, slot):
    p = arguments(args)
    x, i = f32_4(p, 0)
    v, i = f32_3(p, i)
    ph, pw, th_n, tw_n = p[i], p[i + 1], p[i + 2], p[i + 3]
    buf, i = f32_2(p, i + 4)
    rows, i = f32_2(p, i)
    input_transform(readonly(x), v, ph, pw, th_n, tw_n, buf, rows, r0, r1)


@task
def output_transform_task(args, r0, r1, slot):
    p = arguments(args)
    m, i = f32_3(p, 0)
    y, i = f32_4(p, i)
    th_n, tw_n = p[i], p[i + 1]
    buf, i = f32_2(p, i + 2)
    out, i = f32_2(p, i)
    output_transform(m, y, th_n, tw_n, buf, out, r0, r1)
