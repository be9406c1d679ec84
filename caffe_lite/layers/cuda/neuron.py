"""GPU paths of the neuron layers (kernels in layers/kernels/neuron.cu).

In place (top is bottom), layers whose backward reads x keep a device copy of it, exactly
where their CPU code keeps a host copy (`copy_needed_in_place`)."""
import numpy as np

from ...backend import ops
from ...backend.state import rng
from ...proto import caffe_pb2
from ..base import gpu_impl
from .common import (F32, I32, backward_input, data, diff, elementwise, forward_input, mdata,
                     mdiff, state, upload)

M = "neuron"


def _n(blob):
    return blob.count


@gpu_impl("ReLU")
class ReLU:
    @staticmethod
    def forward(layer, bottom, top):
        x = forward_input(layer, bottom, top, state(layer))
        elementwise(M, "relu_forward", "iPPf", _n(bottom[0]), x, mdata(top[0]),
                    F32(layer.negative_slope))

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = backward_input(bottom, state(layer))
        elementwise(M, "relu_backward", "iPPPf", _n(bottom[0]), x, diff(top[0]),
                    mdiff(bottom[0]), F32(layer.negative_slope))


@gpu_impl("PReLU")
class PReLU:
    @staticmethod
    def _geometry(layer, blob):
        channels = blob.shape[1]
        inner = blob.count_range(2)
        return channels, inner, int(layer.channel_shared)

    @staticmethod
    def forward(layer, bottom, top):
        x = forward_input(layer, bottom, top, state(layer))
        c, inner, shared = PReLU._geometry(layer, bottom[0])
        elementwise(M, "prelu_forward", "iiiiPPP", _n(bottom[0]), I32(c), I32(max(inner, 1)),
                    I32(shared), x, mdata(top[0]), data(layer.blobs[0]))

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        st = state(layer)
        x = backward_input(bottom, st)
        n = _n(bottom[0])
        c, inner, shared = PReLU._geometry(layer, bottom[0])
        dy = diff(top[0])
        # The slope gradient reads dy first: in place, dx overwrites dy.
        if layer.param_propagate_down[0]:
            t = st.buf("slope_term", n)
            elementwise(M, "prelu_slope_term", "iPPP", n, x, dy, t)
            slope = layer.blobs[0]
            if shared:
                ops.channel_sum(1, 1, n, t, mdiff(slope), beta=1.0)
            else:
                ops.channel_sum(bottom[0].shape[0], c, inner, t, mdiff(slope), beta=1.0)
        if propagate_down[0]:
            elementwise(M, "prelu_backward", "iiiiPPPP", n, I32(c), I32(max(inner, 1)),
                        I32(shared), x, dy, mdiff(bottom[0]), data(layer.blobs[0]))


@gpu_impl("ELU")
class ELU:
    @staticmethod
    def forward(layer, bottom, top):
        x = forward_input(layer, bottom, top, state(layer))
        elementwise(M, "elu_forward", "iPPf", _n(bottom[0]), x, mdata(top[0]), F32(layer.alpha))

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = backward_input(bottom, state(layer))
        elementwise(M, "elu_backward", "iPPPPf", _n(bottom[0]), x, data(top[0]), diff(top[0]),
                    mdiff(bottom[0]), F32(layer.alpha))


def _simple(type_name, fwd, bwd, backward_reads_x):
    """A neuron whose forward is fwd(x) -> y and backward bwd(x or y, dy) -> dx."""

    class Impl:
        @staticmethod
        def forward(layer, bottom, top):
            x = forward_input(layer, bottom, top, state(layer)) if backward_reads_x \
                else data(bottom[0])
            elementwise(M, fwd, "iPP", _n(bottom[0]), x, mdata(top[0]))

        @staticmethod
        def backward(layer, top, propagate_down, bottom):
            if not propagate_down[0]:
                return
            v = backward_input(bottom, state(layer)) if backward_reads_x else data(top[0])
            elementwise(M, bwd, "iPPP", _n(bottom[0]), v, diff(top[0]), mdiff(bottom[0]))

    Impl.__name__ = Impl.__qualname__ = type_name
    return gpu_impl(type_name)(Impl)


Sigmoid = _simple("Sigmoid", "sigmoid_forward", "sigmoid_backward", False)
TanH = _simple("TanH", "tanh_forward", "tanh_backward", False)
AbsVal = _simple("AbsVal", "abs_forward", "abs_backward", True)
BNLL = _simple("BNLL", "bnll_forward", "bnll_backward", True)


@gpu_impl("Power")
class Power:
    @staticmethod
    def forward(layer, bottom, top):
        n = _n(bottom[0])
        if layer.diff_scale == 0:
            value = F32(1) if layer.power == 0 else np.power(layer.shift, layer.power)
            ops.fill(n, value, mdata(top[0]))
            return
        x = forward_input(layer, bottom, top, state(layer))
        elementwise(M, "power_forward", "iPPfff", n, x, mdata(top[0]), F32(layer.power),
                    F32(layer.scale), F32(layer.shift))

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        n = _n(bottom[0])
        if layer.diff_scale == 0:
            ops.fill(n, 0.0, mdiff(bottom[0]))
            return
        if layer.power == 1:
            mode, x, y = 1, 0, 0
        else:
            x = backward_input(bottom, state(layer))
            y = 0
            if layer.power == 2:
                mode = 2
            elif layer.shift == 0:
                mode, y = 3, data(top[0])
            else:
                mode, y = 4, data(top[0])
        a = F32(layer.diff_scale * layer.scale)
        b = F32(layer.diff_scale * layer.shift)
        elementwise(M, "power_backward", "iiPPPPffffff", n, I32(mode), x, y, diff(top[0]),
                    mdiff(bottom[0]), F32(layer.power), F32(layer.scale), F32(layer.shift),
                    F32(layer.diff_scale), a, b)


@gpu_impl("Exp")
class Exp:
    @staticmethod
    def forward(layer, bottom, top):
        elementwise(M, "exp_forward", "iPPff", _n(bottom[0]), data(bottom[0]), mdata(top[0]),
                    F32(layer.inner_scale), F32(layer.outer_scale))

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        elementwise(M, "exp_backward", "iPPPf", _n(bottom[0]), data(top[0]), diff(top[0]),
                    mdiff(bottom[0]), F32(layer.inner_scale))


@gpu_impl("Log")
class Log:
    @staticmethod
    def forward(layer, bottom, top):
        x = forward_input(layer, bottom, top, state(layer))
        elementwise(M, "log_forward", "iPPfff", _n(bottom[0]), x, mdata(top[0]),
                    F32(layer.scale), F32(layer.shift), F32(layer.base_scale))

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = backward_input(bottom, state(layer))
        elementwise(M, "log_backward", "iPPPfff", _n(bottom[0]), x, diff(top[0]),
                    mdiff(bottom[0]), F32(layer.scale), F32(layer.shift),
                    F32(layer.backward_num_scale))


@gpu_impl("Threshold")
class Threshold:
    @staticmethod
    def forward(layer, bottom, top):
        elementwise(M, "threshold_forward", "iPPf", _n(bottom[0]), data(bottom[0]),
                    mdata(top[0]), F32(layer.threshold))

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        layer.backward_cpu(top, propagate_down, bottom)  # no backward: raises if asked for one


@gpu_impl("Clip")
class Clip:
    @staticmethod
    def forward(layer, bottom, top):
        x = forward_input(layer, bottom, top, state(layer))
        elementwise(M, "clip_forward", "iPPff", _n(bottom[0]), x, mdata(top[0]),
                    F32(layer.min), F32(layer.max))

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = backward_input(bottom, state(layer))
        elementwise(M, "clip_backward", "iPPPff", _n(bottom[0]), x, diff(top[0]),
                    mdiff(bottom[0]), F32(layer.min), F32(layer.max))


@gpu_impl("Swish")
class Swish:
    @staticmethod
    def forward(layer, bottom, top):
        n = _n(bottom[0])
        s = state(layer).buf("sigmoid", n)
        elementwise(M, "swish_forward", "iPPPf", n, data(bottom[0]), s, mdata(top[0]),
                    F32(layer.beta * F32(0.5)))

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        n = _n(bottom[0])
        s = state(layer).buf("sigmoid", n)
        elementwise(M, "swish_backward", "iPPPPf", n, data(top[0]), s, diff(top[0]),
                    mdiff(bottom[0]), F32(layer.beta))


@gpu_impl("Dropout")
class Dropout:
    """The keep-mask is drawn on the host from caffe-lite's seeded generator, with exactly
    the CPU path's draws, and uploaded: GPU and CPU runs with one seed drop the same units."""

    @staticmethod
    def forward(layer, bottom, top):
        n = _n(bottom[0])
        x, y = data(bottom[0]), mdata(top[0])
        if layer.phase != caffe_pb2.TRAIN:
            ops.copy(n, x, y)
            return
        st = state(layer)
        u = getattr(st, "host_mask", None)
        if u is None or u.size != n:
            u = st.host_mask = np.empty(n, np.float32)
        rng().random(dtype=np.float32, out=u)
        keep = np.greater_equal(u, layer.threshold)
        np.multiply(keep, layer.scale, out=u)
        m = upload(st, "mask", u)
        ops.mul(n, x, m, y)

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        n = _n(bottom[0])
        dy, dx = diff(top[0]), mdiff(bottom[0])
        if layer.phase != caffe_pb2.TRAIN:
            ops.copy(n, dy, dx)
            return
        ops.mul(n, dy, state(layer).buf("mask", n), dx)
