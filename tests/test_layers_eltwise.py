"""Eltwise: PROD / SUM / MAX forward and backward, gradient checks, in place, errors."""
import numpy as np
import pytest

from caffe_lite.blob import Blob
from caffe_lite.errors import LayerSetupError
from caffe_lite.testing import blob, check_gradient, forward, layer_from_text

A = lambda *v: np.array(v, dtype=np.float32)  # noqa: E731


def run(text, xs, dy):
    layer = layer_from_text(text)
    bottom = [blob(np.asarray(x, np.float32)) for x in xs]
    top = forward(layer, bottom)
    y = top[0].data.copy()
    top[0].diff[...] = dy
    layer.backward(top, [True] * len(bottom), bottom)
    return y, [b.diff.copy() for b in bottom]


def test_sum_default_is_plain_sum():
    y, dxs = run('type: "Eltwise"', [A(1, 2), A(10, 20), A(100, 200)], A(3, 4))
    np.testing.assert_array_equal(y, A(111, 222))
    for dx in dxs:
        np.testing.assert_array_equal(dx, A(3, 4))


def test_sum_with_coefficients():
    y, dxs = run('type: "Eltwise" eltwise_param { operation: SUM coeff: 1 coeff: -1 coeff: 0.5 }',
                 [A(1, 2), A(10, 20), A(100, 200)], A(3, 4))
    np.testing.assert_array_equal(y, A(1 - 10 + 50, 2 - 20 + 100))
    np.testing.assert_array_equal(dxs[0], A(3, 4))
    np.testing.assert_array_equal(dxs[1], A(-3, -4))
    np.testing.assert_array_equal(dxs[2], A(1.5, 2))


def test_prod_stable_and_unstable():
    xs = [A(2, 3, 0), A(5, -1, 4), A(0.5, 2, 3)]
    dy = A(1, 2, 3)
    y, dxs = run('type: "Eltwise" eltwise_param { operation: PROD }', xs, dy)
    np.testing.assert_array_equal(y, A(5, -6, 0))
    # stable: product of the other bottoms (finite even where a bottom is 0)
    np.testing.assert_array_equal(dxs[0], A(2.5, -4, 36))
    np.testing.assert_array_equal(dxs[1], A(1, 12, 0))
    np.testing.assert_array_equal(dxs[2], A(10, -6, 0))
    with np.errstate(invalid="ignore"):
        y, dxs = run('type: "Eltwise" eltwise_param { operation: PROD stable_prod_grad: false }',
                     xs, dy)
    # unstable: top / bottom, which is 0/0 = NaN where the bottom is 0 (as in Caffe)
    np.testing.assert_array_equal(dxs[0][:2], A(2.5, -4))
    assert np.isnan(dxs[0][2])
    np.testing.assert_array_equal(dxs[1], A(1, 12, 0))


def test_max_and_its_ties():
    xs = [A(1, 5, 2, 7, 3), A(4, 5, 2, 1, 3), A(3, 0, 2, 7, 9)]
    y, dxs = run('type: "Eltwise" eltwise_param { operation: MAX }', xs, A(1, 2, 3, 4, 5))
    np.testing.assert_array_equal(y, A(4, 5, 2, 7, 9))
    # argmax: [1, 1 (tie 0/1 -> bottom 1), 1 (three-way tie), 0 (tie 0/2 -> 0 kept), 2]
    np.testing.assert_array_equal(dxs[0], A(0, 0, 0, 4, 0))
    np.testing.assert_array_equal(dxs[1], A(1, 2, 3, 0, 0))
    np.testing.assert_array_equal(dxs[2], A(0, 0, 0, 0, 5))


def test_propagate_down_subset():
    layer = layer_from_text('type: "Eltwise" eltwise_param { operation: PROD }')
    bottom = [blob(A(1, 2)), blob(A(3, 4))]
    top = forward(layer, bottom)
    top[0].diff[...] = 1
    bottom[0].diff[...] = 9
    layer.backward(top, [False, True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, A(9, 9))
    np.testing.assert_array_equal(bottom[1].diff, A(1, 2))


def _separated(shape, n, seed):
    """n bottoms whose values differ by well over the gradient check's step at each spot."""
    g = np.random.default_rng(seed)
    levels = np.linspace(-1, 1, n).astype(np.float32)
    perm = np.argsort(g.random((n,) + shape), axis=0)
    return [blob(levels[perm[i]] + g.uniform(-0.05, 0.05, shape).astype(np.float32))
            for i in range(n)]


@pytest.mark.parametrize("text", [
    'type: "Eltwise" eltwise_param { operation: PROD }',
    'type: "Eltwise" eltwise_param { operation: PROD stable_prod_grad: false }',
    'type: "Eltwise"',
    'type: "Eltwise" eltwise_param { coeff: 2 coeff: -0.5 coeff: 1.5 }',
    'type: "Eltwise" eltwise_param { operation: MAX }',
])
def test_gradient(text):
    bottom = _separated((2, 3, 2), 3, seed=7)
    if "false" in text:  # top / bottom: keep bottoms away from 0
        for b in bottom:
            b.data[...] = np.where(b.data >= 0, b.data + 0.5, b.data - 0.5)
    assert check_gradient(layer_from_text(text), bottom) > 0


@pytest.mark.parametrize("op", ["PROD", "SUM", "MAX"])
@pytest.mark.parametrize("alias", [0, 1])
def test_in_place_matches_out_of_place(op, alias):
    text = f'type: "Eltwise" eltwise_param {{ operation: {op} }}'
    if op == "SUM":
        text = 'type: "Eltwise" eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 3 }'
    xs = [b.data.copy() for b in _separated((2, 3), 3, seed=2)]
    dy = np.random.default_rng(1).uniform(-1, 1, (2, 3)).astype(np.float32)
    out = []
    for in_place in (False, True):
        layer = layer_from_text(text)
        bottom = [blob(x.copy()) for x in xs]
        top = [bottom[alias]] if in_place else [Blob()]
        layer.setup(bottom, top)
        layer.forward(bottom, top)
        y = top[0].data.copy()
        top[0].diff[...] = dy
        layer.backward(top, [True] * 3, bottom)
        out.append((y, [b.diff.copy() for b in bottom]))
    (y0, d0), (y1, d1) = out
    np.testing.assert_array_equal(y1, y0)
    for a, c in zip(d0, d1):
        np.testing.assert_array_equal(c, a)


def test_errors():
    with pytest.raises(LayerSetupError, match="at least 2 bottom"):
        forward(layer_from_text('type: "Eltwise"'), [blob((2,), seed=0)])
    with pytest.raises(LayerSetupError, match=r"bottom\[0\] is \(2, 3\), bottom\[1\] is \(3, 2\)"):
        forward(layer_from_text('type: "Eltwise"'), [blob((2, 3), seed=0), blob((3, 2), seed=1)])
    with pytest.raises(LayerSetupError, match="1 coeff value"):
        forward(layer_from_text('type: "Eltwise" eltwise_param { coeff: 1 }'),
                [blob((2,), seed=0), blob((2,), seed=1)])
    with pytest.raises(LayerSetupError, match="only for summation"):
        forward(layer_from_text('type: "Eltwise" eltwise_param { operation: PROD coeff: 1 '
                                'coeff: 2 }'), [blob((2,), seed=0), blob((2,), seed=1)])


def test_max_ignores_coefficients_like_caffe():
    y, _ = run('type: "Eltwise" eltwise_param { operation: MAX coeff: 5 coeff: 5 }',
               [A(1, 4), A(3, 2)], A(1, 1))
    np.testing.assert_array_equal(y, A(3, 4))
