"""Flatten, Reshape, Crop, Permute."""
import numpy as np
import pytest

from caffe_lite.blob import Blob
from caffe_lite.errors import LayerSetupError
from caffe_lite.testing import blob, check_gradient, forward, layer_from_text


def arange(*shape):
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def assert_shares_memory(layer, b):
    top = forward(layer, [b])
    top[0].data.reshape(-1)[0] = 123
    assert b.data.reshape(-1)[0] == 123
    top[0].diff[...] = 7
    assert np.all(b.diff == 7)
    b.data.reshape(-1)[-1] = -5
    assert top[0].data.reshape(-1)[-1] == -5
    return top


# ---------------------------------------------------------------------------- Flatten
@pytest.mark.parametrize("param,shape", [
    ("", (2, 60)),
    ("flatten_param { axis: 2 end_axis: 3 }", (2, 3, 20)),
    ("flatten_param { axis: 1 end_axis: 2 }", (2, 12, 5)),
    ("flatten_param { axis: 0 }", (120,)),
    ("flatten_param { axis: -3 end_axis: -2 }", (2, 12, 5)),
    ("flatten_param { axis: 2 end_axis: 1 }", (2, 3, 1, 4, 5)),  # Caffe inserts a 1
])
def test_flatten_shapes(param, shape):
    x = arange(2, 3, 4, 5)
    top = forward(layer_from_text(f'type: "Flatten" {param}'), [blob(x)])
    assert top[0].shape == shape
    np.testing.assert_array_equal(top[0].data, x.reshape(shape))


def test_flatten_shares_data_and_diff():
    assert_shares_memory(layer_from_text('type: "Flatten"'), blob((2, 3, 2), seed=0))
    check_gradient(layer_from_text('type: "Flatten"'), [blob((2, 3, 2), seed=1)])


def test_flatten_errors():
    b = blob((2, 3, 4), seed=0)
    with pytest.raises(LayerSetupError, match="in-place"):
        layer_from_text('type: "Flatten"').setup([b], [b])
    with pytest.raises(LayerSetupError, match="end_axis 0 comes before axis 2"):
        forward(layer_from_text('type: "Flatten" flatten_param { axis: 2 end_axis: 0 }'), [b])
    with pytest.raises(LayerSetupError, match="axis 3"):
        forward(layer_from_text('type: "Flatten" flatten_param { axis: 3 }'), [b])


# ---------------------------------------------------------------------------- Reshape
@pytest.mark.parametrize("param,shape", [
    # caffe.proto's examples for a 2 x 8 input
    ("shape { dim: 2 dim: 2 dim: 4 }", (2, 2, 4)),
    ("shape { dim: 0 dim: 2 dim: 4 }", (2, 2, 4)),
    ("shape { dim: 0 dim: 2 dim: -1 }", (2, 2, 4)),
    ("shape { dim: 0 dim: -1 dim: 4 }", (2, 2, 4)),
    ("shape { dim: 2 dim: 4 } axis: 1", (2, 2, 4)),
    # caffe.proto also lists `axis: -3` here, but Caffe's code starts the reshape at
    # num_axes + axis + 1, so for a 2-axis input it is -2 that means axis 1 (see the errors).
    ("shape { dim: 2 dim: 4 } axis: -2", (2, 2, 4)),
    ("shape { dim: 1 dim: 2 dim: 8 }", (1, 2, 8)),
    ("shape { dim: 1 dim: 2 } num_axes: 1", (1, 2, 8)),
    ("shape { dim: 1 } num_axes: 0", (1, 2, 8)),
    ("shape { dim: 2 dim: 1 dim: 8 }", (2, 1, 8)),
    ("shape { dim: 1 } axis: 1 num_axes: 0", (2, 1, 8)),
    # more: -1 alone, axis -1 (append), -1 with copied dims and retained tail
    ("shape { dim: -1 }", (16,)),
    ("shape { dim: 1 } axis: -1 num_axes: 0", (2, 8, 1)),
    ("shape { dim: -1 dim: 2 } axis: 1", (2, 4, 2)),
    ("shape { dim: 0 dim: -1 } num_axes: 1", (2, 1, 8)),
])
def test_reshape_rules(param, shape):
    x = arange(2, 8)
    top = forward(layer_from_text(f'type: "Reshape" reshape_param {{ {param} }}'), [blob(x)])
    assert top[0].shape == shape
    np.testing.assert_array_equal(top[0].data.ravel(), x.ravel())


def test_reshape_infers_with_retained_axes():
    x = arange(2, 3, 4, 5)
    top = forward(layer_from_text('type: "Reshape" reshape_param { shape { dim: -1 dim: 2 } '
                                  'axis: 1 num_axes: 2 }'), [blob(x)])
    assert top[0].shape == (2, 6, 2, 5)


def test_reshape_shares_data_and_diff():
    layer = layer_from_text('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }')
    assert_shares_memory(layer, blob((2, 3, 2), seed=0))
    check_gradient(layer_from_text('type: "Reshape" reshape_param { shape { dim: -1 } }'),
                   [blob((2, 3, 2), seed=1)])


@pytest.mark.parametrize("param,match", [
    ("shape { dim: -1 dim: -1 }", "multiple -1 dims"),
    ("shape { dim: 3 dim: -1 }", r"bottom count \(16\) must be divisible by the product of the "
                                 r"specified dimensions \(3\)"),
    ("shape { dim: 0 dim: 0 dim: 0 }", "contains a 0 at index 2, but there was no "
                                       "corresponding bottom axis"),
    ("shape { dim: 4 } axis: 3", "axis 3 out of range for 2-D input blob"),
    ("shape { dim: 4 } axis: -4", "axis -4 out of range"),
    ("shape { dim: 4 } num_axes: -2", "num_axes must be >= 0, or -1"),
    ("shape { dim: 4 } axis: 1 num_axes: 2", "end_axis = axis \\+ num_axes"),
    ("shape { dim: 3 dim: 5 }", r"output count must match input count: bottom \(2, 8\) has 16"),
    ("shape { dim: 4 dim: -3 }", "dims must be >= -1"),
    ("shape { dim: 2 dim: 4 } axis: -3", r"output \(2, 4\) has 8"),
])
def test_reshape_errors(param, match):
    with pytest.raises(LayerSetupError, match=match):
        forward(layer_from_text(f'type: "Reshape" reshape_param {{ {param} }}'),
                [blob((2, 8), seed=0)])


def test_reshape_in_place_error():
    b = blob((2, 8), seed=0)
    with pytest.raises(LayerSetupError, match="in-place"):
        layer_from_text('type: "Reshape" reshape_param { shape { dim: -1 } }').setup([b], [b])


# ---------------------------------------------------------------------------- Crop
def crop(text, x, ref_shape):
    layer = layer_from_text(text)
    bottom = [blob(x), Blob(ref_shape)]
    return layer, bottom, forward(layer, bottom)


@pytest.mark.parametrize("param,ref,region", [
    ("offset: 1 offset: 2", (2, 3, 4, 4), np.s_[:, :, 1:5, 2:6]),
    ("offset: 1", (2, 3, 4, 4), np.s_[:, :, 1:5, 1:5]),
    ("", (2, 3, 4, 4), np.s_[:, :, 0:4, 0:4]),
    ("axis: 1 offset: 1 offset: 2 offset: 3", (2, 2, 3, 3), np.s_[:, 1:3, 2:5, 3:6]),
    ("axis: -1 offset: 3", (2, 3, 6, 4), np.s_[:, :, :, 3:7]),
    ("axis: 0 offset: 0 offset: 1 offset: 0 offset: 2", (1, 2, 6, 5), np.s_[0:1, 1:3, :, 2:7]),
])
def test_crop_forward_backward(param, ref, region):
    x = arange(2, 3, 6, 7)
    layer, bottom, top = crop(f'type: "Crop" crop_param {{ {param} }}', x, ref)
    assert top[0].shape == ref
    np.testing.assert_array_equal(top[0].data, x[region])
    dy = arange(*ref) + 1
    top[0].diff[...] = dy
    bottom[0].diff[...] = 99
    bottom[1].diff[...] = 99
    layer.backward(top, [True, True], bottom)
    expect = np.zeros_like(x)
    expect[region] = dy
    np.testing.assert_array_equal(bottom[0].diff, expect)
    assert np.all(bottom[1].diff == 0)


def test_crop_gradient():
    layer = layer_from_text('type: "Crop" crop_param { offset: 1 offset: 0 }')
    check_gradient(layer, [blob((2, 2, 4, 3), seed=0), Blob((2, 2, 2, 2))], check_bottom=[0])


@pytest.mark.parametrize("param,ref,match", [
    ("offset: 3", (2, 3, 4, 4), "dimension 2 is out of bounds: size 4 at offset 3"),
    ("offset: 1 offset: 1 offset: 1", (2, 3, 4, 4), r"number of offset values \(3\)"),
    ("axis: 4", (2, 3, 4, 4), "axis 4"),
    ("", (2, 3, 8, 4), "dimension 2 is out of bounds"),
    ("", (2, 3, 4), "same number of axes"),
])
def test_crop_errors(param, ref, match):
    with pytest.raises(LayerSetupError, match=match):
        crop(f'type: "Crop" crop_param {{ {param} }}', arange(2, 3, 6, 7), ref)


# ---------------------------------------------------------------------------- Permute
@pytest.mark.parametrize("order,full", [
    ((0, 2, 3, 1), (0, 2, 3, 1)),
    ((2,), (2, 0, 1, 3)),       # listed axes first, the rest in order
    ((3, 0), (3, 0, 1, 2)),
    ((1, 0, 3, 2), (1, 0, 3, 2)),
])
def test_permute_forward_backward(order, full):
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    text = 'type: "Permute" permute_param { ' + " ".join(f"order: {o}" for o in order) + " }"
    layer = layer_from_text(text)
    b = blob(x)
    top = forward(layer, [b])
    expect = np.transpose(x, full)
    assert top[0].shape == expect.shape
    np.testing.assert_array_equal(top[0].data, expect)
    assert not np.shares_memory(top[0].data, b.data)
    dy = np.random.default_rng(1).standard_normal(expect.shape).astype(np.float32)
    top[0].diff[...] = dy
    layer.backward(top, [True], [b])
    np.testing.assert_array_equal(b.diff, np.transpose(dy, np.argsort(full)))


def test_permute_gradient():
    check_gradient(layer_from_text('type: "Permute" permute_param { order: 0 order: 2 '
                                   'order: 3 order: 1 }'), [blob((2, 3, 2, 2), seed=3)])


def test_permute_identity_shares():
    layer = layer_from_text('type: "Permute" permute_param { order: 0 order: 1 }')
    assert_shares_memory(layer, blob((2, 3, 2), seed=0))


@pytest.mark.parametrize("order,match", [((0, 4), "order value 4"), ((1, 1), "duplicate")])
def test_permute_errors(order, match):
    text = 'type: "Permute" permute_param { ' + " ".join(f"order: {o}" for o in order) + " }"
    with pytest.raises(LayerSetupError, match=match):
        forward(layer_from_text(text), [blob((2, 3, 4, 5), seed=0)])
