"""GPU path of Eltwise (PROD, SUM with coefficients, MAX).  In place (top is one of the
bottoms) that bottom's data is read from a copy taken in forward, as on the CPU."""
import numpy as np

from ...backend import ops
from ...proto import caffe_pb2
from ..base import gpu_impl
from .common import F32, I32, data, diff, elementwise, mdata, mdiff, state

M = "scale_bias"
_Op = caffe_pb2.EltwiseParameter


def _inputs(layer, bottom, top, saving):
    st = state(layer)
    n = top[0].count
    xs = [data(b) for b in bottom]
    alias = next((i for i, b in enumerate(bottom) if b is top[0]), -1)
    if alias >= 0:
        saved = st.buf("saved", n)
        if saving:
            ops.copy(n, xs[alias], saved)
        xs[alias] = saved
    return xs, alias


@gpu_impl("Eltwise")
class Eltwise:
    @staticmethod
    def forward(layer, bottom, top):
        xs, alias = _inputs(layer, bottom, top, saving=True)
        n = top[0].count
        y = mdata(top[0])
        if layer.op == _Op.PROD:
            ops.mul(n, xs[0], xs[1], y)
            for x in xs[2:]:
                ops.mul(n, y, x, y)
        elif layer.op == _Op.SUM:
            ops.scale(n, layer.coeffs[0], xs[0], y)
            for x, c in zip(xs[1:], layer.coeffs[1:]):
                if c == 1:
                    ops.add(n, y, x, y)
                else:
                    ops.axpy(n, c, x, y)
        elif layer.op == _Op.MAX:
            idx = state(layer).buf("max_idx", n, np.int32)
            elementwise(M, "eltwise_max_first", "iPPPP", n, xs[0], xs[1], y, idx)
            for i, x in enumerate(xs[2:], 2):
                elementwise(M, "eltwise_max_next", "iPiPP", n, x, I32(i), y, idx)
        else:
            raise layer.error(f"unknown elementwise operation {layer.op}")

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        xs, alias = _inputs(layer, bottom, top, saving=False)
        n = top[0].count
        y, dy = data(top[0]), diff(top[0])
        order = [i for i in range(len(bottom)) if i != alias] + ([alias] if alias >= 0 else [])
        for i in order:
            if not propagate_down[i]:
                continue
            dx = mdiff(bottom[i])
            if layer.op == _Op.PROD:
                if layer.stable_prod_grad:
                    t = state(layer).buf("prod", n)
                    others = [x for j, x in enumerate(xs) if j != i]
                    ops.copy(n, others[0], t)
                    for x in others[1:]:
                        ops.mul(n, t, x, t)
                    ops.mul(n, t, dy, dx)
                else:
                    elementwise(M, "eltwise_prod_grad", "iPPPP", n, y, xs[i], dy, dx)
            elif layer.op == _Op.SUM:
                c = layer.coeffs[i]
                if c == 1:
                    if i != alias:
                        ops.copy(n, dy, dx)
                else:
                    ops.scale(n, F32(c), dy, dx)
            else:
                elementwise(M, "eltwise_max_backward", "iPPiP", n, dy,
                            state(layer).buf("max_idx", n, np.int32), I32(i), dx)
