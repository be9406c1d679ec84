"""l1-filter: structured pruning of whole output filters (Li et al. 2017, "Pruning Filters for
Efficient ConvNets").

Per layer, the fraction S of its output filters with the smallest L1 norm is removed, and with
each filter everything that belongs to its channel (structure.ChannelGraph):
  * the filter's weights and bias entry;
  * the per-channel parameters on the way: BatchNorm mean and variance (a zero channel then
    normalises to exactly (0 - 0) / sqrt(var + eps) = 0, in TEST and in TRAIN mode), Scale's
    gamma and beta, Bias, PReLU slopes, a depthwise convolution's filter and bias;
  * the consumers' input weights for the channel (for an InnerProduct after the channel, its
    block of K / C columns).
So the channel is exactly 0 wherever it goes and nothing reads it: `thin` can remove it.
Channels joined through Eltwise are pruned together, ranked by their summed L1 norm; a layer
coupled to others shares their cluster's target (the largest one given among them).  Every
change goes through masks (only ever shrinking), and every parameter touched gets a mask, so
the removed channels stay zero while fine-tuning.

Filters already all zero rank first and count toward S, so pruning again to the same target
changes nothing.  In a coupled cluster, a channel whose removal would leave some layer
with no filter at all is passed over for the next smallest."""
import collections
import logging

import numpy as np

from .masks import shrink_mask
from .methods import LayerResult, _round, _sparsity
from .spec import PruningError, make_plan
from .structure import FILTER, ChannelGraph

log = logging.getLogger("caffe_lite")


def select_filters(net, plan, graph=None):
    """Decide which components to prune, checking everything first.  Returns
    (graph, [chosen Component], {layer: (filters, removed)})."""
    graph = graph or ChannelGraph(net)
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
            log.info("l1-filter: skipping %s (coupled to excluded %s)", ", ".join(layers),
                     ", ".join(excluded))
            continue
        s = max(targets)
        free = [c for c in comps if not c.fixed]
        if not free:
            reason = comps[0].fixed if comps else "has no output channels"
            if named:
                raise PruningError(f"l1-filter cannot prune layer '{named[0]}': {reason}")
            log.info("l1-filter: skipping %s: %s", ", ".join(layers), reason)
            continue
        k = _round(s * len(free))
        scores = np.array([c.l1(net) for c in free])
        totals = {n: len(graph.producers[n]) for n in layers}
        removed, picked, blocked = collections.Counter(), [], None
        # Smallest summed L1 first; in a coupled cluster a channel whose removal would leave
        # some layer with no filter is passed over for the next one.
        for i in np.argsort(scores, kind="stable"):
            if len(picked) == k:
                break
            mine = collections.Counter(layer for layer, _ in free[i].atoms)
            full = [n for n in mine if removed[n] + mine[n] >= totals[n]]
            if full:
                blocked = blocked or full[0]
                continue
            removed.update(mine)
            picked.append(free[i])
        if len(picked) < k:
            n = blocked
            coupled = ""
            if len(layers) > 1:
                others = ", ".join(x for x in layers if x != n)
                coupled = (f" (its channels are coupled with {others} through Eltwise: {k} of "
                           f"{len(free)} shared channels requested)")
            raise PruningError(f"l1-filter at sparsity {s:g} would remove all {totals[n]} "
                               f"filters of layer '{n}'{coupled}; use a lower sparsity")
        for n in layers:
            counts[n] = (totals[n], removed[n])
        chosen.extend(picked)
    return graph, chosen, counts


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


def l1_filter_prune(net, plan=None, spec=None, sparsity=None, graph=None):
    """Prune output filters by L1 norm (see the module doc); returns [LayerResult]."""
    if plan is None:
        plan = make_plan(net, spec, "l1-filter", sparsity)
    graph, chosen, counts = select_filters(net, plan, graph)
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
        log.info("l1-filter %s: %d of %d filters zero", n, zero_filters, total)
    return results


def _zero_filters(graph, layer, net):
    """How many of `layer`'s output filters are all zero."""
    w = net.layer_dict[layer].blobs[0].cpu_data
    axis = next(s.axis for s in graph.component_of(layer, 0).slices
                if s.kind == FILTER and s.layer == layer)
    return int(np.sum(~np.any(w, axis=tuple(i for i in range(w.ndim) if i != axis))))
