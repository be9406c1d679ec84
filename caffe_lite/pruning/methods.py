"""The pruning methods and `prune_net`, the entry point for every one of them.

Each method is one function `fn(net, plan, data=None) -> [LayerResult]`, listed in
`METHODS` by the name a spec or `-method` uses (as torch.nn.utils.prune has one class per
method).  Unstructured, over single weights:

magnitude  each layer to its target sparsity: the smallest |w| go first.  Weights already 0
           count toward the target, so a layer that is already sparser is left as it is.
std        Han et al. (2015): prune |w| <= q * std(w), the std over all of the layer's
           weights (zeros included), q per layer (default 1.0).
global     one magnitude threshold across all the layers, giving the overall target.
dns        magnitude's first cut of Dynamic Network Surgery; the splicing itself happens
           while fine-tuning (splicing.py, `train -prune_spec` with method "dns").

Structured, whole filters ranked by a criterion (filters.py, criteria.py): l1-filter,
l2-filter, fpgm, taylor, apoz, bn-scale.

Ranking is deterministic: a stable sort of |w| in C order, so ties go to the lower index."""
import logging

import numpy as np

from . import criteria, filters
from .masks import shrink_mask
from .result import LayerResult, _round, _sparsity
from .spec import make_plan, prunable_layers

log = logging.getLogger("caffe_lite")


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


def _per_layer(net, plan, prune_one):
    """Run prune_one(weight blob, target) -> detail over the plan's layers; [LayerResult]."""
    layers = dict(prunable_layers(net))
    results = []
    for n, target in plan.targets.items():
        w = layers[n].blobs[0]
        before = _sparsity(w)
        detail = prune_one(w, target)
        results.append(LayerResult(n, layers[n].type, w.count, before, _sparsity(w), detail))
        log.info("pruned %s: sparsity %.4f -> %.4f (%s)", n, before, results[-1].after, detail)
    return results


def magnitude_prune(net, plan, data=None):
    """Each layer to its target sparsity, smallest |w| first."""
    def one(w, target):
        shrink_mask(w, magnitude_keep(w, target))
        return f"target {target:g}"
    return _per_layer(net, plan, one)


def std_prune(net, plan, data=None):
    """|w| <= q * std(w) per layer (Han et al. 2015)."""
    def one(w, q):
        t = std_threshold(w, q)
        shrink_mask(w, std_keep(w, q))
        return f"q {q:g}, threshold {t:.6g}"
    return _per_layer(net, plan, one)


def global_prune(net, plan, data=None):
    """One magnitude threshold over every layer of the plan."""
    layers = dict(prunable_layers(net))
    names = list(plan.targets)
    keeps, threshold = global_keep([layers[n].blobs[0] for n in names], plan.sparsity)
    keep_of = {id(layers[n].blobs[0]): keep for n, keep in zip(names, keeps)}

    def one(w, target):
        shrink_mask(w, keep_of[id(w)])
        return f"global threshold {threshold:.6g}"
    return _per_layer(net, plan, one)


def dns_prune(net, plan, data=None):
    """Dynamic Network Surgery's first cut: per layer, the weights below the centre threshold
    (the target-sparsity quantile of |w|)."""
    from .splicing import centre_threshold

    def one(w, target):
        t = centre_threshold(w.cpu_data, target)
        shrink_mask(w, np.abs(w.cpu_data) >= np.float32(t))
        return f"threshold {t:.6g} (splicing happens while fine-tuning)"
    return _per_layer(net, plan, one)


METHODS = {"magnitude": magnitude_prune, "std": std_prune, "global": global_prune,
           "dns": dns_prune}
METHODS.update({name: filters.pruner(name) for name in criteria.CRITERIA})


def prune_net(net, spec=None, method=None, sparsity=None, q=None, plan=None, data=None):
    """Prune `net` in place as the spec (+ overrides) says; returns [LayerResult].  Every
    check runs before the first weight changes.  `data`: the net that reads training data
    for the criteria that need activations (taylor, apoz; default: `net` itself)."""
    if plan is None:
        plan = make_plan(net, spec, method, sparsity, q)
    return METHODS[plan.method](net, plan, data=data)
