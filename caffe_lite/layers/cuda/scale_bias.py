"""GPU paths of Scale and Bias (kernels in layers/kernels/scale_bias.cu); the operand
gradients are per-channel sums over (outer, inner) by the generic channel_sum."""
from ...backend import ops
from ..base import gpu_impl
from .common import I32, data, diff, elementwise, mdata, mdiff, state

M = "scale_bias"


@gpu_impl("Bias")
class Bias:
    @staticmethod
    def forward(layer, bottom, top):
        outer, dim, inner = layer.bias_term.dims
        bias = bottom[1] if len(bottom) > 1 else layer.blobs[0]
        elementwise(M, "bias_forward", "iiiPPP", bottom[0].count, I32(dim), I32(inner),
                    data(bottom[0]), data(bias), mdata(top[0]))

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        outer, dim, inner = layer.bias_term.dims
        dy = diff(top[0])
        from_param = len(bottom) == 1
        # The bias gradient reads dy before anything writes bottom[0]'s diff (maybe dy's).
        if (from_param and layer.param_propagate_down[0]) or (not from_param
                                                             and propagate_down[1]):
            bias = layer.blobs[0] if from_param else bottom[1]
            ops.channel_sum(outer, dim, inner, dy, mdiff(bias),
                            beta=1.0 if from_param else 0.0)
        if propagate_down[0] and top[0] is not bottom[0]:
            ops.copy(bottom[0].count, dy, mdiff(bottom[0]))


@gpu_impl("Scale")
class Scale:
    @staticmethod
    def forward(layer, bottom, top):
        outer, dim, inner = layer.dims
        n = bottom[0].count
        x = data(bottom[0])
        st = state(layer)
        st.fused_input = None
        if top[0] is bottom[0]:  # the scale gradient needs the input
            saved = st.buf("x", n)
            ops.copy(n, x, saved)
        scale = bottom[1] if len(bottom) > 1 else layer.blobs[0]
        bias = data(layer.blobs[layer.bias_id]) if layer.bias is not None else 0
        elementwise(M, "scale_forward", "iiiPPPP", n, I32(dim), I32(inner), x, data(scale),
                    bias, mdata(top[0]))

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        outer, dim, inner = layer.dims
        n = bottom[0].count
        dy = diff(top[0])
        if layer.bias is not None and layer.param_propagate_down[layer.bias_id]:
            bo, bd, bi = layer.bias.dims
            ops.channel_sum(bo, bd, bi, dy, mdiff(layer.blobs[layer.bias_id]), beta=1.0)
        from_param = len(bottom) == 1
        scale = layer.blobs[0] if from_param else bottom[1]
        if (from_param and layer.param_propagate_down[0]) or (not from_param
                                                             and propagate_down[1]):
            st = state(layer)
            # The input forward used: kept in place, or left by a fused BatchNorm step
            # (cuda/fusion.py).
            x = getattr(st, "fused_input", None) or (
                st.buf("x", n) if top[0] is bottom[0] else data(bottom[0]))
            # Parameter gradients accumulate; a scale from bottom[1] is overwritten.
            ops.channel_sum(outer, dim, inner, dy, mdiff(scale), b=x,
                            beta=1.0 if from_param else 0.0)
        if propagate_down[0]:
            elementwise(M, "scale_forward", "iiiPPPP", n, I32(dim), I32(inner), dy, data(scale),
                        0, mdiff(bottom[0]))
