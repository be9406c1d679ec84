"""Scale and Bias: multiply / add a blob broadcast along bottom[0], Caffe's ScaleLayer and
BiasLayer.

The operand (a learned parameter, or bottom[1]) has shape bottom[0].shape[axis:axis + n]; seen
as (outer, dim, inner) bottom[0] is multiplied or added along its middle axis.  A scalar operand
(shape ()) applies to everything.  Scale's bias_term uses the same _BiasTerm as Bias."""
import numpy as np

from ..errors import CaffeLiteError
from ..fillers import filler_param
from . import jit
from .base import Layer
from .parallel import run_blocks
from .registry import register

_F = np.float32
_NO_BIAS = np.zeros(0, _F)
_NO_BIAS.flags.writeable = False  # the same array type as a bias blob's cpu_data


def _axis(layer, blob, axis):
    try:
        return blob.canonical_axis_index(axis)
    except CaffeLiteError as exc:
        raise layer.error(str(exc)) from None


def param_shape(layer, bottom0, axis, num_axes, what):
    """Shape of a learned operand: num_axes dims of bottom[0] from axis (-1: all the rest)."""
    if num_axes < -1:
        raise layer.error(f"num_axes must be non-negative, or -1 to extend to the end of "
                          f"bottom[0]; got {num_axes}")
    axis = _axis(layer, bottom0, axis)
    if num_axes >= 0 and bottom0.num_axes < axis + num_axes:
        raise layer.error(f"{what} blob's shape extends past bottom[0]'s shape "
                          f"{bottom0.shape} when applied starting with bottom[0] axis = {axis} "
                          f"with num_axes = {num_axes}")
    return bottom0.shape[axis:] if num_axes == -1 else bottom0.shape[axis:axis + num_axes]


def broadcast_dims(layer, bottom0, operand_shape, axis, what):
    """(outer, dim, inner) of bottom[0] for an operand of `operand_shape` applied at `axis`."""
    n = len(operand_shape)
    # A scalar is applied at axis 0 whatever the parameter says (Caffe does the same).
    axis = 0 if n == 0 else _axis(layer, bottom0, axis)
    if bottom0.num_axes < axis + n or bottom0.shape[axis:axis + n] != tuple(operand_shape):
        raise layer.error(f"{what} shape {tuple(operand_shape)} does not match bottom[0] shape "
                          f"{bottom0.shape} at axis {axis}: needs bottom[0].shape"
                          f"[{axis}:{axis + n}] == {tuple(operand_shape)}")
    return (bottom0.count_range(0, axis), int(np.prod(operand_shape, dtype=np.int64)),
            bottom0.count_range(axis + n))


def _view3(a, dims):
    return a.reshape(dims)


def _on_channels(axis, num_axes):
    """Whether a parameter starting at `axis` lies along the channel axis (1)."""
    return (axis + num_axes if axis < 0 else axis) == 1


class _BiasTerm:
    """top += bias along the middle of (outer, dim, inner), and the bias gradient."""

    def __init__(self, layer, axis):
        self.layer, self.axis = layer, axis

    def reshape(self, bottom0, bias_shape):
        self.dims = broadcast_dims(self.layer, bottom0, bias_shape, self.axis, "bias")

    def forward(self, top_data, bias):
        y = _view3(top_data, self.dims)
        y += bias.reshape(1, -1, 1)

    def gradient(self, top_diff, bias_diff, accumulate):
        g = _view3(top_diff, self.dims).sum(axis=(0, 2), dtype=_F).reshape(bias_diff.shape)
        if accumulate:
            bias_diff += g
        else:
            bias_diff[...] = g


@register("Bias")
class BiasLayer(Layer):
    """top = bottom[0] + bias, the bias being a learned blob or bottom[1]."""
    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1
    channel_note = "not on the channel axis"
    channelwise = property(lambda self: _on_channels(self.layer_param.bias_param.axis,
                                                     self._bottom_axes))

    def channel_params(self):
        return tuple(range(len(self.blobs)))

    def layer_setup(self, bottom, top):
        p = self.layer_param.bias_param
        self._bottom_axes = bottom[0].num_axes
        self.bias_term = _BiasTerm(self, p.axis)
        if len(bottom) == 1 and not self.blobs:
            shape = param_shape(self, bottom[0], p.axis, p.num_axes, "bias")
            self.blobs = [self.param_blob(shape, filler_param(p, "filler"))]
        elif len(bottom) == 2 and self.blobs:
            raise self.error(f"takes its bias from bottom[1] but has {len(self.blobs)} blob(s)")

    def _bias(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom, top):
        self.bias_term.reshape(bottom[0], self._bias(bottom).shape)
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    def forward_cpu(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].data[...] = bottom[0].cpu_data
        self.bias_term.forward(top[0].data, self._bias(bottom).cpu_data)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0] and top[0] is not bottom[0]:
            bottom[0].diff[...] = top[0].cpu_diff
        from_param = len(bottom) == 1
        if (from_param and self.param_propagate_down[0]) or (not from_param and propagate_down[1]):
            self.bias_term.gradient(top[0].cpu_diff, self._bias(bottom).diff,
                                    accumulate=from_param)


@register("Scale")
class ScaleLayer(Layer):
    """top = bottom[0] * scale (+ bias), the scale being a learned blob or bottom[1]."""
    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1
    channel_note = "not on the channel axis"
    channelwise = property(lambda self: _on_channels(self.layer_param.scale_param.axis,
                                                     self._bottom_axes))

    def channel_params(self):
        return tuple(range(len(self.blobs)))

    def layer_setup(self, bottom, top):
        p = self.layer_param.scale_param
        self._bottom_axes = bottom[0].num_axes
        loaded = len(self.blobs)
        if len(bottom) == 1 and not loaded:
            shape = param_shape(self, bottom[0], p.axis, p.num_axes, "scale")
            self.blobs = [self.param_blob(shape, filler_param(p, "filler", type="constant",
                                                              value=1.0))]
        self.bias = None
        if p.bias_term:
            self.bias = _BiasTerm(self, p.axis)
            # As Caffe: the bias has as many axes as the scale from bottom[1], else num_axes.
            num_axes = bottom[1].num_axes if len(bottom) > 1 else p.num_axes
            if len(self.blobs) + len(bottom) < 3:  # the bias was not loaded
                shape = param_shape(self, bottom[0], p.axis, num_axes, "bias")
                self.blobs.append(self.param_blob(shape, filler_param(p, "bias_filler")))
            self.bias_id = len(self.blobs) - 1
        expected = (len(bottom) == 1) + (self.bias is not None)
        if len(self.blobs) != expected:
            raise self.error(f"has {len(self.blobs)} blob(s) but needs {expected} (bottoms: "
                             f"{len(bottom)}, bias_term: {str(p.bias_term).lower()})")
        self._temp = self._prod = None
        # Set by a fused BatchNorm -> Scale step (fusion.py): the input that step used.
        self._saved_input = None

    def _scale(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom, top):
        scale = self._scale(bottom)
        self.dims = broadcast_dims(self, bottom[0], scale.shape,
                                   self.layer_param.scale_param.axis, "scale")
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])
        shape = bottom[0].shape
        # In place, the input is kept for the scale gradient (and the product overwrites it).
        if top[0] is bottom[0]:
            if self._temp is None or self._temp.shape != shape:
                self._temp = np.empty(shape, _F)
        if self.bias is not None:
            self.bias.reshape(bottom[0], self.blobs[self.bias_id].shape)
        self._rows = (self.dims[0] * self.dims[1], self.dims[2])

    def _jit(self):
        """The compiled kernels, when they apply (the bias, if any, lines up with the scale)."""
        k = jit.kernels("scale")
        if k is None or (self.bias is not None and self.bias.dims != self.dims):
            return None
        return k

    def _bias_values(self):
        return self.blobs[self.bias_id].cpu_data.reshape(-1) if self.bias is not None \
            else _NO_BIAS

    def forward_cpu(self, bottom, top):
        self._saved_input = None
        x = bottom[0].cpu_data
        k = self._jit()
        if k is not None:
            in_place = top[0] is bottom[0]
            rows = self._rows
            x2 = x.reshape(rows)
            y2 = top[0].data.reshape(rows)
            keep = self._temp.reshape(rows) if in_place else y2
            s = self._scale(bottom).cpu_data.reshape(-1)
            b = self._bias_values()
            has_bias = self.bias is not None

            def block(a, c, slot):
                k.scale_forward(x2, s, b, y2, keep, has_bias, in_place, a, c)
            run_blocks(rows[0], rows[1], block, block_elements=None)
            return
        if top[0] is bottom[0]:
            np.copyto(self._temp, x)
        s = self._scale(bottom).cpu_data.reshape(1, -1, 1)
        np.multiply(_view3(x, self.dims), s, out=_view3(top[0].data, self.dims))
        if self.bias is not None:
            self.bias.forward(top[0].data, self.blobs[self.bias_id].cpu_data)

    def _input(self, top, bottom):
        """The input forward saw (in place, forward overwrote it)."""
        if self._saved_input is not None:
            return self._saved_input
        return self._temp if top[0] is bottom[0] else bottom[0].cpu_data

    def _backward_jit(self, k, top, propagate_down, bottom, want_scale, want_bias):
        in_place = top[0] is bottom[0]
        rows = self._rows
        dy = top[0].cpu_diff.reshape(rows)
        x = self._input(top, bottom).reshape(rows)
        scale = self._scale(bottom)
        s = scale.cpu_data.reshape(-1)
        # Without dx the kernel gets a writable placeholder it does not touch.
        dx = bottom[0].diff.reshape(rows) if propagate_down[0] else np.zeros((1, 1), _F)
        sums = np.empty((2, rows[0]), _F)
        want_dx = bool(propagate_down[0])
        if not want_dx and in_place:
            in_place = False  # dx is not written: dy is only read

        def block(a, c, slot):
            k.scale_backward(dy, x, s, dx, sums, want_scale, want_bias, want_dx, in_place, a, c)
        run_blocks(rows[0], rows[1], block, block_elements=None)
        outer, dim = self.dims[0], self.dims[1]
        if want_bias:
            bias = self.blobs[self.bias_id].diff
            bias += sums[1].reshape(outer, dim).sum(axis=0, dtype=_F).reshape(bias.shape)
        if want_scale:
            g = sums[0].reshape(outer, dim).sum(axis=0, dtype=_F).reshape(scale.shape)
            if len(bottom) == 1:
                scale.diff[...] += g
            else:
                scale.diff[...] = g

    def backward_cpu(self, top, propagate_down, bottom):
        from_param = len(bottom) == 1
        want_scale = bool((from_param and self.param_propagate_down[0])
                          or (not from_param and propagate_down[1]))
        want_bias = self.bias is not None and bool(self.param_propagate_down[self.bias_id])
        k = self._jit()
        if k is not None:
            return self._backward_jit(k, top, propagate_down, bottom, want_scale, want_bias)
        dy = top[0].cpu_diff
        if self.bias is not None and self.param_propagate_down[self.bias_id]:
            self.bias.gradient(dy, self.blobs[self.bias_id].diff, accumulate=True)
        from_param = len(bottom) == 1
        scale = self._scale(bottom)
        if (from_param and self.param_propagate_down[0]) or (not from_param and propagate_down[1]):
            in_place = top[0] is bottom[0]
            x = self._input(top, bottom)
            if not in_place and (self._prod is None or self._prod.shape != dy.shape):
                self._prod = np.empty(dy.shape, _F)
            prod = np.multiply(dy, x, out=self._temp if in_place else self._prod)
            g = _view3(prod, self.dims).sum(axis=(0, 2), dtype=_F).reshape(scale.shape)
            # Parameter gradients accumulate.  (Caffe overwrites the parameter's diff in the
            # special case scale.count == bottom.count; accumulating is what iter_size needs.)
            if from_param:
                scale.diff[...] += g
            else:
                scale.diff[...] = g
        if propagate_down[0]:
            s = scale.cpu_data.reshape(1, -1, 1)
            np.multiply(_view3(dy, self.dims), s, out=_view3(bottom[0].diff, self.dims))
