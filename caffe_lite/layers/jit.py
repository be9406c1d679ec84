"""Optional compiled CPU kernels (numba).

A few layers have loops that whole-array numpy cannot run at memory speed: the depthwise
convolution (nine strided taps over small planes) and the per-channel reductions of BatchNorm
and Scale.  When numba is installed (`pip install caffe-lite[fast]`) those layers use the
kernels of `_jit_kernels`; without it they run their numpy code, with the same results within
float32 rounding.  CAFFE_LITE_JIT=0 turns the kernels off.

The kernels are compiled on first use and cached on disk (numba's cache=True), so only the
first run on a machine pays the compile time; `warm_up()` compiles them ahead of time."""
import importlib
import os

_kernels = None
_tried = False
_families = {}


def enabled():
    return os.environ.get("CAFFE_LITE_JIT", "1").lower() not in ("0", "false", "no", "off")


def kernels(family=None):
    """The compiled-kernel module, or None (no numba, or CAFFE_LITE_JIT=0).  With `family`,
    the module layers/numba/<family>.py (STYLE.md A1: one numba file per family)."""
    global _kernels, _tried
    if not enabled():
        return None
    if family is not None:
        if family not in _families:
            try:
                _families[family] = importlib.import_module(f".numba.{family}", __package__)
            except ImportError:
                _families[family] = None
        return _families[family]
    if not _tried:
        _tried = True
        try:
            from . import _jit_kernels
        except ImportError:
            _kernels = None
        else:
            _kernels = _jit_kernels
    return _kernels


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
layer { name: "pool_wide" type: "Pooling" bottom: "conv" top: "pool_wide"
        pooling_param { pool: MAX kernel_size: 3 stride: 1 } }
layer { name: "ave" type: "Pooling" bottom: "r2" top: "ave"
        pooling_param { pool: AVE kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "pool" bottom: "target" top: "loss" }
"""


def warm_up():
    """Compile (or load from the cache) the kernels the layers use, by running a small net
    through forward and backward; returns False without numba.  The first compile on a
    machine takes a few seconds per kernel (about 15 s for MobileNet's); later runs load the
    cache in well under a second."""
    if kernels() is None:
        return False
    import numpy as np
    from ..net import Net
    from ..proto import caffe_pb2
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
    for m in (mask, mask[:0]):
        kernels().sgd_update(np.ones(4, f32), np.ones(4, f32), np.zeros(4, f32), m, f32(0.1),
                             False, f32(0.01), f32(0.9), 0, 4)
    return True
