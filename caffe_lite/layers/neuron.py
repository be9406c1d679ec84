"""Neuron layers: elementwise activations.  One bottom, one top of the same shape; every one
may run in place (top[0] is bottom[0]).

Layers whose backward reads the input x keep a copy of it when they run in place, since
forward overwrites x with y.  Caffe keeps such a copy only in PReLU; its other layers read y
in place of x there, which is harmless where y and x have the same sign pattern (ReLU with
slope >= 0, ELU with alpha >= 0: those skip the copy) and wrong elsewhere."""
import numpy as np

from ..backend.state import rng
from ..fillers import filler_param
from ..proto import caffe_pb2
from . import gemm_pool, jit, parallel, program
from .base import NeuronLayer
from .parallel import (MIN_PARALLEL_ELEMENTS, MIN_PARALLEL_STREAM_ELEMENTS, prepare_blocks,
                       prepare_flat, run_flat)
from .registry import register

F32 = np.float32


class Scratch:
    """A reusable buffer: view(shape) gives an uninitialised array of `shape` on memory kept
    from earlier calls when it is large enough."""

    def __init__(self, dtype=np.float32):
        self.dtype = dtype
        self._buf = None

    def view(self, shape):
        n = int(np.prod(shape, dtype=np.int64))
        if self._buf is None or self._buf.size < n:
            self._buf = np.empty(max(n, 1), self.dtype)
        return self._buf[:n].reshape(shape)


class _KeepsInput(NeuronLayer):
    """A neuron layer whose backward reads x."""

    def __init__(self, layer_param):
        super().__init__(layer_param)
        self._saved = Scratch()
        self._x = None

    def copy_needed_in_place(self):
        return True

    def forward_input(self, bottom, top):
        """x for forward; in place, a copy that outlives the overwrite, kept for backward."""
        x = bottom[0].cpu_data
        if top[0] is bottom[0] and self.copy_needed_in_place():
            self._x = self._saved.view(x.shape)
            np.copyto(self._x, x)
            return self._x
        self._x = None
        return x

    def keeps_input(self, bottom, top):
        """Whether forward must keep a copy of x: in place, when backward reads x and runs."""
        return top[0] is bottom[0] and self.copy_needed_in_place() and self.backward_needed

    def backward_input(self, bottom):
        if self._x is False:
            raise self.error("ran forward in place without keeping its input (its net "
                             "needs no backward here), so it has none to compute a gradient "
                             "from")
        return bottom[0].cpu_data if self._x is None else self._x


def _copy_unless_in_place(dst_blob, src_blob, dst, src):
    if dst_blob is not src_blob:
        np.copyto(dst, src)


# Caffe's formulas are used as written, with comparisons turned into 0/1 factors: the values
# are Caffe's, and whole-array ufuncs are several times faster than masked (where=) ones.

def _leaky(x, slope, y, tmp):
    """y = max(x, 0) + slope * min(x, 0); safe when y is x's memory."""
    t = np.minimum(x, F32(0), out=tmp)
    np.multiply(t, slope, out=t)
    np.maximum(x, F32(0), out=y)
    np.add(y, t, out=y)


def _leaky_factor(x, slope, out, mask):
    """(x > 0) + slope * (x <= 0): the gradient factor of _leaky (the slope at x == 0)."""
    np.less_equal(x, 0, out=out)
    np.multiply(out, slope, out=out)
    np.add(out, np.greater(x, 0, out=mask), out=out)
    return out


@register("ReLU")
class ReLULayer(_KeepsInput):
    """y = max(x, 0) + negative_slope * min(x, 0)."""

    def layer_setup(self, bottom, top):
        self.negative_slope = F32(self.layer_param.relu_param.negative_slope)
        self._mask = Scratch(np.bool_)
        self._tmp = Scratch()

    def copy_needed_in_place(self):
        # With slope >= 0, y > 0 exactly where x > 0: backward may read y for x.
        return self.negative_slope < 0

    def prepare_cpu(self, bottom, top):
        if self.negative_slope != 0:
            return None
        xf, yf = bottom[0].cpu_data.reshape(-1), top[0].data.reshape(-1)
        k = jit.kernels("neuron")
        if k is not None:
            # (np.maximum took 0.3 ns an element here, the kernel 0.04: on the Python workers
            # it splits only from MIN_PARALLEL_STREAM_ELEMENTS, on the spinning ones from
            # MIN_SPIN_STREAM_ELEMENTS, as the fused activation pass)
            fill = prepare_blocks(xf.size, 1, lambda a, b, slot: k.relu_forward(xf, yf, a, b),
                                  min_elements=MIN_PARALLEL_STREAM_ELEMENTS,
                                  spin_elements=parallel.MIN_SPIN_STREAM_ELEMENTS,
                                  native=(k.relu_forward_task, (xf, yf)))
            if gemm_pool.phases_of(fill) is not None:
                # natively (layers/program.py) while no input copy is kept
                return gemm_pool.attach(lambda: (setattr(self, "_x", None), fill()),
                                        fill.native, program.ready_while(lambda: self._x is None, ()))
        elif xf.size < MIN_PARALLEL_ELEMENTS:
            def run():
                self._x = None
                np.maximum(xf, F32(0), out=yf)
            return run
        else:
            fill = prepare_flat(xf.size, lambda a, b: np.maximum(xf[a:b], F32(0), out=yf[a:b]))

        def run_split():
            self._x = None
            fill()
        return run_split

    def forward_cpu(self, bottom, top):
        run = self.prepare_cpu(bottom, top)
        if run is not None:
            return run()
        x = self.forward_input(bottom, top)
        y = top[0].data
        _leaky(x, self.negative_slope, y, self._tmp.view(x.shape))

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = self.backward_input(bottom)
        dy, dx = top[0].cpu_diff, bottom[0].diff
        k = jit.kernels("neuron")
        if k is not None and self.negative_slope == 0:
            xf, dyf, dxf = x.reshape(-1), dy.reshape(-1), dx.reshape(-1)
            in_place = top[0] is bottom[0]
            run_flat(xf.size, lambda a, b: k.relu_backward(dyf, xf, dxf, in_place, a, b))
            return
        mask = self._mask.view(x.shape)
        if self.negative_slope == 0:
            np.multiply(dy, np.greater(x, 0, out=mask), out=dx)
        else:
            f = _leaky_factor(x, self.negative_slope, self._tmp.view(x.shape), mask)
            np.multiply(dy, f, out=dx)


@register("PReLU")
class PReLULayer(_KeepsInput):
    """y = max(x, 0) + a_c * min(x, 0), a learned slope per channel (axis 1) or one shared."""

    def channel_params(self):
        return () if self.layer_param.prelu_param.channel_shared else (0,)

    def layer_setup(self, bottom, top):
        self._check_axes(bottom)
        p = self.layer_param.prelu_param
        self.channel_shared = p.channel_shared
        channels = bottom[0].shape[1]
        need = 1 if self.channel_shared else channels
        if self.blobs:
            if self.blobs[0].count != need:
                raise self.error(
                    f"slope blob has {self.blobs[0].count} value(s) {self.blobs[0].shape} but "
                    f"channel_shared={self.channel_shared} with {channels} channels needs {need}")
        else:
            # Caffe's shared slope is a 0-axis (scalar) blob; per channel it is (channels,).
            shape = () if self.channel_shared else (channels,)
            self.blobs.append(self.param_blob(
                shape, filler_param(p, "filler", type="constant", value=0.25)))
        self._mask = Scratch(np.bool_)
        self._tmp = Scratch()

    def _check_axes(self, bottom):
        if bottom[0].num_axes < 2:
            raise self.error(f"bottom must have at least 2 axes, got shape {bottom[0].shape}")

    def reshape(self, bottom, top):
        self._check_axes(bottom)
        if not self.channel_shared and bottom[0].shape[1] != self.blobs[0].count:
            raise self.error(f"bottom has {bottom[0].shape[1]} channels {bottom[0].shape} but "
                             f"the slope blob has {self.blobs[0].count}")
        top[0].reshape_like(bottom[0])

    def _views(self, blob_shape):
        n, c = blob_shape[:2]
        shape3 = (n, c, int(np.prod(blob_shape[2:], dtype=np.int64)))
        a = self.blobs[0].cpu_data
        a = a.reshape(()) if self.channel_shared else a.reshape(c, 1)
        return shape3, a

    def prepare_cpu(self, bottom, top):
        k = jit.kernels("neuron")
        if k is None:
            return None
        shape3, _ = self._views(bottom[0].shape)
        x3 = bottom[0].cpu_data.reshape(shape3)
        y3 = top[0].data.reshape(shape3)
        in_place = top[0] is bottom[0]
        keep = self._saved.view(shape3) if self.keeps_input(bottom, top) else y3
        has_keep = keep is not y3
        if not in_place:
            # the kernel works in place on y: y starts as a copy of x
            copy = prepare_flat(y3.size, lambda a, b: np.copyto(y3.reshape(-1)[a:b],
                                                                 x3.reshape(-1)[a:b]))
        c = shape3[1]
        ones, zeros = np.ones(c, F32), np.zeros(c, F32)
        slope = np.empty(c, F32)
        blob = self.blobs[0]
        act = prepare_blocks(shape3[0] * c, shape3[2], lambda a, b, slot: k.affine_act(
            y3, ones, zeros, 2, slope, keep, has_keep, a, b),
            min_elements=MIN_PARALLEL_STREAM_ELEMENTS,
            spin_elements=parallel.MIN_SPIN_STREAM_ELEMENTS,
            native=(k.affine_act_task, (y3, ones, zeros, 2, slope, keep, has_keep)))

        def run():
            slope[...] = blob.cpu_data.reshape(-1)   # one value (shared) or one per channel
            if not in_place:
                copy()
                self._x = None
            else:
                self._x = keep if has_keep else False
            act()
        return run

    def forward_cpu(self, bottom, top):
        run = self.prepare_cpu(bottom, top)
        if run is not None:
            return run()
        x = self.forward_input(bottom, top)
        shape3, a = self._views(x.shape)
        x3 = x.reshape(shape3)
        y3 = top[0].data.reshape(shape3)
        _leaky(x3, a, y3, self._tmp.view(shape3))

    def backward_cpu(self, top, propagate_down, bottom):
        x = self.backward_input(bottom)
        shape3, a = self._views(x.shape)
        x3 = x.reshape(shape3)
        dy3 = top[0].cpu_diff.reshape(shape3)
        # The slope gradient reads dy, so it comes first: in place, dx overwrites dy.
        t = self._tmp.view(shape3)
        if self.param_propagate_down[0]:
            # da_c = sum of dy * x over x <= 0 (Caffe: dy * x * (x <= 0)), accumulated
            np.minimum(x3, F32(0), out=t)
            np.multiply(t, dy3, out=t)
            g = t.sum(dtype=F32) if self.channel_shared else t.sum(axis=(0, 2), dtype=F32)
            slope = self.blobs[0]
            np.add(slope.diff, g.reshape(slope.shape), out=slope.diff)
        if propagate_down[0]:
            f = _leaky_factor(x3, a, t, self._mask.view(shape3))
            np.multiply(dy3, f, out=bottom[0].diff.reshape(shape3))


@register("ELU")
class ELULayer(_KeepsInput):
    """y = max(x, 0) + alpha * (exp(min(x, 0)) - 1)."""

    def layer_setup(self, bottom, top):
        self.alpha = F32(self.layer_param.elu_param.alpha)
        self._mask = Scratch(np.bool_)
        self._tmp = Scratch()

    def copy_needed_in_place(self):
        return self.alpha < 0

    def forward_cpu(self, bottom, top):
        x = self.forward_input(bottom, top)
        # Caffe computes exp(x) - 1, not expm1(x); kept for the same float32 results.
        t = np.minimum(x, F32(0), out=self._tmp.view(x.shape))
        np.exp(t, out=t)
        np.subtract(t, F32(1), out=t)
        np.multiply(t, self.alpha, out=t)
        y = top[0].data
        np.maximum(x, F32(0), out=y)
        np.add(y, t, out=y)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = self.backward_input(bottom)
        y = top[0].cpu_data
        # Caffe: dx = dy * ((x > 0) + (alpha + y) * (x <= 0)).
        mask = self._mask.view(x.shape)
        f = np.add(y, self.alpha, out=self._tmp.view(x.shape))
        np.multiply(f, np.less_equal(x, 0, out=mask), out=f)
        np.add(f, np.greater(x, 0, out=mask), out=f)
        np.multiply(top[0].cpu_diff, f, out=bottom[0].diff)


@register("Sigmoid")
class SigmoidLayer(NeuronLayer):
    """y = 1 / (1 + exp(-x)), computed as Caffe does: 0.5 * tanh(0.5 * x) + 0.5."""

    def layer_setup(self, bottom, top):
        self._tmp = Scratch()

    def forward_cpu(self, bottom, top):
        y = top[0].data
        np.multiply(bottom[0].cpu_data, F32(0.5), out=y)
        np.tanh(y, out=y)
        np.multiply(y, F32(0.5), out=y)
        np.add(y, F32(0.5), out=y)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = top[0].cpu_data
        t = np.subtract(F32(1), y, out=self._tmp.view(y.shape))
        dx = bottom[0].diff
        np.multiply(top[0].cpu_diff, y, out=dx)
        np.multiply(dx, t, out=dx)


@register("TanH")
class TanHLayer(NeuronLayer):
    def layer_setup(self, bottom, top):
        self._tmp = Scratch()

    def forward_cpu(self, bottom, top):
        np.tanh(bottom[0].cpu_data, out=top[0].data)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = top[0].cpu_data
        t = np.multiply(y, y, out=self._tmp.view(y.shape))
        np.subtract(F32(1), t, out=t)
        np.multiply(top[0].cpu_diff, t, out=bottom[0].diff)


@register("AbsVal")
class AbsValLayer(_KeepsInput):
    """y = |x|; dx = sign(x) * dy with sign(0) = 0.  (Caffe refuses to run AbsVal in place;
    here it runs in place by keeping a copy of x.)"""

    def layer_setup(self, bottom, top):
        self._tmp = Scratch()

    def forward_cpu(self, bottom, top):
        np.abs(self.forward_input(bottom, top), out=top[0].data)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = self.backward_input(bottom)
        s = np.sign(x, out=self._tmp.view(x.shape))
        np.multiply(top[0].cpu_diff, s, out=bottom[0].diff)


@register("Power")
class PowerLayer(_KeepsInput):
    """y = (shift + scale * x) ^ power."""

    def layer_setup(self, bottom, top):
        p = self.layer_param.power_param
        self.power, self.scale, self.shift = F32(p.power), F32(p.scale), F32(p.shift)
        self.diff_scale = self.power * self.scale
        self._tmp = Scratch()

    def copy_needed_in_place(self):
        return self.diff_scale != 0 and self.power != 1

    def forward_cpu(self, bottom, top):
        y = top[0].data
        if self.diff_scale == 0:
            # power == 0 or scale == 0: a constant (1 when power == 0, even for shift 0).
            y[...] = F32(1) if self.power == 0 else np.power(self.shift, self.power)
            return
        x = self.forward_input(bottom, top)
        _copy_unless_in_place(top[0], bottom[0], y, x)
        if self.scale != 1:
            np.multiply(y, self.scale, out=y)
        if self.shift != 0:
            np.add(y, self.shift, out=y)
        if self.power != 1:
            np.power(y, self.power, out=y)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        if self.diff_scale == 0:
            dx[...] = 0
            return
        t = self._tmp.view(dx.shape)
        if self.power == 1:
            t[...] = self.diff_scale
        else:
            x = self.backward_input(bottom)
            if self.power == 2:
                # dy/dx = diff_scale * scale * x + diff_scale * shift
                np.multiply(x, self.diff_scale * self.scale, out=t)
                if self.shift != 0:
                    np.add(t, self.diff_scale * self.shift, out=t)
            elif self.shift == 0:
                # Caffe writes dy/dx = power * y / x, which is 0/0 = NaN where x == 0 (for
                # power > 1 the true value is 0); matched, as Caffe's numbers are the spec.
                np.divide(top[0].cpu_data, x, out=t)
                np.multiply(t, self.power, out=t)
            else:
                # dy/dx = diff_scale * y / (shift + scale * x)
                np.copyto(t, x)
                if self.scale != 1:
                    np.multiply(t, self.scale, out=t)
                np.add(t, self.shift, out=t)
                np.divide(top[0].cpu_data, t, out=t)
                if self.diff_scale != 1:
                    np.multiply(t, self.diff_scale, out=t)
        np.multiply(top[0].cpu_diff, t, out=dx)


def _log_base(layer, base):
    """ln(base) for Exp / Log's base parameter (-1 meaning e), with Caffe's checks."""
    if base != -1 and not base > 0:
        raise layer.error(f"base must be strictly positive, got {base}")
    log_base = F32(1) if base == -1 else np.log(F32(base))
    if not np.isfinite(log_base):
        raise layer.error(f"log(base) = log({base}) = {log_base} is not finite")
    return log_base


@register("Exp")
class ExpLayer(NeuronLayer):
    """y = base ^ (shift + scale * x), base -1 meaning e."""

    def layer_setup(self, bottom, top):
        p = self.layer_param.exp_param
        base = F32(p.base)
        log_base = _log_base(self, base)
        self.inner_scale = log_base * F32(p.scale)
        shift = F32(p.shift)
        if shift == 0:
            self.outer_scale = F32(1)
        else:
            self.outer_scale = np.exp(shift) if base == -1 else np.power(base, shift)

    def forward_cpu(self, bottom, top):
        x, y = bottom[0].cpu_data, top[0].data
        if self.inner_scale == 1:
            np.exp(x, out=y)
        else:
            np.multiply(x, self.inner_scale, out=y)
            np.exp(y, out=y)
        if self.outer_scale != 1:
            np.multiply(y, self.outer_scale, out=y)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        np.multiply(top[0].cpu_data, top[0].cpu_diff, out=dx)
        if self.inner_scale != 1:
            np.multiply(dx, self.inner_scale, out=dx)


@register("Log")
class LogLayer(_KeepsInput):
    """y = log_base(shift + scale * x), base -1 meaning e."""

    def layer_setup(self, bottom, top):
        p = self.layer_param.log_param
        base = F32(p.base)
        log_base = _log_base(self, base)
        with np.errstate(divide="ignore"):
            self.base_scale = F32(1) / log_base
        if not np.isfinite(self.base_scale):
            raise self.error(f"1/log(base) = 1/log({base}) = {self.base_scale} is not finite")
        self.scale, self.shift = F32(p.scale), F32(p.shift)
        self.backward_num_scale = self.scale / log_base
        self._tmp = Scratch()

    def forward_cpu(self, bottom, top):
        x = self.forward_input(bottom, top)
        y = top[0].data
        if self.scale == 1 and self.shift == 0:
            np.log(x, out=y)
        else:
            _copy_unless_in_place(top[0], bottom[0], y, x)
            if self.scale != 1:
                np.multiply(y, self.scale, out=y)
            if self.shift != 0:
                np.add(y, self.shift, out=y)
            np.log(y, out=y)
        if self.base_scale != 1:
            np.multiply(y, self.base_scale, out=y)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = self.backward_input(bottom)
        t = self._tmp.view(x.shape)
        np.copyto(t, x)
        if self.scale != 1:
            np.multiply(t, self.scale, out=t)
        if self.shift != 0:
            np.add(t, self.shift, out=t)
        np.reciprocal(t, out=t)
        if self.backward_num_scale != 1:
            np.multiply(t, self.backward_num_scale, out=t)
        np.multiply(top[0].cpu_diff, t, out=bottom[0].diff)


BNLL_THRESHOLD = F32(50)  # Caffe's kBNLL_THRESHOLD: backward clamps x here before exp


@register("BNLL")
class BNLLLayer(_KeepsInput):
    """y = log(1 + exp(x)), as x + log(1 + exp(-x)) for x > 0 (no overflow)."""

    def layer_setup(self, bottom, top):
        self._tmp = Scratch()

    def forward_cpu(self, bottom, top):
        x = self.forward_input(bottom, top)
        # max(x, 0) + log(1 + exp(-|x|)) is both of Caffe's branches at once.
        t = np.abs(x, out=self._tmp.view(x.shape))
        np.negative(t, out=t)
        np.exp(t, out=t)
        np.log1p(t, out=t)
        y = top[0].data
        np.maximum(x, F32(0), out=y)
        np.add(y, t, out=y)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = self.backward_input(bottom)
        e = np.minimum(x, BNLL_THRESHOLD, out=self._tmp.view(x.shape))
        np.exp(e, out=e)
        dx = bottom[0].diff
        np.multiply(top[0].cpu_diff, e, out=dx)
        np.add(e, F32(1), out=e)
        np.divide(dx, e, out=dx)


@register("Threshold")
class ThresholdLayer(NeuronLayer):
    """y = 1 if x > threshold else 0.  No backward (Caffe: NOT_IMPLEMENTED)."""

    def layer_setup(self, bottom, top):
        self.threshold = F32(self.layer_param.threshold_param.threshold)

    def forward_cpu(self, bottom, top):
        np.greater(bottom[0].cpu_data, self.threshold, out=top[0].data)


@register("Dropout")
class DropoutLayer(NeuronLayer):
    """TRAIN: y = x * mask / (1 - ratio), mask ~ Bernoulli(1 - ratio) from the seeded
    generator; TEST: y = x."""

    def layer_setup(self, bottom, top):
        ratio = self.layer_param.dropout_param.dropout_ratio
        if not 0 <= F32(ratio) < 1:  # checked as stored: 0.99999999 is 1.0 in float32
            raise self.error(f"dropout_ratio must be in [0, 1), got {ratio}")
        self.threshold = F32(ratio)
        self.scale = F32(1.0 / (1.0 - float(self.threshold)))
        self._mask = Scratch()      # mask * scale, as float32
        self._keep = Scratch(np.bool_)
        self.mask = None

    def prepare_cpu(self, bottom, top):
        """Outside TRAIN in place: nothing to do (natively inside a program)."""
        if self.phase != caffe_pb2.TRAIN and top[0] is bottom[0]:
            return program.nothing
        return None

    def forward_cpu(self, bottom, top):
        x, y = bottom[0].cpu_data, top[0].data
        if self.phase != caffe_pb2.TRAIN:
            _copy_unless_in_place(top[0], bottom[0], y, x)
            return
        m = self._mask.view(x.shape)
        rng().random(dtype=np.float32, out=m)
        keep = np.greater_equal(m, self.threshold, out=self._keep.view(x.shape))
        np.multiply(keep, self.scale, out=m)
        self.mask = m
        np.multiply(x, m, out=y)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, dx = top[0].cpu_diff, bottom[0].diff
        if self.phase != caffe_pb2.TRAIN:
            _copy_unless_in_place(bottom[0], top[0], dx, dy)
            return
        np.multiply(dy, self.mask, out=dx)


@register("Clip")
class ClipLayer(_KeepsInput):
    """y = max(min, min(x, max)); gradient passes where min <= x <= max."""

    def layer_setup(self, bottom, top):
        p = self.layer_param.clip_param
        self.min, self.max = F32(p.min), F32(p.max)
        if self.min > self.max:
            raise self.error(f"clip_param min ({p.min:g}) must not exceed max ({p.max:g})")
        self._mask = Scratch(np.bool_)
        self._tmp = Scratch(np.bool_)

    def forward_cpu(self, bottom, top):
        x = self.forward_input(bottom, top)
        y = top[0].data
        np.minimum(x, self.max, out=y)
        np.maximum(y, self.min, out=y)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = self.backward_input(bottom)
        inside = np.greater_equal(x, self.min, out=self._mask.view(x.shape))
        np.logical_and(inside, np.less_equal(x, self.max, out=self._tmp.view(x.shape)),
                       out=inside)
        np.multiply(top[0].cpu_diff, inside, out=bottom[0].diff)


@register("Swish")
class SwishLayer(NeuronLayer):
    """y = x * sigmoid(beta * x)."""

    def layer_setup(self, bottom, top):
        self.beta = F32(self.layer_param.swish_param.beta)
        self._sig = Scratch()
        self._tmp = Scratch()
        self._tmp2 = Scratch()

    def forward_cpu(self, bottom, top):
        x = bottom[0].cpu_data
        s = self._sig.view(x.shape)  # kept for backward
        np.multiply(x, self.beta * F32(0.5), out=s)
        np.tanh(s, out=s)
        np.multiply(s, F32(0.5), out=s)
        np.add(s, F32(0.5), out=s)
        np.multiply(x, s, out=top[0].data)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = top[0].cpu_data
        s = self._sig.view(y.shape)
        # Caffe: dx = dy * (beta * y + sigmoid(beta * x) * (1 - beta * y))
        by = np.multiply(y, self.beta, out=self._tmp.view(y.shape))
        f = np.subtract(F32(1), by, out=self._tmp2.view(y.shape))
        np.multiply(f, s, out=f)
        np.add(f, by, out=f)
        np.multiply(top[0].cpu_diff, f, out=bottom[0].diff)
