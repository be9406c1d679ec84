"""GPU path of InnerProduct: cuBLAS SGEMM for the three products, a bias broadcast and a
per-output reduction for the bias gradient."""
from ...backend import cublas, ops
from ..base import gpu_impl
from .common import data, diff, mdata, mdiff
from .conv import add_bias


@gpu_impl("InnerProduct")
class InnerProduct:
    @staticmethod
    def forward(layer, bottom, top):
        M, K, N = layer.M, layer.K, layer.num_output
        x, y, w = data(bottom[0]), mdata(top[0]), data(layer.blobs[0])
        # y (M x N) = x (M x K) . W^T, W stored (N, K); with `transpose` W is stored (K, N).
        cublas.gemm(False, not layer.transpose, M, N, K, 1.0, x, w, 0.0, y)
        if layer.bias_term:
            add_bias(M, N, 1, data(layer.blobs[1]), y)

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        M, K, N = layer.M, layer.K, layer.num_output
        dy = diff(top[0])
        if layer.param_propagate_down[0]:
            x, dw = data(bottom[0]), mdiff(layer.blobs[0])
            if layer.transpose:
                cublas.gemm(True, False, K, N, M, 1.0, x, dy, 1.0, dw)   # W (K, N) += x^T dy
            else:
                cublas.gemm(True, False, N, K, M, 1.0, dy, x, 1.0, dw)   # W (N, K) += dy^T x
        if layer.bias_term and layer.param_propagate_down[1]:
            ops.channel_sum(M, N, 1, dy, mdiff(layer.blobs[1]), beta=1.0)
        if propagate_down[0]:
            # dx (M x K) = dy (M x N) . W (N x K)
            cublas.gemm(False, layer.transpose, M, K, N, 1.0, dy, data(layer.blobs[0]), 0.0,
                        mdiff(bottom[0]))
