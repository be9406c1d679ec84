"""Normalisation layers: BatchNorm and LRN, as Caffe defines them."""
import numpy as np

from ..proto import caffe_pb2
from . import jit
from .base import Layer, NeuronLayer
from .parallel import run_blocks
from .registry import register

_F = np.float32


def _buffer(buf, shape):
    """`buf` if it already has `shape`, else a new float32 array of that shape."""
    return buf if buf is not None and buf.shape == tuple(shape) else np.empty(shape, _F)


def same_memory(a, b):
    """a and b start at the same address (an in-place layer, or blobs sharing data)."""
    return a.__array_interface__["data"][0] == b.__array_interface__["data"][0]


@register("BatchNorm")
class BatchNormLayer(NeuronLayer):
    """Caffe's BatchNorm: normalisation only (a Scale layer after it does the affine part).

    blobs: running mean (C,), running variance (C,), and the moving-average normaliser (1,).
    Caffe stores *unnormalised* running sums: the statistics are blobs[0] / blobs[2] and
    blobs[1] / blobs[2]."""

    def channel_params(self):
        return (0, 1)

    def layer_setup(self, bottom, top):
        p = self.layer_param.batch_norm_param
        self.moving_average_fraction = _F(p.moving_average_fraction)
        self.use_global_stats = (p.use_global_stats if p.HasField("use_global_stats")
                                 else self.phase == caffe_pb2.TEST)
        self.eps = _F(p.eps)
        if not self.eps > 0:
            raise self.error(f"batch_norm_param eps must be > 0 (it keeps 1 / sqrt(var + eps) "
                             f"finite), got {p.eps:g}")
        if not 0 <= p.moving_average_fraction <= 1:
            raise self.error(f"batch_norm_param moving_average_fraction must be in [0, 1], got "
                             f"{p.moving_average_fraction:g}")
        self.channels = 1 if bottom[0].num_axes == 1 else bottom[0].shape[1]
        shapes = [(self.channels,), (self.channels,), (1,)]
        if self.blobs:
            if len(self.blobs) != 3:
                raise self.error(f"has {len(self.blobs)} blob(s) but needs 3 (mean, variance, "
                                 "moving-average factor)")
            self.check_loaded_blobs(shapes)
        else:
            self.blobs = [self.param_blob(s) for s in shapes]
            for b in self.blobs:
                b.data[...] = 0
        # The statistics are not learned: Caffe forces lr_mult 0 on all three blobs.  (Caffe
        # leaves decay_mult at its default; 0 here, so no solver touches them at all.)
        for i in range(3):
            if i < len(self.layer_param.param):
                if self.layer_param.param[i].lr_mult != 0:
                    raise self.error(
                        f"cannot configure batch normalization statistics as layer parameters "
                        f"(param {i} has lr_mult {self.layer_param.param[i].lr_mult}; it must "
                        "be 0)")
            else:
                self.layer_param.param.add(lr_mult=0.0, decay_mult=0.0)
        self.param_propagate_down = [False] * 3
        self._xnorm = self._tmp = None

    def reshape(self, bottom, top):
        if bottom[0].num_axes > 1 and bottom[0].shape[1] != self.channels:
            raise self.error(f"bottom shape {bottom[0].shape} has {bottom[0].shape[1]} channels "
                             f"but the layer was set up for {self.channels}")
        top[0].reshape_like(bottom[0])
        if not self.use_global_stats:  # backward reads the normalised input
            self._xnorm = _buffer(self._xnorm, bottom[0].shape)

    def _view3(self, a):
        n = a.shape[0] if a.ndim else 1
        return a.reshape(n, self.channels, -1)

    def _update_running_stats(self, mean, var, m):
        """Caffe's moving sums: s = maf * s + 1, mean_sum = maf * mean_sum + mean, var_sum =
        maf * var_sum + m / (m - 1) * var (the unbiased variance)."""
        correction = _F(m / (m - 1)) if m > 1 else _F(1)
        maf = self.moving_average_fraction
        b_mean, b_var, b_factor = (b.data for b in self.blobs)
        b_factor *= maf
        b_factor += _F(1)
        b_mean *= maf
        b_mean += mean
        b_var *= maf
        b_var += correction * var

    def _global_stats(self):
        s = self.blobs[2].cpu_data[0]
        factor = _F(0) if s == 0 else _F(1) / s
        return self.blobs[0].cpu_data * factor, self.blobs[1].cpu_data * factor

    def _forward_jit(self, k, x, y):
        in_place = same_memory(x, y)
        c = self.channels
        rows = x.shape[0] * x.shape[2]
        if self.use_global_stats:
            mean, var = self._global_stats()
            self._std = np.sqrt(var + self.eps)
            std = self._std

            def block(a, b, slot):
                k.batch_norm_global_forward(x, y, mean, std, in_place, a, b)
        else:
            mean, var = np.empty(c, _F), np.empty(c, _F)
            xnorm = self._view3(self._xnorm)

            def block(a, b, slot):
                k.batch_norm_train_forward(x, y, xnorm, mean, var, self.eps, in_place, a, b)
        run_blocks(c, rows, block, block_elements=None)
        if not self.use_global_stats:
            self._update_running_stats(mean, var, rows)
            self._std = np.sqrt(var + self.eps)

    def forward_cpu(self, bottom, top):
        x = self._view3(bottom[0].cpu_data)
        y = self._view3(top[0].data)  # may be the same memory as x (in place)
        k = jit.kernels("batchnorm")
        if k is not None:
            return self._forward_jit(k, x, y)
        if self.use_global_stats:
            mean, var = self._global_stats()
        else:
            mean = x.mean(axis=(0, 2), dtype=_F)
        np.subtract(x, mean[None, :, None], out=y)
        if not self.use_global_stats:
            self._tmp = _buffer(self._tmp, x.shape)
            sq = np.square(y, out=self._tmp)
            var = sq.mean(axis=(0, 2), dtype=_F)
            self._update_running_stats(mean, var, x.shape[0] * x.shape[2])
        self._std = np.sqrt(var + self.eps)
        y /= self._std[None, :, None]
        if not self.use_global_stats:
            self._xnorm[...] = top[0].cpu_data

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = self._view3(top[0].cpu_diff)
        dx = self._view3(bottom[0].diff)  # may be the same memory as dy (in place)
        std = self._std[None, :, None]
        if self.use_global_stats:
            np.divide(dy, std, out=dx)
            return
        k = jit.kernels("batchnorm")
        if k is not None:
            y = self._view3(self._xnorm)
            in_place = same_memory(dy, dx)

            def block(a, b, slot):
                k.batch_norm_train_backward(dy, y, dx, self._std, in_place, a, b)
            run_blocks(self.channels, dy.shape[0] * dy.shape[2], block, block_elements=None)
            return
        # dx = (dy - mean(dy) - y * mean(dy * y)) / std, means per channel over (N, spatial).
        y = self._view3(self._xnorm)
        self._tmp = _buffer(self._tmp, dy.shape)
        t = np.multiply(dy, y, out=self._tmp)
        mean_dyy = t.mean(axis=(0, 2), dtype=_F)[None, :, None]
        mean_dy = dy.mean(axis=(0, 2), dtype=_F)[None, :, None]
        np.multiply(y, mean_dyy, out=t)
        np.subtract(dy, t, out=dx)
        dx -= mean_dy
        dx /= std


@register("LRN")
class LRNLayer(Layer):
    """Local response normalisation, Caffe's LRNLayer.

    ACROSS_CHANNELS: scale = k + alpha / n * sum of x^2 over n channels centred on c (zero
    padded); y = x * scale^-beta.
    WITHIN_CHANNEL: Caffe composes it of Power, AVE pooling (pad (n-1)/2, stride 1, so every
    window divides by n*n, borders included) and Power(-beta, scale alpha, shift 1); here the
    same maths directly: scale = 1 + alpha / n^2 * box sum of x^2; y = x * scale^-beta (k is not
    used, as in Caffe)."""
    channel_note = "which mixes neighbouring channels"
    exact_num_bottom = 1
    exact_num_top = 1

    @property
    def channelwise(self):
        return self.layer_param.lrn_param.norm_region == caffe_pb2.LRNParameter.WITHIN_CHANNEL

    def layer_setup(self, bottom, top):
        p = self.layer_param.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 != 1:
            raise self.error(f"LRN only supports odd values for local_size, got {self.size}")
        self.pre_pad = (self.size - 1) // 2
        self.alpha, self.beta, self.k = _F(p.alpha), _F(p.beta), _F(p.k)
        self.across = p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS
        self._shape = None

    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise self.error(f"input must have 4 axes (num, channels, height, width), got shape "
                             f"{bottom[0].shape}")
        shape = bottom[0].shape
        top[0].reshape(shape)
        if shape == self._shape:
            return
        self._shape = shape
        n, c, h, w = shape
        p = self.pre_pad
        # Zero-padded work buffer for the window sums (its borders stay 0).
        if self.across:
            self._pad = np.zeros((n, c + 2 * p, h, w), _F)
        else:
            self._pad = np.zeros((n, c, h + 2 * p, w + 2 * p), _F)
            self._rows = np.empty((n, c, h, w + 2 * p), _F)
        self._scale = np.empty(shape, _F)
        self._scale_pow = np.empty(shape, _F)  # scale^-beta, kept for backward
        self._x = np.empty(shape, _F)  # a copy of the input when running in place
        self._tmp = np.empty(shape, _F)

    def _interior(self):
        p, (_, c, h, w) = self.pre_pad, self._shape
        if self.across:
            return self._pad[:, p:p + c]
        return self._pad[:, :, p:p + h, p:p + w]

    def _window_sum(self, out):
        """out = sum over each position's window of what _interior() holds."""
        n, c, h, w = self._shape
        if self.across:
            np.copyto(out, self._pad[:, 0:c])
            for t in range(1, self.size):
                out += self._pad[:, t:t + c]
            return out
        rows = self._rows
        np.copyto(rows, self._pad[:, :, 0:h])
        for t in range(1, self.size):
            rows += self._pad[:, :, t:t + h]
        np.copyto(out, rows[:, :, :, 0:w])
        for t in range(1, self.size):
            out += rows[:, :, :, t:t + w]
        return out

    def forward_cpu(self, bottom, top):
        x = bottom[0].cpu_data
        if top[0] is bottom[0]:  # backward needs the input
            np.copyto(self._x, x)
            x = self._x
        np.square(x, out=self._interior())
        scale = self._window_sum(self._scale)
        if self.across:
            scale *= self.alpha / _F(self.size)
            scale += self.k
        else:
            scale /= _F(self.size * self.size)
            scale *= self.alpha
            scale += _F(1)
        np.power(scale, -self.beta, out=self._scale_pow)
        np.multiply(x, self._scale_pow, out=top[0].data)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = self._x if top[0] is bottom[0] else bottom[0].cpu_data
        y, dy, scale = top[0].cpu_data, top[0].cpu_diff, self._scale
        # dx = dy * scale^-beta - 2 alpha beta / N * x * window_sum(dy * y / scale), with
        # N = local_size (across) or local_size^2 (within).
        ratio = self._interior()
        np.multiply(dy, y, out=ratio)
        ratio /= scale
        acc = self._window_sum(self._tmp)
        norm = self.size if self.across else self.size * self.size
        acc *= _F(2) * self.alpha * self.beta / _F(norm)
        acc *= x
        dx = bottom[0].diff  # may be dy's memory: acc is complete before dx is written
        np.multiply(dy, self._scale_pow, out=dx)
        dx -= acc
