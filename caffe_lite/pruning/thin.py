"""Thinning: turn structurally pruned channels into a smaller dense net.

A channel can go when nothing reads it: its component (structure.ChannelGraph) is not fixed
and every consumer's weights for it are zero (what l1-filter leaves).  Its filter, bias and
per-channel parameters (BatchNorm, Scale, Bias, PReLU, depthwise filter) are sliced out, the
consumers lose the matching input columns, and each producer's num_output (a depthwise
convolution's group too) shrinks.  The result is an ordinary prototxt + caffemodel that any
Caffe runs and that computes the same outputs: the removed channels only ever met zero
weights.  The analysis runs on the TEST-phase net."""
import collections
import dataclasses
import logging

import numpy as np

from ..io.blobproto import array_to_proto
from ..io.masks import mask_entries
from ..proto import caffe_pb2
from .spec import PruningError
from .structure import ChannelGraph

log = logging.getLogger("caffe_lite")


@dataclasses.dataclass
class ThinResult:
    net_param: caffe_pb2.NetParameter   # the thinned prototxt (all phases)
    weights: caffe_pb2.NetParameter     # the thinned caffemodel
    masks: list                         # [(layer, param index, weights, mask)] (io/masks.py)
    channels: dict                      # producer layer -> (before, after)
    params_before: int
    params_after: int


def _count_param(lp):
    if lp.HasField("convolution_param"):
        return lp.convolution_param
    if lp.HasField("inner_product_param"):
        return lp.inner_product_param
    return None


def thin_net(net, net_param, graph=None):
    """Thin `net` (built, with its pruned weights).  `net_param` is the model as the user
    wrote it (every phase); the result edits a copy of it."""
    graph = graph or ChannelGraph(net)
    removable = [c for c in graph.components if not c.fixed and c.inputs_zero(net)]
    removed = collections.Counter(layer for c in removable for layer, _ in c.atoms)
    for layer, atoms in graph.producers.items():
        if removed[layer] >= len(atoms):
            raise PruningError(f"cannot thin: every one of the {len(atoms)} output channels "
                               f"of layer '{layer}' is unused (its consumers' weights are all "
                               "zero); such a net has no dense equivalent with this layout")
    deletes = collections.defaultdict(lambda: collections.defaultdict(set))
    for c in removable:
        for s in c.slices:
            deletes[(s.layer, s.blob)][s.axis].update(range(s.start, s.stop))

    new_counts = {}
    for layer, atoms in graph.producers.items():
        new_counts[layer] = (len(atoms), len(atoms) - removed[layer])
    for layer in graph.depthwise:
        before = net.layer_dict[layer].num_output
        gone = len(deletes[(layer, 0)].get(0, ()))
        new_counts[layer] = (before, before - gone)

    weights = net.to_proto()
    masks = []
    owned = {(name, pid) for name, pid, _ in mask_entries(net)}
    before = after = 0
    for lp in weights.layer:
        layer = net.layer_dict[lp.name]
        lp.ClearField("blobs")
        for i, b in enumerate(layer.blobs):
            arr, mask = b.cpu_data, b.cpu_mask
            before += arr.size
            for axis, idx in sorted(deletes.get((lp.name, i), {}).items()):
                arr = np.delete(arr, sorted(idx), axis=axis)
                if mask is not None:
                    mask = np.delete(mask, sorted(idx), axis=axis)
            after += arr.size
            arr = np.ascontiguousarray(arr)
            array_to_proto(arr, lp.blobs.add())
            if (lp.name, i) in owned:
                masks.append((lp.name, i, arr, np.ascontiguousarray(mask)))
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    changed = {n: c for n, c in new_counts.items() if c[0] != c[1]}
    for param in (out, weights):
        for lp in param.layer:
            if lp.name in changed:
                cp = _count_param(lp)
                cp.num_output = changed[lp.name][1]
                if lp.name in graph.depthwise:
                    lp.convolution_param.group = changed[lp.name][1]
    for n, (b, a) in changed.items():
        log.info("thin %s: %d -> %d channels", n, b, a)
    return ThinResult(out, weights, masks, new_counts, before, after)


def max_output_difference(net_a, net_b, inputs):
    """Forward both nets on the same inputs; returns (the largest |a - b| / max(1, max |a|)
    over the outputs and every other blob of the same name and shape in both, the outputs'
    names)."""
    net_a.forward(**inputs)
    net_b.forward(**inputs)
    for n in net_a.outputs:
        if n in net_b.blobs and net_b.blobs[n].shape != net_a.blobs[n].shape:
            raise PruningError(f"thinned net output '{n}' has shape {net_b.blobs[n].shape}, "
                               f"the original {net_a.blobs[n].shape}")
    diff = 0.0
    for n, blob in net_a.blobs.items():
        other = net_b.blobs.get(n)
        if other is None or other.shape != blob.shape:
            continue
        a, b = blob.cpu_data, other.cpu_data
        scale = max(1.0, float(np.abs(a).max(initial=0)))
        diff = max(diff, float(np.abs(a - b).max(initial=0)) / scale)
    return diff, [n for n in net_a.outputs if n in net_b.blobs]
