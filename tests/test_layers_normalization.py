import numpy as np
import pytest

from caffe_lite.blob import Blob
from caffe_lite.errors import LayerSetupError
from caffe_lite.proto import caffe_pb2
from caffe_lite.testing import blob, check_gradient, forward, layer_from_text

EPS = 1e-5


def bn(params="", phase=caffe_pb2.TRAIN, extra=""):
    return layer_from_text(f'type: "BatchNorm" batch_norm_param {{ {params} }} {extra}', phase)


# x[:, 0] = 1, 2, 3, 4 -> mean 2.5, biased var 1.25, unbiased 5/3
# x[:, 1] = 0, 0, 0, 4 -> mean 1, biased var 3, unbiased 4
XBN = np.array([[[1, 2], [0, 0]], [[3, 4], [0, 4]]], np.float32)  # (N=2, C=2, S=2)


# --- BatchNorm ---------------------------------------------------------------------------------
def test_batchnorm_train_normalises_and_updates_stats_twice():
    layer = bn()
    x = blob(XBN)
    top, = forward(layer, [x])
    assert [b.shape for b in layer.blobs] == [(2,), (2,), (1,)]
    expect = np.empty_like(XBN)
    expect[:, 0] = (XBN[:, 0] - 2.5) / np.sqrt(1.25 + EPS)
    expect[:, 1] = (XBN[:, 1] - 1.0) / np.sqrt(3.0 + EPS)
    np.testing.assert_allclose(top.data, expect, rtol=1e-5)
    np.testing.assert_allclose(layer.blobs[0].data, [2.5, 1])
    np.testing.assert_allclose(layer.blobs[1].data, [5 / 3, 4], rtol=1e-6)
    np.testing.assert_allclose(layer.blobs[2].data, [1])
    x2 = blob(2 * XBN)  # means 5, 2; unbiased variances 20/3, 16
    layer.forward([x2], [top])
    np.testing.assert_allclose(layer.blobs[2].data, [0.999 + 1], rtol=1e-6)
    np.testing.assert_allclose(layer.blobs[0].data, [2.5 * .999 + 5, .999 + 2], rtol=1e-6)
    np.testing.assert_allclose(layer.blobs[1].data, [5 / 3 * .999 + 20 / 3, 4 * .999 + 16],
                               rtol=1e-6)


def test_batchnorm_moving_average_fraction_and_eps():
    layer = bn("moving_average_fraction: 0.5 eps: 0.25")
    top, = forward(layer, [blob(XBN)])
    layer.forward([blob(XBN)], [top])
    np.testing.assert_allclose(layer.blobs[2].data, [1.5])
    np.testing.assert_allclose(layer.blobs[0].data, [2.5 * 1.5, 1.5])
    np.testing.assert_allclose(top.data[:, 1], (XBN[:, 1] - 1) / np.sqrt(3.25), rtol=1e-6)


def test_batchnorm_global_stats_uses_normalised_running_stats():
    layer = bn("use_global_stats: true")
    top = Blob()
    x = blob(XBN)
    layer.setup([x], [top])
    layer.blobs[0].data[...] = [2, 4]
    layer.blobs[1].data[...] = [8, 18]
    layer.blobs[2].data[...] = [2]  # -> mean (1, 2), variance (4, 9)
    layer.forward([x], [top])
    np.testing.assert_allclose(top.data[:, 0], (XBN[:, 0] - 1) / np.sqrt(4 + EPS), rtol=1e-6)
    np.testing.assert_allclose(top.data[:, 1], (XBN[:, 1] - 2) / np.sqrt(9 + EPS), rtol=1e-6)
    np.testing.assert_allclose(layer.blobs[2].data, [2])  # not updated
    layer.blobs[2].data[...] = 0  # factor 0: statistics read as 0
    layer.forward([x], [top])
    np.testing.assert_allclose(top.data, XBN / np.sqrt(EPS), rtol=1e-5)


def test_batchnorm_test_phase_defaults_to_global_stats():
    layer = bn(phase=caffe_pb2.TEST)
    top, = forward(layer, [blob(XBN)])
    assert layer.use_global_stats
    np.testing.assert_allclose(top.data, XBN / np.sqrt(EPS), rtol=1e-5)
    assert not layer.blobs[2].data.any()
    layer = bn("use_global_stats: false", caffe_pb2.TEST)
    forward(layer, [blob(XBN)])
    assert not layer.use_global_stats and layer.blobs[2].data.item() == 1


def test_batchnorm_2d_input_and_spatial_input():
    x = blob((5, 3), seed=1)
    top, = forward(bn(), [x])
    ref = (x.data - x.data.mean(0)) / np.sqrt(x.data.var(0) + EPS)
    np.testing.assert_allclose(top.data, ref, rtol=1e-4, atol=1e-5)
    x = blob((2, 3, 2, 3), seed=2)
    layer = bn()
    top, = forward(layer, [x])
    m = x.data.mean(axis=(0, 2, 3), keepdims=True)
    v = x.data.var(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(top.data, (x.data - m) / np.sqrt(v + EPS), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.blobs[1].data, v.ravel() * 12 / 11, rtol=1e-5)


def test_batchnorm_param_specs_fixed_at_lr_mult_zero():
    layer = bn()
    forward(layer, [blob(XBN)])
    assert [(p.lr_mult, p.decay_mult) for p in layer.layer_param.param] == [(0, 0)] * 3
    assert layer.param_propagate_down == [False] * 3
    layer = bn(extra="param { lr_mult: 0 }")
    forward(layer, [blob(XBN)])
    assert len(layer.layer_param.param) == 3
    with pytest.raises(LayerSetupError, match="statistics as layer parameters"):
        forward(bn(extra="param { lr_mult: 0 } param { lr_mult: 1 }"), [blob(XBN)])


@pytest.mark.parametrize("params", ["", "use_global_stats: true"])
def test_batchnorm_gradient(params):
    layer = bn(params)
    x = blob((2, 3, 2, 2), seed=3)
    if params:
        layer.setup([x], [Blob()])
        layer.blobs[0].data[...] = [0.5, -1, 2]
        layer.blobs[1].data[...] = [1, 2, 0.5]
        layer.blobs[2].data[...] = [1.5]
    check_gradient(layer, [x])


def test_batchnorm_backward_hand_value():
    # dy = 1 everywhere: the normalised output has zero mean, so the gradient vanishes.
    layer = bn()
    x = blob(XBN)
    top, = forward(layer, [x])
    top.diff[...] = 1
    layer.backward([top], [True], [x])
    np.testing.assert_allclose(x.diff, 0, atol=1e-6)
    # dy one-hot at x[0, 0, 0] (= 1): channel 0 has y = (x - 2.5) / std, std = sqrt(1.25 + eps),
    # mean(dy) = 1/4, mean(dy * y) = y0 / 4, so dx = (dy - 1/4 - y * y0 / 4) / std.
    top.diff[...] = 0
    top.diff[0, 0, 0] = 1
    layer.backward([top], [True], [x])
    std = np.sqrt(1.25 + EPS)
    y = (XBN[:, 0].astype(np.float64) - 2.5) / std
    dy = np.array([[1, 0], [0, 0]], np.float64)
    np.testing.assert_allclose(x.diff[:, 0], (dy - 0.25 - y * y[0, 0] / 4) / std, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(x.diff[:, 1], 0)


@pytest.mark.parametrize("params", ["", "use_global_stats: true"])
def test_batchnorm_in_place_matches_copy(params):
    data = np.random.default_rng(4).uniform(-1, 1, (3, 2, 4)).astype(np.float32)
    dy = np.random.default_rng(5).uniform(-1, 1, (3, 2, 4)).astype(np.float32)
    results = []
    for in_place in (False, True):
        layer = bn(params)
        x = blob(data.copy())
        top = x if in_place else Blob()
        layer.setup([x], [top])
        if params:
            layer.blobs[1].data[...] = [2, 3]
            layer.blobs[2].data[...] = [1]
        layer.forward([x], [top])
        y = top.data.copy()
        top.diff[...] = dy
        layer.backward([top], [True], [x])
        results.append((y, x.diff.copy(), [b.data.copy() for b in layer.blobs]))
    (y0, dx0, b0), (y1, dx1, b1) = results
    np.testing.assert_allclose(y1, y0, rtol=1e-6)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-5, atol=1e-6)
    assert np.abs(dx0).max() > 0.1
    for a, b in zip(b0, b1):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_batchnorm_channel_change_is_an_error():
    layer = bn()
    top, = forward(layer, [blob((2, 3, 2))])
    with pytest.raises(LayerSetupError, match=r"4 channels.*set up for 3"):
        layer.reshape([blob((2, 4, 2))], [top])


# --- LRN -------------------------------------------------------------------------------------
def lrn(params):
    return layer_from_text(f'type: "LRN" lrn_param {{ {params} }}')


def naive_lrn(x, size, alpha, beta, k, across):
    n, c, h, w = x.shape
    p = (size - 1) // 2
    y = np.zeros_like(x, dtype=np.float64)
    for a in range(n):
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    if across:
                        s = sum(float(x[a, cc, i, j]) ** 2
                                for cc in range(max(0, ch - p), min(c, ch + p + 1)))
                        scale = k + alpha / size * s
                    else:
                        s = sum(float(x[a, ch, ii, jj]) ** 2
                                for ii in range(max(0, i - p), min(h, i + p + 1))
                                for jj in range(max(0, j - p), min(w, j + p + 1)))
                        scale = 1 + alpha * s / (size * size)  # k unused; n*n at borders too
                    y[a, ch, i, j] = x[a, ch, i, j] * scale ** -beta
    return y


@pytest.mark.parametrize("size,region", [(3, "ACROSS_CHANNELS"), (5, "ACROSS_CHANNELS"),
                                         (1, "ACROSS_CHANNELS"), (3, "WITHIN_CHANNEL"),
                                         (5, "WITHIN_CHANNEL")])
def test_lrn_against_naive_loops(size, region):
    x = blob((2, 4, 3, 5), seed=6, low=-2, high=2)
    params = f"local_size: {size} alpha: 0.7 beta: 0.6 k: 2 norm_region: {region}"
    top, = forward(lrn(params), [x])
    ref = naive_lrn(x.data, size, 0.7, 0.6, 2.0, region == "ACROSS_CHANNELS")
    np.testing.assert_allclose(top.data, ref, rtol=1e-5, atol=1e-6)


def test_lrn_hand_value_defaults():
    # defaults: local_size 5, alpha 1, beta 0.75, k 1; one channel -> scale = 1 + x^2 / 5
    x = np.full((1, 1, 1, 1), 2.0, np.float32)
    top, = forward(lrn(""), [blob(x)])
    np.testing.assert_allclose(top.data.item(), 2 * (1 + 4 / 5) ** -0.75, rtol=1e-6)


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_gradient(region):
    layer = lrn(f"local_size: 3 alpha: 0.8 beta: 0.75 k: 1.5 norm_region: {region}")
    check_gradient(layer, [blob((2, 5, 3, 4), seed=7, low=-2, high=2)], max_checks=60)


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_in_place_matches_copy(region):
    data = np.random.default_rng(8).uniform(-2, 2, (2, 3, 3, 3)).astype(np.float32)
    dy = np.random.default_rng(9).uniform(-1, 1, data.shape).astype(np.float32)
    out = []
    for in_place in (False, True):
        layer = lrn(f"local_size: 3 alpha: 0.5 norm_region: {region}")
        x = blob(data.copy())
        top = x if in_place else Blob()
        layer.setup([x], [top])
        layer.forward([x], [top])
        y = top.data.copy()
        top.diff[...] = dy
        layer.backward([top], [True], [x])
        out.append((y, x.diff.copy()))
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=1e-6)
    np.testing.assert_allclose(out[1][1], out[0][1], rtol=1e-5, atol=1e-7)


def test_lrn_errors():
    with pytest.raises(LayerSetupError, match="odd values for local_size, got 4"):
        forward(lrn("local_size: 4"), [blob((1, 4, 2, 2))])
    with pytest.raises(LayerSetupError, match="4 axes"):
        forward(lrn("local_size: 3"), [blob((1, 4, 2))])
