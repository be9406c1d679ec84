import math

import numpy as np
import pytest

from caffe_lite.blob import Blob
from caffe_lite.errors import LayerSetupError
from caffe_lite.proto import caffe_pb2
from caffe_lite.testing import blob, check_gradient, forward, layer_from_text

X16 = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)


def pool(params, phase=caffe_pb2.TRAIN):
    return layer_from_text(f'type: "Pooling" pooling_param {{ {params} }}', phase)


def naive(x, kh, kw, sh, sw, ph, pw, method, floor=False):
    """Caffe's pooling written out with plain loops, straight from its definition."""
    n, c, h, w = x.shape
    r = math.floor if floor else math.ceil
    oh = int(r((h + 2 * ph - kh) / sh)) + 1
    ow = int(r((w + 2 * pw - kw) / sw)) + 1
    if ph or pw:
        oh -= (oh - 1) * sh >= h + ph
        ow -= (ow - 1) * sw >= w + pw
    y = np.zeros((n, c, oh, ow), np.float32)
    for a in range(n):
        for b in range(c):
            for i in range(oh):
                for j in range(ow):
                    h0, w0 = i * sh - ph, j * sw - pw
                    h1, w1 = min(h0 + kh, h + ph), min(w0 + kw, w + pw)
                    size = (h1 - h0) * (w1 - w0)
                    win = x[a, b, max(h0, 0):min(h1, h), max(w0, 0):min(w1, w)]
                    y[a, b, i, j] = win.max() if method == "MAX" else win.sum() / size
    return y


def test_max_pad1_stride2_with_mask_top():
    layer = pool("pool: MAX kernel_size: 3 stride: 2 pad: 1")
    top, mask = forward(layer, [blob(X16)], ntop=2)
    # ceil((4 + 2 - 3) / 2) + 1 = 3; windows start at rows/cols -1, 1, 3.
    expect = [[5, 7, 7], [13, 15, 15], [13, 15, 15]]
    np.testing.assert_array_equal(top.data[0, 0], expect)
    np.testing.assert_array_equal(mask.data[0, 0], expect)  # X16 holds its own indices


def test_ave_pad1_stride2_divides_by_padded_window():
    top, = forward(pool("pool: AVE kernel_size: 3 stride: 2 pad: 1"), [blob(X16)])
    # Window extents clipped to [-1, 5): rows -1..1 (3), 1..3 (3), 3..4 (2) -- the padded row
    # -1 and row 4 count in the divisor, the sums only see the real input.
    expect = [[(0 + 1 + 4 + 5) / 9, (1 + 2 + 3 + 5 + 6 + 7) / 9, (3 + 7) / 6],
              [(4 + 5 + 8 + 9 + 12 + 13) / 9, (5 + 6 + 7 + 9 + 10 + 11 + 13 + 14 + 15) / 9,
               (7 + 11 + 15) / 6],
              [(12 + 13) / 6, (13 + 14 + 15) / 6, 15 / 4]]
    np.testing.assert_allclose(top.data[0, 0], expect, rtol=1e-6)


def test_ceil_padding_fixup_drops_window_starting_in_padding():
    # ceil((4 + 2 - 2) / 3) + 1 = 3, but window 2 would start at 2*3 - 1 = 5 >= 4 + 1.
    top, = forward(pool("pool: MAX kernel_size: 2 stride: 3 pad: 1"), [blob(X16)])
    assert top.shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(top.data[0, 0], [[0, 3], [12, 15]])


def test_ceil_vs_floor_without_padding():
    ceil_max, = forward(pool("pool: MAX kernel_size: 3 stride: 2"), [blob(X16)])
    np.testing.assert_array_equal(ceil_max.data[0, 0], [[10, 11], [14, 15]])
    ceil_ave, = forward(pool("pool: AVE kernel_size: 3 stride: 2"), [blob(X16)])
    # the clipped windows (no padding) divide by their clipped size: 6, 6, 4
    np.testing.assert_allclose(ceil_ave.data[0, 0], [[45 / 9, 39 / 6], [66 / 6, 50 / 4]])
    floor_max, = forward(pool("pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR"),
                         [blob(X16)])
    assert floor_max.shape == (1, 1, 1, 1) and floor_max.data.item() == 10


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("k,s,p,floor", [((3, 3), (2, 2), (1, 1), False),
                                         ((3, 2), (2, 1), (1, 0), False),
                                         ((2, 2), (2, 2), (0, 0), False),
                                         ((3, 3), (2, 2), (0, 0), True),
                                         ((3, 3), (3, 3), (2, 1), False),
                                         ((4, 2), (3, 3), (1, 1), True)])
def test_against_naive_loops(method, k, s, p, floor):
    params = (f"pool: {method} kernel_h: {k[0]} kernel_w: {k[1]} stride_h: {s[0]} "
              f"stride_w: {s[1]} pad_h: {p[0]} pad_w: {p[1]}"
              + (" round_mode: FLOOR" if floor else ""))
    x = blob((2, 3, 7, 6), seed=5)
    top, = forward(pool(params), [x])
    np.testing.assert_allclose(top.data, naive(x.data, *k, *s, *p, method, floor),
                               rtol=1e-5, atol=1e-6)


def test_max_ties_keep_first_in_row_major_order():
    x = np.array([[1, 3], [3, 2]], np.float32).reshape(1, 1, 2, 2)
    top, mask = forward(pool("pool: MAX kernel_size: 2"), [blob(x)], ntop=2)
    assert top.data.item() == 3 and mask.data.item() == 1
    top, mask = forward(pool("pool: MAX kernel_size: 2"), [blob(np.ones((1, 1, 2, 2)))], 2)
    assert mask.data.item() == 0


def test_global_pooling_and_reshape():
    x = blob((2, 3, 3, 5), seed=6)
    layer = pool("pool: AVE global_pooling: true")
    top, = forward(layer, [x])
    assert top.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(top.data[..., 0, 0], x.data.mean(axis=(2, 3)), rtol=1e-5)
    top, = forward(pool("pool: MAX global_pooling: true"), [x])
    np.testing.assert_array_equal(top.data[..., 0, 0], x.data.max(axis=(2, 3)))
    y = blob((1, 3, 4, 2), seed=7)  # the kernel follows the input size
    layer.reshape([y], [top])
    layer.forward([y], [top])
    assert top.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(top.data[..., 0, 0], y.data.mean(axis=(2, 3)), rtol=1e-5)


@pytest.mark.parametrize("planes", [3, 8, 21])
def test_global_average_adds_each_plane_in_caffes_order(planes):
    """Caffe adds its one window's taps in row-major order, in float, then divides: planes
    summed side by side (the compiled kernel, eight at a time) give those bits exactly."""
    x = blob((1, planes, 7, 9), seed=planes)
    x.data[...] = x.data * np.float32(1e3) + np.float32(0.1)  # (so that the order shows)
    top, = forward(pool("pool: AVE global_pooling: true"), [x])
    expect = np.empty(planes, np.float32)
    for c in range(planes):
        s = np.float32(0)
        for v in x.data[0, c].ravel():
            s = np.float32(s + v)
        expect[c] = s / np.float32(63)
    np.testing.assert_array_equal(top.data.ravel(), expect)


def distinct(shape, seed):
    n = int(np.prod(shape))
    return blob(np.random.default_rng(seed).permutation(n).reshape(shape).astype(np.float32)
                / n)


@pytest.mark.parametrize("params", ["pool: MAX kernel_size: 3 stride: 2 pad: 1",
                                    "pool: MAX kernel_size: 2 stride: 2",
                                    "pool: MAX kernel_size: 2 stride: 3 pad: 1",
                                    "pool: MAX kernel_h: 2 kernel_w: 3 stride: 1",
                                    "pool: MAX kernel_size: 3 stride: 2",
                                    "pool: AVE kernel_size: 3 stride: 2 pad: 1",
                                    "pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 "
                                    "pad_h: 1 pad_w: 0",
                                    "pool: AVE global_pooling: true",
                                    "pool: MAX global_pooling: true"])
def test_gradient(params):
    # distinct values 1/n apart: finite differences (step 1e-3) never swap a maximum
    check_gradient(pool(params), [distinct((2, 2, 5, 5), 8)], stepsize=1e-3, threshold=1e-2)


def test_max_gradient_with_mask_top():
    layer = pool("pool: MAX kernel_size: 2 stride: 1")
    check_gradient(layer, [distinct((1, 2, 4, 3), 9)], top=[Blob(), Blob()], stepsize=1e-3)


def test_max_backward_routes_to_argmax_and_sums_overlaps():
    layer = pool("pool: MAX kernel_size: 3 stride: 2 pad: 1")
    x = blob(X16)
    top, = forward(layer, [x])
    top.diff[...] = 1
    layer.backward([top], [True], [x])
    expect = np.zeros(16)
    for idx in [5, 7, 7, 13, 15, 15, 13, 15, 15]:
        expect[idx] += 1
    np.testing.assert_array_equal(x.diff.ravel(), expect)


def test_stochastic_test_phase_weighted_average():
    x = np.array([[1, 2], [3, 4], [0, 0]], np.float32).reshape(1, 1, 3, 2)
    top, = forward(pool("pool: STOCHASTIC kernel_size: 2 stride: 2", caffe_pb2.TEST), [blob(x)])
    # ceil((3 - 2) / 2) + 1 = 2 rows; the second window is clipped to the last row (zeros)
    np.testing.assert_allclose(top.data.ravel(), [(1 + 4 + 9 + 16) / 10, 0])


def test_stochastic_train_samples_in_proportion():
    n = 20000
    x = np.tile(np.array([1, 3], np.float32), (n, 1)).reshape(n, 1, 1, 2)
    layer = pool("pool: STOCHASTIC kernel_h: 1 kernel_w: 2")
    xb = blob(x)
    top, = forward(layer, [xb])
    vals = top.data.ravel()
    assert set(np.unique(vals)) <= {1.0, 3.0}
    assert abs((vals == 3).mean() - 0.75) < 0.02
    top.diff[...] = 1
    layer.backward([top], [True], [xb])
    np.testing.assert_array_equal(xb.diff[:, 0, 0, 1], vals == 3)  # gradient goes to the sample
    np.testing.assert_array_equal(xb.diff[:, 0, 0, 0], vals == 1)


def test_stochastic_gradient():
    x = blob((1, 2, 4, 4), seed=10, low=0.5, high=1.5)
    check_gradient(pool("pool: STOCHASTIC kernel_size: 2 stride: 2"), [x])


@pytest.mark.parametrize("params,match", [
    ("pool: MAX", "kernel_size, or both kernel_h and kernel_w"),
    ("kernel_h: 3", "kernel_size, or both kernel_h and kernel_w"),
    ("kernel_size: 3 kernel_h: 3 kernel_w: 3", "not both"),
    ("kernel_size: 0", "cannot be zero"),
    ("kernel_size: 2 pad: 2", "pad must be smaller than the kernel.*2x2.*2x2"),
    ("kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 2", "pad must be smaller.*1x2.*3x2"),
    ("kernel_size: 3 pad_h: 1", "pad_h and pad_w"),
    ("kernel_size: 3 stride: 0", "stride must be positive"),
    ("global_pooling: true kernel_size: 2", "filter size cannot be specified"),
    ("global_pooling: true pad: 1", "only pad = 0 and stride = 1.*pad 1x1"),
    ("global_pooling: true stride: 2", "only pad = 0 and stride = 1.*stride 2x2"),
    ("pool: STOCHASTIC kernel_size: 3 pad: 1", "only for average and max"),
])
def test_bad_parameters(params, match):
    with pytest.raises(LayerSetupError, match=match):
        forward(pool(params), [blob((1, 1, 5, 5))])


def test_bad_shapes_and_tops():
    with pytest.raises(LayerSetupError, match="4 axes"):
        forward(pool("kernel_size: 2"), [blob((1, 4, 4))])
    with pytest.raises(LayerSetupError, match="second"):
        forward(pool("pool: AVE kernel_size: 2"), [blob((1, 1, 4, 4))], ntop=2)
    with pytest.raises(LayerSetupError, match="empty output"):
        forward(pool("kernel_size: 5"), [blob((1, 1, 2, 2))])


@pytest.mark.parametrize("params", ["global_pooling: true", "kernel_size: 2 stride: 2"])
def test_max_mask_top_and_all_minus_inf_window(params):
    x = np.array([[[[1, 7], [7, 2]]], [[[-np.inf, -np.inf], [-np.inf, -np.inf]]]], np.float32)
    top, mask = forward(pool(params), [blob(x)], ntop=2)
    # Caffe starts each window at -FLT_MAX with a strict '>': -inf never wins
    np.testing.assert_array_equal(top.data.ravel(), [7, -np.finfo(np.float32).max])
    np.testing.assert_array_equal(mask.data.ravel(), [1, -1])
    layer = pool(params)
    xb = blob(x)
    top, = forward(layer, [xb])
    top.diff[...] = 2
    layer.backward([top], [True], [xb])
    np.testing.assert_array_equal(xb.diff.reshape(2, 4), [[0, 2, 0, 0], [0, 0, 0, 0]])
