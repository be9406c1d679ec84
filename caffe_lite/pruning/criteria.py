"""Structured criteria: how much each prunable channel (a structure.Component) matters.

Each criterion is one function `fn(net, graph, stats)` returning *entries*
(component, key, value): one measurement of the component's importance, made in the layer
named `key`.  `component_scores` turns them into one score per component, lowest pruned first:

  1. every value is already normalised for the size of what it measures (a filter's norm per
     weight, an activation's mean over its positions);
  2. each value is divided by the mean of its key's values, so that measurements made in
     different layers compare fairly: a 1x1 and a 3x3 branch joined by a Concat, a residual
     block's convolutions, a fully connected layer next to a convolution;
  3. a component's score is the sum of its entries.

Within one layer step 2 changes nothing (one positive factor), so a layer pruned alone ranks
its filters exactly by the criterion.

  l1-filter  mean |w| of each output filter (L1 norm / weights; Li et al. 2017)
  l2-filter  sqrt(mean w^2) of each output filter (L2 norm / sqrt(weights))
  fpgm       sum of Euclidean distances from the filter to the layer's other filters: the
             filters nearest the geometric median are the most replaceable (He et al. 2019)
  taylor     |sum over positions of activation x gradient| / positions, averaged over the
             images of a few training batches, measured where each consumer reads the
             channel (Molchanov et al. 2017, first order)
  apoz       1 - APoZ: the fraction of nonzero activations where each consumer reads the
             channel (Hu et al. 2016): a channel that is mostly zero after its ReLU goes first
  bn-scale   |gamma| of the Scale layer on the channel (BatchNorm + Scale: network slimming,
             Liu et al. 2017); channels without one cannot be ranked by it

taylor and apoz need `stats` from `activation_stats` (a few batches through a net that reads
training data)."""
import collections
import logging

import numpy as np

from .spec import PruningError
from .structure import DATA_LAYERS, FILTER, PARAM

log = logging.getLogger("caffe_lite")


# --- weight criteria ----------------------------------------------------------------------------
def _filter_slices(graph):
    """[(component, Slice)] of every producer filter, in component order."""
    return [(c, s) for c in graph.components for s in c.slices if s.kind == FILTER]


def _filter(net, s):
    w = net.layer_dict[s.layer].blobs[s.blob].cpu_data
    return w[s.index(w.ndim)]


def l1_filter(net, graph, stats=None):
    """Mean |w| of each output filter."""
    return [(c, s.layer, float(np.abs(_filter(net, s)).mean(dtype=np.float64)))
            for c, s in _filter_slices(graph)]


def l2_filter(net, graph, stats=None):
    """sqrt(mean w^2) of each output filter."""
    out = []
    for c, s in _filter_slices(graph):
        f = _filter(net, s).astype(np.float64)
        out.append((c, s.layer, float(np.sqrt(np.mean(f * f)))))
    return out


def fpgm(net, graph, stats=None):
    """Each filter's summed distance to the other filters of its layer."""
    by_layer = collections.defaultdict(list)
    for c, s in _filter_slices(graph):
        by_layer[s.layer].append((c, s))
    out = []
    for layer, items in by_layer.items():
        v = np.stack([_filter(net, s).astype(np.float64).ravel() for _, s in items])
        sq = np.einsum("ij,ij->i", v, v)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (v @ v.T), 0.0)
        dist = np.sqrt(d2).sum(axis=1)
        out.extend((c, layer, float(d)) for (c, _), d in zip(items, dist))
    return out


def bn_scale(net, graph, stats=None):
    """|gamma| of each Scale layer on the channel."""
    out = []
    for c in graph.components:
        for s in c.slices:
            if s.kind == PARAM and s.blob == 0 and net.layer_dict[s.layer].type == "Scale":
                gamma = net.layer_dict[s.layer].blobs[0].cpu_data[s.start:s.stop]
                out.append((c, s.layer, float(np.abs(gamma).mean(dtype=np.float64))))
    return out


bn_scale.needs = "a Scale layer (after a BatchNorm) on its channels"


# --- activation criteria ------------------------------------------------------------------------
def taylor(net, graph, stats):
    """|activation x gradient| where each consumer reads the channel."""
    return _from_stats(graph, stats, "taylor")


def apoz(net, graph, stats):
    """The fraction of nonzero activations where each consumer reads the channel."""
    for (layer, b), v in stats.items():
        if v["nonzero"].size and np.all(v["nonzero"] == 1):
            log.warning("apoz: no activation '%s' reads is ever zero (no ReLU before it?), so "
                        "APoZ cannot tell those channels apart", layer)
    return _from_stats(graph, stats, "nonzero")


taylor.needs_data = apoz.needs_data = True


def _from_stats(graph, stats, what):
    out = []
    for layer, maps in graph.reads.items():
        for b, m in enumerate(maps):
            values = stats.get((layer, b))
            if values is None:
                continue
            for a, v in zip(m.atoms, values[what]):
                comp = graph.component_of_atom(a)
                if comp is not None:
                    out.append((comp, layer, float(v)))
    return out


CRITERIA = {"l1-filter": l1_filter, "l2-filter": l2_filter, "fpgm": fpgm, "taylor": taylor,
            "apoz": apoz, "bn-scale": bn_scale}


def needs_data(name):
    return getattr(CRITERIA[name], "needs_data", False)


def component_scores(net, graph, name, stats=None):
    """{component id: score} by criterion `name` (the module doc's three steps).  A component
    no entry measures is absent."""
    entries = CRITERIA[name](net, graph, stats)
    totals = collections.defaultdict(float)
    for key, values in _group(entries).items():
        mean = float(np.mean(values))
        for comp, _, v in (e for e in entries if e[1] == key):
            totals[comp.id] += v / mean if mean > 0 else v
    return dict(totals)


def _group(entries):
    out = collections.defaultdict(list)
    for _, key, v in entries:
        out[key].append(v)
    return out


def normalise_by(scores, groups):
    """Scores divided by their group's mean ({id: score}, [[ids of a group], ...]): one scale
    for components of different clusters (a global ranking)."""
    out = dict(scores)
    for ids in groups:
        vals = [scores[i] for i in ids if i in scores and scores[i] >= 0]
        mean = float(np.mean(vals)) if vals else 0.0
        if mean > 0:
            for i in ids:
                if i in out and out[i] >= 0:
                    out[i] = scores[i] / mean
    return out


# --- activation statistics ----------------------------------------------------------------------
def has_data_layer(net):
    return any(not net.bottom_vecs[i] and layer.type in DATA_LAYERS and layer.type != "Input"
               for i, layer in enumerate(net.layers))


def activation_stats(graph, data_net, batches, gradients=True):
    """Run `batches` batches through `data_net` (it reads its own data layers; its layers are
    matched to graph.net's by name and should share its weights) and measure, for every
    channel each consumer of graph.net reads: {(consumer, bottom index): {"nonzero": per
    channel fraction of nonzero activations, "taylor": per channel mean over images of
    |sum over positions of activation x gradient| / positions}}.  With `gradients` a backward
    pass runs too (the net needs a loss); the parameter gradients it leaves are cleared."""
    if batches < 1:
        raise PruningError(f"data_batches must be >= 1, got {batches}")
    net = data_net
    index = {name: i for i, name in enumerate(net.layer_names)}
    watched = {}
    for layer, maps in graph.reads.items():
        i = index.get(layer)
        if i is None:
            raise PruningError(f"the net that reads the training data has no layer '{layer}'")
        watched[i] = (layer, [len(m.atoms) for m in maps])
    sums = {}
    images = 0
    for _ in range(batches):
        kept = {}
        for i, layer in enumerate(net.layers):
            if i in watched:
                name, channels = watched[i]
                for b, (blob, c) in enumerate(zip(net.bottom_vecs[i], channels)):
                    x = blob.cpu_data.reshape(blob.shape[0], c, -1)
                    acc = sums.setdefault((name, b), {"nonzero": np.zeros(c),
                                                      "taylor": np.zeros(c)})
                    acc["nonzero"] += np.count_nonzero(x, axis=(0, 2)) / x.shape[2]
                    if gradients:
                        kept[(i, b)] = x.copy()
            layer.forward(net.bottom_vecs[i], net.top_vecs[i])
        images += net.bottom_vecs[min(watched)][0].shape[0] if watched else 0
        if gradients:
            for i in range(len(net.layers) - 1, -1, -1):
                if not net.layer_need_backward[i]:
                    continue
                net.layers[i].backward(net.top_vecs[i], net.bottom_need_backward[i],
                                       net.bottom_vecs[i])
                if i in watched:
                    name, channels = watched[i]
                    for b, (blob, c) in enumerate(zip(net.bottom_vecs[i], channels)):
                        if not net.bottom_need_backward[i][b]:
                            continue
                        x = kept[(i, b)]
                        g = blob.cpu_diff.reshape(x.shape)
                        t = np.einsum("ncp,ncp->nc", x, g, dtype=np.float64) / x.shape[2]
                        sums[(name, b)]["taylor"] += np.abs(t).sum(axis=0)
    if gradients:
        net.clear_param_diffs()
    images = max(images, 1)
    return {k: {"nonzero": v["nonzero"] / images, "taylor": v["taylor"] / images}
            for k, v in sums.items()}
