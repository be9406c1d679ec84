import math

import numpy as np
import pytest

from caffe_lite.blob import Blob
from caffe_lite.errors import LayerSetupError
from caffe_lite.testing import blob, check_gradient, forward, layer_from_text

FLT_MIN = float(np.finfo(np.float32).tiny)


def softmax_list(v):
    m = max(v)
    e = [math.exp(a - m) for a in v]
    s = sum(e)
    return [a / s for a in e]


def naive_softmax(x, axis):
    """Plain loops: softmax along `axis` of an array, every other position independent."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    moved = np.moveaxis(x, axis, -1)
    res = np.moveaxis(out, axis, -1)
    for idx in np.ndindex(moved.shape[:-1]):
        res[idx] = softmax_list(list(moved[idx]))
    return out


def swl(text, x, labels, ntop=1):
    layer = layer_from_text('type: "SoftmaxWithLoss" ' + text)
    tops = forward(layer, [blob(np.asarray(x, np.float32)), blob(np.asarray(labels, np.float32))],
                   ntop)
    return layer, tops


# ---------------------------------------------------------------------------------------------
# Softmax

def test_softmax_123():
    top = forward(layer_from_text('type: "Softmax"'), [blob(np.array([[1, 2, 3]], np.float32))])
    e = [math.exp(1), math.exp(2), math.exp(3)]
    s = sum(e)
    np.testing.assert_allclose(top[0].data, [[e[0] / s, e[1] / s, e[2] / s]], rtol=1e-6)
    np.testing.assert_allclose(top[0].data, [[0.09003057, 0.24472847, 0.66524096]], rtol=1e-6)


def test_softmax_large_values_stable():
    top = forward(layer_from_text('type: "Softmax"'),
                  [blob(np.array([[1000, 1001, 1002], [-1000, -1000, -1000]], np.float32))])
    np.testing.assert_allclose(top[0].data[0], [0.09003057, 0.24472847, 0.66524096], rtol=1e-6)
    np.testing.assert_allclose(top[0].data[1], [1 / 3, 1 / 3, 1 / 3], rtol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_softmax_axis_matches_naive(axis):
    x = np.random.default_rng(3).normal(size=(2, 3, 4)).astype(np.float32)
    top = forward(layer_from_text(f'type: "Softmax" softmax_param {{ axis: {axis} }}'),
                  [blob(x)])
    assert top[0].shape == (2, 3, 4)
    np.testing.assert_allclose(top[0].data, naive_softmax(x, axis), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(top[0].data.sum(axis=axis), 1.0, rtol=1e-5)


def test_softmax_in_place_forward_backward():
    x = np.random.default_rng(4).normal(size=(2, 3, 2)).astype(np.float32)
    dy = np.random.default_rng(5).normal(size=x.shape).astype(np.float32)
    # separate blobs
    a, ta = Blob.from_array(x), Blob()
    la = layer_from_text('type: "Softmax"')
    la.setup([a], [ta])
    la.forward([a], [ta])
    ta.diff[...] = dy
    la.backward([ta], [True], [a])
    # in place
    b = Blob.from_array(x)
    lb = layer_from_text('type: "Softmax"')
    lb.setup([b], [b])
    lb.forward([b], [b])
    np.testing.assert_allclose(b.data, ta.data, rtol=1e-6)
    b.diff[...] = dy
    lb.backward([b], [True], [b])
    np.testing.assert_allclose(b.diff, a.diff, rtol=1e-5, atol=1e-7)
    # and the formula dx = y * (dy - sum(dy * y))
    y = ta.data
    expect = y * (dy - (dy * y).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(a.diff, expect, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("axis", [1, 2])
def test_softmax_gradient(axis):
    layer = layer_from_text(f'type: "Softmax" softmax_param {{ axis: {axis} }}')
    check_gradient(layer, [blob((2, 3, 4), seed=7)])


def test_softmax_bad_axis():
    with pytest.raises(LayerSetupError, match="axis"):
        forward(layer_from_text('type: "Softmax" softmax_param { axis: 3 }'),
                [blob((2, 3, 4), seed=1)])


# ---------------------------------------------------------------------------------------------
# SoftmaxWithLoss: 2 samples, 3 classes

X2 = [[1, 2, 3], [0, 0, 0]]
L1 = -math.log(softmax_list([1, 2, 3])[2])       # 0.40760596
L2 = -math.log(1 / 3)                             # 1.09861229


@pytest.mark.parametrize("param, expected", [
    ("", (L1 + L2) / 2),                                          # default VALID
    ("loss_param { normalization: VALID }", (L1 + L2) / 2),
    ("loss_param { normalization: FULL }", (L1 + L2) / 2),
    ("loss_param { normalization: BATCH_SIZE }", (L1 + L2) / 2),
    ("loss_param { normalization: NONE }", L1 + L2),
])
def test_swl_normalization_no_ignore(param, expected):
    _, (top,) = swl(param, X2, [2, 0])
    assert top.shape == ()
    assert float(top.data) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("param, expected", [
    ("loss_param { ignore_label: 0 }", L1 / 1),                                  # VALID: 1
    ("loss_param { ignore_label: 0 normalization: VALID }", L1 / 1),
    ("loss_param { ignore_label: 0 normalization: FULL }", L1 / 2),
    ("loss_param { ignore_label: 0 normalization: BATCH_SIZE }", L1 / 2),
    ("loss_param { ignore_label: 0 normalization: NONE }", L1),
    ("loss_param { ignore_label: 0 normalize: false }", L1 / 2),                 # BATCH_SIZE
    ("loss_param { ignore_label: 0 normalize: true }", L1 / 1),                  # VALID
    ("loss_param { ignore_label: 0 normalize: false normalization: NONE }", L1),  # wins
])
def test_swl_normalization_with_ignore(param, expected):
    _, (top,) = swl(param, X2, [2, 0])
    assert float(top.data) == pytest.approx(expected, rel=1e-6)


def test_swl_backward_values_and_ignore():
    p = softmax_list([1, 2, 3])
    layer, (top,) = swl("loss_param { ignore_label: 0 normalization: FULL }", X2, [2, 0])
    bottom = [blob(np.array(X2, np.float32)), blob(np.array([2, 0], np.float32))]
    layer.forward(bottom, [top])
    layer.backward([top], [True, False], bottom)
    # loss weight 1, FULL normalizer 2; the ignored sample gets exactly zero
    expect = [[p[0] / 2, p[1] / 2, (p[2] - 1) / 2], [0, 0, 0]]
    np.testing.assert_allclose(bottom[0].diff, expect, rtol=1e-6, atol=1e-8)
    assert np.all(bottom[0].diff[1] == 0)


def test_swl_all_ignored_gives_zero():
    layer, (top,) = swl("loss_param { ignore_label: 5 }", X2, [5, 5])
    assert float(top.data) == 0.0     # normalizer max(1, 0) = 1, no NaN
    bottom = [blob(np.array(X2, np.float32)), blob(np.array([5, 5], np.float32))]
    layer.backward([top], [True, False], bottom)
    assert np.all(bottom[0].diff == 0)


def test_swl_flt_min_clamp():
    # softmax([0, -1000])[1] underflows to 0: Caffe clamps to FLT_MIN -> -log(FLT_MIN)
    _, (top,) = swl("", [[0, -1000]], [1])
    assert float(top.data) == pytest.approx(-math.log(FLT_MIN), rel=1e-6)
    assert np.isfinite(top.data)


def naive_swl(x, labels, ignore=None, mode="VALID"):
    n_, c_, h_, w_ = x.shape
    loss, count = 0.0, 0
    for n in range(n_):
        for h in range(h_):
            for w in range(w_):
                lab = int(labels[n, 0, h, w])
                if ignore is not None and lab == ignore:
                    continue
                p = softmax_list(list(x[n, :, h, w].astype(np.float64)))[lab]
                loss -= math.log(max(p, FLT_MIN))
                count += 1
    norm = {"FULL": n_ * h_ * w_, "VALID": count, "BATCH_SIZE": n_, "NONE": 1}[mode]
    return loss / max(1, norm)


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
def test_swl_spatial(mode):
    g = np.random.default_rng(11)
    x = g.normal(size=(2, 4, 2, 3)).astype(np.float32)
    labels = g.integers(0, 4, size=(2, 1, 2, 3)).astype(np.float32)
    labels[0, 0, 1, 2] = 255
    labels[1, 0, 0, 0] = 255
    _, (top,) = swl(f"loss_param {{ ignore_label: 255 normalization: {mode} }}", x, labels)
    assert float(top.data) == pytest.approx(naive_swl(x, labels, 255, mode), rel=1e-5)


def test_swl_spatial_axis2():
    # softmax_param axis also selects the class axis of the loss: (N, H, C) with labels (N, H)
    g = np.random.default_rng(12)
    x = g.normal(size=(2, 3, 4)).astype(np.float32)
    labels = g.integers(0, 4, size=(2, 3)).astype(np.float32)
    _, (top,) = swl("softmax_param { axis: 2 }", x, labels)
    expect = np.mean([-math.log(softmax_list(list(x[n, h].astype(float)))[int(labels[n, h])])
                      for n in range(2) for h in range(3)])
    assert float(top.data) == pytest.approx(expect, rel=1e-5)


def test_swl_second_top_probabilities():
    layer, (loss, prob) = swl("loss_weight: 1 loss_weight: 0", X2, [2, 0], ntop=2)
    assert prob.shape == (2, 3)
    np.testing.assert_allclose(prob.data, [softmax_list([1, 2, 3]), [1 / 3] * 3], rtol=1e-6)
    assert float(loss.data) == pytest.approx((L1 + L2) / 2, rel=1e-6)


def test_swl_second_top_needs_two_loss_weights():
    # Caffe: "loss_weight must be unspecified or specified once per top blob" (1 vs 2)
    with pytest.raises(LayerSetupError, match="loss_weight"):
        swl("", X2, [2, 0], ntop=2)


@pytest.mark.parametrize("text", ["", "loss_param { ignore_label: 1 }",
                                  "loss_param { normalization: NONE }"])
def test_swl_gradient(text):
    g = np.random.default_rng(21)
    labels = g.integers(0, 3, size=(4,)).astype(np.float32)
    layer = layer_from_text('type: "SoftmaxWithLoss" ' + text)
    check_gradient(layer, [blob((4, 3), seed=22, low=-2, high=2), blob(labels)],
                   check_bottom=[0])


def test_swl_gradient_spatial():
    g = np.random.default_rng(23)
    labels = g.integers(0, 3, size=(2, 1, 2, 2)).astype(np.float32)
    layer = layer_from_text('type: "SoftmaxWithLoss" loss_param { normalization: FULL }')
    check_gradient(layer, [blob((2, 3, 2, 2), seed=24), blob(labels)], check_bottom=[0])


def test_swl_loss_weight_scales_loss_and_gradient():
    def run(text):
        layer = layer_from_text('type: "SoftmaxWithLoss" ' + text)
        bottom = [blob(np.array(X2, np.float32)), blob(np.array([2, 0], np.float32))]
        top = [Blob()]
        layer.setup(bottom, top)
        loss = layer.forward(bottom, top)
        layer.backward(top, [True, False], bottom)
        return loss, bottom[0].diff.copy()

    loss1, g1 = run("")
    loss2, g2 = run("loss_weight: 2")
    assert loss1 == pytest.approx((L1 + L2) / 2, rel=1e-6)
    assert loss2 == pytest.approx(2 * loss1, rel=1e-6)
    np.testing.assert_allclose(g2, 2 * g1, rtol=1e-6)
    assert np.abs(g1).max() > 0.1


def test_swl_label_count_mismatch():
    with pytest.raises(LayerSetupError) as e:
        swl("", np.zeros((3, 4)), np.zeros((3, 2)))
    assert "6 values" in str(e.value) and "= 3" in str(e.value)
    with pytest.raises(LayerSetupError) as e:
        swl("", np.zeros((2, 3, 2, 2)), np.zeros((2, 1, 2, 1)))
    assert "4 values" in str(e.value) and "8" in str(e.value)


@pytest.mark.parametrize("bad", [3, -1, 7])
def test_swl_label_out_of_range(bad):
    with pytest.raises(LayerSetupError) as e:
        swl("", X2, [0, bad])
    msg = str(e.value)
    assert f"label value {bad}" in msg and "[0, 3)" in msg


def test_swl_ignore_label_may_be_out_of_range():
    _, (top,) = swl("loss_param { ignore_label: -1 }", X2, [2, -1])
    assert float(top.data) == pytest.approx(L1, rel=1e-6)


def test_swl_no_backprop_to_labels():
    layer, (top,) = swl("", X2, [2, 0])
    bottom = [blob(np.array(X2, np.float32)), blob(np.array([2, 0], np.float32))]
    with pytest.raises(LayerSetupError, match="label"):
        layer.backward([top], [True, True], bottom)
    assert layer.allow_force_backward(1) is False
    assert layer.allow_force_backward(0) is True


def test_swl_first_dimension_mismatch():
    with pytest.raises(LayerSetupError, match="first dimension"):
        swl("", np.zeros((2, 3)), np.zeros((3,)))


def _swl_pass(text, x, labels):
    layer = layer_from_text('type: "SoftmaxWithLoss" ' + text)
    bottom = [blob(np.asarray(x, np.float32)), blob(np.asarray(labels, np.float32))]
    top = [Blob()]
    layer.setup(bottom, top)
    loss = layer.forward(bottom, top)
    layer.backward(top, [True, False], bottom)
    return loss, layer.prob.data.copy(), bottom[0].diff.copy()


@pytest.mark.parametrize("text", ["", "loss_param { ignore_label: 2 normalization: VALID }",
                                  "loss_param { ignore_label: -3 normalization: FULL }"])
def test_swl_compiled_and_numpy_paths_agree(monkeypatch, text):
    """The one-pass kernel (numba) gives the numpy path's loss, probabilities and gradient,
    labels read as Caffe's static_cast<int> (1.7 -> 1, -0.5 -> 0, -3.2 -> -3)."""
    from caffe_lite.layers import jit
    if jit.kernels("softmax") is None:
        pytest.skip("numba kernels off (CAFFE_LITE_JIT=0 or numba absent)")
    g = np.random.default_rng(31)
    x = g.normal(size=(3, 4, 2, 5)).astype(np.float32) * 3
    labels = g.integers(0, 4, size=(3, 1, 2, 5)).astype(np.float32)
    labels[0, 0, 0, :3] = [1.7, -0.5, 3.9]
    labels[2, 0, 1, :2] = [-3.2, 2.0]
    if "-3" not in text:
        labels[2, 0, 1, 0] = 0
    compiled = _swl_pass(text, x, labels)
    monkeypatch.setattr(jit, "kernels", lambda family: None)
    plain = _swl_pass(text, x, labels)
    assert compiled[0] == pytest.approx(plain[0], rel=1e-6)
    np.testing.assert_allclose(compiled[1], plain[1], rtol=1e-6)
    np.testing.assert_allclose(compiled[2], plain[2], rtol=1e-6, atol=1e-9)
    assert np.abs(compiled[2]).max() > 0.01


@pytest.mark.parametrize("bad", [np.nan, 4.0, -1.0])
def test_swl_invalid_label_before_backward_is_reported(bad):
    """A label made invalid after the forward is reported by the backward, not read out of
    bounds."""
    layer, (top,) = swl("", X2, [2, 0])
    bottom = [blob(np.array(X2, np.float32)), blob(np.array([2, bad], np.float32))]
    with pytest.raises(LayerSetupError, match="outside"):
        layer.backward([top], [True, False], bottom)
    with pytest.raises(LayerSetupError, match="outside"):
        layer.forward(bottom, [top])
