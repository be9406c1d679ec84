"""The GPU kernels of sparse inference (layers/kernels/sparse.cu) against the CPU's dense path:
InnerProduct and Convolution on random pruned weights, batch 1 and more, bias on and off,
group, stride, pad, dilation; the device copy of the CSR weight follows weight changes made on
the device.  Marked `gpu`; test_gpu_emulated.py runs them on the CPU emulator of the kernels."""
import numpy as np
import pytest

import caffe_lite
from caffe_lite.blob import Blob
from caffe_lite.proto import caffe_pb2
from caffe_lite.testing import layer_from_text

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("need_gpu")]



def _setup(text, x, density, seed):
    caffe_lite.set_mode_cpu()
    layer = layer_from_text(text, caffe_pb2.TEST)
    bottom, top = [Blob.from_array(x)], [Blob()]
    layer.setup(bottom, top)
    g = np.random.default_rng(seed)
    w = g.standard_normal(layer.blobs[0].shape).astype(np.float32)
    w[g.random(w.shape) >= density] = 0
    layer.blobs[0].data[...] = w
    for b in layer.blobs[1:]:
        b.data[...] = g.standard_normal(b.shape)
    return layer, bottom, top


def _dense_cpu_then_sparse_gpu(text, x, density=0.2, seed=0):
    layer, bottom, top = _setup(text, x, density, seed)
    layer.sparse.mode = "dense"
    layer.forward(bottom, top)
    expected = top[0].cpu_data.copy()
    top[0].data[...] = np.nan
    caffe_lite.set_mode_gpu()
    layer.sparse.mode = "sparse"
    layer.forward(bottom, top)
    assert layer.sparse.active, layer.sparse.reason
    got = top[0].cpu_data.copy()
    caffe_lite.set_mode_cpu()
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5 * max(1, np.abs(expected).max()))
    return layer, bottom, top


@pytest.mark.parametrize("batch,bias,transpose", [(1, True, False), (3, False, False),
                                                  (2, True, True)])
def test_inner_product(batch, bias, transpose):
    x = np.random.default_rng(1).standard_normal((batch, 3, 4, 5)).astype(np.float32)
    _dense_cpu_then_sparse_gpu(
        f'type: "InnerProduct" inner_product_param {{ num_output: 7 bias_term: '
        f'{str(bias).lower()} transpose: {str(transpose).lower()} }}', x)


def test_inner_product_many_nonzeros_per_row():
    # more nonzeros per row than threads per block: every thread sums several
    x = np.random.default_rng(2).standard_normal((2, 700)).astype(np.float32)
    layer, _, _ = _dense_cpu_then_sparse_gpu(
        'type: "InnerProduct" inner_product_param { num_output: 3 }', x, density=0.9)
    assert layer.sparse.matrix().nnz > 3 * 256


@pytest.mark.parametrize("conv", [
    "kernel_size: 1", "kernel_size: 1 group: 2 bias_term: false",
    "kernel_size: 3 pad: 1", "kernel_size: 3 stride: 2 pad: 1 dilation: 2",
    "kernel_h: 2 kernel_w: 3 group: 2 stride: 2"])
@pytest.mark.parametrize("batch", [1, 2])
def test_convolution(conv, batch):
    x = np.random.default_rng(3).standard_normal((batch, 4, 6, 5)).astype(np.float32)
    _dense_cpu_then_sparse_gpu(
        f'type: "Convolution" convolution_param {{ num_output: 6 {conv} }}', x, seed=batch)


def test_auto_stays_dense_on_the_gpu():
    x = np.ones((1, 8), np.float32)
    layer, bottom, top = _setup('type: "InnerProduct" inner_product_param { num_output: 4 }',
                                x, 0.1, 0)
    caffe_lite.set_mode_gpu()
    layer.sparse.mode = "auto"
    layer.forward(bottom, top)
    assert not layer.sparse.active and "GPU" in layer.sparse.reason


def test_device_copy_follows_weights_written_on_the_device():
    x = np.random.default_rng(4).standard_normal((2, 10)).astype(np.float32)
    layer, bottom, top = _dense_cpu_then_sparse_gpu(
        'type: "InnerProduct" inner_product_param { num_output: 5 }', x)
    first = layer.sparse.matrix()
    caffe_lite.set_mode_gpu()
    w = layer.blobs[0]
    dev = w.mutable_gpu_data          # a write on the device (as a GPU solver step)
    dev *= 2.0
    layer.forward(bottom, top)
    assert layer.sparse.matrix() is not first
    got = top[0].cpu_data.copy()
    caffe_lite.set_mode_cpu()
    expected = x @ w.cpu_data.T + layer.blobs[1].cpu_data
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-4)
