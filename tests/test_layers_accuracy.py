import numpy as np
import pytest

from caffe_lite.blob import Blob
from caffe_lite.errors import LayerSetupError
from caffe_lite.testing import blob, forward, layer_from_text


def accuracy(text, scores, labels, ntop=1):
    layer = layer_from_text('type: "Accuracy" ' + text)
    tops = forward(layer, [blob(np.asarray(scores, np.float32)),
                           blob(np.asarray(labels, np.float32))], ntop)
    return layer, tops


def naive_accuracy(x, labels, top_k, axis=1, ignore=None):
    """Caffe's definition with plain loops: correct when fewer than top_k other classes
    score >= the true class.  Returns (accuracy, per-class accuracy)."""
    x = np.moveaxis(np.asarray(x), axis, -1)
    c = x.shape[-1]
    x = x.reshape(-1, c)
    labels = np.asarray(labels).reshape(-1).astype(int)
    hits = count = 0
    nums, goods = [0] * c, [0] * c
    for row, lab in zip(x, labels):
        if ignore is not None and lab == ignore:
            continue
        better = sum(1 for k in range(c) if k != lab and row[k] >= row[lab])
        count += 1
        nums[lab] += 1
        if better < top_k:
            hits += 1
            goods[lab] += 1
    per = [g / n if n else 0.0 for g, n in zip(goods, nums)]
    return (hits / count if count else 0.0), per


# ---------------------------------------------------------------------------------------------
# Accuracy

S = [[0.1, 0.5, 0.4],    # label 1: best                 -> top1 yes, top2 yes
     [0.3, 0.3, 0.4],    # label 0: tied with 1, 2 above -> top1 no,  top2 no (tie counts against)
     [0.6, 0.2, 0.2],    # label 2: tied with 1, 0 above -> top1 no,  top2 no
     [0.2, 0.7, 0.1]]    # label 0: second               -> top1 no,  top2 yes
SL = [1, 0, 2, 0]


def test_accuracy_top1_and_per_class():
    _, (acc, per) = accuracy("", S, SL, ntop=2)
    assert acc.shape == () and per.shape == (3,)
    assert float(acc.data) == pytest.approx(0.25)
    np.testing.assert_allclose(per.data, [0.0, 1.0, 0.0])


def test_accuracy_top2_ties_count_against():
    _, (acc, per) = accuracy("accuracy_param { top_k: 2 }", S, SL, ntop=2)
    assert float(acc.data) == pytest.approx(0.5)
    np.testing.assert_allclose(per.data, [0.5, 1.0, 0.0])


def test_accuracy_tie_for_max_is_wrong_whatever_the_index():
    scores = [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]
    _, (acc,) = accuracy("", scores, [0, 1])
    assert float(acc.data) == 0.0
    _, (acc,) = accuracy("accuracy_param { top_k: 2 }", scores, [0, 1])
    assert float(acc.data) == 1.0


def test_accuracy_ignore_label():
    # sample 1 (a wrong one) ignored: top1 1/3
    _, (acc, per) = accuracy("accuracy_param { ignore_label: -1 }", S, [1, -1, 2, 0], ntop=2)
    assert float(acc.data) == pytest.approx(1 / 3)
    np.testing.assert_allclose(per.data, [0.0, 1.0, 0.0])
    _, (acc,) = accuracy("accuracy_param { ignore_label: 0 }", S, SL)
    assert float(acc.data) == pytest.approx(0.5)     # samples 0 (right) and 2 (wrong)


def test_accuracy_all_ignored_is_zero():
    _, (acc, per) = accuracy("accuracy_param { ignore_label: 7 }", S, [7, 7, 7, 7], ntop=2)
    assert float(acc.data) == 0.0
    assert np.all(per.data == 0)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_accuracy_spatial_matches_naive(top_k):
    g = np.random.default_rng(top_k)
    x = g.integers(0, 4, size=(2, 5, 3, 2)).astype(np.float32)   # small ints: many ties
    labels = g.integers(0, 5, size=(2, 1, 3, 2)).astype(np.float32)
    labels[0, 0, 0, 0] = 255
    _, (acc, per) = accuracy(f"accuracy_param {{ top_k: {top_k} ignore_label: 255 }}",
                             x, labels, ntop=2)
    a, p = naive_accuracy(x, labels, top_k, axis=1, ignore=255)
    assert float(acc.data) == pytest.approx(a)
    np.testing.assert_allclose(per.data, p, rtol=1e-6)


def test_accuracy_axis_2():
    g = np.random.default_rng(9)
    x = g.normal(size=(3, 4, 6)).astype(np.float32)
    labels = g.integers(0, 6, size=(3, 4)).astype(np.float32)
    _, (acc,) = accuracy("accuracy_param { axis: -1 top_k: 2 }", x, labels)
    a, _ = naive_accuracy(x, labels, 2, axis=2)
    assert float(acc.data) == pytest.approx(a)


def test_accuracy_not_a_loss_and_no_backward():
    layer, (acc,) = accuracy("", S, SL)
    assert layer.loss(0) == 0
    bottom = [blob(np.asarray(S, np.float32)), blob(np.asarray(SL, np.float32))]
    layer.backward([acc], [False, False], bottom)   # nothing asked: fine
    for pd in ([True, False], [False, True]):
        with pytest.raises(LayerSetupError, match="backward"):
            layer.backward([acc], pd, bottom)


def test_accuracy_errors():
    with pytest.raises(LayerSetupError) as e:
        accuracy("", np.zeros((2, 3, 2)), np.zeros((2, 3)))
    assert "6 values" in str(e.value) and "4" in str(e.value)
    with pytest.raises(LayerSetupError, match="top_k"):
        accuracy("accuracy_param { top_k: 4 }", S, SL)
    with pytest.raises(LayerSetupError) as e:
        accuracy("", S, [1, 0, 3, 0])
    assert "label value 3" in str(e.value) and "[0, 3)" in str(e.value)


# ---------------------------------------------------------------------------------------------
# ArgMax

AX = np.array([[1, 3, 2, 3], [0, -1, 5, 4]], np.float32)


def argmax(text, x):
    return forward(layer_from_text('type: "ArgMax" ' + text), [blob(np.asarray(x, np.float32))])[0]


def test_argmax_default_tie_takes_larger_index():
    top = argmax("", AX)
    assert top.shape == (2, 1, 1)
    np.testing.assert_array_equal(top.data.ravel(), [3, 2])    # row 0: 3 at 1 and 3 -> 3


def test_argmax_out_max_val():
    top = argmax("argmax_param { out_max_val: true }", AX)
    assert top.shape == (2, 2, 1)
    np.testing.assert_array_equal(top.data[:, :, 0], [[3, 3], [2, 5]])


def test_argmax_top_k():
    top = argmax("argmax_param { top_k: 2 }", AX)
    assert top.shape == (2, 1, 2)
    np.testing.assert_array_equal(top.data[:, 0, :], [[3, 1], [2, 3]])
    top = argmax("argmax_param { top_k: 3 out_max_val: true }", AX)
    assert top.shape == (2, 2, 3)
    np.testing.assert_array_equal(top.data[0], [[3, 1, 2], [3, 3, 2]])
    np.testing.assert_array_equal(top.data[1], [[2, 3, 0], [5, 4, 0]])


def test_argmax_4d_flattens_and_pads_shape():
    x = np.array([[[[1, 9]], [[4, 2]]], [[[0, 0]], [[7, 7]]]], np.float32)   # (2, 2, 1, 2)
    top = argmax("argmax_param { out_max_val: true }", x)
    assert top.shape == (2, 2, 1, 1)          # Caffe keeps the bottom's 4 axes
    np.testing.assert_array_equal(top.data.reshape(2, 2), [[1, 9], [3, 7]])


def naive_argmax_axis(x, axis, k):
    """Plain loops: sort (value, index) pairs descending along `axis`, keep the first k."""
    moved = np.moveaxis(x, axis, -1)
    idx = np.empty(moved.shape[:-1] + (k,), np.float32)
    val = np.empty_like(idx)
    for pos in np.ndindex(moved.shape[:-1]):
        pairs = sorted(((float(v), i) for i, v in enumerate(moved[pos])), reverse=True)[:k]
        val[pos] = [p[0] for p in pairs]
        idx[pos] = [p[1] for p in pairs]
    return np.moveaxis(idx, -1, axis), np.moveaxis(val, -1, axis)


@pytest.mark.parametrize("axis, k", [(1, 1), (1, 2), (0, 2), (2, 3), (-1, 1)])
def test_argmax_axis_matches_naive(axis, k):
    x = np.random.default_rng(k).integers(0, 3, size=(2, 4, 3)).astype(np.float32)  # ties
    want_idx, want_val = naive_argmax_axis(x, axis, k)
    top = argmax(f"argmax_param {{ axis: {axis} top_k: {k} }}", x)
    shape = list(x.shape)
    shape[axis] = k
    assert top.shape == tuple(shape)
    np.testing.assert_array_equal(top.data, want_idx)
    top = argmax(f"argmax_param {{ axis: {axis} top_k: {k} out_max_val: true }}", x)
    assert top.shape == tuple(shape)
    np.testing.assert_array_equal(top.data, want_val)


def test_argmax_errors_and_no_backward():
    with pytest.raises(LayerSetupError, match="top_k"):
        argmax("argmax_param { top_k: 5 }", AX)
    with pytest.raises(LayerSetupError, match="top_k"):
        argmax("argmax_param { axis: 0 top_k: 3 }", AX)
    with pytest.raises(LayerSetupError, match="top_k"):
        argmax("argmax_param { top_k: 0 }", AX)
    with pytest.raises(LayerSetupError, match="axis"):
        argmax("argmax_param { axis: 2 }", AX)
    layer = layer_from_text('type: "ArgMax"')
    b, t = blob(AX), Blob()
    layer.setup([b], [t])
    layer.forward([b], [t])
    with pytest.raises(LayerSetupError, match="backward"):
        layer.backward([t], [True], [b])
