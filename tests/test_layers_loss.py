import math

import numpy as np
import pytest

from caffe_lite.blob import Blob
from caffe_lite.errors import LayerSetupError
from caffe_lite.testing import blob, check_gradient, forward, layer_from_text


def run(text, *arrays, propagate=None):
    """Set up a layer from text, forward, backward with the loss weight in the top diff.
    Returns (loss value in top, loss returned by forward, bottoms)."""
    layer = layer_from_text(text)
    bottom = [blob(np.asarray(a, np.float32)) for a in arrays]
    top = [Blob()]
    layer.setup(bottom, top)
    weighted = layer.forward(bottom, top)
    layer.backward(top, propagate or [True] + [False] * (len(bottom) - 1), bottom)
    return float(top[0].data), weighted, bottom


# ---------------------------------------------------------------------------------------------
# SigmoidCrossEntropyLoss

def naive_sce(x, t, ignore=None):
    """-[t log p + (1-t) log(1-p)] summed, in float64, and the number of counted entries."""
    total, count = 0.0, 0
    for xi, ti in zip(np.ravel(x).astype(float), np.ravel(t).astype(float)):
        if ignore is not None and int(ti) == ignore:
            continue
        p = 1 / (1 + math.exp(-xi))
        total -= ti * math.log(p) + (1 - ti) * math.log(1 - p)
        count += 1
    return total, count


X = np.array([[-2.0, 0.5, 1.0], [3.0, 0.0, -0.7]], np.float32)
T = np.array([[0.0, 1.0, 1.0], [1.0, 0.5, 0.0]], np.float32)


@pytest.mark.parametrize("param, norm", [
    ("", "batch"),                                      # Caffe's default for this layer
    ("loss_param { normalization: BATCH_SIZE }", "batch"),
    ("loss_param { normalization: VALID }", "count"),
    ("loss_param { normalization: FULL }", "count"),
    ("loss_param { normalization: NONE }", "one"),
    ("loss_param { normalize: true }", "count"),
    ("loss_param { normalize: false }", "batch"),
])
def test_sce_forward_normalization(param, norm):
    total, count = naive_sce(X, T)
    loss, _, _ = run('type: "SigmoidCrossEntropyLoss" ' + param, X, T)
    div = {"batch": 2, "count": count, "one": 1}[norm]
    assert loss == pytest.approx(total / div, rel=1e-5)


def test_sce_backward_values():
    loss, _, (bx, _) = run('type: "SigmoidCrossEntropyLoss"', X, T)
    sig = 1 / (1 + np.exp(-X.astype(np.float64)))
    np.testing.assert_allclose(bx.diff, (sig - T) / 2, rtol=1e-5, atol=1e-7)


def test_sce_large_inputs_stay_finite():
    x = np.array([[100.0, -100.0], [50.0, -50.0]], np.float32)
    t = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    loss, _, (bx, _) = run('type: "SigmoidCrossEntropyLoss"', x, t)
    # confident right answers cost ~0; confident wrong ones cost |x|: (50 + 50) / batch 2
    assert loss == pytest.approx(50.0, rel=1e-6)
    assert np.all(np.isfinite(bx.diff))
    np.testing.assert_allclose(bx.diff, [[0, 0], [0.5, -0.5]], atol=1e-7)


def test_sce_ignore_label():
    t = T.copy()
    t[0, 1] = -1
    t[1, 2] = -1
    text = 'type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: -1 normalization: VALID }'
    total, count = naive_sce(X, t, ignore=-1)
    assert count == 4
    loss, _, (bx, _) = run(text, X, t)
    assert loss == pytest.approx(total / 4, rel=1e-5)
    assert bx.diff[0, 1] == 0 and bx.diff[1, 2] == 0
    sig = 1 / (1 + np.exp(-X[0, 0].astype(np.float64)))
    assert bx.diff[0, 0] == pytest.approx((sig - 0) / 4, rel=1e-5)
    # BATCH_SIZE (the default) ignores the ignore count
    loss_b, _, _ = run('type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: -1 }', X, t)
    assert loss_b == pytest.approx(total / 2, rel=1e-5)


@pytest.mark.parametrize("text", ["", "loss_param { normalization: FULL }",
                                  "loss_param { ignore_label: 1 normalization: VALID }"])
def test_sce_gradient(text):
    g = np.random.default_rng(5)
    targets = g.integers(0, 2, size=(3, 4)).astype(np.float32)
    layer = layer_from_text('type: "SigmoidCrossEntropyLoss" ' + text)
    check_gradient(layer, [blob((3, 4), seed=6, low=-3, high=3), blob(targets)],
                   check_bottom=[0])


def test_sce_loss_weight():
    loss1, w1, (b1, _) = run('type: "SigmoidCrossEntropyLoss"', X, T)
    loss2, w2, (b2, _) = run('type: "SigmoidCrossEntropyLoss" loss_weight: 2', X, T)
    assert loss2 == pytest.approx(loss1) and w2 == pytest.approx(2 * w1)
    np.testing.assert_allclose(b2.diff, 2 * b1.diff, rtol=1e-6)


def test_sce_errors():
    with pytest.raises(LayerSetupError) as e:
        run('type: "SigmoidCrossEntropyLoss"', np.zeros((2, 3)), np.zeros((2, 4)))
    assert "(2, 3)" in str(e.value) and "(2, 4)" in str(e.value)
    with pytest.raises(LayerSetupError, match="label"):
        run('type: "SigmoidCrossEntropyLoss"', X, T, propagate=[True, True])


# ---------------------------------------------------------------------------------------------
# EuclideanLoss

A = [[1.0, 2.0], [3.0, 4.0]]
B = [[0.0, 0.0], [1.0, 1.0]]


def test_euclidean_forward_backward():
    loss, weighted, (ba, bb) = run('type: "EuclideanLoss"', A, B, propagate=[True, True])
    # diff [[1, 2], [2, 3]] -> sumsq 18 -> / num 2 / 2
    assert loss == pytest.approx(4.5)
    assert weighted == pytest.approx(4.5)
    np.testing.assert_allclose(ba.diff, [[0.5, 1.0], [1.0, 1.5]])
    np.testing.assert_allclose(bb.diff, [[-0.5, -1.0], [-1.0, -1.5]])


def test_euclidean_loss_weight_and_shapes():
    loss, weighted, (ba, bb) = run('type: "EuclideanLoss" loss_weight: 2', A,
                                   np.reshape(B, (2, 2, 1)), propagate=[True, True])
    assert loss == pytest.approx(4.5) and weighted == pytest.approx(9.0)
    np.testing.assert_allclose(ba.diff, [[1.0, 2.0], [2.0, 3.0]])
    np.testing.assert_allclose(bb.diff.reshape(2, 2), [[-1.0, -2.0], [-2.0, -3.0]])


def test_euclidean_gradient_both_bottoms():
    layer = layer_from_text('type: "EuclideanLoss"')
    check_gradient(layer, [blob((3, 2, 2), seed=1), blob((3, 2, 2), seed=2)])
    assert layer.allow_force_backward(0) and layer.allow_force_backward(1)


def test_euclidean_dimension_mismatch():
    with pytest.raises(LayerSetupError) as e:
        run('type: "EuclideanLoss"', np.zeros((2, 3)), np.zeros((2, 4)))
    assert "(2, 3)" in str(e.value) and "(2, 4)" in str(e.value)


# ---------------------------------------------------------------------------------------------
# HingeLoss

HX = [[0.5, -0.2, 2.0], [-1.5, 0.3, 0.1]]
HL = [2, 0]
# margins: sample 0 -> [1.5, 0.8, max(0, 1 - 2)] = [1.5, 0.8, 0]; sample 1 -> [2.5, 1.3, 1.1]


def test_hinge_l1():
    loss, _, (bx, _) = run('type: "HingeLoss"', HX, HL)
    assert loss == pytest.approx((1.5 + 0.8 + 0 + 2.5 + 1.3 + 1.1) / 2, rel=1e-6)   # 3.6
    np.testing.assert_allclose(bx.diff, [[0.5, 0.5, 0.0], [-0.5, 0.5, 0.5]])


def test_hinge_l2():
    loss, _, (bx, _) = run('type: "HingeLoss" hinge_loss_param { norm: L2 }', HX, HL)
    assert loss == pytest.approx((2.25 + 0.64 + 0 + 6.25 + 1.69 + 1.21) / 2, rel=1e-6)  # 6.02
    # 2 * margin * sign / num
    np.testing.assert_allclose(bx.diff, [[1.5, 0.8, 0.0], [-2.5, 1.3, 1.1]], rtol=1e-6)


def test_hinge_loss_weight():
    _, w, (bx, _) = run('type: "HingeLoss" hinge_loss_param { norm: L2 } loss_weight: 2', HX, HL)
    assert w == pytest.approx(12.04, rel=1e-6)
    np.testing.assert_allclose(bx.diff, [[3.0, 1.6, 0.0], [-5.0, 2.6, 2.2]], rtol=1e-6)


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_gradient(norm):
    # every input at least 0.2 from its kink (x = -1 off the label, x = +1 at the label),
    # with some margins in the flat zero region
    x = np.array([[0.3, -0.4, 2.0, -1.6],
                  [-0.2, 0.5, 0.1, 1.4],
                  [-2.0, 0.6, -0.3, 0.0]], np.float32)
    labels = np.array([2, 3, 0], np.float32)
    layer = layer_from_text(f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}')
    check_gradient(layer, [blob(x), blob(labels)], check_bottom=[0])


def test_hinge_errors():
    with pytest.raises(LayerSetupError) as e:
        run('type: "HingeLoss"', HX, [3, 0])
    assert "label value 3" in str(e.value) and "[0, 3)" in str(e.value)
    with pytest.raises(LayerSetupError, match="label"):
        run('type: "HingeLoss"', HX, HL, propagate=[True, True])


def test_loss_layers_default_loss_weight_one():
    for t in ("SigmoidCrossEntropyLoss", "EuclideanLoss", "HingeLoss"):
        layer = layer_from_text(f'type: "{t}"')
        top = forward(layer, [blob(np.zeros((2, 3), np.float32)),
                              blob(np.zeros((2, 3) if t != "HingeLoss" else (2,), np.float32))])
        assert top[0].shape == ()
        assert float(top[0].diff) == 1.0


def test_get_normalizer_modes_and_clamp():
    from caffe_lite.layers.loss import get_normalizer
    from caffe_lite.proto import caffe_pb2
    lp = caffe_pb2.LossParameter
    assert get_normalizer(lp.FULL, 2, 3, 4) == 6
    assert get_normalizer(lp.VALID, 2, 3, 4) == 4
    assert get_normalizer(lp.VALID, 2, 3, -1) == 6
    assert get_normalizer(lp.BATCH_SIZE, 2, 3, 4) == 2
    assert get_normalizer(lp.NONE, 2, 3, 4) == 1
    assert get_normalizer(lp.VALID, 2, 3, 0) == 1       # max(1, 0): no NaN
    assert get_normalizer(lp.BATCH_SIZE, 0, 3, 0) == 1


def test_sce_all_ignored_is_zero():
    t = np.full(X.shape, -1, np.float32)
    loss, _, (bx, _) = run('type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: -1 '
                           'normalization: VALID }', X, t)
    assert loss == 0.0 and np.all(bx.diff == 0)
