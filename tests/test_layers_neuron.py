"""Neuron layers: hand-computed forward/backward, gradient checks, in-place equivalence."""
import math

import numpy as np
import pytest

from caffe_lite.backend.state import set_random_seed
from caffe_lite.blob import Blob
from caffe_lite.errors import LayerSetupError
from caffe_lite.proto import caffe_pb2
from caffe_lite.testing import blob, check_gradient, forward, layer_from_text

A = lambda *v: np.array(v, dtype=np.float32)  # noqa: E731


def run(text, x, dy=None, phase=caffe_pb2.TRAIN, seed=None):
    """Forward (and backward when dy is given) out of place; returns (y, dx, layer)."""
    layer = layer_from_text(text, phase=phase)
    b = blob(np.asarray(x, np.float32))
    if seed is not None:
        set_random_seed(seed)
    top = forward(layer, [b])
    y = top[0].data.copy()
    dx = None
    if dy is not None:
        top[0].diff[...] = dy
        layer.backward(top, [True], [b])
        dx = b.diff.copy()
    return y, dx, layer


# ---------------------------------------------------------------------------- ReLU
def test_relu_forward_backward():
    x = A(-2, -0.5, 0, 0.5, 3)
    dy = A(1, 2, 3, 4, 5)
    y, dx, _ = run('type: "ReLU"', x, dy)
    np.testing.assert_array_equal(y, A(0, 0, 0, 0.5, 3))
    np.testing.assert_array_equal(dx, A(0, 0, 0, 4, 5))


def test_leaky_relu_forward_backward():
    x = A(-2, -0.5, 0, 0.5, 3)
    dy = A(1, 2, 3, 4, 5)
    y, dx, _ = run('type: "ReLU" relu_param { negative_slope: 0.1 }', x, dy)
    np.testing.assert_allclose(y, A(-0.2, -0.05, 0, 0.5, 3), rtol=1e-6)
    # Caffe: the gradient at x == 0 is the slope (x <= 0 branch).
    np.testing.assert_allclose(dx, A(0.1, 0.2, 0.3, 4, 5), rtol=1e-6)


# ---------------------------------------------------------------------------- PReLU
def test_prelu_default_slope_and_shapes():
    layer = layer_from_text('type: "PReLU"')
    forward(layer, [blob((2, 3, 2, 2), seed=0)])
    assert layer.blobs[0].shape == (3,)
    np.testing.assert_array_equal(layer.blobs[0].data, A(0.25, 0.25, 0.25))
    shared = layer_from_text('type: "PReLU" prelu_param { channel_shared: true }')
    forward(shared, [blob((2, 3, 2, 2), seed=0)])
    assert shared.blobs[0].shape == () and shared.blobs[0].count == 1


def test_prelu_per_channel_forward_backward():
    layer = layer_from_text('type: "PReLU"')
    x = np.array([[[-1, 2], [-3, -4]], [[5, -6], [0, 1]]], np.float32)  # (N=2, C=2, 2)
    b = blob(x)
    top = forward(layer, [b])
    layer.blobs[0].data[...] = A(0.5, -2)
    layer.forward([b], top)
    expect = np.array([[[-0.5, 2], [6, 8]], [[5, -3], [0, 1]]], np.float32)
    np.testing.assert_array_equal(top[0].data, expect)
    dy = np.arange(1, 9, dtype=np.float32).reshape(2, 2, 2)
    top[0].diff[...] = dy
    layer.blobs[0].diff[...] = 0
    layer.backward(top, [True], [b])
    # dx = dy where x > 0 else a_c * dy  (x == 0 takes the slope)
    np.testing.assert_array_equal(
        b.diff, np.array([[[0.5, 2], [-6, -8]], [[5, 3], [-14, 8]]], np.float32))
    # da_c = sum over x <= 0 of dy * x: c0: 1*-1 + 6*-6 = -37; c1: 3*-3 + 4*-4 + 7*0 = -25
    np.testing.assert_array_equal(layer.blobs[0].diff, A(-37, -25))
    layer.backward(top, [True], [b])  # parameter gradients accumulate
    np.testing.assert_array_equal(layer.blobs[0].diff, A(-74, -50))


def test_prelu_shared_and_filler():
    layer = layer_from_text('type: "PReLU" prelu_param { channel_shared: true '
                            'filler { type: "constant" value: 0.5 } }')
    x = np.array([[-2, 4], [-6, 1]], np.float32)  # 2-axis bottom is allowed
    b = blob(x)
    top = forward(layer, [b])
    np.testing.assert_array_equal(top[0].data, np.array([[-1, 4], [-3, 1]], np.float32))
    top[0].diff[...] = 1
    layer.backward(top, [True], [b])
    assert float(layer.blobs[0].diff) == -8.0
    np.testing.assert_array_equal(b.diff, np.array([[0.5, 1], [0.5, 1]], np.float32))


def test_prelu_param_propagate_down_off():
    layer = layer_from_text('type: "PReLU"')
    b = blob((2, 2, 3), seed=3)
    top = forward(layer, [b])
    layer.param_propagate_down[0] = False
    layer.blobs[0].diff[...] = 7
    top[0].diff[...] = 1
    layer.backward(top, [True], [b])
    np.testing.assert_array_equal(layer.blobs[0].diff, A(7, 7))


def test_prelu_loaded_blobs_kept_and_checked():
    layer = layer_from_text('type: "PReLU" blobs { shape { dim: 2 } data: 0.1 data: -0.3 }')
    top = forward(layer, [blob(np.array([[-1, -1]], np.float32))])
    np.testing.assert_allclose(top[0].data, [[-0.1, 0.3]], rtol=1e-6)
    bad = layer_from_text('type: "PReLU" blobs { shape { dim: 2 } data: 0.1 data: -0.3 }')
    with pytest.raises(LayerSetupError, match="3 channels needs 3"):
        forward(bad, [blob((1, 3, 2), seed=0)])


def test_prelu_errors():
    with pytest.raises(LayerSetupError, match="at least 2 axes"):
        forward(layer_from_text('type: "PReLU"'), [blob((4,), seed=0)])
    layer = layer_from_text('type: "PReLU"')
    top = forward(layer, [blob((1, 3, 2), seed=0)])
    with pytest.raises(LayerSetupError, match="4 channels"):
        layer.reshape([blob((1, 4, 2), seed=0)], top)


# ---------------------------------------------------------------------------- ELU
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_elu(alpha):
    x = A(-1, -0.25, 0, 2)
    dy = A(1, 2, 3, 4)
    y, dx, _ = run(f'type: "ELU" elu_param {{ alpha: {alpha} }}', x, dy)
    ey = [alpha * (math.exp(v) - 1) if v <= 0 else v for v in x]
    np.testing.assert_allclose(y, ey, rtol=1e-6, atol=1e-7)
    edx = [d * (e + alpha) if v <= 0 else d for v, e, d in zip(x, ey, dy)]
    np.testing.assert_allclose(dx, edx, rtol=1e-6)


# ---------------------------------------------------------------------------- Sigmoid, TanH
def test_sigmoid():
    x = A(-3, 0, 2)
    dy = A(1, 2, 3)
    y, dx, _ = run('type: "Sigmoid"', x, dy)
    s = [1 / (1 + math.exp(-v)) for v in x]
    np.testing.assert_allclose(y, s, rtol=1e-6)
    assert y[1] == 0.5
    np.testing.assert_allclose(dx, [d * v * (1 - v) for d, v in zip(dy, s)], rtol=1e-5)


def test_tanh():
    x = A(-1.5, 0, 0.7)
    dy = A(2, 1, -1)
    y, dx, _ = run('type: "TanH"', x, dy)
    t = [math.tanh(v) for v in x]
    np.testing.assert_allclose(y, t, rtol=1e-6)
    np.testing.assert_allclose(dx, [d * (1 - v * v) for d, v in zip(dy, t)], rtol=1e-5)


# ---------------------------------------------------------------------------- AbsVal
def test_absval():
    y, dx, _ = run('type: "AbsVal"', A(-2, 0, 3), A(5, 6, 7))
    np.testing.assert_array_equal(y, A(2, 0, 3))
    np.testing.assert_array_equal(dx, A(-5, 0, 7))  # sign(0) = 0


# ---------------------------------------------------------------------------- Power
def test_power_general():
    # y = (1 + 2x)^2; dy/dx = 4 (1 + 2x)
    y, dx, _ = run('type: "Power" power_param { power: 2 scale: 2 shift: 1 }',
                   A(1, 2, -0.5), A(1, 1, 1))
    np.testing.assert_array_equal(y, A(9, 25, 0))
    np.testing.assert_array_equal(dx, A(12, 20, 0))
    # y = (0.5 + x)^0.5; dy/dx = 0.5 (0.5 + x)^-0.5
    y, dx, _ = run('type: "Power" power_param { power: 0.5 shift: 0.5 }', A(3.5, 0.5), A(2, 1))
    np.testing.assert_allclose(y, [2, 1], rtol=1e-6)
    np.testing.assert_allclose(dx, [2 * 0.25, 0.5], rtol=1e-6)
    # shift 0: y = (3x)^3, dy/dx = 81 x^2
    y, dx, _ = run('type: "Power" power_param { power: 3 scale: 3 }', A(1, -2), A(1, 1))
    np.testing.assert_allclose(y, [27, -216], rtol=1e-6)
    np.testing.assert_allclose(dx, [81, 324], rtol=1e-6)


def test_power_special_cases():
    # power 1: y = scale x + shift, gradient scale
    y, dx, _ = run('type: "Power" power_param { scale: -3 shift: 2 }', A(1, 4), A(1, 2))
    np.testing.assert_array_equal(y, A(-1, -10))
    np.testing.assert_array_equal(dx, A(-3, -6))
    # power 0: constant 1 (even with shift 0), zero gradient
    y, dx, _ = run('type: "Power" power_param { power: 0 }', A(5, -7), A(1, 2))
    np.testing.assert_array_equal(y, A(1, 1))
    np.testing.assert_array_equal(dx, A(0, 0))
    # scale 0: constant shift^power, zero gradient
    y, dx, _ = run('type: "Power" power_param { power: 2 scale: 0 shift: 3 }', A(5, -7), A(1, 2))
    np.testing.assert_array_equal(y, A(9, 9))
    np.testing.assert_array_equal(dx, A(0, 0))


def test_power_shift0_gradient_at_zero_is_nan_like_caffe():
    # Caffe computes power * y / x for shift == 0: 0/0 at x == 0.
    with np.errstate(invalid="ignore"):
        _, dx, _ = run('type: "Power" power_param { power: 3 }', A(0, 1), A(1, 1))
    assert np.isnan(dx[0]) and dx[1] == 3


# ---------------------------------------------------------------------------- Exp, Log
def test_exp():
    y, dx, _ = run('type: "Exp"', A(0, 1), A(1, 2))
    np.testing.assert_allclose(y, [1, math.e], rtol=1e-6)
    np.testing.assert_allclose(dx, [1, 2 * math.e], rtol=1e-6)
    # y = 2^(1 + 3x); dy/dx = 3 ln2 y
    y, dx, _ = run('type: "Exp" exp_param { base: 2 scale: 3 shift: 1 }', A(0, 1), A(1, 1))
    np.testing.assert_allclose(y, [2, 16], rtol=1e-6)
    np.testing.assert_allclose(dx, [6 * math.log(2), 48 * math.log(2)], rtol=1e-6)
    # natural base with shift: e^(shift + x)
    y, _, _ = run('type: "Exp" exp_param { shift: 1 }', A(1), None)
    np.testing.assert_allclose(y, [math.e ** 2], rtol=1e-6)


def test_log():
    y, dx, _ = run('type: "Log"', A(1, math.e), A(1, 2))
    np.testing.assert_allclose(y, [0, 1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dx, [1, 2 / math.e], rtol=1e-6)
    # y = log10(1 + 2x); dy/dx = 2 / ((1 + 2x) ln 10)
    y, dx, _ = run('type: "Log" log_param { base: 10 scale: 2 shift: 1 }', A(4.5, 49.5), A(1, 1))
    np.testing.assert_allclose(y, [1, 2], rtol=1e-6)
    np.testing.assert_allclose(dx, [2 / (10 * math.log(10)), 2 / (100 * math.log(10))],
                               rtol=1e-6)


@pytest.mark.parametrize("typ", ["Exp", "Log"])
@pytest.mark.parametrize("base", [0, -2])
def test_exp_log_bad_base(typ, base):
    with pytest.raises(LayerSetupError, match="strictly positive"):
        forward(layer_from_text(f'type: "{typ}" {typ.lower()}_param {{ base: {base} }}'),
                [blob((2,), seed=0)])


def test_log_base_one_is_an_error():
    with pytest.raises(LayerSetupError, match="not finite"):
        forward(layer_from_text('type: "Log" log_param { base: 1 }'), [blob((2,), seed=0)])


# ---------------------------------------------------------------------------- BNLL
def test_bnll():
    x = A(0, 1, -1, 100, -100)
    y, dx, _ = run('type: "BNLL"', x, A(1, 1, 1, 1, 1))
    np.testing.assert_allclose(y[:3], [math.log(2), math.log1p(math.e), math.log1p(1 / math.e)],
                               rtol=1e-6)
    assert y[3] == 100 and 0 <= y[4] < 1e-40
    np.testing.assert_allclose(dx[:3], [0.5, 1 / (1 + math.exp(-1)), 1 / (1 + math.e)],
                               rtol=1e-6)
    # backward clamps x at 50 before exp (Caffe's kBNLL_THRESHOLD): finite, not inf/inf
    _, dx, _ = run('type: "BNLL"', A(200, 50, -200), A(3, 3, 3))
    np.testing.assert_array_equal(dx, A(3, 3, 0))


# ---------------------------------------------------------------------------- Threshold
def test_threshold():
    y, _, layer = run('type: "Threshold" threshold_param { threshold: 0.5 }',
                      A(0.5, 0.6, -1, 2), None)
    np.testing.assert_array_equal(y, A(0, 1, 0, 1))
    y, _, _ = run('type: "Threshold"', A(0, 1e-6, -1e-6), None)
    np.testing.assert_array_equal(y, A(0, 1, 0))
    b = blob(A(1, 2))
    top = forward(layer, [b])
    with pytest.raises(LayerSetupError, match="no backward"):
        layer.backward(top, [True], [b])
    layer.backward(top, [False], [b])  # nothing asked, nothing raised


# ---------------------------------------------------------------------------- Dropout
def test_dropout_train():
    x = np.linspace(-1, 1, 20000, dtype=np.float32).reshape(2, 10000) + 2
    dy = np.full_like(x, 3)
    y, dx, _ = run('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', x, dy, seed=5)
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.01
    scale = np.float32(1 / 0.7)
    np.testing.assert_array_equal(y[kept], x[kept] * scale)
    np.testing.assert_array_equal(dx, np.where(kept, dy * scale, 0))
    y2, _, _ = run('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', x, None, seed=5)
    np.testing.assert_array_equal(y, y2)  # same seed, same mask
    y3, _, _ = run('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', x, None, seed=6)
    assert not np.array_equal(y, y3)


def test_dropout_default_ratio_scales_by_two():
    x = np.ones((1000,), np.float32)
    y, _, _ = run('type: "Dropout"', x, None, seed=1)
    assert set(np.unique(y)) == {0.0, 2.0}


def test_dropout_test_phase_is_identity():
    x = A(1, -2, 3)
    y, dx, _ = run('type: "Dropout"', x, A(4, 5, 6), phase=caffe_pb2.TEST, seed=1)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dx, A(4, 5, 6))


@pytest.mark.parametrize("ratio", [1.0, -0.1])
def test_dropout_bad_ratio(ratio):
    with pytest.raises(LayerSetupError, match="dropout_ratio"):
        forward(layer_from_text(f'type: "Dropout" dropout_param {{ dropout_ratio: {ratio} }}'),
                [blob((2,), seed=0)])


# ---------------------------------------------------------------------------- Clip, Swish
def test_clip():
    y, dx, _ = run('type: "Clip" clip_param { min: -1 max: 1 }',
                   A(-2, -1, 0.5, 1, 2), A(1, 2, 3, 4, 5))
    np.testing.assert_array_equal(y, A(-1, -1, 0.5, 1, 1))
    np.testing.assert_array_equal(dx, A(0, 2, 3, 4, 0))  # bounds are inclusive


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_swish(beta):
    x = A(-1, 0, 1, 3)
    dy = A(1, 2, 3, 4)
    y, dx, _ = run(f'type: "Swish" swish_param {{ beta: {beta} }}', x, dy)
    sig = [1 / (1 + math.exp(-beta * v)) for v in x]
    np.testing.assert_allclose(y, [v * s for v, s in zip(x, sig)], rtol=1e-6)
    grad = [s + beta * v * s * (1 - s) for v, s in zip(x, sig)]
    np.testing.assert_allclose(dx, [d * g for d, g in zip(dy, grad)], rtol=1e-5)


# ---------------------------------------------------------------------------- gradients
GRADIENT_CASES = [
    ('type: "ReLU"', {}, dict(kink=0.0, kink_range=0.02)),
    ('type: "ReLU" relu_param { negative_slope: 0.1 }', {}, dict(kink=0.0, kink_range=0.02)),
    ('type: "PReLU"', {}, dict(kink=0.0, kink_range=0.02)),
    ('type: "PReLU" prelu_param { channel_shared: true filler { type: "uniform" } }', {},
     dict(kink=0.0, kink_range=0.02)),
    ('type: "ELU"', {}, dict(kink=0.0, kink_range=0.02)),
    ('type: "ELU" elu_param { alpha: 0.5 }', {}, dict(kink=0.0, kink_range=0.02)),
    ('type: "Sigmoid"', {}, {}),
    ('type: "TanH"', {}, {}),
    ('type: "AbsVal"', {}, dict(kink=0.0, kink_range=0.02)),
    ('type: "Power" power_param { power: 2 scale: 0.5 shift: -1 }', {}, {}),
    ('type: "Power" power_param { power: 0.37 scale: 1.5 shift: 0.2 }', dict(low=0.5, high=2), {}),
    ('type: "Power" power_param { power: 3 }', dict(low=0.5, high=2), {}),
    ('type: "Power" power_param { power: 1 scale: 3 shift: 2 }', {}, {}),
    ('type: "Exp"', {}, {}),
    ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }', {}, {}),
    ('type: "Log"', dict(low=0.5, high=2), {}),
    ('type: "Log" log_param { base: 3 scale: 2 shift: 1 }', dict(low=0.2, high=2), {}),
    ('type: "BNLL"', dict(low=-3, high=3), {}),
    ('type: "Dropout"', {}, {}),
    ('type: "Swish"', dict(low=-3, high=3), {}),
    ('type: "Swish" swish_param { beta: 1.5 }', dict(low=-3, high=3), {}),
]


@pytest.mark.parametrize("text,init,kw", GRADIENT_CASES)
def test_gradient(text, init, kw):
    b = blob((2, 3, 2, 3), seed=11, **init)
    assert check_gradient(layer_from_text(text), [b], **kw) > 0


def test_clip_gradient_away_from_bounds():
    x = np.array([-2.0, -1.3, -0.7, -0.2, 0.3, 0.6, 1.4, 2.5], np.float32).reshape(2, 4)
    check_gradient(layer_from_text('type: "Clip" clip_param { min: -1 max: 1 }'), [blob(x)])


# ---------------------------------------------------------------------------- in place
IN_PLACE_CASES = [
    ('type: "ReLU"', {}),
    ('type: "ReLU" relu_param { negative_slope: 0.2 }', {}),
    ('type: "ReLU" relu_param { negative_slope: -0.5 }', {}),
    ('type: "PReLU" prelu_param { filler { type: "uniform" min: -1 max: 1 } }', {}),
    ('type: "PReLU" prelu_param { channel_shared: true }', {}),
    ('type: "ELU"', {}),
    ('type: "ELU" elu_param { alpha: -0.7 }', {}),
    ('type: "Sigmoid"', {}),
    ('type: "TanH"', {}),
    ('type: "AbsVal"', {}),
    ('type: "Power" power_param { power: 2 scale: 2 shift: 1 }', {}),
    ('type: "Power" power_param { power: 3 scale: 2 }', {}),
    ('type: "Power" power_param { power: 0.5 scale: 2 shift: 3 }', dict(low=0, high=1)),
    ('type: "Power" power_param { power: 1 scale: 2 shift: 3 }', {}),
    ('type: "Power" power_param { power: 0 }', {}),
    ('type: "Exp" exp_param { base: 3 scale: 2 shift: 1 }', {}),
    ('type: "Log" log_param { scale: 2 shift: 1 }', dict(low=0.1, high=2)),
    ('type: "BNLL"', {}),
    ('type: "Threshold" threshold_param { threshold: 0.1 }', {}),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.4 }', {}),
    ('type: "Clip" clip_param { min: -0.5 max: 0.3 }', {}),
    ('type: "Swish" swish_param { beta: 1.3 }', {}),
]


@pytest.mark.parametrize("phase", [caffe_pb2.TRAIN, caffe_pb2.TEST])
@pytest.mark.parametrize("text,init", IN_PLACE_CASES)
def test_in_place_matches_out_of_place(text, init, phase):
    x = np.random.default_rng(3).uniform(init.get("low", -2), init.get("high", 2),
                                         (2, 3, 4)).astype(np.float32)
    dy = np.random.default_rng(4).uniform(-1, 1, x.shape).astype(np.float32)
    backward = "Threshold" not in text
    results = []
    for in_place in (False, True):
        layer = layer_from_text(text, phase=phase)
        b = blob(x.copy())
        top = [b] if in_place else [Blob()]
        set_random_seed(9)
        layer.setup([b], top)
        for _ in range(2):  # twice: buffers kept across forwards must not go stale
            set_random_seed(9)
            layer.forward([b], top)
            y = top[0].data.copy()
            dx = params = None
            if backward:
                top[0].diff[...] = dy
                for p in layer.blobs:
                    p.diff[...] = 0
                layer.backward(top, [True], [b])
                dx = b.diff.copy()
                params = [p.diff.copy() for p in layer.blobs]
            if in_place:
                b.data[...] = x
        results.append((y, dx, params))
    (y0, dx0, p0), (y1, dx1, p1) = results
    np.testing.assert_array_equal(y1, y0)
    if backward:
        np.testing.assert_array_equal(dx1, dx0)
        for a, c in zip(p0, p1):
            np.testing.assert_array_equal(c, a)
    # the out-of-place run did not disturb its bottom
    assert not np.shares_memory(y0, x)


def test_propagate_down_false_leaves_bottom_diff():
    for text in ('type: "ReLU"', 'type: "Sigmoid"', 'type: "Power" power_param { power: 2 }'):
        layer = layer_from_text(text)
        b = blob((2, 3), seed=1)
        top = forward(layer, [b])
        b.diff[...] = 42
        top[0].diff[...] = 1
        layer.backward(top, [False], [b])
        assert np.all(b.diff == 42), text


def test_neuron_blob_counts():
    with pytest.raises(LayerSetupError, match="exactly 1 bottom"):
        forward(layer_from_text('type: "ReLU"'), [blob((2,), seed=0), blob((2,), seed=1)])


@pytest.mark.parametrize("split", [False, True])
def test_relu_keeps_nan_and_splits_large_inputs(monkeypatch, split):
    """Caffe's std::max(x, 0): NaN stays NaN; the same values whether the pass is split over
    the thread pool or not (the compiled kernel splits only large inputs)."""
    from caffe_lite.layers import neuron, parallel
    if split:
        monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", "2")
        monkeypatch.setattr(neuron, "MIN_PARALLEL_STREAM_ELEMENTS", 64)
        monkeypatch.setattr(neuron, "MIN_PARALLEL_ELEMENTS", 64)
        monkeypatch.setattr(parallel, "MIN_PARALLEL_ELEMENTS", 64)
    x = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    x[[0, 500, 999]] = [np.nan, -np.inf, np.inf]
    y, _, _ = run('type: "ReLU"', x)
    expect = np.where(x < 0, np.float32(0), x)
    np.testing.assert_array_equal(y, expect)
    assert np.isnan(y[0]) and y[500] == 0 and y[999] == np.inf
