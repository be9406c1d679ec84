"""Net: Caffe's network, built from a NetParameter, with pycaffe's Python surface."""
import collections
import itertools
import logging
import os
import weakref

import numpy as np

from . import blob as _blob
from .blob import Blob
from .errors import (ArgumentTypeError, CaffeLiteError, LayerSetupError, NameNotFoundError,
                     NetError, OutOfMemoryError, ShapeMismatchError)
from .io.blobproto import array_to_proto
from .io.caffemodel import load_weights
from .io.prototxt import load_message
from .io.upgrade import upgrade_net
from .layers import create_layer
from .net_builder import filter_net, insert_splits
from .proto import caffe_pb2

log = logging.getLogger("caffe_lite")


def _legacy_equal(a, b):
    """Shapes equal, or equal once left-padded to 4-D (Caffe's legacy blob dims)."""
    a, b = tuple(a), tuple(b)
    if a == b:
        return True
    if len(a) > 4 or len(b) > 4:
        return False
    return (1,) * (4 - len(a)) + a == (1,) * (4 - len(b)) + b


def _prefix_error(exc, source):
    if source and not str(exc).startswith(str(source)):
        exc.args = (f"{source}: {exc}",) + exc.args[1:]
    return exc


class _Pending:
    """A loss layer's place in the list Plan.forward(..., defer) returns, read back later."""
    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index


def _in_layer(exc, layer, doing):
    """`exc` (a CaffeLiteError, or a MemoryError made an OutOfMemoryError) naming `layer`."""
    prefix = f"layer '{layer.name}' ({layer.type})"
    if isinstance(exc, MemoryError):
        return OutOfMemoryError(f"{prefix}: out of memory {doing}")
    if not isinstance(exc, LayerSetupError) and not str(exc).startswith("layer '"):
        exc.args = (f"{prefix}: {exc}",) + exc.args[1:]
    return exc


_F32 = np.dtype(np.float32)
_plans = None   # caffe_lite.plan, imported on first use (it imports the layers, which import this)


def _import_plans():
    global _plans
    from . import plan
    _plans = plan
    return plan


class Net:
    """A Caffe net.

    Net(model, phase)                         pycaffe's form; model is a prototxt path,
    Net(model, weights, phase)                a prototxt string or a NetParameter
    Net(model, phase, weights=W, level=0, stages=())
    """

    def __init__(self, model=None, *args, phase=None, weights=None, level=None, stages=None,
                 network_file=None):
        model = network_file if model is None else model  # pycaffe's keyword
        if model is None:
            raise ArgumentTypeError("Net() needs a net prototxt (path, text or NetParameter)")
        for a in args:
            if isinstance(a, (int, np.integer)) and not isinstance(a, bool):
                phase = int(a)
            elif isinstance(a, (str, os.PathLike)):
                weights = a
            else:
                raise ArgumentTypeError(f"Net(): unexpected argument {a!r} (expected a phase, "
                                        "caffe_lite.TRAIN or TEST, or a weights file)")
        param, self.source = load_message(model, caffe_pb2.NetParameter, "net prototxt")
        upgrade_net(param, self.source or "")
        if phase is not None:
            param.state.phase = phase
        if level is not None:
            param.state.level = level
        if stages is not None:
            param.state.ClearField("stage")
            param.state.stage.extend(stages)
        self._init(param)
        if weights:
            for w in ([weights] if isinstance(weights, (str, os.PathLike)) else weights):
                self.copy_from(w)

    # ------------------------------------------------------------------------------------
    # construction (Caffe's Net::Init)
    # ------------------------------------------------------------------------------------
    def _init(self, in_param):
        src = self.source or "<net>"
        self.name = in_param.name
        self.phase = in_param.state.phase
        self.force_backward = in_param.force_backward
        filtered = filter_net(in_param, src)
        param = insert_splits(filtered, src)
        # Which built layers the user wrote (to_proto writes those, with their own bottoms)
        # and which are Splits inserted here.
        self._user_layers = []
        it = iter(filtered.layer)
        user = next(it, None)
        for lp in param.layer:
            if user is not None and lp.name == user.name and lp.type == user.type:
                self._user_layers.append(user)
                user = next(it, None)
            else:
                self._user_layers.append(None)

        self.layers = []
        self._layer_names = []
        self._blobs = []                    # Blob objects, in creation order
        self._blob_names = []
        self.bottom_vecs, self.top_vecs = [], []
        self.bottom_ids, self.top_ids = [], []
        self.bottom_need_backward = []
        self.blob_need_backward = []
        self.layer_need_backward = []
        self.blob_loss_weights_list = []
        self._input_ids = []
        self.param_ids = []                 # per layer: net param indices
        self._params = []                   # every parameter Blob (shared ones repeated)
        self.param_owners = []
        self.param_display_names = []
        self._param_layer_indices = []
        self._param_names_index = {}
        self.learnable_params = []
        self.learnable_param_ids = []
        self.params_lr, self.params_weight_decay = [], []
        self._has_lr, self._has_decay = [], []

        name_to_idx = {}
        available = set()
        for layer_id, lp in enumerate(param.layer):
            if not lp.HasField("phase"):
                lp.phase = self.phase
            if lp.propagate_down and len(lp.propagate_down) != len(lp.bottom):
                raise NetError(f"{src}: layer '{lp.name}' gives {len(lp.propagate_down)} "
                               f"propagate_down values for {len(lp.bottom)} bottoms; give "
                               "none or one per bottom")
            try:
                layer = create_layer(lp)
            except CaffeLiteError as exc:
                raise _prefix_error(exc, src)
            self.layers.append(layer)
            self._layer_names.append(lp.name)
            self.bottom_vecs.append([])
            self.top_vecs.append([])
            self.bottom_ids.append([])
            self.top_ids.append([])
            self.bottom_need_backward.append([])
            self.param_ids.append([])

            need_backward = False
            for j, bname in enumerate(lp.bottom):
                if bname not in name_to_idx:
                    raise NetError(f"{src}: layer '{lp.name}' (bottom {j}) reads unknown blob "
                                   f"'{bname}'")
                if bname not in available:
                    raise NetError(f"{src}: layer '{lp.name}' (bottom {j}) reads blob "
                                   f"'{bname}', which an earlier layer already consumed")
                bid = name_to_idx[bname]
                available.discard(bname)
                bnb = self.blob_need_backward[bid]
                if lp.propagate_down:
                    bnb = bool(lp.propagate_down[j])
                self.bottom_vecs[-1].append(self._blobs[bid])
                self.bottom_ids[-1].append(bid)
                self.bottom_need_backward[-1].append(bnb)
                need_backward |= self.blob_need_backward[bid]

            ntop = len(lp.top)
            if layer.auto_top_blobs:
                ntop = max(ntop, layer.min_top, layer.exact_num_top)
            for j in range(ntop):
                tname = lp.top[j] if j < len(lp.top) else "(automatic)"
                if j < len(lp.bottom) and j < len(lp.top) and tname == lp.bottom[j]:
                    bid = name_to_idx[tname]           # in place: reuse the bottom blob
                    self.top_vecs[-1].append(self._blobs[bid])
                    self.top_ids[-1].append(bid)
                    available.add(tname)
                    continue
                if j < len(lp.top) and tname in name_to_idx:
                    raise NetError(f"{src}: blob '{tname}' is produced by more than one "
                                   f"layer (again by '{lp.name}', top {j})")
                b = Blob(name=tname)
                bid = len(self._blobs)
                self._blobs.append(b)
                self._blob_names.append(tname)
                self.blob_need_backward.append(False)
                self.blob_loss_weights_list.append(0.0)
                if j < len(lp.top):
                    name_to_idx[tname] = bid
                    available.add(tname)
                self.top_vecs[-1].append(b)
                self.top_ids[-1].append(bid)
                if lp.type == "Input":
                    self._input_ids.append(bid)

            try:
                layer.setup(self.bottom_vecs[-1], self.top_vecs[-1])
            except (CaffeLiteError, MemoryError) as exc:
                raise _prefix_error(_in_layer(exc, layer, "setting it up"), src) from None
            for j, tid in enumerate(self.top_ids[-1]):
                self.blob_loss_weights_list[tid] = layer.loss(j)
            log.debug("%s -> %s", lp.name, [t.shape for t in self.top_vecs[-1]])

            lp_after = layer.layer_param  # a layer may have added ParamSpecs (BatchNorm)
            if len(lp_after.param) > len(layer.blobs):
                raise NetError(f"{src}: layer '{lp.name}' specifies {len(lp_after.param)} "
                               f"param entries but has only {len(layer.blobs)} parameter "
                               "blobs")
            for pid in range(len(layer.blobs)):
                spec = lp_after.param[pid] if pid < len(lp_after.param) else None
                pnb = spec is None or spec.lr_mult != 0
                need_backward |= pnb
                layer.param_propagate_down[pid] = pnb
            for pid in range(len(layer.blobs)):
                self._append_param(layer_id, pid, src)
            self.layer_need_backward.append(need_backward)
            if need_backward:
                for tid in self.top_ids[-1]:
                    self.blob_need_backward[tid] = True

        self._prune_backward()
        if self.force_backward:
            for lid, layer in enumerate(self.layers):
                self.layer_need_backward[lid] = True
                for j, bid in enumerate(self.bottom_ids[lid]):
                    nb = self.bottom_need_backward[lid][j] or layer.allow_force_backward(j)
                    self.bottom_need_backward[lid][j] = nb
                    self.blob_need_backward[bid] = self.blob_need_backward[bid] or nb
                for pid in range(len(layer.blobs)):
                    layer.param_propagate_down[pid] = True
        for i, (layer, need) in enumerate(zip(self.layers, self.layer_need_backward)):
            layer.backward_needed = need
            layer.bottom_kept = _BottomKept(self, i)
        self._kept = None

        # Caffe collects the remaining blobs in a std::set, so outputs come sorted by name.
        self._output_ids = [name_to_idx[n] for n in sorted(available)]
        self._output_names = tuple(dict.fromkeys(self._blob_names[i] for i in self._output_ids))
        self._share_weights()
        self._build_views()
        self._plan_ = None
        self._hooks = {"before_forward": [], "after_forward": [], "before_backward": [],
                       "after_backward": []}

    def _bottoms_kept(self):
        """Per layer, per bottom: whether no later layer writes the bottom's memory (as a
        top: in place, or a blob sharing it) and no later Python layer reads it (its code may
        write anything).  Worked out again when blobs changed shape or memory."""
        epoch = _blob.shape_epoch
        if self._kept is not None and self._kept[0] == epoch:
            return self._kept[1]
        written = set()
        kept = [()] * len(self.layers)
        for i in range(len(self.layers) - 1, -1, -1):
            tops = {id(t._data.mem) for t in self.top_vecs[i]}
            kept[i] = tuple(id(b._data.mem) not in written and id(b._data.mem) not in tops
                            for b in self.bottom_vecs[i])
            written |= tops
            if self.layers[i].type == "Python":
                written |= {id(b._data.mem) for b in self.bottom_vecs[i]}
        self._kept = (epoch, kept)
        return kept

    def _prune_backward(self):
        """Caffe's second pass: a layer needs backward only if it contributes to a loss and
        some consumer of its tops wants their gradient."""
        under_loss, skip = set(), set()
        for lid in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[lid]
            contributes, skip_down = False, True
            for j, tid in enumerate(self.top_ids[lid]):
                name = self._blob_names[tid]
                if layer.loss(j) or name in under_loss:
                    contributes = True
                if name not in skip:
                    skip_down = False
                if contributes and not skip_down:
                    break
            if self.layer_need_backward[lid] and skip_down:
                self.layer_need_backward[lid] = False
                self.bottom_need_backward[lid] = [False] * len(self.bottom_ids[lid])
            if not contributes:
                self.layer_need_backward[lid] = False
            for j, bid in enumerate(self.bottom_ids[lid]):
                name = self._blob_names[bid]
                if contributes:
                    under_loss.add(name)
                else:
                    self.bottom_need_backward[lid][j] = False
                if not self.bottom_need_backward[lid][j]:
                    skip.add(name)

    def _append_param(self, layer_id, param_id, src):
        layer = self.layers[layer_id]
        lp = layer.layer_param
        spec = lp.param[param_id] if param_id < len(lp.param) else caffe_pb2.ParamSpec()
        pname = spec.name
        self.param_display_names.append(pname or str(param_id))
        net_pid = len(self._params)
        self._params.append(layer.blobs[param_id])
        self.param_ids[layer_id].append(net_pid)
        self._param_layer_indices.append((layer_id, param_id))
        if not pname or pname not in self._param_names_index:
            self.param_owners.append(-1)
            if pname:
                self._param_names_index[pname] = net_pid
            self.learnable_param_ids.append(len(self.learnable_params))
            self.learnable_params.append(layer.blobs[param_id])
            self._has_lr.append(spec.HasField("lr_mult"))
            self._has_decay.append(spec.HasField("decay_mult"))
            self.params_lr.append(spec.lr_mult)
            self.params_weight_decay.append(spec.decay_mult)
            return
        owner_pid = self._param_names_index[pname]
        self.param_owners.append(owner_pid)
        olid, opid = self._param_layer_indices[owner_pid]
        this, owner = layer.blobs[param_id], self.layers[olid].blobs[opid]
        permissive = spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE
        if (this.count != owner.count) if permissive else (this.shape != owner.shape):
            raise ShapeMismatchError(
                f"{src}: cannot share param '{pname}' owned by layer "
                f"'{self._layer_names[olid]}' with layer '{lp.name}': owner shape "
                f"{owner.shape}, sharing layer shape {this.shape}")
        lid = self.learnable_param_ids[owner_pid]
        self.learnable_param_ids.append(lid)
        for has, vals, field in ((self._has_lr, self.params_lr, "lr_mult"),
                                 (self._has_decay, self.params_weight_decay, "decay_mult")):
            if spec.HasField(field):
                if has[lid] and vals[lid] != getattr(spec, field):
                    raise NetError(f"{src}: shared param '{pname}' has mismatched {field} "
                                   f"({vals[lid]} vs {getattr(spec, field)})")
                has[lid] = True
                vals[lid] = getattr(spec, field)

    def _share_weights(self):
        for pid, owner in enumerate(self.param_owners):
            if owner < 0:
                continue
            b, o = self._params[pid], self._params[owner]
            b.share_data(o)
            b.share_diff(o)
            b.share_mask(o)

    def _build_views(self):
        self.blobs = collections.OrderedDict()
        for name, b in zip(self._blob_names, self._blobs):
            if name != "(automatic)":
                self.blobs[name] = b
        self.params = collections.OrderedDict(
            (n, l.blobs) for n, l in zip(self._layer_names, self.layers) if l.blobs)
        self.layer_dict = collections.OrderedDict(zip(self._layer_names, self.layers))
        self.top_names = collections.OrderedDict(
            (n, [self._blob_names[i] for i in ids]) for n, ids in zip(self._layer_names,
                                                                      self.top_ids))
        self.bottom_names = collections.OrderedDict(
            (n, [self._blob_names[i] for i in ids]) for n, ids in zip(self._layer_names,
                                                                      self.bottom_ids))
        self.blob_loss_weights = collections.OrderedDict(
            (n, w) for n, w in zip(self._blob_names, self.blob_loss_weights_list))

    # ------------------------------------------------------------------------------------
    # pycaffe surface
    # ------------------------------------------------------------------------------------
    @property
    def inputs(self):
        return [self._blob_names[i] for i in self._input_ids]

    @property
    def outputs(self):
        return [self._blob_names[i] for i in self._output_ids]

    @property
    def layer_names(self):
        return list(self._layer_names)

    @property
    def blob_names(self):
        return list(self._blob_names)

    def _layer_index(self, name, what):
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise NameNotFoundError(f"{what}: no layer named '{name}' in net "
                                    f"'{self.name}'") from None

    def reshape(self):
        for layer, bottom, top in zip(self.layers, self.bottom_vecs, self.top_vecs):
            layer.reshape(bottom, top)
        self._plan_ = None  # the layers may have new buffers: prepare every step again

    def _plan(self):
        """The steps of this net's passes for the current configuration (caffe_lite/plan.py),
        built on first use and again when the device mode, CAFFE_LITE_JIT, CAFFE_LITE_FUSE or
        the thread count changes."""
        plans = _plans or _import_plans()
        key = plans.current_key()
        p = self._plan_
        if p is None or p.key != key:
            p = self._plan_ = plans.Plan(self, key)
        return p

    def forward_from_to(self, start=0, end=None):
        end = len(self.layers) - 1 if end is None else end
        hooks = self._hooks
        if hooks["before_forward"] or hooks["after_forward"]:
            return self._forward_hooked(start, end)
        plan = self._plan_
        if plan is None or plan.key != (_plans or _import_plans()).current_key():
            plan = self._plan()
        try:
            return plan.forward(start, end)
        except (CaffeLiteError, MemoryError) as exc:
            raise _in_layer(exc, self.layers[plan.failed], "in forward") from None

    def _deferrable_losses(self):
        """Loss layers whose tops no later layer reads or writes: their loss can be read
        after the backward pass, with the same value."""
        if getattr(self, "_deferrable", None) is None:
            out = set()
            for i, layer in enumerate(self.layers):
                if not any(layer.loss_weights):
                    continue
                ids = {id(t) for t in self.top_vecs[i]}
                if not any(id(b) in ids for j in range(i + 1, len(self.layers))
                           for b in self.bottom_vecs[j] + self.top_vecs[j]):
                    out.add(i)
            self._deferrable = frozenset(out)
        return self._deferrable

    def backward_from_to(self, start=None, end=0):
        start = len(self.layers) - 1 if start is None else start
        if self._hooks["before_backward"]:
            return self._backward_hooked(start, end)
        plan = self._plan()
        try:
            # after_backward hooks run after each layer's step (after a fused group, for each
            # of its layers): the data-parallel solver starts its reductions from them
            plan.backward(start, end, self._hooks["after_backward"])
        except (CaffeLiteError, MemoryError) as exc:
            raise _in_layer(exc, self.layers[plan.failed], "in backward") from None

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """Run forward; inputs may be given as keyword arrays (an input whose shape differs
        is reshaped).  Returns {output name: data array} for the outputs (or the `end` layer's
        tops) plus any names in `blobs`."""
        start_i = 0 if start is None else self._layer_index(start, "forward(start=)")
        if end is None and not blobs:
            end_i, outs = len(self.layers) - 1, self._output_names
        elif end is None:
            blobs = list(blobs)
            end_i, outs = len(self.layers) - 1, self.outputs + blobs
        else:
            blobs = list(blobs or [])
            end_i = self._layer_index(end, "forward(end=)")
            outs = self.top_names[end] + blobs
        blobs = self.blobs
        for name, arr in kwargs.items():
            b = blobs.get(name)
            if b is None:
                raise NameNotFoundError(f"forward(): '{name}' is not a blob of net "
                                        f"'{self.name}'; inputs are {self.inputs}")
            if type(arr) is not np.ndarray or arr.dtype is not _F32:
                arr = np.asarray(arr, dtype=np.float32)
            if arr.shape != b.shape:
                b.reshape(arr.shape)
            b.data[...] = arr
        self.forward_from_to(start_i, end_i)
        return {o: blobs[o].data for o in (outs if outs is self._output_names else
                                           dict.fromkeys(outs))}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        diffs = list(diffs or [])
        start_i = len(self.layers) - 1 if start is None else \
            self._layer_index(start, "backward(start=)")
        if end is None:
            end_i, outs = 0, self.inputs + diffs
        else:
            end_i = self._layer_index(end, "backward(end=)")
            outs = self.bottom_names[end] + diffs
        for name, arr in kwargs.items():
            if name not in self.blobs:
                raise NameNotFoundError(f"backward(): '{name}' is not a blob of net "
                                        f"'{self.name}'")
            self.blobs[name].diff = arr
        self.backward_from_to(start_i, end_i)
        return {o: self.blobs[o].diff for o in dict.fromkeys(outs)}

    def forward_backward(self):
        from .backend import state
        hooked = any(self._hooks.values())
        defer = self._deferrable_losses() if state.mode() == state.GPU and not hooked else ()
        if not defer:
            loss = self.forward_from_to()
            self.backward_from_to()
            return loss
        # GPU: the backward pass is queued before the loss is read back (one synchronisation
        # per step, at its end); the sum runs in layer order, as forward_from_to's.
        plan = self._plan()
        try:
            parts = plan.forward(0, len(self.layers) - 1, defer)
        except (CaffeLiteError, MemoryError) as exc:
            raise _in_layer(exc, self.layers[plan.failed], "in forward") from None
        self.backward_from_to()
        total = 0.0
        for p in parts:
            total += self.layers[p.index].loss_value(self.top_vecs[p.index]) \
                if isinstance(p, _Pending) else p
        return total

    def set_input_arrays(self, data, labels, layer=None):
        """Feed a MemoryData layer (the first one, or the one named `layer`), as pycaffe's
        Net.set_input_arrays does."""
        for name, l in zip(self._layer_names, self.layers):
            if l.type == "MemoryData" and (layer is None or name == layer):
                l.reset(data, labels)
                return
        raise CaffeLiteError(f"net '{self.name}' has no MemoryData layer"
                             + (f" named '{layer}'" if layer else ""))

    # --- pycaffe's hooks, batched passes and private accessors --------------------------------
    def before_forward(self, fn):
        """Call fn(layer_index) before each layer's forward (pycaffe's Net.before_forward)."""
        self._hooks["before_forward"].append(fn)

    def after_forward(self, fn):
        self._hooks["after_forward"].append(fn)

    def before_backward(self, fn):
        self._hooks["before_backward"].append(fn)

    def after_backward(self, fn):
        """Call fn(layer_index) after each layer's backward step (run or skipped); for the
        layers of a fused BatchNorm-Scale group, once the group's backward is done."""
        self._hooks["after_backward"].append(fn)

    def _forward_hooked(self, start, end):
        """Layer by layer (no fused groups, every layer reshaped), calling the hooks as Caffe's
        ForwardFromTo does."""
        before, after = self._hooks["before_forward"], self._hooks["after_forward"]
        loss = 0.0
        i = start
        try:
            for i in range(start, end + 1):
                for fn in before:
                    fn(i)
                loss += self.layers[i].forward(self.bottom_vecs[i], self.top_vecs[i])
                for fn in after:
                    fn(i)
        except (CaffeLiteError, MemoryError) as exc:
            raise _in_layer(exc, self.layers[i], "in forward") from None
        finally:
            self._plan_ = None  # every layer reshaped: prepare every step again
        return loss

    def _backward_hooked(self, start, end):
        before, after = self._hooks["before_backward"], self._hooks["after_backward"]
        i = start
        try:
            for i in range(start, end - 1, -1):
                for fn in before:
                    fn(i)
                if self.layer_need_backward[i]:
                    self.layers[i].backward(self.top_vecs[i], self.bottom_need_backward[i],
                                            self.bottom_vecs[i])
                for fn in after:
                    fn(i)
        except (CaffeLiteError, MemoryError) as exc:
            raise _in_layer(exc, self.layers[i], "in backward") from None

    def _batch(self, arrays):
        """(batch dict, number of real items) over `arrays` in the net's batch size, the last
        batch padded with zeros (pycaffe's Net._batch)."""
        first = next(iter(arrays))
        num = len(arrays[first])
        batch_size = self.blobs[first].shape[0] if self.blobs[first].shape else 1
        for i in range(0, num, batch_size):
            batch = {}
            for name, a in arrays.items():
                chunk = np.asarray(a[i:i + batch_size], dtype=np.float32)
                if len(chunk) < batch_size:
                    pad = np.zeros((batch_size - len(chunk),) + chunk.shape[1:], np.float32)
                    chunk = np.concatenate([chunk, pad])
                batch[name] = chunk
            yield batch, min(batch_size, num - i)

    @staticmethod
    def _collect(parts):
        """Per-batch arrays -> one array of the real items (padding dropped)."""
        if parts and all(a.ndim and len(a) >= k for a, k in parts):
            return np.concatenate([a[:k] for a, k in parts])
        return np.asarray([a for a, _ in parts])

    def forward_all(self, blobs=None, **kwargs):
        """pycaffe's Net.forward_all: forward any number of items in batches of the net's
        batch size; returns {name: array over all items} for the outputs and `blobs`."""
        names = list(dict.fromkeys(self.outputs + list(blobs or [])))
        if not kwargs:
            out = self.forward(blobs=blobs)
            return {n: out[n].copy() for n in names}
        parts = {n: [] for n in names}
        for batch, k in self._batch(kwargs):
            out = self.forward(blobs=blobs, **batch)
            for n in names:
                parts[n].append((out[n].copy(), k))
        return {n: self._collect(p) for n, p in parts.items()}

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """pycaffe's Net.forward_backward_all: batched forward of the inputs in kwargs and
        backward of the output diffs in kwargs; returns (outputs, diffs) over all items."""
        out_names = list(dict.fromkeys(self.outputs + list(blobs or [])))
        diff_names = list(dict.fromkeys(self.inputs + list(diffs or [])))
        fwd = {n: kwargs[n] for n in self.inputs if n in kwargs}
        bwd = {n: kwargs[n] for n in self.outputs if n in kwargs}
        outs = {n: [] for n in out_names}
        grads = {n: [] for n in diff_names}
        for (fb, k1), (bb, k2) in itertools.zip_longest(
                self._batch(fwd) if fwd else (), self._batch(bwd) if bwd else (),
                fillvalue=({}, None)):
            k = k1 if k1 is not None else k2
            o = self.forward(blobs=blobs, **fb)
            d = self.backward(diffs=diffs, **bb)
            for n in out_names:
                outs[n].append((o[n].copy(), k))
            for n in diff_names:
                grads[n].append((d[n].copy(), k))
        return ({n: self._collect(p) for n, p in outs.items()},
                {n: self._collect(p) for n, p in grads.items()})

    def _set_input_arrays(self, data, labels):
        """pycaffe's low-level form (labels N x 1 x 1 x 1); set_input_arrays is the usual one."""
        self.set_input_arrays(data, labels)

    def load_hdf5(self, path):
        """Copy weights from an HDF5 caffemodel (pycaffe's Net.load_hdf5; copy_from reads both
        formats)."""
        return self.copy_from(path)

    # pycaffe's names for Caffe's ForwardFromTo / BackwardFromTo (layer indices, inclusive)
    def _forward(self, start, end):
        return self.forward_from_to(start, end)

    def _backward(self, start, end):
        return self.backward_from_to(start, end)

    @property
    def _blob_loss_weights(self):
        return list(self.blob_loss_weights_list)

    def _top_ids(self, i):
        return list(self.top_ids[i])

    def _bottom_ids(self, i):
        return list(self.bottom_ids[i])

    @property
    def _inputs(self):
        return list(self._input_ids)

    @property
    def _outputs(self):
        return list(self._output_ids)

    def clear_param_diffs(self):
        from .backend import state
        if state.mode() == state.GPU:
            from .backend import ops
            ops.zero_diffs(self.learnable_params)
            return
        for p in self.learnable_params:
            p.diff[...] = 0

    def update(self):
        for p in self.learnable_params:
            p.update()

    def share_with(self, other):
        """Share `other`'s trained parameters (Caffe's ShareTrainedLayersWith)."""
        for name, layer in zip(self._layer_names, self.layers):
            src = other.layer_dict.get(name)
            if src is None or not layer.blobs:
                continue
            if len(src.blobs) != len(layer.blobs):
                raise NetError(f"layer '{name}': {len(src.blobs)} source blobs vs "
                               f"{len(layer.blobs)} target blobs")
            for j, (s, t) in enumerate(zip(src.blobs, layer.blobs)):
                if s.shape != t.shape:
                    raise ShapeMismatchError(f"layer '{name}' param {j}: source shape {s.shape} "
                                             f"vs target shape {t.shape}")
                t.share_data(s)
                t.share_mask(s)

    # ------------------------------------------------------------------------------------
    # weights
    # ------------------------------------------------------------------------------------
    def copy_from(self, path):
        """Copy trained weights by layer name from a caffemodel (binary or HDF5) or a
        compressed model (caffe-lite's, or one Deep Compression published for this net).

        Every shape is checked before anything is copied, so a mismatch leaves the net as it
        was.  Every prunable weight copied gets its mask from the `.masks` sidecar beside the
        file when there is one (io/masks.py), else mask = (weight != 0).  A WARNING names each
        layer with parameters that got no weights and each layer of the file that matched
        none of the net (with the nearest name when one is close)."""
        from .errors import ModelFileError
        from .io.masks import read_masks, sidecar_path
        weights = load_weights(path, net=self)
        masks = read_masks(path, weights) or {}
        plan = []
        for lname, arrays in weights:
            if lname not in self.layer_dict:
                continue
            lid = self._layer_names.index(lname)
            target = self.layers[lid].blobs
            count_error = ShapeMismatchError(
                f"{path}: layer '{lname}' has {sum(a is not None for a in arrays)} blob(s) in "
                f"the weights file but {len(target)} in the net")
            if len(arrays) > len(target):
                raise count_error
            for j, t in enumerate(target):
                a = arrays[j] if j < len(arrays) else None
                if a is None:
                    # HDF5 files omit parameters a layer shares with another layer.
                    if self.param_owners[self.param_ids[lid][j]] == -1:
                        raise count_error
                    continue
                if not _legacy_equal(t.shape, a.shape):
                    raise ShapeMismatchError(
                        f"{path}: cannot copy param {j} of layer '{lname}': shape mismatch, "
                        f"weights file has {a.shape}, net has {t.shape} (to learn this layer "
                        "from scratch instead, rename it)")
                prunable_weight = j == 0 and self.layers[lid].prunable
                mask = masks.get((lname, j)) if prunable_weight else None
                if mask is not None:
                    mask = mask.reshape(t.shape)
                    stray = int(np.count_nonzero(a.reshape(t.shape)[mask == 0]))
                    if stray:
                        raise ModelFileError(
                            f"{sidecar_path(path)}: the mask of layer '{lname}' param {j} "
                            f"prunes {stray} weight(s) that are not zero in {path}")
                plan.append((t, a, prunable_weight, mask))
        self._warn_unmatched(path, weights)
        for t, a, prunable_weight, mask in plan:
            t.data[...] = a.reshape(t.shape)
            if mask is not None:
                t.mask = mask
            elif prunable_weight:
                # Only layers whose weights came from the file: a layer learned from scratch
                # (renamed, or absent from the file) keeps its all-ones mask.
                t.mask_from_data()
        return self

    def _warn_unmatched(self, path, weights):
        import difflib
        in_file = [name for name, _ in weights]
        unused = [name for name in in_file if name not in self.layer_dict]
        have = set(in_file)
        empty = [name for lid, (name, layer) in enumerate(zip(self._layer_names, self.layers))
                 if name not in have and any(self.param_owners[self.param_ids[lid][j]] == -1
                                             for j in range(len(layer.blobs)))]

        def nearest(name, candidates):
            close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
            return f" (did you mean '{close[0]}'?)" if close else ""
        for name in empty:
            log.warning("%s holds no weights for layer '%s' (%s) of net '%s': it keeps its "
                        "initial values%s", path, name, self.layer_dict[name].type, self.name,
                        nearest(name, unused))
        for name in unused:
            log.warning("%s: layer '%s' matches no layer of net '%s'; its weights are not "
                        "used%s", path, name, self.name, nearest(name, empty or
                                                                   self._layer_names))

    def init_masks_from_weights(self):
        """mask = (weight != 0) for every prunable layer's weight."""
        for layer in self.layers:
            if layer.prunable and layer.blobs:
                layer.blobs[0].mask_from_data()

    def to_proto(self, write_diff=False):
        """The net as a NetParameter with its weights (what `save` writes)."""
        out = caffe_pb2.NetParameter(name=self.name)
        for user, layer in zip(self._user_layers, self.layers):
            if user is None:
                continue  # a Split this net inserted
            lp = out.layer.add()
            lp.CopyFrom(layer.layer_param)
            lp.ClearField("blobs")
            lp.ClearField("bottom")
            lp.bottom.extend(user.bottom)  # the names before Split insertion
            for b in layer.blobs:
                array_to_proto(b.cpu_data, lp.blobs.add(), b.cpu_diff if write_diff else None)
        return out

    def save(self, path, overwrite=True):
        """Write a binary caffemodel (atomically) and its `.masks` sidecar (io/masks.py)."""
        from .io import masks
        masks.save_model(path, self.to_proto(), masks.net_mask_entries(self), overwrite)

    def save_hdf5(self, path, write_diff=False, overwrite=True):
        """Write an HDF5 caffemodel (atomically) and its `.masks` sidecar."""
        from .io import masks
        from .io.hdf5 import save_net_hdf5
        masks.check_writable(path, overwrite)
        save_net_hdf5(self, path, write_diff, overwrite=overwrite)
        masks.write_sidecar(path, masks.net_mask_entries(self), overwrite=overwrite)

    def close(self):
        """Stop the background threads of data layers (garbage collection also does)."""
        for layer in self.layers:
            close = getattr(layer, "close", None)
            if close is not None:
                close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<Net '{self.name}' phase={caffe_pb2.Phase.Name(self.phase)} " \
               f"layers={len(self.layers)}>"


class _BottomKept:
    """A layer's bottom_kept (Layer.bottom_kept): Net._bottoms_kept of its index, through a
    weak reference (a layer does not keep its net alive)."""
    __slots__ = ("net", "index")

    def __init__(self, net, index):
        self.net = weakref.ref(net)
        self.index = index

    def __call__(self, j):
        net = self.net()
        return net is not None and net._bottoms_kept()[self.index][j]
