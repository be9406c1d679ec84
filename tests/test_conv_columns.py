"""A convolution's weight gradient reuses the columns (im2col) its forward built, and only while
nothing can have changed the bottom since: the gradients are those of recomputing them, also
when a later layer writes the bottom in place or the user writes it between the passes."""
import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.layers import im2col

_CONV = """
layer { name: "conv" type: "Convolution" bottom: "%s" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "target" type: "Input" top: "target"
        input_param { shape { dim: 2 dim: 4 dim: 8 dim: 8 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "conv" bottom: "target" top: "loss" }
"""
# (no force_backward: the input gets no gradient, so nothing but a forward refills the buffer)
PLAIN = """
name: "c"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
""" + _CONV % "data"

# the conv's bottom shares its memory with `b`, which a later in-place ReLU writes: Caffe's
# backward then reads the rectified values, not what the forward saw
WRITTEN_LATER = """
name: "c" force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "split" type: "Split" bottom: "data" top: "a" top: "b" }
""" + _CONV % "a" + """
layer { name: "relu" type: "ReLU" bottom: "b" top: "b" }
layer { name: "silence" type: "Silence" bottom: "b" }
"""


@pytest.fixture
def fills(monkeypatch):
    """The column fills of backward_weight (the forward's are prepared and not counted)."""
    calls = []
    original = im2col.GemmEngine._im2col

    def counting(self, x, n0, n1):
        calls.append((n0, n1))
        return original(self, x, n0, n1)
    monkeypatch.setattr(im2col.GemmEngine, "_im2col", counting)
    return calls


def _net(text, seed=0):
    net = caffe.Net(text, caffe.TRAIN)
    rng = np.random.default_rng(seed)
    net.blobs["data"].data[...] = rng.standard_normal((2, 3, 8, 8), dtype=np.float32)
    net.blobs["target"].data[...] = rng.standard_normal((2, 4, 8, 8), dtype=np.float32)
    return net, rng


def _gradient(net, rng, between=None):
    """The conv's weight gradient after a forward, `between(net)`, and a backward; the
    gradient of its top is then net.blobs["conv"].diff."""
    net.forward()
    conv = net.layers[net._layer_names.index("conv")]
    conv.blobs[0].diff[...] = 0
    if between is not None:
        between(net)
    net.backward()
    return conv.blobs[0].diff.copy()


def _expected(net, x, dy):
    """The weight gradient from x and dy alone (a fresh layer, no net)."""
    conv = net.layers[net._layer_names.index("conv")]
    layer = caffe.layers.create_layer(conv.layer_param)
    bottom, top = [caffe.Blob(x.shape)], [caffe.Blob()]
    layer.setup(bottom, top)
    layer.blobs[0].data[...] = conv.blobs[0].data
    layer.blobs[1].data[...] = conv.blobs[1].data
    bottom[0].data[...] = x
    layer.forward(bottom, top)
    layer.blobs[0].diff[...] = 0
    top[0].diff[...] = dy
    layer.backward(top, [False], bottom)
    return layer.blobs[0].diff.copy()


@pytest.mark.parametrize("force_backward", [False, True])
def test_the_backward_reuses_the_forward_columns(fills, force_backward):
    net, rng = _net(PLAIN.replace('name: "c"', 'name: "c" force_backward: true')
                    if force_backward else PLAIN)
    x = net.blobs["data"].data.copy()
    for _ in range(3):
        fills.clear()
        got = _gradient(net, rng)
        assert fills == []
        np.testing.assert_array_equal(got, _expected(net, x, net.blobs["conv"].diff))


def test_a_bottom_a_later_layer_writes_is_read_again(fills):
    net, rng = _net(WRITTEN_LATER)
    held = net.blobs["data"].data
    x = held.copy()
    _gradient(net, rng)         # (the first pass prepares its steps: blobs' versions move)
    held[...] = x               # (as a data layer writes its top)
    fills.clear()
    got = _gradient(net, rng)
    assert fills == [(0, 2)]
    rectified = np.maximum(x, 0)
    np.testing.assert_array_equal(net.blobs["a"].data, rectified)
    np.testing.assert_array_equal(got, _expected(net, rectified, net.blobs["conv"].diff))
    assert not np.array_equal(got, _expected(net, x, net.blobs["conv"].diff))


def test_a_bottom_the_user_writes_between_the_passes_is_read_again(fills):
    net, rng = _net(PLAIN)
    other = rng.standard_normal((2, 3, 8, 8), dtype=np.float32)

    def write(net):
        net.blobs["data"].data[...] = other
    got = _gradient(net, rng, write)
    assert fills == [(0, 2)]
    np.testing.assert_array_equal(got, _expected(net, other, net.blobs["conv"].diff))


def test_a_sparse_forward_leaves_no_columns_to_reuse(fills, monkeypatch):
    """The sparse product may use the column buffer itself: after a sparse forward on a new
    input (written by a layer, so no version changes), the backward fills columns again."""
    net, rng = _net(PLAIN)
    held = net.blobs["data"].data             # (as a data layer's prepared step holds it)
    _gradient(net, rng)                       # dense: columns of the first input left over
    conv = net.layers[net._layer_names.index("conv")]
    conv.sparse.mode = "sparse"
    if conv.sparse.choose(conv.columns) is None:
        pytest.skip("no sparse CPU path here (numba absent or CAFFE_LITE_JIT=0)")
    x2 = rng.standard_normal((2, 3, 8, 8), dtype=np.float32)
    held[...] = x2
    fills.clear()
    got = _gradient(net, rng)
    assert fills == [(0, 2)]
    np.testing.assert_allclose(got, _expected(net, x2, net.blobs["conv"].diff), rtol=1e-5,
                               atol=1e-5)
