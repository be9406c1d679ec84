"""Concat, Slice, Split, Silence."""
import numpy as np
import pytest

from caffe_lite.blob import Blob
from caffe_lite.errors import LayerSetupError
from caffe_lite.testing import blob, check_gradient, forward, layer_from_text


def arange(*shape, start=0):
    return np.arange(start, start + np.prod(shape), dtype=np.float32).reshape(shape)


# ---------------------------------------------------------------------------- Concat
def test_concat_default_axis_1():
    a, b = arange(2, 1, 3), arange(2, 2, 3, start=100)
    layer = layer_from_text('type: "Concat"')
    bottom = [blob(a), blob(b)]
    top = forward(layer, bottom)
    assert top[0].shape == (2, 3, 3)
    expect = np.array([[a[0, 0], b[0, 0], b[0, 1]], [a[1, 0], b[1, 0], b[1, 1]]])
    np.testing.assert_array_equal(top[0].data, expect)
    dy = arange(2, 3, 3, start=-50)
    top[0].diff[...] = dy
    layer.backward(top, [True, True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, dy[:, :1])
    np.testing.assert_array_equal(bottom[1].diff, dy[:, 1:])


@pytest.mark.parametrize("param,axis", [("axis: 0", 0), ("axis: -1", 2), ("concat_dim: 2", 2),
                                        ("axis: 2", 2)])
def test_concat_axis_choices(param, axis):
    shapes = [[2, 3, 4], [2, 3, 4]]
    shapes[1][axis] = 5
    xs = [arange(*shapes[0]), arange(*shapes[1], start=1000)]
    top = forward(layer_from_text(f'type: "Concat" concat_param {{ {param} }}'),
                  [blob(x) for x in xs])
    np.testing.assert_array_equal(top[0].data, np.concatenate(xs, axis=axis))


def test_concat_gradient_three_bottoms():
    bottom = [blob((2, 1, 3), seed=1), blob((2, 2, 3), seed=2), blob((2, 3, 3), seed=3)]
    check_gradient(layer_from_text('type: "Concat"'), bottom)


def test_concat_propagate_down_subset():
    layer = layer_from_text('type: "Concat" concat_param { axis: 0 }')
    bottom = [blob((1, 2), seed=1), blob((2, 2), seed=2)]
    top = forward(layer, bottom)
    top[0].diff[...] = 1
    bottom[0].diff[...] = 7
    layer.backward(top, [False, True], bottom)
    assert np.all(bottom[0].diff == 7) and np.all(bottom[1].diff == 1)


def test_concat_single_bottom_shares():
    layer = layer_from_text('type: "Concat"')
    b = blob((2, 3), seed=0)
    top = forward(layer, [b])
    top[0].data[...] = 5
    assert np.all(b.data == 5)
    top[0].diff[...] = 6
    assert np.all(b.diff == 6)
    check_gradient(layer_from_text('type: "Concat"'), [blob((2, 3), seed=0)])


def test_concat_errors():
    with pytest.raises(LayerSetupError, match=r"bottom\[2\] is \(2, 4, 5\)"):
        forward(layer_from_text('type: "Concat"'),
                [blob((2, 1, 4), seed=0), blob((2, 2, 4), seed=0), blob((2, 4, 5), seed=0)])
    with pytest.raises(LayerSetupError, match=r"same number of axes.*bottom\[1\] is \(2, 2\)"):
        forward(layer_from_text('type: "Concat"'), [blob((2, 1, 4), seed=0), blob((2, 2), seed=0)])
    with pytest.raises(LayerSetupError, match="not both"):
        forward(layer_from_text('type: "Concat" concat_param { axis: 1 concat_dim: 1 }'),
                [blob((2, 1), seed=0), blob((2, 1), seed=0)])
    with pytest.raises(LayerSetupError, match="concat_dim 3 out of range"):
        forward(layer_from_text('type: "Concat" concat_param { concat_dim: 3 }'),
                [blob((2, 1), seed=0), blob((2, 1), seed=0)])
    with pytest.raises(LayerSetupError, match="axis 2"):
        forward(layer_from_text('type: "Concat" concat_param { axis: 2 }'),
                [blob((2, 1), seed=0), blob((2, 1), seed=0)])


# ---------------------------------------------------------------------------- Slice
def test_slice_points():
    x = arange(2, 6, 2)
    layer = layer_from_text('type: "Slice" slice_param { slice_point: 1 slice_point: 4 }')
    b = blob(x)
    top = forward(layer, [b], ntop=3)
    assert [t.shape for t in top] == [(2, 1, 2), (2, 3, 2), (2, 2, 2)]
    np.testing.assert_array_equal(top[0].data, x[:, :1])
    np.testing.assert_array_equal(top[1].data, x[:, 1:4])
    np.testing.assert_array_equal(top[2].data, x[:, 4:])
    for i, t in enumerate(top):
        t.diff[...] = i + 1
    layer.backward(top, [True], [b])
    np.testing.assert_array_equal(b.diff[0, :, 0], [1, 2, 2, 2, 3, 3])


@pytest.mark.parametrize("param,axis", [("", 1), ("axis: 0", 0), ("slice_dim: 2", 2),
                                        ("axis: -1", 2)])
def test_slice_equal_parts(param, axis):
    x = arange(4, 4, 6)
    top = forward(layer_from_text(f'type: "Slice" slice_param {{ {param} }}'), [blob(x)], ntop=2)
    for t, part in zip(top, np.split(x, 2, axis=axis)):
        np.testing.assert_array_equal(t.data, part)


def test_slice_gradient():
    check_gradient(layer_from_text('type: "Slice" slice_param { axis: 2 slice_point: 1 '
                                   'slice_point: 3 }'), [blob((2, 2, 5), seed=4)],
                   top=[Blob(), Blob(), Blob()])


def test_concat_slice_round_trip():
    x = np.random.default_rng(0).standard_normal((3, 7, 2)).astype(np.float32)
    sl = layer_from_text('type: "Slice" slice_param { slice_point: 2 slice_point: 3 }')
    cat = layer_from_text('type: "Concat"')
    b = blob(x)
    parts = forward(sl, [b], ntop=3)
    out = forward(cat, parts)
    np.testing.assert_array_equal(out[0].data, x)
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    out[0].diff[...] = dy
    cat.backward(out, [True] * 3, parts)
    sl.backward(parts, [True], [b])
    np.testing.assert_array_equal(b.diff, dy)


def test_slice_single_top_shares():
    b = blob((2, 3), seed=0)
    top = forward(layer_from_text('type: "Slice"'), [b], ntop=1)
    top[0].data[...] = 3
    assert np.all(b.data == 3)


def test_slice_errors():
    with pytest.raises(LayerSetupError, match=r"number of top blobs \(4\) should evenly divide "
                                              r"input slice axis \(6\)"):
        forward(layer_from_text('type: "Slice"'), [blob((2, 6), seed=0)], ntop=4)
    with pytest.raises(LayerSetupError, match="1 slice_point value"):
        forward(layer_from_text('type: "Slice" slice_param { slice_point: 2 }'),
                [blob((2, 6), seed=0)], ntop=3)
    with pytest.raises(LayerSetupError, match="must increase"):
        forward(layer_from_text('type: "Slice" slice_param { slice_point: 3 slice_point: 3 }'),
                [blob((2, 6), seed=0)], ntop=3)
    with pytest.raises(LayerSetupError, match="beyond slice axis"):
        forward(layer_from_text('type: "Slice" slice_param { slice_point: 7 }'),
                [blob((2, 6), seed=0)], ntop=2)
    with pytest.raises(LayerSetupError, match="not both"):
        forward(layer_from_text('type: "Slice" slice_param { axis: 1 slice_dim: 1 }'),
                [blob((2, 6), seed=0)], ntop=2)
    b = blob((2, 6), seed=0)
    with pytest.raises(LayerSetupError, match="in-place"):
        layer_from_text('type: "Slice"').setup([b], [b, Blob()])


# ---------------------------------------------------------------------------- Split
def test_split_shares_data_and_sums_diffs():
    layer = layer_from_text('type: "Split"')
    b = blob((2, 3), seed=0)
    top = [Blob(), Blob(), Blob()]
    layer.setup([b], top)
    layer.forward([b], top)
    b.data[...] = 4
    for t in top:
        assert np.all(t.data == 4)
    for i, t in enumerate(top):
        t.diff[...] = np.float32(10 ** i)
    layer.backward(top, [True], [b])
    assert np.all(b.diff == 111)
    assert np.all(top[0].diff == 1)  # tops keep their own diffs


def test_split_single_top_copies_diff_and_gradient():
    layer = layer_from_text('type: "Split"')
    b = blob((3,), seed=0)
    top = [Blob()]
    layer.setup([b], top)
    top[0].diff[...] = [1, 2, 3]
    layer.backward(top, [True], [b])
    np.testing.assert_array_equal(b.diff, [1, 2, 3])
    check_gradient(layer_from_text('type: "Split"'), [blob((2, 3), seed=1)],
                   top=[Blob(), Blob()])


def test_split_errors():
    b = blob((2,), seed=0)
    with pytest.raises(LayerSetupError, match="in-place"):
        layer_from_text('type: "Split"').setup([b], [b, Blob()])
    with pytest.raises(LayerSetupError, match="at least 1 top"):
        layer_from_text('type: "Split"').setup([b], [])


# ---------------------------------------------------------------------------- Silence
def test_silence():
    layer = layer_from_text('type: "Silence"')
    bottom = [blob((2, 3), seed=0), blob((4,), seed=1)]
    layer.setup(bottom, [])
    layer.forward(bottom, [])
    for b in bottom:
        b.diff[...] = 5
    layer.backward([], [True, False], bottom)
    assert np.all(bottom[0].diff == 0) and np.all(bottom[1].diff == 5)
    with pytest.raises(LayerSetupError, match="exactly 0 top"):
        layer_from_text('type: "Silence"').setup(bottom, [Blob()])
    with pytest.raises(LayerSetupError, match="at least 1 bottom"):
        layer_from_text('type: "Silence"').setup([], [])
