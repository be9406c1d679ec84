"""GPU paths of BatchNorm and LRN (kernels in layers/kernels/normalization.cu; per-channel
sums by the generic two-stage channel_sum)."""
from ...backend import ops
from ..base import gpu_impl
from .common import F32, I32, data, diff, elementwise, mdata, mdiff, state

M = "normalization"


def _bn_dims(layer, blob):
    n = blob.shape[0] if blob.num_axes else 1
    c = layer.channels
    s = blob.count // max(1, n * c)
    return n, c, s


@gpu_impl("BatchNorm")
class BatchNorm:
    @staticmethod
    def forward(layer, bottom, top):
        st = state(layer)
        N, C, S = _bn_dims(layer, bottom[0])
        count = bottom[0].count
        x, y = data(bottom[0]), mdata(top[0])
        mean, std = st.buf("mean", C), st.buf("std", C)
        if layer.use_global_stats:
            elementwise(M, "bn_stats_global", "iPPPfPP", C, *(data(b) for b in layer.blobs),
                        F32(layer.eps), mean, std)
        else:
            m = N * S
            ops.channel_sum(N, C, S, x, mean, alpha=1.0 / m if m else 0.0)
        elementwise(M, "bn_center", "iiiPPP", count, I32(C), I32(S), x, mean, y)
        if not layer.use_global_stats:
            var = st.buf("var", C)
            ops.channel_sum(N, C, S, y, var, b=y, alpha=1.0 / m if m else 0.0)
            correction = F32(m / (m - 1)) if m > 1 else F32(1)
            elementwise(M, "bn_stats_train", "iPPfffPPPP", C, mean, var, F32(layer.eps),
                        F32(layer.moving_average_fraction), correction,
                        *(mdata(b) for b in layer.blobs), std)
        xnorm = 0 if layer.use_global_stats else st.buf("xnorm", count)
        elementwise(M, "bn_divide", "iiiPPPP", count, I32(C), I32(S), y, std, y, xnorm)

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        st = state(layer)
        N, C, S = _bn_dims(layer, bottom[0])
        count = bottom[0].count
        dy, dx = diff(top[0]), mdiff(bottom[0])
        std = st.buf("std", C)
        if layer.use_global_stats:
            elementwise(M, "bn_divide", "iiiPPPP", count, I32(C), I32(S), dy, std, dx, 0)
            return
        y = st.buf("xnorm", count)
        m = N * S
        mean_dyy, mean_dy = st.buf("mean_dyy", C), st.buf("mean_dy", C)
        ops.channel_sums_ab(N, C, S, dy, y, mean_dyy, mean_dy, alpha=1.0 / m if m else 0.0)
        elementwise(M, "bn_backward", "iiiPPPPPP", count, I32(C), I32(S), dy, y, mean_dyy,
                    mean_dy, std, dx)


@gpu_impl("LRN")
class LRN:
    @staticmethod
    def _window(layer, shape, a, out, square):
        n, c, h, w = shape
        count = n * c * h * w
        if layer.across:
            elementwise(M, "lrn_window_across", "iiiiiiPP", count, I32(c), I32(h * w),
                        I32(layer.size), I32(layer.pre_pad), I32(square), a, out)
        else:
            elementwise(M, "lrn_window_within", "iiiiiiPP", count, I32(h), I32(w),
                        I32(layer.size), I32(layer.pre_pad), I32(square), a, out)

    @staticmethod
    def forward(layer, bottom, top):
        st = state(layer)
        shape = bottom[0].shape
        count = bottom[0].count
        x = data(bottom[0])
        if top[0] is bottom[0]:  # backward needs the input
            saved = st.buf("x", count)
            ops.copy(count, x, saved)
            x = saved
        scale, scale_pow = st.buf("scale", count), st.buf("scale_pow", count)
        LRN._window(layer, shape, x, scale, 1)
        elementwise(M, "lrn_output", "iifffffPPPP", count, I32(0 if layer.across else 1),
                    F32(layer.alpha / F32(layer.size)), F32(layer.k),
                    F32(layer.size * layer.size), F32(layer.alpha), F32(-layer.beta), x, scale,
                    scale_pow, mdata(top[0]))

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        st = state(layer)
        shape = bottom[0].shape
        count = bottom[0].count
        x = st.buf("x", count) if top[0] is bottom[0] else data(bottom[0])
        y, dy = data(top[0]), diff(top[0])
        scale, scale_pow = st.buf("scale", count), st.buf("scale_pow", count)
        ratio, acc = st.buf("ratio", count), st.buf("acc", count)
        elementwise(M, "lrn_ratio", "iPPPP", count, dy, y, scale, ratio)
        LRN._window(layer, shape, ratio, acc, 0)
        norm = layer.size if layer.across else layer.size * layer.size
        coef = F32(2) * layer.alpha * layer.beta / F32(norm)
        elementwise(M, "lrn_backward", "iPPPPfP", count, dy, scale_pow, acc, x, F32(coef),
                    mdiff(bottom[0]))
