"""Pooling: Caffe's PoolingLayer (MAX, AVE, STOCHASTIC) on 4-D (N, C, H, W) blobs.

Every method runs as a loop over the kernel taps: tap (i, j) of all output windows at once is a
strided slice of the (padded) input.  The padded copy is only made when some window reaches
outside the input; global pooling is a plain reduction."""
import math

import numpy as np

from ..backend.state import rng
from ..blob import checked_count
from ..proto import caffe_pb2
from . import jit
from .base import Layer
from .parallel import num_threads, prepare_blocks, run_blocks
from .registry import register

_P = caffe_pb2.PoolingParameter
_FLT_MAX = np.float32(np.finfo(np.float32).max)
_FLT_MIN = np.float32(np.finfo(np.float32).tiny)
_NO_INDEX = -2  # input index of a tap position outside the input (such a tap is never chosen)
# MAX windows on planes up to this many positions (22 x 22), with at least this many channels,
# run channels-last (numba/pooling.py max_pool_channels_last): twice as fast as the flat form
# there, slower on larger planes (measured 2026-12-04: 21x21 2x, 28x28 with 128 channels 0.4x)
CHANNELS_LAST_PLANE = 500
CHANNELS_LAST_MIN = 8
# ... and only with at least one image per thread: it splits over images, the flat form over
# planes (R-Net's 28 x 22 x 22 pooling at batch 1 on two threads: 11 -> 6 us; R-Net b1 5 %,
# O-Net b1 7 % faster in-process A/B, 2026-12-05, seventh session)


def channels_last_width(c):
    """The channel stride of a channels-last buffer for c channels: c rounded up to whole
    cache lines, and an odd number of them.  The transpose writes one channel at a time, every
    (h, w) position apart; with 512 channels (2 KiB) those writes all fall in a few cache sets
    and the layer ran 4x slower than with 480 (measured 2026-12-05, GoogLeNet's 14x14 pools)."""
    lines = -(-c // 16)
    return 16 * (lines + 1 - lines % 2)


def pooled_size(size, kernel, pad, stride, round_mode=_P.CEIL):
    """ceil (or floor) of (size + 2 pad - kernel) / stride, plus one (before Caffe's padding
    fix-up in PoolingLayer.reshape)."""
    r = math.floor if round_mode == _P.FLOOR else math.ceil
    return int(r((size + 2 * pad - kernel) / stride)) + 1


class _Scratch:
    """A stand-in top: just the array the forward writes."""
    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data


@register("Pooling")
class PoolingLayer(Layer):
    channelwise = True
    exact_num_bottom = 1
    min_top = 1
    max_top = 2  # MAX only: the second top holds the argmax (h * W + w) as float

    def layer_setup(self, bottom, top):
        p = self.layer_param.pooling_param
        has = p.HasField
        self.pool = p.pool
        if len(top) > 1 and self.pool != _P.MAX:
            raise self.error(f"only MAX pooling has a second (mask) top; "
                             f"{_P.PoolMethod.Name(self.pool)} pooling takes 1 top, got {len(top)}")
        self.global_pooling = p.global_pooling
        if self.global_pooling:
            if has("kernel_size") or has("kernel_h") or has("kernel_w"):
                raise self.error("with global_pooling: true the filter size cannot be specified "
                                 "(remove kernel_size / kernel_h / kernel_w)")
        else:
            square, both = has("kernel_size"), has("kernel_h") and has("kernel_w")
            if square and both:
                raise self.error("filter size is kernel_size OR kernel_h and kernel_w; not both")
            if not square and not both:
                raise self.error("needs kernel_size, or both kernel_h and kernel_w "
                                 "(or global_pooling: true)")
        if not ((not has("pad") and has("pad_h") and has("pad_w"))
                or (not has("pad_h") and not has("pad_w"))):
            raise self.error("padding is pad OR pad_h and pad_w (both) are required")
        if not ((not has("stride") and has("stride_h") and has("stride_w"))
                or (not has("stride_h") and not has("stride_w"))):
            raise self.error("stride is stride OR stride_h and stride_w (both) are required")

        if self.global_pooling:
            self.kernel_h, self.kernel_w = bottom[0].legacy_shape(2), bottom[0].legacy_shape(3)
        elif has("kernel_size"):
            self.kernel_h = self.kernel_w = p.kernel_size
        else:
            self.kernel_h, self.kernel_w = p.kernel_h, p.kernel_w
        if self.kernel_h <= 0 or self.kernel_w <= 0:
            raise self.error(f"filter dimensions cannot be zero, got kernel "
                             f"{self.kernel_h}x{self.kernel_w}")
        self.pad_h, self.pad_w = (p.pad_h, p.pad_w) if has("pad_h") else (p.pad, p.pad)
        self.stride_h, self.stride_w = ((p.stride_h, p.stride_w) if has("stride_h")
                                        else (p.stride, p.stride))
        if self.stride_h <= 0 or self.stride_w <= 0:
            raise self.error(f"stride must be positive, got {self.stride_h}x{self.stride_w}")
        if self.global_pooling and (self.pad_h or self.pad_w or self.stride_h != 1
                                    or self.stride_w != 1):
            raise self.error(f"with global_pooling: true only pad = 0 and stride = 1 are "
                             f"allowed, got pad {self.pad_h}x{self.pad_w} and stride "
                             f"{self.stride_h}x{self.stride_w}")
        if self.pad_h or self.pad_w:
            if self.pool not in (_P.AVE, _P.MAX):
                raise self.error("padding is implemented only for average and max pooling")
            if self.pad_h >= self.kernel_h or self.pad_w >= self.kernel_w:
                raise self.error(f"pad must be smaller than the kernel, got pad "
                                 f"{self.pad_h}x{self.pad_w} with kernel "
                                 f"{self.kernel_h}x{self.kernel_w}")
        self.round_mode = p.round_mode
        self._key = None

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise self.error(f"input must have 4 axes (num, channels, height, width), got shape "
                             f"{bottom[0].shape}")
        n, c, h, w = bottom[0].shape
        if self.global_pooling:
            self.kernel_h, self.kernel_w = h, w
        kh, kw, ph, pw, sh, sw = (self.kernel_h, self.kernel_w, self.pad_h, self.pad_w,
                                  self.stride_h, self.stride_w)
        out_h = pooled_size(h, kh, ph, sh, self.round_mode)
        out_w = pooled_size(w, kw, pw, sw, self.round_mode)
        if ph or pw:
            # The last window must start strictly inside the image, not in the padding.
            if (out_h - 1) * sh >= h + ph:
                out_h -= 1
            if (out_w - 1) * sw >= w + pw:
                out_w -= 1
        if out_h <= 0 or out_w <= 0:
            raise self.error(f"kernel {kh}x{kw} (pad {ph}x{pw}, stride {sh}x{sw}) gives an "
                             f"empty output {out_h}x{out_w} for input {h}x{w}")
        self.out_h, self.out_w = out_h, out_w
        top[0].reshape(n, c, out_h, out_w)
        if len(top) > 1:
            top[1].reshape(n, c, out_h, out_w)

        key = (n, c, h, w, kh, kw, ph, pw, sh, sw, out_h, out_w)
        if key == self._key:
            return
        self._key = key
        # Row r of the padded buffer is input row r - pad; it must reach the last tap.
        buf_h = max((out_h - 1) * sh + kh, h + ph)
        buf_w = max((out_w - 1) * sw + kw, w + pw)
        self._padded = ph > 0 or pw > 0 or buf_h > h or buf_w > w
        if self._padded:
            checked_count((n, c, buf_h, buf_w), f"the padded input of kernel {kh}x{kw}, pad "
                                                 f"{ph}x{pw}, stride {sh}x{sw}")
            fill = -np.inf if self.pool == _P.MAX else 0.0
            self._buf = np.full((n, c, buf_h, buf_w), fill, np.float32)
            self._dbuf = np.zeros((n, c, buf_h, buf_w), np.float32)
        # Which tap won each window is kept as a tap number (NONE: no tap), and turned into
        # the input index h * W + w (Caffe's mask) only for the second top.
        hs = np.arange(out_h) * sh - ph
        ws = np.arange(out_w) * sw - pw
        self._taps = [(i, j) for i in range(kh) for j in range(kw)]
        self._none = len(self._taps)
        index = np.full((self._none + 1, out_h, out_w), -1, np.int32)  # last row: NONE -> -1
        for t, (i, j) in enumerate(self._taps):
            hh, ww = hs + i, ws + j
            inside = ((hh >= 0) & (hh < h))[:, None] & ((ww >= 0) & (ww < w))[None, :]
            index[t] = np.where(inside, hh[:, None] * w + ww[None, :], _NO_INDEX)
        self._tap_index = index.reshape(self._none + 1, -1)
        self._window_pos = np.arange(out_h * out_w).reshape(out_h, out_w)
        # AVE divides by the window clipped to the PADDED input, before clipping to the input:
        # border windows that overlap the padding count the padded zeros.
        size_h = np.minimum(hs + kh, h + ph) - hs
        size_w = np.minimum(ws + kw, w + pw) - ws
        self._pool_size = (size_h[:, None] * size_w[None, :]).astype(np.float32)
        # One window covering the whole input (global pooling): a plain reduction.
        self._whole = out_h == out_w == 1 and (kh, kw) == (h, w) and not self._padded
        self._choice = np.empty((n, c, out_h, out_w),
                                np.int16 if self._none < 2 ** 15 - 1 else np.int32)
        self._sel = np.empty((n, c, out_h, out_w), bool)
        self._tmp = np.empty((n, c, out_h, out_w), np.float32)

    def mask(self):
        """Caffe's argmax mask: the input index h * W + w each output took, -1 for none."""
        flat = self._choice.astype(np.intp) * self._window_pos.size + self._window_pos
        return np.take(self._tap_index, flat)

    def _source(self, bottom):
        x = bottom[0].cpu_data
        if not self._padded:
            return x
        h, w = x.shape[2:]
        self._buf[:, :, self.pad_h:self.pad_h + h, self.pad_w:self.pad_w + w] = x
        return self._buf

    def _tap(self, a, i, j):
        return a[:, :, i:i + self.stride_h * (self.out_h - 1) + 1:self.stride_h,
                 j:j + self.stride_w * (self.out_w - 1) + 1:self.stride_w]

    # --- forward -----------------------------------------------------------------------------
    def _jit(self):
        """The compiled kernels for MAX / AVE windows (not global pooling, not STOCHASTIC)."""
        if self._whole or self.pool not in (_P.MAX, _P.AVE):
            return None
        return jit.kernels("pooling")

    def _rows(self, a):
        return a.reshape(-1, *a.shape[2:])

    def _geometry(self):
        return np.array((self.kernel_h, self.kernel_w, self.stride_h, self.stride_w,
                         self.pad_h, self.pad_w), np.int64)

    def prepare_cpu(self, bottom, top):
        if self._whole and self.pool == _P.AVE:
            # one window over the whole plane: the sum of each plane (in order, as Caffe adds
            # the taps), divided by its size
            n, c, h, w = bottom[0].shape
            x2, y1 = bottom[0].cpu_data.reshape(n * c, h * w), top[0].data.reshape(n * c)
            k = jit.kernels("pooling")
            if k is not None:
                return prepare_blocks(n * c, h * w,
                                      lambda a, b, slot: k.plane_means(x2, y1, a, b),
                                      native=(k.plane_means_task, (x2, y1)))
            sums, size = np.empty_like(x2), np.float32(h * w)

            def run():
                np.cumsum(x2, axis=1, out=sums)     # (sequential, unlike np.sum)
                np.divide(sums[:, -1], size, out=y1)
            return run
        if self._whole and self._values_only(top):
            # the maximum of each plane; fmax skips NaN, and the floor at -FLT_MAX is Caffe's
            # start value (a plane of -inf or NaN gives it)
            n, c, h, w = bottom[0].shape
            x3, y3 = bottom[0].cpu_data.reshape(n, c, h * w), top[0].data.reshape(n, c, 1)
            self._choice_fresh = False

            def run():
                np.fmax.reduce(x3, axis=2, keepdims=True, out=y3)
                np.fmax(y3, -_FLT_MAX, out=y3)
            return run
        k = self._jit()
        if k is None:
            return None
        x, y = self._rows(bottom[0].cpu_data), self._rows(top[0].data)
        geo = self._geometry()
        # a plane's work, as the split thresholds count it: its windows' taps, and the output
        # (counting outputs alone kept R-Net's and O-Net's poolings at batch 1 on one thread:
        # with the taps R-Net 6-7 %, O-Net 4 % faster, in-process A/B, seventh session)
        rows, per_row = x.shape[0], y[0].size * (1 + self.kernel_h * self.kernel_w)
        if self.pool != _P.MAX:
            pool_size = self._pool_size
            return prepare_blocks(rows, per_row, lambda a, b, slot: k.ave_pool_forward(
                x, y, pool_size, geo, a, b),
                native=(k.ave_pool_forward_task, (x, y, pool_size, geo)))
        none = self._none
        n, c, h, w = bottom[0].shape
        values_only = self._values_only(top)
        self._choice_fresh = not values_only
        if h * w <= CHANNELS_LAST_PLANE and c >= CHANNELS_LAST_MIN and n >= num_threads():
            x4, y4, choice4 = bottom[0].cpu_data, top[0].data, self._choice
            oh, ow, cw = self.out_h, self.out_w, channels_last_width(c)
            if values_only:
                bufs = [(np.empty((h, w, cw), np.float32), np.empty((oh, ow, cw), np.float32))
                        for _ in range(num_threads())]
                return prepare_blocks(n, c * (h * w + oh * ow), lambda a, b, slot:
                                      k.max_pool_values_channels_last(x4, y4, geo, *bufs[slot],
                                                                      a, b),
                                      native=(k.max_pool_values_channels_last_task,
                                              lambda slot: (x4, y4, geo) + bufs[slot]))
            bufs = [(np.empty((h, w, cw), np.float32), np.empty((oh, ow, cw), np.float32),
                     np.empty((oh, ow, cw), np.int32)) for _ in range(num_threads())]
            fill = prepare_blocks(n, c * (h * w + 2 * oh * ow), lambda a, b, slot:
                                  k.max_pool_channels_last(x4, y4, choice4, geo, none,
                                                           *bufs[slot], a, b))
        elif values_only:
            return prepare_blocks(rows, per_row, lambda a, b, slot: k.max_pool_values(
                x, y, geo, a, b), native=(k.max_pool_values_task, (x, y, geo)))
        else:
            choice = self._rows(self._choice)
            fill = prepare_blocks(rows, per_row, lambda a, b, slot: k.max_pool_forward(
                x, y, choice, geo, none, a, b))
        if len(top) == 1:
            return fill
        mask = top[1].data

        def with_mask():
            fill()
            mask[...] = self.mask()
        return with_mask

    def _values_only(self, top):
        """MAX without the argmax: nothing will read it (no mask top, and a net whose backward
        never reaches this layer: one with no loss, as a deploy net).  A backward that runs
        anyway (Layer.backward called directly) works the argmax out first (_refresh_choice)."""
        return self.pool == _P.MAX and len(top) == 1 and not self.backward_needed

    def forward_cpu(self, bottom, top):
        run = self.prepare_cpu(bottom, top)
        if run is not None:
            return run()
        src = self._source(bottom)
        y = top[0].data
        if self.pool == _P.MAX:
            self._choice_fresh = not self._values_only(top) or self._whole
            if self._whole:
                self._forward_max_whole(src, y)
            elif not self._choice_fresh:
                y.fill(-_FLT_MAX)
                for i, j in self._taps:  # fmax: NaN never wins, as Caffe's strict '>'
                    np.fmax(y, self._tap(src, i, j), out=y)
            else:
                self._forward_max(src, y)
            if len(top) > 1:
                top[1].data[...] = self.mask()
        elif self.pool == _P.AVE:
            if self._whole:
                src.sum(axis=(2, 3), dtype=np.float32, keepdims=True, out=y)
            else:
                y.fill(0)
                for i, j in self._taps:
                    y += self._tap(src, i, j)
            with np.errstate(divide="ignore", invalid="ignore"):
                y /= self._pool_size
        elif self.phase == caffe_pb2.TRAIN:
            self._forward_stochastic_train(src, y)
        else:
            self._forward_stochastic_test(src, y)

    def _forward_max(self, src, y):
        # Strict '>' in row-major tap order keeps the first maximum, as Caffe does; padding
        # holds -inf and never wins.
        y.fill(-_FLT_MAX)
        choice, better = self._choice, self._sel
        choice.fill(self._none)
        for t, (i, j) in enumerate(self._taps):
            v = self._tap(src, i, j)
            np.greater(v, y, out=better)
            np.copyto(y, v, where=better)   # (not np.maximum: NaN must not win)
            np.copyto(choice, t, where=better)

    def _forward_max_whole(self, src, y):
        # Caffe starts from -FLT_MAX with a strict '>': NaN never wins, and a plane of -inf
        # or NaN keeps -FLT_MAX with no index; else the first maximum in row-major order.
        x = src.reshape(src.shape[0], src.shape[1], -1)
        top = np.fmax(np.fmax.reduce(x, axis=2), -_FLT_MAX)
        self._choice[..., 0, 0] = np.where(top > -_FLT_MAX,
                                           (x == top[..., None]).argmax(axis=2), self._none)
        y[..., 0, 0] = top

    def _forward_stochastic_train(self, src, y):
        """Caffe's GPU StoPoolForwardTrain: pick one position of each window with probability
        proportional to its activation (activations are assumed non-negative)."""
        total = self._tmp
        total.fill(0)
        for i, j in self._taps:
            total += self._tap(src, i, j)
        u = np.float32(1) - rng().random(total.shape, dtype=np.float32)  # uniform in (0, 1]
        thres = total * u
        cum = np.zeros_like(total)
        chosen = np.zeros(total.shape, bool)
        y.fill(0)
        choice, sel = self._choice, self._sel
        choice.fill(self._none)
        for t, (i, j) in enumerate(self._taps):
            v = self._tap(src, i, j)
            cum += v
            np.greater_equal(cum, thres, out=sel)
            sel &= ~chosen
            sel &= self._tap_index[t].reshape(self.out_h, self.out_w) >= 0
            np.copyto(y, v, where=sel)
            np.copyto(choice, t, where=sel)
            chosen |= sel

    def _forward_stochastic_test(self, src, y):
        """Caffe's StoPoolForwardTest: the activation-weighted average sum(x^2) / sum(x), with
        the sum started at FLT_MIN so an all-zero window gives 0."""
        total = self._tmp
        total.fill(_FLT_MIN)
        y.fill(0)
        for i, j in self._taps:
            v = self._tap(src, i, j)
            total += v
            y += v * v
        y /= total
        self._choice.fill(self._none)  # nothing sampled: backward in TEST passes no gradient

    # --- backward ----------------------------------------------------------------------------
    def _refresh_choice(self, bottom):
        """The argmax of a forward that computed the maxima only (from the bottom as it is)."""
        saved, self._choice_fresh = self.backward_needed, True
        self.backward_needed = True
        try:
            top = [_Scratch(np.empty(self._choice.shape, np.float32))]
            run = self.prepare_cpu(bottom, top)
            if run is not None:
                run()
            elif self._whole:
                self._forward_max_whole(self._source(bottom), top[0].data)
            else:
                self._forward_max(self._source(bottom), top[0].data)
        finally:
            self.backward_needed = saved

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.pool == _P.MAX and not getattr(self, "_choice_fresh", True):
            self._refresh_choice(bottom)
        dy = top[0].cpu_diff
        dx = bottom[0].diff
        k = self._jit()
        if k is not None:
            dy3, dx3 = self._rows(dy), self._rows(dx)
            geo = self._geometry()
            if self.pool == _P.MAX:
                choice = self._rows(self._choice)
                run_blocks(dy3.shape[0], dx3[0].size, lambda a, b, slot: k.max_pool_backward(
                    dy3, choice, dx3, geo, self._none, a, b), block_elements=None,
                    native=(k.max_pool_backward_task, (dy3, choice, dx3, geo, self._none))
                    if choice.dtype == np.int16 else None)
            else:
                run_blocks(dy3.shape[0], dx3[0].size, lambda a, b, slot: k.ave_pool_backward(
                    dy3, dx3, self._pool_size, geo, a, b), block_elements=None,
                    native=(k.ave_pool_backward_task, (dy3, dx3, self._pool_size, geo)))
            return
        if self._whole and self.pool != _P.STOCHASTIC:
            self._backward_whole(dy, dx)
            return
        acc = self._dbuf if self._padded else dx
        acc.fill(0)
        if self.pool == _P.AVE:
            g = np.divide(dy, self._pool_size, out=self._tmp)
            for i, j in self._taps:
                v = self._tap(acc, i, j)
                v += g
        else:  # MAX and STOCHASTIC route each output's gradient to its chosen input
            for t, (i, j) in enumerate(self._taps):
                np.equal(self._choice, t, out=self._sel)
                np.multiply(dy, self._sel, out=self._tmp)
                v = self._tap(acc, i, j)
                v += self._tmp
        if self._padded:
            h, w = dx.shape[2:]
            dx[...] = acc[:, :, self.pad_h:self.pad_h + h, self.pad_w:self.pad_w + w]

    def _backward_whole(self, dy, dx):
        if self.pool == _P.AVE:
            np.divide(dy, self._pool_size, out=dx)  # broadcasts over the window
            return
        dx.fill(0)
        d = dx.reshape(dx.shape[0], dx.shape[1], -1)
        choice = self._choice[..., 0, 0].astype(np.intp)
        g = dy[..., 0, 0] * (choice != self._none)
        np.put_along_axis(d, np.minimum(choice, d.shape[2] - 1)[..., None], g[..., None], axis=2)
