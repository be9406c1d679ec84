"""Channel-coupling analysis for structured pruning and thinning.

Every output channel of a producer (Convolution / Deconvolution, InnerProduct on axis 1) is an
*atom*.  Walking the net in order, each blob's channel axis is mapped to the atoms it carries.
What a layer does to channels it declares itself (layers/base.py: `channelwise`,
`channel_params()`, `channel_route`):

  * channelwise layers (ReLU & co., Pooling, Split, BatchNorm, Scale, Bias, PReLU, LRN within
    a channel) pass the map on; their per-channel parameters are recorded as slices of the
    channel; a depthwise convolution with multiplier 1 does the same with its filters;
  * routes: Concat (channel axis) concatenates maps; Slice (channel axis) cuts them; Flatten
    (from axis 1) keeps the map with a larger per-channel block; Silence ends it; Eltwise
    ("join") couples its bottoms channel by channel: atom j of every bottom is joined
    (union-find), so a residual block's convolutions keep or lose channel j together;
  * a consumer (Convolution / Deconvolution, InnerProduct) records the slice of its weight that
    reads each input channel (for an InnerProduct, the block of K / C columns).

A grouped convolution (group G, not depthwise) is pruned in units that keep `group` valid: the
same number of channels per group, at the same place in every group.  Its input channels
j, Cg + j, 2 Cg + j, ... (Cg = channels / G) are joined, and so are its output channels
j, Og + j, ... (Og = num_output / G): removing one unit removes weight column j (row j for a
Deconvolution) in every group, so thinning stays a plain deletion and group stays G.

Anything else (losses, Softmax, Reshape, LRN across channels, a net output, a data layer's
channels, layers sharing weights, and layer types that declare nothing: the analysis says so)
*fixes* the channels it touches: they cannot be removed.  The joined atoms form `Component`s:
the unit that is pruned (the structured methods) or removed (thin) as a whole, with every
parameter slice that belongs to it."""
import collections
import dataclasses
import logging

import numpy as np

log = logging.getLogger("caffe_lite")

FILTER, BIAS, PARAM, INPUT = "filter", "bias", "param", "input"

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
        self.reads = {}         # consumer layer name -> [_Map of each bottom]
        self.unknown = set()    # layer types that declare no channel flow
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
        if not bottom:
            src = "data" if layer.type in DATA_LAYERS else "produced"
            for b in top:
                self._set(b, _Map(self._new_atoms(self._channels(b),
                                                  fixed=f"is {src} by '{layer.name}' "
                                                        f"({layer.type})")))
            return
        if layer.name in self._shared:
            return self._opaque(layer, bottom, top, "which shares its parameters")
        if layer.prunable:
            return self._visit_weighted(layer, bottom, top)
        route = layer.channel_route
        if route:
            return getattr(self, f"_route_{route}")(layer, bottom, top)
        if layer.channelwise:
            return self._visit_channelwise(layer, bottom, top)
        if layer.channelwise is None:
            if layer.type not in self.unknown:
                log.info("structured pruning: layer type %s does not declare how it maps "
                         "channels (channelwise); the channels it reads are kept", layer.type)
            self.unknown.add(layer.type)
            return self._opaque(layer, bottom, top, "a layer type the channel analysis does "
                                                    "not know (it declares no channelwise)")
        return self._opaque(layer, bottom, top, layer.channel_note or None)

    def _visit_channelwise(self, layer, bottom, top):
        if len(bottom) != 1:
            return self._opaque(layer, bottom, top, "with a second bottom")
        m = self._map(bottom[0])
        n = len(m.atoms)
        blob_ids = layer.channel_params()
        for i in blob_ids:
            shape = layer.blobs[i].shape
            if not shape or shape[0] != n * m.inner or any(d != 1 for d in shape[1:]):
                return self._opaque(layer, bottom, top, f"whose blob {i} {shape} is not "
                                                        "per channel")
        for i in blob_ids:
            self._record(m, layer.name, i, 0, PARAM)
        for t in top:  # (Split's fan-out, Pooling's mask top: the same channels)
            self._set(t, m)

    def _record(self, m, layer, blob, axis, kind, block=None, local=None):
        """One slice per channel c of map m: [c * block, (c + 1) * block) along `axis`, or,
        with `local`, [(c % local) * block, ...): the index inside the channel's group."""
        block = m.inner if block is None else block
        for c, a in enumerate(m.atoms):
            i = c if local is None else c % local
            self._slices.append((int(a), Slice(layer, blob, axis, i * block, (i + 1) * block,
                                               kind)))

    def _join_groups(self, atoms, group):
        """Join atoms j, n + j, 2 n + j, ... (n = len(atoms) / group): a grouped
        convolution's pruning unit."""
        if group > 1:
            per = len(atoms) // group
            for g in range(1, group):
                for j in range(per):
                    self._union(atoms[j], atoms[g * per + j])

    def _visit_weighted(self, layer, bottom, top):
        t = layer.type
        group = 1
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
        self.reads[layer.name] = maps
        if t == "InnerProduct":
            if n_in == 0 or layer.K % n_in:
                self._fix(m0.atoms, f"is read by '{layer.name}' (InnerProduct) in blocks "
                                    "that do not align with channels")
            else:
                self._record(m0, layer.name, 0, in_axis, INPUT, block=layer.K // n_in)
        else:
            # Convolution: weight (O, C / G, ...) reads input channel c at column c % (C / G);
            # Deconvolution: weight (C, O / G, ...) at row c.
            self._join_groups(m0.atoms, group)
            self._record(m0, layer.name, 0, in_axis, INPUT, block=1,
                         local=n_in // group if in_axis == 1 and group > 1 else None)
        # Producer side: new atoms, one per output channel.
        atoms = self._new_atoms(layer.num_output, owner=layer.name)
        self._join_groups(atoms, group)
        self.producers[layer.name] = atoms
        out = _Map(atoms)
        self._record(out, layer.name, 0, out_axis, FILTER,
                     local=layer.num_output // group if out_axis == 1 and group > 1 else None)
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

    def _route_join(self, layer, bottom, top):
        maps = [self._map(b) for b in bottom]
        m0 = maps[0]
        if any(len(m.atoms) != len(m0.atoms) or m.inner != m0.inner for m in maps):
            return self._opaque(layer, bottom, top, "joining different channel layouts")
        for m in maps[1:]:
            for a, b in zip(m0.atoms, m.atoms):
                self._union(a, b)
        self._set(top[0], m0)

    def _route_sink(self, layer, bottom, top):
        pass

    def _channel_axis(self, layer, blob, p, legacy_field):
        if p.HasField(legacy_field):
            return getattr(p, legacy_field)
        return blob.canonical_axis_index(p.axis)

    def _route_concat(self, layer, bottom, top):
        p = layer.layer_param.concat_param
        maps = [self._map(b) for b in bottom]
        if self._channel_axis(layer, bottom[0], p, "concat_dim") != 1 or \
                any(m.inner != maps[0].inner for m in maps):
            return self._opaque(layer, bottom, top, "not along channels")
        self._set(top[0], _Map(np.concatenate([m.atoms for m in maps]), maps[0].inner))

    def _route_slice(self, layer, bottom, top):
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

    def _route_flatten(self, layer, bottom, top):
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
        self._root_component = {}
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
            self._root_component[root] = comps[-1]
        self._component_of = {}
        for c in comps:
            for owner in c.atoms:
                self._component_of[owner] = c
        return comps

    def component_of(self, layer, channel):
        return self._component_of[(layer, channel)]

    def component_of_atom(self, atom):
        """The Component an atom (an entry of a _Map) belongs to; None for channels no
        producer owns (a data layer's)."""
        return self._root_component.get(self._find(int(atom)))

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
