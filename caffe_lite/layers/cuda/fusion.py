"""GPU paths of the layer groups of layers/fusion.py: BatchNorm -> Scale (-> ReLU) as one
forward and one backward pass over the activations (kernels in layers/kernels/
normalization.cu).

Forward with batch statistics: one reduction pass over x (Welford / Chan moments per
channel in two deterministic stages) and one elementwise pass writing y and xnorm; with
global statistics only the elementwise pass.  Backward: one reduction pass over (dy, xnorm)
and one elementwise pass writing dx (and, when BatchNorm is not in place, the diff at Scale's
input on T, as the layers one by one leave it).  BatchNorm's device state (mean, std, xnorm)
and Scale's input are left where their own GPU code keeps them, so either layer can run alone
afterwards."""
import numpy as np

from ...backend import ops
from ..base import gpu_impl
from .common import F32, I32, data, diff, kernel, launch, launch_1d, mdata, mdiff, state
from .normalization import _bn_dims

M = "normalization"
THREADS = 256


def _vector_ok(S, *pointers):
    """float4 paths: planes of a multiple of 4 floats starting 16-byte aligned."""
    return S % 4 == 0 and all(p % 16 == 0 for p in pointers if p)


def _scale_bias(group):
    scale = group.scale
    b = data(scale.blobs[scale.bias_id]) if scale.bias is not None else 0
    return data(scale.blobs[0]), b


@gpu_impl("BatchNorm+Scale")
class BatchNormScale:
    @staticmethod
    def forward(group):
        bn, scale = group.bn, group.scale
        st = state(bn)
        N, C, S = _bn_dims(bn, group.x_blob)
        count = group.x_blob.count
        x = data(group.x_blob)
        y = mdata(group.t_blob)
        mean, std = st.buf("mean", C), st.buf("std", C)
        s, b = _scale_bias(group)
        relu = I32(group.relu)
        if bn.use_global_stats:
            stat_a, stat_b, factor = (data(p) for p in bn.blobs)
            xnorm = 0
        else:
            m = N * S
            splits = ops._splits(C, m)
            partial = st.buf("stats_partial", 3 * C * splits)
            vec = _vector_ok(S, x)
            launch(kernel(M, "bn_scale_stats_partial", "iiiiiPP"), (C, splits, 1),
                   (THREADS, 1, 1), I32(N), I32(C), I32(S), I32(splits), I32(vec), x, partial)
            correction = F32(m / (m - 1)) if m > 1 else F32(1)
            run_mean, run_var, run_factor = (mdata(p) for p in bn.blobs)
            launch_1d(kernel(M, "bn_scale_stats_finish", "iiPfffPPPPP"), C, I32(C),
                      I32(splits), partial, F32(bn.eps), F32(bn.moving_average_fraction),
                      correction, run_mean, run_var, run_factor, mean, std)
            stat_a, stat_b, factor = mean, std, 0
            xnorm = st.buf("xnorm", count)
        vec = _vector_ok(S, x, y, xnorm)
        launch_1d(kernel(M, "bn_scale_apply", "iiiiifPPPPPPPPiPP"), count // 4 if vec else count,
                  I32(count), I32(C), I32(S), I32(vec), I32(bn.use_global_stats), F32(bn.eps),
                  x, stat_a, stat_b, factor, mean, std, s, b, relu, y, xnorm)
        # A Scale backward run on its own reads the input this step gave it.
        state(scale).fused_input = xnorm or None

    @staticmethod
    def backward(group):
        bn, scale = group.bn, group.scale
        st = state(bn)
        N, C, S = _bn_dims(bn, group.x_blob)
        count = group.x_blob.count
        same = group.x_blob is group.t_blob
        dy = diff(group.t_blob)
        dt = 0 if same else mdiff(group.t_blob)
        dx = mdiff(group.x_blob)
        xnorm, std = st.buf("xnorm", count), st.buf("std", C)
        s, b = _scale_bias(group)
        relu = I32(group.relu)
        dscale = mdiff(scale.blobs[0]) if scale.param_propagate_down[0] else 0
        dbias = (mdiff(scale.blobs[scale.bias_id]) if scale.bias is not None
                 and scale.param_propagate_down[scale.bias_id] else 0)
        m = N * S
        splits = ops._splits(C, m)
        partial = st.buf("grad_partial", 2 * C * splits)
        coef = st.buf("grad_coef", 2 * C)
        launch(kernel(M, "bn_scale_grad_partial", "iiiiiPPPPiP"), (C, splits, 1),
               (THREADS, 1, 1), I32(N), I32(C), I32(S), I32(splits), I32(_vector_ok(S, dy, xnorm)),
               dy, xnorm, s, b, relu, partial)
        launch_1d(kernel(M, "bn_scale_grad_finish", "iiPdPPPP"), C, I32(C), I32(splits), partial,
                  np.float64(1.0 / m if m else 0.0), s, dscale, dbias, coef)
        vec = _vector_ok(S, dy, xnorm, dt, dx)
        launch_1d(kernel(M, "bn_scale_grad_apply", "iiiiPPPPiPPPP"), count // 4 if vec else count,
                  I32(count), I32(C), I32(S), I32(vec), dy, xnorm, s, b, relu, coef, std, dt, dx)
