"""Batch norm: darknet's divisor sqrt(var) + 1e-6 as Caffe layers, exactly.

darknet normalises with (x - mean) / (sqrt(var) + .000001f); Caffe's BatchNorm with
(x - mean) / sqrt(var + eps).  No eps makes the two agree for every variance, and changing the
stored variance would lose bits (no float32 map var -> var' is both one-to-one and close to
(sqrt(var) + 1e-6)^2), so the converter keeps darknet's mean and variance as they are, uses
eps = EPS (so that var = 0 gives darknet's divisor 1e-6), and puts the per-channel factor
sqrt(var + eps) / (sqrt(var) + 1e-6) in a frozen Scale layer between BatchNorm and the Scale
with darknet's scales and biases.  Every darknet array stays in the caffemodel bit for bit."""
import numpy as np

from .layers import BN_EPS

EPS = 1e-12  # BatchNorm eps of converted nets: sqrt(0 + EPS) = 1e-6, darknet's divisor at 0
_F = np.float32


def correction(var, eps=EPS):
    """The factor c with (x - m) / sqrt(var + eps) * c == (x - m) / (sqrt(var) + 1e-6) to
    float32 rounding: both square roots taken in float32, as the BatchNorm layer and darknet
    take them."""
    var = np.asarray(var, dtype=_F)
    caffe_std = np.sqrt(var + _F(eps))
    darknet_std = np.sqrt(var) + _F(BN_EPS)
    return (caffe_std.astype(np.float64) / darknet_std.astype(np.float64)).astype(_F)


def to_darknet(mean, var, eps, scale_factor, factors, bias, conv_bias=None):
    """darknet's (scales, rolling_mean, rolling_variance, biases) for Caffe's
    BatchNorm(mean, var, eps, moving-average factor) -> Scale(factors[0]) -> ... (the product of
    `factors`, each a (C,) array or None) with a final `bias` (or None), after a convolution
    with `conv_bias` (or None).

    A converted chain (factors = [correction(var, eps), scales]) gives darknet's arrays back
    bit for bit; any other chain is folded in float64 so that darknet computes the same
    numbers to float32 rounding."""
    s = _F(scale_factor)
    k = _F(0) if s == 0 else _F(1) / s  # as the BatchNorm layer reads its statistics
    c = len(mean)
    mean, var = np.asarray(mean, _F) * k, np.asarray(var, _F) * k
    factors = [np.asarray(f, _F) for f in factors if f is not None]
    bias = np.zeros(c, _F) if bias is None else np.asarray(bias, _F)
    if conv_bias is not None:
        mean = (mean.astype(np.float64) - conv_bias).astype(_F)
    if len(factors) == 2 and np.array_equal(factors[0], correction(var, eps)):
        return factors[1].copy(), mean, var, bias.copy()
    prod = np.ones(c, np.float64)
    for f in factors:
        prod *= f
    caffe_std = np.sqrt(var.astype(np.float64) + np.float64(_F(eps)))
    darknet_std = np.sqrt(var.astype(np.float64)) + BN_EPS
    return (prod * darknet_std / caffe_std).astype(_F), mean, var, bias.copy()
