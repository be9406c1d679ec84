"""Compile (or load from numba's cache) the CPU kernels ahead of the first real run.

    python -c "from caffe_lite.warmup import warm_up; warm_up()"

`warm_up()` runs a small net through forward and backward (so every kernel family the layers
use is compiled with the argument types the layers pass), the layers one by one outside their
fused groups, and the SGD update; it returns False without numba (or with CAFFE_LITE_JIT=0).
It lives above the layers (it builds a Net) so that `layers.jit` stays a leaf any layer can
import (STYLE.md A2)."""
import numpy as np

from .layers import jit

_WARM_UP_NET = """
name: "warm_up" force_backward: true
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 4 dim: 20 dim: 20 } } }
layer { name: "target" type: "Input" top: "target"
        input_param { shape { dim: 2 dim: 8 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "dw" type: "Convolution" bottom: "conv" top: "dw"
        convolution_param { num_output: 8 group: 8 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "dw_bn" type: "BatchNorm" bottom: "dw" top: "dw_bn" }
layer { name: "dw_scale" type: "Scale" bottom: "dw_bn" top: "dw_bn" }
layer { name: "dw2" type: "Convolution" bottom: "dw_bn" top: "dw2"
        convolution_param { num_output: 8 group: 8 kernel_size: 3 pad: 1 } }
layer { name: "bn2" type: "BatchNorm" bottom: "dw2" top: "bn2" }
layer { name: "s2" type: "Scale" bottom: "bn2" top: "s2" scale_param { bias_term: true } }
layer { name: "r2" type: "ReLU" bottom: "s2" top: "r2" }
layer { name: "pool" type: "Pooling" bottom: "r2" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "few" type: "Convolution" bottom: "pool" top: "few"
        convolution_param { num_output: 4 kernel_size: 4 } }
layer { name: "few_prelu" type: "PReLU" bottom: "few" top: "few" }
layer { name: "grouped" type: "Convolution" bottom: "conv" top: "grouped"
        convolution_param { num_output: 8 group: 2 kernel_size: 3 pad: 1 } }
layer { name: "pool_wide" type: "Pooling" bottom: "conv" top: "pool_wide"
        pooling_param { pool: MAX kernel_size: 3 stride: 1 } }
layer { name: "ave" type: "Pooling" bottom: "r2" top: "ave"
        pooling_param { pool: AVE kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "cat" type: "Concat" bottom: "ave" bottom: "r2" top: "cat" }
layer { name: "fc" type: "InnerProduct" bottom: "ave" top: "fc"
        inner_product_param { num_output: 3 } }
layer { name: "fc_relu" type: "ReLU" bottom: "fc" top: "fc" }
layer { name: "loss" type: "EuclideanLoss" bottom: "pool" bottom: "target" top: "loss" }
"""


def warm_up():
    """Compile (or load from the cache) the kernels the layers use; False without numba.  The
    first compile on a machine takes a few seconds per kernel and native task (about a minute
    for all of them on a 2-vCPU VM); later runs load the cache in well under a second."""
    if not jit.available():
        return False
    from .net import Net
    from .proto import caffe_pb2
    net = Net(_WARM_UP_NET, caffe_pb2.TRAIN)
    rng = np.random.default_rng(0)
    for name in ("data", "target"):
        b = net.blobs[name]
        b.data[...] = rng.standard_normal(b.shape)
    net.forward_backward()
    # the layers one by one too (BatchNorm, Scale and ReLU outside a fused group)
    for i, layer in enumerate(net.layers):
        layer.forward(net.bottom_vecs[i], net.top_vecs[i])
    for i in range(len(net.layers) - 1, -1, -1):
        if net.layer_need_backward[i]:
            net.layers[i].backward(net.top_vecs[i], net.bottom_need_backward[i],
                                   net.bottom_vecs[i])
    # the SGD solver's update (argument types as solvers/sgd.py passes them)
    f32 = np.float32
    mask = np.ones(4, f32)
    mask.flags.writeable = False
    sgd = jit.kernels("sgd")
    for m in (mask, mask[:0]):
        sgd.sgd_update(np.ones(4, f32), np.ones(4, f32), np.zeros(4, f32), m, f32(0.1), False,
                       f32(0.01), f32(0.9), 0, 4)
    # the native loops of the spinning product pool, where it can run, and the kernels' tasks
    from .layers import gemm_pool, parallel
    gemm_pool.warm_up(parallel._blas_libraries(),
                      [jit.kernels(f) for f in ("depthwise", "im2col", "neuron", "pooling",
                                                "winograd", "grouped", "softmax", "dense",
                                                "batchnorm", "concat")])
    return True
