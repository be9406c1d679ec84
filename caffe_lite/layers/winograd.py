"""The Winograd convolution F(4x4, 3x3): a 3x3 stride-1 convolution with about a quarter of
im2col's multiply-adds (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks").

Every 4x4 output tile comes from a 6x6 input tile; after a transform of the input tiles and of
the filters, the convolution is 36 independent matrix products (output channels x input
channels times input channels x tiles), and a transform of the products gives the outputs
(kernels in layers/numba/winograd.py).  Its float32 results differ from im2col's by rounding
(relative differences around 1e-6), so GemmEngine uses it only for layers whose backward never
runs (inference), with the compiled kernels, and where it pays: enough channels for the
transforms to be amortised (`worth`).  Backward always takes the exact im2col path."""
import numpy as np

from . import gemm_pool, jit
from .parallel import num_threads, prepare_blocks, prepare_matmul
from .program import in_order, ready_while

_F = np.float32
# G (6x3): the filter transform U = G g G^T
G = np.array([[1 / 4, 0, 0],
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]], np.float64)
# Where it pays: per tile the products save 108 multiply-adds for each (input, output) channel
# pair, about 2 ns, while the transforms cost about 14 ns per tile and input channel and 7 per
# tile and output channel (one core, 2026-12-05, seventh session; 50 before the transforms ran
# in float32 over all tiles at unit stride), so the harmonic-like mean C * O / (C + O) must
# reach about 6: whole nets, in-process A/B against 24, P-Net b1 (10 -> 16 and 16 -> 32 on
# 33x45 planes) 0.76, O-Net b1 (32 -> 64) 0.83-0.89, SqueezeNet b1 0.91, b8 (16 -> 64 on
# 56x56) 0.91-0.93; the face detector 0.99.  A product needs some columns (tiles) to run at
# BLAS speed (512 -> 512 channels on 7x7 planes, 4 tiles: twice slower).
MIN_CHANNEL_RATIO = 6
MIN_TILES = 16
# Tiles the output transform takes in one pass at most (images of one channel: its scratch
# grows with them; 1024 tiles, 160 KiB)
RUN_TILES = 1024


def applies(geom, group, in_spatial):
    return (len(in_spatial) == 2 and geom.kernel == (3, 3) and geom.stride == (1, 1)
            and geom.dilation == (1, 1) and group == 1 and max(geom.pad) <= 2)


def worth(conv_in, conv_out, num, out_spatial):
    tiles = num * -(-out_spatial[0] // 4) * -(-out_spatial[1] // 4)
    return conv_in * conv_out >= MIN_CHANNEL_RATIO * (conv_in + conv_out) and \
        tiles >= MIN_TILES


class Winograd:
    """One layer's Winograd forward for one input shape."""

    def __init__(self, num, conv_in, conv_out, in_spatial, out_spatial, pad):
        self.num, self.conv_in, self.conv_out = num, conv_in, conv_out
        self.in_spatial, self.out_spatial, self.pad = in_spatial, out_spatial, pad
        oh, ow = out_spatial
        self.th, self.tw = -(-oh // 4), -(-ow // 4)
        tiles = num * self.th * self.tw
        self.v = np.empty((36, conv_in, tiles), _F)
        self.m = np.empty((36, conv_out, tiles), _F)
        self.u = np.empty((36, conv_out, conv_in), _F)
        self._u_key = None

    def _filters(self, w):
        """U (36, O, C) = G g G^T of each filter, recomputed when the weights change."""
        g = w.reshape(self.conv_out, self.conv_in, 3, 3).astype(np.float64)
        u = np.einsum("ik,ockl,jl->ijoc", G, g, G, optimize=True)
        self.u[...] = u.reshape(36, self.conv_out, self.conv_in)

    def prepare(self, x, w, w_memory, y):
        """A callable computing y (N, O, OH, OW) = conv(x (N, C, H, W), w), bias not added;
        `w_memory` is the weight's buffer (SyncedMemory: the filters are transformed again when
        its version changes)."""
        k = jit.kernels("winograd")
        th, tw = self.th, self.tw
        slots = num_threads()
        ph, pw = self.pad
        # scratch per slot (shapes: the kernels' docstrings); the output transform does up to
        # `run_planes` images of a channel in one pass
        in_bufs = [(np.empty((4, (th + 1) * tw * 4 + 2), _F), np.empty((24, (th + 1) * tw), _F))
                   for _ in range(slots)]
        run_planes = max(1, min(self.num, RUN_TILES // (th * tw)))
        out_bufs = [(np.empty((24, run_planes * th * tw), _F),
                     np.empty((4, 4 * run_planes * th * tw), _F)) for _ in range(slots)]
        v, m = self.v, self.m
        transform_in = prepare_blocks(
            self.num * self.conv_in, 36 * th * tw,
            lambda a, b, s: k.input_transform(x, v, ph, pw, th, tw, in_bufs[s][0],
                                              in_bufs[s][1], a, b),
            native=(k.input_transform_task, lambda s: (x, v, ph, pw, th, tw) + in_bufs[s]))
        product = prepare_matmul(self.u, v, m)
        transform_out = prepare_blocks(
            self.num * self.conv_out, 36 * th * tw,
            lambda a, b, s: k.output_transform(m, y, th, tw, out_bufs[s][0], out_bufs[s][1],
                                               a, b),
            native=(k.output_transform_task, lambda s: (m, y, th, tw) + out_bufs[s]))

        def run():
            key = (w_memory.version, id(w))
            if key != self._u_key:
                self._filters(w)
                self._u_key = key
            transform_in()
            product()
            transform_out()
        # natively (layers/program.py) while the transformed filters are current
        steps = in_order(transform_in, product, transform_out)
        return gemm_pool.attach(run, gemm_pool.phases_of(steps), ready_while(
            lambda: (w_memory.version, id(w)) == self._u_key, (w_memory,), steps.ready))
