"""GPU path of Pooling (kernels in layers/kernels/pooling.cu).

The argmax of MAX / the sampled position of STOCHASTIC is kept per output as an int32 input
index (Caffe's mask); STOCHASTIC's uniform draws come from caffe-lite's seeded generator on
the host, exactly the CPU path's draws, so both paths sample the same positions."""
import numpy as np

from ...backend.state import rng
from ...proto import caffe_pb2
from ..base import gpu_impl
from .common import I32, data, diff, elementwise, mdata, mdiff, state, upload

_P = caffe_pb2.PoolingParameter
M = "pooling"


def _geometry(layer, bottom):
    n, c, h, w = bottom[0].shape
    return (I32(h), I32(w), I32(layer.out_h), I32(layer.out_w), I32(layer.kernel_h),
            I32(layer.kernel_w), I32(layer.stride_h), I32(layer.stride_w))


@gpu_impl("Pooling")
class Pooling:
    @staticmethod
    def forward(layer, bottom, top):
        st = state(layer)
        g = _geometry(layer, bottom)
        pad = (I32(layer.pad_h), I32(layer.pad_w))
        n = top[0].count
        x, y = data(bottom[0]), mdata(top[0])
        if layer.pool == _P.MAX:
            top_mask = mdata(top[1]) if len(top) > 1 else 0
            elementwise(M, "max_pool_forward", "i" + "i" * 10 + "PPPP", n, *g, *pad, x, y,
                        st.buf("idx", n, np.int32), top_mask)
        elif layer.pool == _P.AVE:
            elementwise(M, "ave_pool_forward", "i" + "i" * 10 + "PP", n, *g, *pad, x, y)
        elif layer.phase == caffe_pb2.TRAIN:
            u = np.float32(1) - rng().random(top[0].shape, dtype=np.float32)  # in (0, 1]
            elementwise(M, "sto_pool_forward_train", "i" + "i" * 8 + "PPPP", n, *g, x,
                        upload(st, "uniform", u), y, st.buf("idx", n, np.int32))
        else:
            elementwise(M, "sto_pool_forward_test", "i" + "i" * 8 + "PPP", n, *g, x, y,
                        st.buf("idx", n, np.int32))

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        g = _geometry(layer, bottom)
        pad = (I32(layer.pad_h), I32(layer.pad_w))
        n = bottom[0].count
        dy, dx = diff(top[0]), mdiff(bottom[0])
        if layer.pool == _P.AVE:
            elementwise(M, "ave_pool_backward", "i" + "i" * 10 + "PP", n, *g, *pad, dy, dx)
        else:
            idx = state(layer).buf("idx", top[0].count, np.int32)
            elementwise(M, "argmax_pool_backward", "i" + "i" * 10 + "PPP", n, *g, *pad, dy,
                        idx, dx)
