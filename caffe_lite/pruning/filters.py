"""Structured pruning: whole output filters (channels), chosen by a criterion (criteria.py:
l1-filter, l2-filter, fpgm, taylor, apoz, bn-scale).

Per layer, the fraction S of its output filters that the criterion ranks lowest is removed, and
with each filter everything that belongs to its channel (structure.ChannelGraph):
  * the filter's weights and bias entry;
  * the per-channel parameters on the way: BatchNorm mean and variance (a zero channel then
    normalises to exactly (0 - 0) / sqrt(var + eps) = 0, in TEST and in TRAIN mode), Scale's
    gamma and beta, Bias, PReLU slopes, a depthwise convolution's filter and bias;
  * the consumers' input weights for the channel (for an InnerProduct after the channel, its
    block of K / C columns).
So the channel is exactly 0 wherever it goes and nothing reads it: `thin` can remove it.
Channels joined through Eltwise are pruned together, ranked by their summed normalised score
(criteria.py); a layer coupled to others shares their cluster's target (the largest one given
among them).  A grouped convolution loses the same filters in every group (structure.py).
Every change goes through masks (only ever shrinking), and every parameter touched gets a
mask, so the removed channels stay zero while fine-tuning.

Filters already all zero rank first and count toward S, so pruning again to the same target
changes nothing.  In a coupled cluster, a channel whose removal would leave some layer
with no filter at all is passed over for the next smallest.

With a global target instead of per-layer ones (target_params / target_flops), the per-layer
targets are solved first (ratios.py)."""
import collections
import logging

import numpy as np

from . import criteria
from .masks import shrink_mask
from .result import LayerResult, _round, _sparsity
from .spec import PruningError, make_plan
from .structure import FILTER, ChannelGraph

log = logging.getLogger("caffe_lite")


def scores_for(net, graph, criterion, data=None, batches=10):
    """{component id: score} by `criterion`; components whose filters are all zero already
    score -1 (they go first).  taylor and apoz run `batches` batches through `data` (a net
    reading training data; default: `net` itself when it has a data layer)."""
    stats = None
    if criteria.needs_data(criterion):
        data = net if data is None else data
        if not criteria.has_data_layer(data):
            raise PruningError(f"{criterion} ranks channels by their activations on training "
                               "data, and this net reads none: give a train_val prototxt "
                               "whose TRAIN phase has a data layer (and -train_source if "
                               "needed)")
        if data is not net:
            data.share_with(net)
        stats = criteria.activation_stats(graph, data, batches,
                                          gradients=criterion == "taylor")
    scores = criteria.component_scores(net, graph, criterion, stats)
    for c in graph.components:
        filters = [s for s in c.slices if s.kind == FILTER]
        if filters and not any(np.any(criteria._filter(net, s)) for s in filters):
            scores[c.id] = -1.0
    return scores


def select_filters(net, plan, graph=None, scores=None, criterion="l1-filter"):
    """Decide which components to prune, checking everything first.  Returns
    (graph, [chosen Component], {layer: (filters, removed)})."""
    graph = graph or ChannelGraph(net)
    if scores is None:
        scores = scores_for(net, graph, criterion)
    chosen, counts = [], {}
    for layers, comps in graph.clusters():
        targets = [plan.targets[n] for n in layers if n in plan.targets]
        named = [n for n in layers if n in plan.explicit]
        if not targets:
            continue
        excluded = [n for n in layers if n in plan.excluded]
        if excluded:
            if named:
                raise PruningError(f"layer '{named[0]}' is coupled to excluded layer "
                                   f"'{excluded[0]}' (they share channels through Eltwise), so "
                                   "its filters cannot be pruned")
            log.info("%s: skipping %s (coupled to excluded %s)", criterion, ", ".join(layers),
                     ", ".join(excluded))
            continue
        s = max(targets)
        free = [c for c in comps if not c.fixed]
        reason = None
        if not free:
            reason = comps[0].fixed if comps else "has no output channels"
        elif any(c.id not in scores for c in free):
            reason = f"{criterion} needs {getattr(criteria.CRITERIA[criterion], 'needs', '')}"
        if reason:
            if named:
                raise PruningError(f"{criterion} cannot prune layer '{named[0]}': {reason}")
            log.info("%s: skipping %s: %s", criterion, ", ".join(layers), reason)
            continue
        k = _round(s * len(free))
        totals = {n: len(graph.producers[n]) for n in layers}
        picked, removed, blocked = pick(free, [scores[c.id] for c in free], k, totals)
        if len(picked) < k:
            n = blocked
            coupled = ""
            if len(layers) > 1:
                others = ", ".join(x for x in layers if x != n)
                coupled = (f" (its channels are coupled with {others} through Eltwise: {k} of "
                           f"{len(free)} shared channels requested)")
            raise PruningError(f"{criterion} at sparsity {s:g} would remove all {totals[n]} "
                               f"filters of layer '{n}'{coupled}; use a lower sparsity")
        for n in layers:
            counts[n] = (totals[n], removed[n])
        chosen.extend(picked)
    return graph, chosen, counts


def pick(free, scores, k, totals, removed=None):
    """The k lowest-scored of `free` components (stable: ties go to the earlier one), passing
    over any whose removal would leave a layer with no filter.  Returns (picked, removed
    filters per layer, the first layer that blocked a pick)."""
    removed = collections.Counter() if removed is None else removed
    picked, blocked = [], None
    for i in np.argsort(np.asarray(scores, np.float64), kind="stable"):
        if len(picked) == k:
            break
        mine = collections.Counter(layer for layer, _ in free[i].atoms)
        full = [n for n in mine if removed[n] + mine[n] >= totals[n]]
        if full:
            blocked = blocked or full[0]
            continue
        removed.update(mine)
        picked.append(free[i])
    return picked, removed, blocked


def zero_components(net, components):
    """Zero every parameter slice of `components` through masks."""
    keeps = {}
    for comp in components:
        for s in comp.slices:
            blob = net.layer_dict[s.layer].blobs[s.blob]
            keep = keeps.get((s.layer, s.blob))
            if keep is None:
                keep = keeps[(s.layer, s.blob)] = np.ones(blob.shape, bool)
            keep[s.index(blob.num_axes)] = False
    for (layer, i), keep in keeps.items():
        shrink_mask(net.layer_dict[layer].blobs[i], keep)


def filter_prune(net, plan, criterion="l1-filter", data=None, graph=None, scores=None):
    """Prune output filters ranked by `criterion` (see the module doc); returns
    [LayerResult].  `graph` and `scores` may be given when already computed."""
    graph = graph or ChannelGraph(net)
    if scores is None:
        scores = scores_for(net, graph, criterion, data, plan.data_batches)
    if plan.target_params is not None or plan.target_flops is not None:
        from .ratios import solve_global
        plan = solve_global(net, plan, graph, scores, criterion).plan
    graph, chosen, counts = select_filters(net, plan, graph, scores, criterion)
    weights = {n: net.layer_dict[n].blobs[0] for n in counts}
    before = {n: _sparsity(w) for n, w in weights.items()}
    zero_components(net, chosen)
    results = []
    for n, (total, removed) in counts.items():
        w = weights[n]
        zero_filters = _zero_filters(graph, n, net)
        results.append(LayerResult(n, net.layer_dict[n].type, w.count, before[n],
                                   _sparsity(w),
                                   f"zero filters {zero_filters}/{total}"))
        log.info("%s %s: %d of %d filters zero", criterion, n, zero_filters, total)
    return results


def l1_filter_prune(net, plan=None, spec=None, sparsity=None, graph=None):
    """l1-filter pruning (kept for callers of the original API); returns [LayerResult]."""
    if plan is None:
        plan = make_plan(net, spec, "l1-filter", sparsity)
    return filter_prune(net, plan, "l1-filter", graph=graph)


def pruner(criterion):
    """The METHODS entry of a structured criterion: fn(net, plan, data=None)."""
    def prune(net, plan, data=None):
        return filter_prune(net, plan, criterion, data)
    prune.__name__ = prune.__qualname__ = f"{criterion.replace('-', '_')}_prune"
    prune.__doc__ = f"Structured pruning of whole filters ranked by {criterion} (criteria.py)."
    prune.structured = True
    return prune


def _zero_filters(graph, layer, net):
    """How many of `layer`'s output filters are all zero."""
    from .report import filter_stats
    return filter_stats(net.layer_dict[layer])[0]
