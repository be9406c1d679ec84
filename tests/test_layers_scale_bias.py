import numpy as np
import pytest

from caffe_lite.blob import Blob
from caffe_lite.errors import LayerSetupError
from caffe_lite.testing import blob, check_gradient, forward, layer_from_text

X = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
GAUSS = 'filler { type: "gaussian" std: 1 }'
BIAS_GAUSS = 'bias_filler { type: "gaussian" std: 1 }'


def scale(params=""):
    return layer_from_text(f'type: "Scale" scale_param {{ {params} }}')


def bias(params=""):
    return layer_from_text(f'type: "Bias" bias_param {{ {params} }}')


def setup_with(layer, bottoms, values, top=None):
    top = top or Blob()
    layer.setup(bottoms, [top])
    for b, v in zip(layer.blobs, values):
        b.data[...] = v
    layer.forward(bottoms, [top])
    return top


# --- Scale -----------------------------------------------------------------------------------
def test_scale_default_axis1_num_axes1_and_default_filler():
    layer = scale()
    top, = forward(layer, [blob(X)])
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == (3,)
    np.testing.assert_array_equal(layer.blobs[0].data, 1)  # Scale's default filler: constant 1
    np.testing.assert_array_equal(top.data, X)
    top = setup_with(scale(), [blob(X)], [[1, -2, 0.5]])
    np.testing.assert_array_equal(top.data[1], [[6, 7], [-16, -18], [5, 5.5]])


@pytest.mark.parametrize("params,shape,value,bshape", [
    ("num_axes: 0", (), 3.0, ()),
    ("num_axes: -1", (3, 2), np.arange(6).reshape(3, 2), (1, 3, 2)),
    ("axis: 0 num_axes: 2", (2, 3), [[1, 2, 3], [4, 5, 6]], (2, 3, 1)),
    ("axis: -1", (2,), [10, -1], (1, 1, 2)),
])
def test_scale_axes(params, shape, value, bshape):
    layer = scale(params)
    top = setup_with(layer, [blob(X)], [value])
    assert layer.blobs[0].shape == shape
    expect = X * np.asarray(value, np.float32).reshape(bshape)
    np.testing.assert_array_equal(top.data, expect)


def test_scale_with_bias_term():
    layer = scale("bias_term: true")
    top = setup_with(layer, [blob(X)], [[1, 2, 3], [0.5, 0, -1]])
    assert [b.shape for b in layer.blobs] == [(3,), (3,)]
    np.testing.assert_array_equal(top.data[0], [[0.5, 1.5], [4, 6], [11, 14]])
    fresh = scale("bias_term: true")
    forward(fresh, [blob(X)])
    np.testing.assert_array_equal(fresh.blobs[1].data, 0)  # bias default filler: constant 0


def test_scale_two_bottoms():
    s = np.array([2, 0, -1], np.float32)
    layer = scale()
    top, = forward(layer, [blob(X), blob(s)])
    assert layer.blobs == []
    np.testing.assert_array_equal(top.data, X * s[:, None])
    # bottom[1] with 2 axes at axis 1; num_axes is ignored with two bottoms
    s2 = np.arange(6, dtype=np.float32).reshape(3, 2)
    top, = forward(scale("num_axes: 0"), [blob(X), blob(s2)])
    np.testing.assert_array_equal(top.data, X * s2)
    # an empty-shape bottom[1] is a scalar, whatever the axis
    top, = forward(scale("axis: 2"), [blob(X), blob(np.array(4, np.float32))])
    np.testing.assert_array_equal(top.data, 4 * X)


def test_scale_two_bottoms_with_bias_term():
    layer = scale("bias_term: true axis: 0")
    s = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    top = setup_with(layer, [blob(X), blob(s)], [[[1, 1, 1], [0, 0, 2]]])
    assert [b.shape for b in layer.blobs] == [(2, 3)]  # the bias has bottom[1]'s axes
    np.testing.assert_array_equal(top.data, X * s[:, :, None] + [[[1], [1], [1]],
                                                                   [[0], [0], [2]]])


@pytest.mark.parametrize("params", ["", "num_axes: 0", "num_axes: -1", "axis: 0 num_axes: 2",
                                    "bias_term: true"])
def test_scale_gradient(params):
    layer = scale(f"{params} {GAUSS} {BIAS_GAUSS}")
    check_gradient(layer, [blob((2, 3, 2), seed=1)])


@pytest.mark.parametrize("shape", [(3,), (), (3, 2), (2, 3, 2)])
def test_scale_two_bottom_gradient(shape):
    axis = "axis: 0" if len(shape) == 3 else ""
    layer = scale(f"bias_term: true {axis} {BIAS_GAUSS}")
    check_gradient(layer, [blob((2, 3, 2), seed=2), blob(shape, seed=3)])


def test_scale_param_gradient_accumulates_bottom1_overwrites():
    layer = scale("bias_term: true")
    x = blob(X)
    top = setup_with(layer, [x], [[1, 2, 3], [0, 0, 0]])
    top.diff[...] = 1
    for _ in range(2):
        layer.backward([top], [True], [x])
    np.testing.assert_array_equal(layer.blobs[0].diff, 2 * X.sum(axis=(0, 2)))
    np.testing.assert_array_equal(layer.blobs[1].diff, [8, 8, 8])
    np.testing.assert_array_equal(x.diff, np.broadcast_to([[1], [2], [3]], X.shape))
    # full-size (eltwise) scale parameter accumulates too
    layer = scale("axis: 0 num_axes: -1")
    x = blob(X)
    top = setup_with(layer, [x], [np.ones_like(X)])
    top.diff[...] = 1
    layer.backward([top], [False], [x])
    layer.backward([top], [False], [x])
    np.testing.assert_array_equal(layer.blobs[0].diff, 2 * X)
    # bottom[1]'s diff is overwritten
    x, s = blob(X), blob(np.ones(3, np.float32))
    layer = scale()
    top, = forward(layer, [x, s])
    top.diff[...] = 1
    layer.backward([top], [True, True], [x, s])
    layer.backward([top], [True, True], [x, s])
    np.testing.assert_array_equal(s.diff, X.sum(axis=(0, 2)))


@pytest.mark.parametrize("two_bottoms", [False, True])
def test_scale_in_place_matches_copy(two_bottoms):
    dy = np.random.default_rng(4).uniform(-1, 1, X.shape).astype(np.float32)
    sval = np.array([0.5, -2, 3], np.float32)
    out = []
    for in_place in (False, True):
        layer = scale("bias_term: true")
        x = blob(X.copy())
        bottoms = [x, blob(sval)] if two_bottoms else [x]
        top = x if in_place else Blob()
        values = [[1, 2, 3]] if two_bottoms else [sval, [1, 2, 3]]
        top = setup_with(layer, bottoms, values, top)
        y = top.data.copy()
        top.diff[...] = dy
        layer.backward([top], [True] * len(bottoms), bottoms)
        grads = [b.diff.copy() for b in layer.blobs] + [b.diff.copy() for b in bottoms]
        out.append((y, grads))
    np.testing.assert_array_equal(out[1][0], out[0][0])
    for a, b in zip(out[0][1], out[1][1]):
        np.testing.assert_allclose(b, a, rtol=1e-6)
    np.testing.assert_allclose(out[1][1][0 if two_bottoms else 1], dy.sum(axis=(0, 2)),
                               rtol=1e-5)


def test_scale_errors():
    with pytest.raises(LayerSetupError, match=r"\(3,\).*\(2, 4, 2\)"):
        forward(scale(), [blob((2, 4, 2)), blob((3,))])
    with pytest.raises(LayerSetupError, match=r"\(2, 3\).*\(2, 3, 2\).*axis 1"):
        forward(scale(), [blob(X), blob((2, 3))])
    with pytest.raises(LayerSetupError, match="extends past"):
        forward(scale("axis: 1 num_axes: 3"), [blob(X)])
    with pytest.raises(LayerSetupError, match="num_axes must be non-negative"):
        forward(scale("num_axes: -2"), [blob(X)])
    with pytest.raises(LayerSetupError, match="out of range"):
        forward(scale("axis: 3"), [blob(X)])
    layer = scale()
    top, = forward(layer, [blob(X)])
    with pytest.raises(LayerSetupError, match=r"scale shape \(3,\) does not match.*\(2, 4\)"):
        layer.reshape([blob((2, 4))], [top])


# --- Bias ------------------------------------------------------------------------------------
def test_bias_param_and_default_filler():
    layer = bias()
    top, = forward(layer, [blob(X)])
    assert layer.blobs[0].shape == (3,)
    np.testing.assert_array_equal(layer.blobs[0].data, 0)
    np.testing.assert_array_equal(top.data, X)
    top = setup_with(bias("axis: 0 num_axes: -1"), [blob(X)], [np.ones_like(X)])
    np.testing.assert_array_equal(top.data, X + 1)
    top = setup_with(bias("num_axes: 0"), [blob(X)], [-5])
    np.testing.assert_array_equal(top.data, X - 5)


def test_bias_two_bottoms():
    b = np.array([[1, 2], [3, 4], [5, 6]], np.float32)
    top, = forward(bias(), [blob(X), blob(b)])
    np.testing.assert_array_equal(top.data, X + b)


@pytest.mark.parametrize("params", ["", "num_axes: 0", "axis: 0 num_axes: -1"])
def test_bias_gradient(params):
    check_gradient(bias(f'{params} filler {{ type: "gaussian" }}'), [blob((2, 3, 2), seed=5)])


def test_bias_two_bottom_gradient():
    check_gradient(bias("axis: 2"), [blob((2, 3, 2), seed=6), blob((2,), seed=7)])


def test_bias_in_place():
    x = blob(X.copy())
    layer = bias()
    top = setup_with(layer, [x], [[1, 2, 3]], top=x)
    assert top is x
    np.testing.assert_array_equal(x.data, X + np.array([1, 2, 3])[:, None])
    x.diff[...] = 1
    layer.backward([x], [True], [x])
    np.testing.assert_array_equal(x.diff, 1)
    np.testing.assert_array_equal(layer.blobs[0].diff, [4, 4, 4])


def test_bias_errors():
    with pytest.raises(LayerSetupError, match=r"bias shape \(4,\).*\(2, 3, 2\)"):
        forward(bias(), [blob(X), blob((4,))])
    with pytest.raises(LayerSetupError, match="extends past"):
        forward(bias("num_axes: 4"), [blob(X)])
