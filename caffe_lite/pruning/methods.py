"""Unstructured pruning methods over a net's prunable weights, and `prune_net`, the entry
point for every method.

magnitude  each layer to its target sparsity: the smallest |w| go first.  Weights already 0
           count toward the target, so a layer that is already sparser is left as it is.
std        Han et al. (2015): prune |w| <= q * std(w), the std over all of the layer's
           weights (zeros included), q per layer (default 1.0).
global     one magnitude threshold across all the layers, giving the overall target.
l1-filter  structured, see filters.py.

Ranking is deterministic: a stable sort of |w| in C order, so ties go to the lower index."""
import dataclasses
import logging

import numpy as np

from .masks import shrink_mask
from .spec import make_plan, prunable_layers

log = logging.getLogger("caffe_lite")


def _round(x):
    return int(np.floor(x + 0.5))


def _magnitudes(blob):
    """|w| with already-pruned entries as 0 (so they rank first)."""
    m = np.abs(blob.cpu_data).ravel()
    if blob.has_mask:
        m = m * (blob.cpu_mask.ravel() != 0)
    return m


def magnitude_keep(blob, sparsity):
    """Keep-array pruning the round(sparsity * count) smallest magnitudes (zeros included)."""
    mag = _magnitudes(blob)
    k = _round(sparsity * mag.size)
    keep = np.ones(mag.size, bool)
    keep[np.argsort(mag, kind="stable")[:k]] = False
    return keep.reshape(blob.shape)


def std_threshold(blob, q):
    return float(q) * float(np.std(blob.cpu_data, dtype=np.float64))


def std_keep(blob, q):
    return np.abs(blob.cpu_data) > np.float32(std_threshold(blob, q))


def global_keep(blobs, sparsity):
    """One threshold over several blobs: keep-arrays such that round(sparsity * total) of all
    their weights are zero."""
    mags = [_magnitudes(b) for b in blobs]
    flat = np.concatenate(mags) if mags else np.zeros(0, np.float32)
    k = _round(sparsity * flat.size)
    keep = np.ones(flat.size, bool)
    keep[np.argsort(flat, kind="stable")[:k]] = False
    out, start = [], 0
    for b, m in zip(blobs, mags):
        out.append(keep[start:start + m.size].reshape(b.shape))
        start += m.size
    threshold = float(flat[np.argsort(flat, kind="stable")[k - 1]]) if k else 0.0
    return out, threshold


@dataclasses.dataclass
class LayerResult:
    name: str
    type: str
    params: int
    before: float       # sparsity before
    after: float        # sparsity after
    detail: str = ""    # e.g. "threshold 0.0123", "filters 20 -> 14"


def _sparsity(blob):
    return float(1.0 - np.count_nonzero(blob.cpu_data) / max(blob.count, 1))


def prune_net(net, spec=None, method=None, sparsity=None, q=None, plan=None):
    """Prune `net` in place as the spec (+ overrides) says; returns [LayerResult].  Every
    check runs before the first weight changes."""
    if plan is None:
        plan = make_plan(net, spec, method, sparsity, q)
    layers = dict(prunable_layers(net))
    if plan.method == "l1-filter":
        from .filters import l1_filter_prune
        return l1_filter_prune(net, plan)
    before = {n: _sparsity(layers[n].blobs[0]) for n in plan.targets}
    details = {}
    if plan.method == "global":
        names = list(plan.targets)
        keeps, threshold = global_keep([layers[n].blobs[0] for n in names], plan.sparsity)
        for n, keep in zip(names, keeps):
            shrink_mask(layers[n].blobs[0], keep)
            details[n] = f"global threshold {threshold:.6g}"
    else:
        for n, target in plan.targets.items():
            w = layers[n].blobs[0]
            if plan.method == "std":
                t = std_threshold(w, target)
                shrink_mask(w, std_keep(w, target))
                details[n] = f"q {target:g}, threshold {t:.6g}"
            else:
                shrink_mask(w, magnitude_keep(w, target))
                details[n] = f"target {target:g}"
    results = []
    for n in plan.targets:
        w = layers[n].blobs[0]
        results.append(LayerResult(n, layers[n].type, w.count, before[n], _sparsity(w),
                                   details.get(n, "")))
        log.info("pruned %s: sparsity %.4f -> %.4f (%s)", n, before[n], results[-1].after,
                 details.get(n, ""))
    return results
