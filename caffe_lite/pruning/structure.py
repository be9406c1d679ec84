"""Channel-coupling analysis for structured pruning and thinning.

Every output channel of a producer (Convolution / Deconvolution with group 1, InnerProduct on
axis 1) is an *atom*.  Walking the net in order, each blob's channel axis is mapped to the atoms
it carries:

  * element-wise and per-channel layers (ReLU & co., Pooling, BatchNorm, Scale, Bias, PReLU,
    Dropout, LRN within a channel, a depthwise convolution with multiplier 1) pass the map on;
    their per-channel parameters are recorded as slices of the channel;
  * Split fans out; Concat (channel axis) concatenates maps; Slice (channel axis) cuts them;
    Flatten (from axis 1) keeps the map with a larger per-channel block;
  * Eltwise couples its bottoms channel by channel: atom j of every bottom is joined
    (union-find), so a residual block's convolutions keep or lose channel j together;
  * a consumer (Convolution / Deconvolution with group 1, InnerProduct) records the slice of its
    weight that reads each input channel (for an InnerProduct, the block of K / C columns).

Anything else (losses, Softmax, Reshape, grouped convolutions, LRN across channels, a net
output, a data layer's channels, layers sharing weights) *fixes* the channels it touches: they
cannot be removed.  The joined atoms form `Component`s: the unit that is pruned (l1-filter) or
removed (thin) as a whole, with every parameter slice that belongs to it."""
import collections
import dataclasses

import numpy as np

from ..proto import caffe_pb2

FILTER, BIAS, PARAM, INPUT = "filter", "bias", "param", "input"

# Layers that act on each channel independently (with no parameters to slice).
ELEMENTWISE = {"ReLU", "TanH", "Sigmoid", "AbsVal", "ELU", "BNLL", "Power", "Exp", "Log",
               "Threshold", "Dropout", "Clip", "Swish", "Pooling"}
DATA_LAYERS = {"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData",
               "Input"}


@dataclasses.dataclass(frozen=True)
class Slice:
    """Where one channel lives in one parameter blob: blob `blob` of layer `layer`, indices
    [start, stop) along `axis`.  kind: filter (a producer's weight rows), bias, param (a
    per-channel parameter: BatchNorm, Scale, Bias, PReLU, depthwise filter) or input (a
    consumer's weight columns reading the channel)."""
    layer: str
    blob: int
    axis: int
    start: int
    stop: int
    kind: str

    def index(self, ndim):
        return (slice(None),) * self.axis + (slice(self.start, self.stop),) + \
            (slice(None),) * (ndim - self.axis - 1)


@dataclasses.dataclass
class Component:
    """Channels that must be kept or removed together."""
    id: int
    atoms: list          # [(producer layer, output channel)]
    slices: list         # [Slice]
    fixed: str = None    # why it cannot be removed (None: it can)

    @property
    def producers(self):
        return sorted({layer for layer, _ in self.atoms})

    def l1(self, net):
        """Summed L1 norm of the producers' filters in this component."""
        total = 0.0
        for s in self.slices:
            if s.kind == FILTER:
                w = net.layer_dict[s.layer].blobs[s.blob].cpu_data
                total += float(np.abs(w[s.index(w.ndim)]).sum(dtype=np.float64))
        return total

    def inputs_zero(self, net):
        """True when every consumer reads this component through all-zero weights."""
        for s in self.slices:
            if s.kind == INPUT:
                w = net.layer_dict[s.layer].blobs[s.blob].cpu_data
                if np.any(w[s.index(w.ndim)]):
                    return False
        return True


@dataclasses.dataclass
class _Map:
    atoms: np.ndarray    # atom id per channel
    inner: int = 1       # elements per channel along axis 1 (> 1 after a Flatten)


class ChannelGraph:
    """The coupling analysis of one built Net (shapes come from its blobs)."""

    def __init__(self, net):
        self.net = net
        self._parent = []
        self._owner = []        # atom -> (layer, channel) or None
        self._fixed = []        # atom -> reason or None
        self._slices = []       # (atom, Slice)
        self.producers = {}     # producer layer name -> atoms of its output channels
        self.depthwise = set()  # depthwise (pass-through) convolutions
        self._maps = {}         # id(Blob) -> _Map
        self._shared = self._shared_layers()
        for lid, layer in enumerate(net.layers):
            self._visit(lid, layer)
        consumed = {id(b) for bv in net.bottom_vecs for b in bv}
        for lid, tops in enumerate(net.top_vecs):
            for j, t in enumerate(tops):
                if id(t) not in consumed:
                    self._fix(self._map(t).atoms,
                              f"reaches the net output '{net._blob_names[net.top_ids[lid][j]]}'")
        self.components = self._build_components()

    # --- union-find over atoms ---------------------------------------------------------
    def _new_atoms(self, n, owner=None, fixed=None):
        start = len(self._parent)
        for c in range(n):
            self._parent.append(start + c)
            self._owner.append((owner, c) if owner else None)
            self._fixed.append(fixed)
        return np.arange(start, start + n, dtype=np.int64)

    def _find(self, a):
        root = a
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[a] != root:
            self._parent[a], a = root, self._parent[a]
        return root

    def _union(self, a, b):
        ra, rb = self._find(int(a)), self._find(int(b))
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)

    def _fix(self, atoms, reason):
        for a in atoms:
            if self._fixed[int(a)] is None:
                self._fixed[int(a)] = reason

    # --- blob maps -----------------------------------------------------------------------
    def _channels(self, blob):
        return blob.shape[1] if len(blob.shape) >= 2 else 0

    def _map(self, blob):
        m = self._maps.get(id(blob))
        if m is None:  # a blob no visited layer produced (cannot happen in a built net)
            m = _Map(self._new_atoms(self._channels(blob), fixed="of unknown origin"))
            self._maps[id(blob)] = m
        return m

    def _set(self, blob, m):
        self._maps[id(blob)] = m

    # --- layer kinds ---------------------------------------------------------------------
    def _shared_layers(self):
        net, shared = self.net, set()
        for pid, owner in enumerate(net.param_owners):
            if owner >= 0:
                for p in (pid, owner):
                    shared.add(net.layers[net._param_layer_indices[p][0]].name)
        return shared

    def _opaque(self, layer, bottom, top, why=None):
        what = f"'{layer.name}' ({layer.type})"
        reason = f"is read by {what}" + (f", {why}" if why else "")
        for b in bottom:
            self._fix(self._map(b).atoms, reason)
        for t in top:
            if t in bottom:  # in place: the channels stay what they were, and fixed
                continue
            self._set(t, _Map(self._new_atoms(self._channels(t),
                                              fixed=f"comes from {what}")))

    def _visit(self, lid, layer):
        net = self.net
        bottom, top = net.bottom_vecs[lid], net.top_vecs[lid]
        t = layer.type
        if not bottom:
            src = "data" if t in DATA_LAYERS else "produced"
            for b in top:
                self._set(b, _Map(self._new_atoms(self._channels(b),
                                                  fixed=f"is {src} by '{layer.name}' ({t})")))
            return
        if layer.name in self._shared:
            return self._opaque(layer, bottom, top, "which shares its parameters")
        if layer.prunable:
            return self._visit_weighted(layer, bottom, top)
        if t in ELEMENTWISE or t == "Split" or t == "Silence":
            return self._pass(layer, bottom, top)
        if t == "LRN":
            if layer.layer_param.lrn_param.norm_region == caffe_pb2.LRNParameter.WITHIN_CHANNEL:
                return self._pass(layer, bottom, top)
            return self._opaque(layer, bottom, top, "which mixes neighbouring channels")
        if t in ("BatchNorm", "Scale", "Bias", "PReLU"):
            return self._visit_per_channel(layer, bottom, top)
        if t == "Eltwise":
            return self._visit_eltwise(layer, bottom, top)
        if t == "Concat":
            return self._visit_concat(layer, bottom, top)
        if t == "Slice":
            return self._visit_slice(layer, bottom, top)
        if t == "Flatten":
            return self._visit_flatten(layer, bottom, top)
        return self._opaque(layer, bottom, top)

    def _pass(self, layer, bottom, top):
        if layer.type == "Silence":
            return
        m = self._map(bottom[0])  # (Pooling's optional mask top is per channel too)
        for t in top:
            self._set(t, m)

    def _visit_per_channel(self, layer, bottom, top):
        if len(bottom) != 1:
            return self._opaque(layer, bottom, top, "with a second bottom")
        m = self._map(bottom[0])
        n = len(m.atoms)
        if layer.type == "BatchNorm":
            blob_ids = [0, 1]
        elif layer.type == "PReLU":
            blob_ids = [] if layer.layer_param.prelu_param.channel_shared else [0]
        else:
            p = layer.layer_param.scale_param if layer.type == "Scale" else \
                layer.layer_param.bias_param
            if bottom[0].canonical_axis_index(p.axis) != 1:
                return self._opaque(layer, bottom, top, "not on the channel axis")
            blob_ids = list(range(len(layer.blobs)))
        for i in blob_ids:
            shape = layer.blobs[i].shape
            if not shape or shape[0] != n * m.inner:
                return self._opaque(layer, bottom, top, f"whose blob {i} {shape} is not "
                                                        "per channel")
        for i in blob_ids:
            self._record(m, layer.name, i, 0, PARAM)
        for t in top:
            self._set(t, m)

    def _record(self, m, layer, blob, axis, kind, block=None):
        block = m.inner if block is None else block
        for c, a in enumerate(m.atoms):
            self._slices.append((int(a), Slice(layer, blob, axis, c * block, (c + 1) * block,
                                               kind)))

    def _visit_weighted(self, layer, bottom, top):
        t = layer.type
        if t == "InnerProduct":
            if layer.axis != 1:
                return self._opaque(layer, bottom, top, "on an axis other than 1")
            out_axis, in_axis = (1, 0) if layer.transpose else (0, 1)
        else:
            group, ch, nout = layer.group, layer.channels, layer.num_output
            if layer.channel_axis != 1:
                return self._opaque(layer, bottom, top, "on an axis other than 1")
            if t != "Deconvolution" and group > 1 and group == ch == nout and len(bottom) == 1:
                return self._visit_depthwise(layer, bottom, top)
            if group != 1:
                return self._opaque(layer, bottom, top, f"a grouped convolution (group {group})")
            out_axis, in_axis = (1, 0) if t == "Deconvolution" else (0, 1)
        maps = [self._map(b) for b in bottom]
        if any(m.inner != 1 for m in maps) and t != "InnerProduct":
            return self._opaque(layer, bottom, top, "reading flattened channels")
        # Consumer side: the weight slice that reads each input channel.  Several bottoms
        # share the weights, so their channels are joined.
        m0 = maps[0]
        for m in maps[1:]:
            if len(m.atoms) != len(m0.atoms):
                return self._opaque(layer, bottom, top, "with bottoms of different channels")
            for a, b in zip(m0.atoms, m.atoms):
                self._union(a, b)
        n_in = len(m0.atoms)
        if t == "InnerProduct":
            if n_in == 0 or layer.K % n_in:
                self._fix(m0.atoms, f"is read by '{layer.name}' (InnerProduct) in blocks "
                                    "that do not align with channels")
            else:
                self._record(m0, layer.name, 0, in_axis, INPUT, block=layer.K // n_in)
        else:
            self._record(m0, layer.name, 0, in_axis, INPUT, block=1)
        # Producer side: new atoms, one per output channel.
        atoms = self._new_atoms(layer.num_output, owner=layer.name)
        self.producers[layer.name] = atoms
        out = _Map(atoms)
        self._record(out, layer.name, 0, out_axis, FILTER)
        if len(layer.blobs) > 1:
            self._record(out, layer.name, 1, 0, BIAS)
        for tb in top:
            self._set(tb, out)

    def _visit_depthwise(self, layer, bottom, top):
        m = self._map(bottom[0])
        if m.inner != 1:
            return self._opaque(layer, bottom, top, "reading flattened channels")
        self.depthwise.add(layer.name)
        self._record(m, layer.name, 0, 0, PARAM)
        if len(layer.blobs) > 1:
            self._record(m, layer.name, 1, 0, PARAM)
        for t in top:
            self._set(t, m)

    def _visit_eltwise(self, layer, bottom, top):
        maps = [self._map(b) for b in bottom]
        m0 = maps[0]
        if any(len(m.atoms) != len(m0.atoms) or m.inner != m0.inner for m in maps):
            return self._opaque(layer, bottom, top, "joining different channel layouts")
        for m in maps[1:]:
            for a, b in zip(m0.atoms, m.atoms):
                self._union(a, b)
        self._set(top[0], m0)

    def _channel_axis(self, layer, blob, p, legacy_field):
        if p.HasField(legacy_field):
            return getattr(p, legacy_field)
        return blob.canonical_axis_index(p.axis)

    def _visit_concat(self, layer, bottom, top):
        p = layer.layer_param.concat_param
        maps = [self._map(b) for b in bottom]
        if self._channel_axis(layer, bottom[0], p, "concat_dim") != 1 or \
                any(m.inner != maps[0].inner for m in maps):
            return self._opaque(layer, bottom, top, "not along channels")
        self._set(top[0], _Map(np.concatenate([m.atoms for m in maps]), maps[0].inner))

    def _visit_slice(self, layer, bottom, top):
        p = layer.layer_param.slice_param
        m = self._map(bottom[0])
        if self._channel_axis(layer, bottom[0], p, "slice_dim") != 1:
            return self._opaque(layer, bottom, top, "not along channels")
        start = 0
        for t in top:
            n = t.shape[1]
            if n % m.inner:
                return self._opaque(layer, bottom, top, "cutting through a channel's block")
            self._set(t, _Map(m.atoms[start // m.inner:(start + n) // m.inner], m.inner))
            start += n

    def _visit_flatten(self, layer, bottom, top):
        p = layer.layer_param.flatten_param
        b = bottom[0]
        if b.canonical_axis_index(p.axis) != 1 or \
                b.canonical_axis_index(p.end_axis) != b.num_axes - 1:
            return self._opaque(layer, bottom, top, "not from axis 1 to the end")
        m = self._map(b)
        self._set(top[0], _Map(m.atoms, m.inner * b.count_range(2)))

    # --- results -------------------------------------------------------------------------
    def _build_components(self):
        groups = collections.OrderedDict()
        for a in range(len(self._parent)):
            groups.setdefault(self._find(a), []).append(a)
        slices = collections.defaultdict(list)
        for a, s in self._slices:
            slices[self._find(a)].append(s)
        comps = []
        for root, atoms in groups.items():
            owned = [self._owner[a] for a in atoms if self._owner[a]]
            if not owned:
                continue
            fixed = next((self._fixed[a] for a in atoms if self._fixed[a]), None)
            if fixed:
                layer, ch = next((self._owner[a] for a in atoms if self._fixed[a] and
                                  self._owner[a]), owned[0])
                fixed = f"channel {ch} of '{layer}' {fixed}"
            comps.append(Component(len(comps), owned, list(dict.fromkeys(slices[root])),
                                   fixed))
        self._component_of = {}
        for c in comps:
            for owner in c.atoms:
                self._component_of[owner] = c
        return comps

    def component_of(self, layer, channel):
        return self._component_of[(layer, channel)]

    def clusters(self):
        """Producer layers joined by coupled channels: [(layer names, components)], in net
        order.  A layer with no coupling is a cluster of its own."""
        parent = {name: name for name in self.producers}

        def find(x):
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x
        for c in self.components:
            layers = c.producers
            for other in layers[1:]:
                ra, rb = find(layers[0]), find(other)
                if ra != rb:
                    parent[rb] = ra
        out = collections.OrderedDict()
        for name in self.producers:
            out.setdefault(find(name), ([], []))[0].append(name)
        for c in self.components:
            out[find(c.producers[0])][1].append(c)
        return list(out.values())

    def fixed_reason(self, layer):
        """Why `layer`'s output channels cannot be removed (None if some can)."""
        reasons = [self.component_of(layer, c).fixed for c in range(len(self.producers[layer]))]
        return None if not all(reasons) else reasons[0]
