"""Test helpers: Caffe's GradientChecker in numpy, and small layer/blob builders.

check_gradient() compares a layer's analytic gradients (bottoms and parameters) with central
finite differences of a random linear objective of its tops, element by element, with Caffe's
tolerance rule: |analytic - numeric| <= threshold * max(|analytic|, |numeric|, 1)."""
import numpy as np

from .backend.state import set_random_seed
from .blob import Blob
from .io.prototxt import parse_text
from .layers import create_layer
from .proto import caffe_pb2


def layer_from_text(text, phase=caffe_pb2.TRAIN):
    """A layer built from a text LayerParameter, e.g. 'type: "ReLU" relu_param { ... }'."""
    p = parse_text(text, caffe_pb2.LayerParameter())
    if not p.name:
        p.name = p.type.lower() or "layer"
    if not p.HasField("phase"):
        p.phase = phase
    return create_layer(p)


def blob(array_or_shape, name="", seed=None, low=-1.0, high=1.0):
    """A Blob holding `array`, or of `shape` filled uniformly in [low, high)."""
    if isinstance(array_or_shape, np.ndarray):
        return Blob.from_array(array_or_shape, name=name)
    g = np.random.default_rng(seed)
    return Blob.from_array(g.uniform(low, high, array_or_shape).astype(np.float32), name=name)


def forward(layer, bottom, ntop=1):
    """Set up `layer` on `bottom`, run forward, return the tops."""
    top = [Blob() for _ in range(ntop)]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    return top


def _objective(layer, bottom, top, weights, seed):
    if seed is not None:
        set_random_seed(seed)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return sum(float(np.dot(t.cpu_data.ravel().astype(np.float64), w.ravel()))
               for t, w in zip(top, weights))


def check_gradient(layer, bottom, top=None, check_bottom=None, check_params=True,
                   stepsize=1e-2, threshold=1e-3, kink=None, kink_range=-1.0, seed=1701,
                   max_checks=None):
    """Assert that `layer`'s backward matches finite differences.

    check_bottom: indices of bottoms to check (default: all).  kink / kink_range: skip inputs
    within kink_range of a non-differentiable point (ReLU at 0, ...).  seed: reseeds the
    generator before every forward so stochastic layers (Dropout) are deterministic.
    max_checks: check at most this many elements per blob (chosen at random)."""
    if top is None:
        top = [Blob() for _ in range(max(layer.exact_num_top, layer.min_top, 1))]
    if seed is not None:
        set_random_seed(seed)
    layer.setup(bottom, top)
    if check_bottom is None:
        check_bottom = list(range(len(bottom)))
    g = np.random.default_rng(12345)
    _objective(layer, bottom, top, [np.zeros(t.shape, np.float32) for t in top], seed)
    weights = [g.uniform(-1, 1, t.shape).astype(np.float32) for t in top]

    # analytic
    for b in layer.blobs:
        b.diff[...] = 0
    _objective(layer, bottom, top, weights, seed)
    # Bottoms are zeroed before the tops get their diffs: a top may share its diff with a
    # bottom (Flatten, Reshape, single-bottom Concat).
    for b in bottom:
        b.diff[...] = 0
    for t, w in zip(top, weights):
        t.diff[...] = w
    propagate = [i in check_bottom for i in range(len(bottom))]
    layer.backward(top, propagate, bottom)
    targets = [(f"bottom[{i}]", bottom[i], bottom[i].cpu_diff.copy()) for i in check_bottom]
    if check_params:
        targets += [(f"param[{i}]", b, b.cpu_diff.copy()) for i, b in enumerate(layer.blobs)
                    if i < len(layer.param_propagate_down) and layer.param_propagate_down[i]]

    failures = []
    checked = 0
    for label, b, analytic in targets:
        flat = b.data.reshape(-1)
        indices = np.arange(b.count)
        if max_checks is not None and b.count > max_checks:
            indices = g.choice(b.count, max_checks, replace=False)
        for k in indices:
            x = float(flat[k])
            if kink is not None and abs(x - kink) < kink_range:
                continue
            flat[k] = x + stepsize
            plus = _objective(layer, bottom, top, weights, seed)
            flat = b.data.reshape(-1)
            flat[k] = x - stepsize
            minus = _objective(layer, bottom, top, weights, seed)
            flat = b.data.reshape(-1)
            flat[k] = x
            numeric = (plus - minus) / (2 * stepsize)
            a = float(analytic.reshape(-1)[k])
            scale = max(abs(a), abs(numeric), 1.0)
            checked += 1
            if abs(a - numeric) > threshold * scale:
                failures.append(f"{label}[{k}]: analytic {a:.6g} vs numeric {numeric:.6g}")
    if failures:
        raise AssertionError(f"{layer.type} '{layer.name}': {len(failures)} of {checked} "
                             f"gradient entries off:\n  " + "\n  ".join(failures[:20]))
    if checked == 0:
        raise AssertionError("gradient check examined no entries")
    return checked
