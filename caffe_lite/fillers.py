"""Caffe's weight fillers, drawn from caffe-lite's seeded generator."""
import math

import numpy as np

from .backend.state import rng
from .errors import CaffeLiteError
from .proto import caffe_pb2

_VN = caffe_pb2.FillerParameter


def _fans(shape):
    count = math.prod(shape)
    fan_in = count // shape[0] if shape and shape[0] else count
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _norm(param, shape):
    fan_in, fan_out = _fans(shape)
    if param.variance_norm == _VN.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if param.variance_norm == _VN.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def _no_sparse(param):
    if param.sparse != -1:
        raise CaffeLiteError(f"filler '{param.type}': sparse is only supported by the "
                             "gaussian filler")


TYPES = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear")


def _check_values(param):
    if param.type not in TYPES:
        raise CaffeLiteError(f"unknown filler type '{param.type}'; known: {', '.join(TYPES)}")
    for name in ("value", "min", "max", "mean", "std"):
        v = getattr(param, name)
        if not math.isfinite(v):
            raise CaffeLiteError(f"filler '{param.type}': {name} must be finite, got {v}")
    if param.std < 0:
        raise CaffeLiteError(f"filler '{param.type}': std must be >= 0, got {param.std}")
    if param.type == "uniform" and param.min > param.max:
        raise CaffeLiteError(f"filler 'uniform': min ({param.min}) is above max ({param.max})")


def fill_array(param, shape):
    """A float32 array of `shape` filled as FillerParameter `param` says."""
    shape = tuple(shape)
    _check_values(param)
    if math.prod(shape) == 0:  # nothing to draw (and no fan to divide by)
        return np.zeros(shape, np.float32)
    g = rng()
    t = param.type
    if t == "constant":
        _no_sparse(param)
        return np.full(shape, param.value, np.float32)
    if t == "uniform":
        _no_sparse(param)
        return g.uniform(param.min, param.max, shape).astype(np.float32)
    if t == "gaussian":
        out = g.normal(param.mean, param.std, shape).astype(np.float32)
        if param.sparse >= 0:
            # Each output keeps on average `sparse` nonzero incoming weights.
            if len(shape) < 1 or shape[0] == 0:
                raise CaffeLiteError("sparse gaussian filler needs a blob with a num axis")
            p = param.sparse / float(shape[0])
            out *= (g.random(shape) < p)
        return out
    if t == "positive_unitball":
        _no_sparse(param)
        out = g.uniform(0.0, 1.0, shape).astype(np.float32)
        rows = out.reshape(shape[0] if shape else 1, -1)
        rows /= rows.sum(axis=1, keepdims=True)
        return out
    if t == "xavier":
        _no_sparse(param)
        scale = np.sqrt(3.0 / _norm(param, shape))
        return g.uniform(-scale, scale, shape).astype(np.float32)
    if t == "msra":
        _no_sparse(param)
        std = np.sqrt(2.0 / _norm(param, shape))
        return g.normal(0.0, std, shape).astype(np.float32)
    if t == "bilinear":
        _no_sparse(param)
        if len(shape) != 4 or shape[2] != shape[3]:
            raise CaffeLiteError(f"bilinear filler needs a 4-D blob with square kernels, "
                                 f"got shape {shape}")
        k = shape[3]
        f = np.ceil(k / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        ramp = 1 - np.abs(np.arange(k) / f - c)
        kernel = np.outer(ramp, ramp).astype(np.float32)
        return np.broadcast_to(kernel, shape).copy()
    raise AssertionError(t)  # _check_values knows the types


def fill(blob, param):
    """Fill `blob.data` in place."""
    blob.data[...] = fill_array(param, blob.shape)
    return blob


def filler_param(parent, field, **defaults):
    """`parent.<field>` if the prototxt set it, else a FillerParameter built from `defaults`
    (for layers whose Caffe default differs from the proto default, e.g. Scale's constant 1)."""
    if parent.HasField(field):
        return getattr(parent, field)
    return caffe_pb2.FillerParameter(**defaults)
