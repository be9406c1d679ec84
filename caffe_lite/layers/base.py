"""Layer: Caffe's layer contract (setup / reshape / forward / backward) in Python.

A layer subclass implements `layer_setup` (read parameters, create `self.blobs`), `reshape`
(shape the tops from the bottoms), `forward_cpu` and `backward_cpu`, and optionally
`forward_gpu` / `backward_gpu` beside them.  Without a GPU version the CPU one runs, as in
Caffe: the blobs move their data to the host on demand.

Conventions that every layer follows, because the Net and the solvers depend on them:
  * parameter gradients ACCUMULATE (`blob.diff += ...`): the solver zeroes them once per
    iteration, which is what makes iter_size and shared parameters work;
  * bottom gradients are OVERWRITTEN, and only computed where propagate_down[i] is true;
  * reads go through `cpu_data` / `cpu_diff`, writes through `data` / `diff`.
"""
import math

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from ..backend import state as _mode
from ..blob import Blob
from ..errors import LayerSetupError
from ..proto import caffe_pb2
from .parallel import cpu_pass


GPU_IMPLS = {}
_FLOATS = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)


def _non_finite(msg, path=""):
    """(field path, value) of the first NaN or infinite number set in a layer's parameters
    (its blobs are weights, not parameters), or None."""
    for fd, value in msg.ListFields():
        if fd.name == "blobs" and not path:
            continue
        name = f"{path}{fd.name}"
        if fd.type in _FLOATS:
            for v in ([value] if isinstance(value, float) else value):
                if not math.isfinite(v):
                    return name, v
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            for m in ([value] if isinstance(value, Message) else value):
                found = _non_finite(m, name + ".")
                if found:
                    return found
    return None


def gpu_impl(*type_names):
    """Register a class with static `forward(layer, bottom, top)` and
    `backward(layer, top, propagate_down, bottom)` as the GPU path of these layer types."""
    def deco(cls):
        for t in type_names:
            GPU_IMPLS[t] = cls
        return cls
    return deco


def gpu_impl_for(layer):
    if not GPU_IMPLS:
        from . import cuda  # noqa: F401  (imports PyCUDA; only reached in GPU mode)
    return GPU_IMPLS.get(layer.type)


class Layer:
    type = None            # Caffe type string (set by @register)
    prunable = False       # True: blobs[0] is a weight that carries a pruning mask
    # How channels (axis 1) flow through the layer, for structured pruning and thinning
    # (pruning/structure.py).  channelwise: True when channel c of every top is a function of
    # channel c of the one bottom alone (and of entry c of the blobs channel_params() names);
    # False when the layer mixes channels (channel_note says how), so the channels it reads
    # are kept; None (not declared): kept as well, and the analysis says it does not know the
    # type.  Layers that route channels instead set channel_route: "join" (channel c of every
    # bottom meets in channel c of the top), "concat", "slice", "flatten" or "sink".
    channelwise = None
    channel_note = ""
    channel_route = None

    # Blob-count constraints, as Caffe's ExactNumBottomBlobs() & co.; -1 means unchecked.
    exact_num_bottom = -1
    min_bottom = -1
    max_bottom = -1
    exact_num_top = -1
    min_top = -1
    max_top = -1
    equal_num_bottom_top = False
    auto_top_blobs = False  # Net may create anonymous tops up to min_top / exact_num_top

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "prepare_cpu" in cls.__dict__:
            # the forward_cpu this prepare_cpu stands for (uses_prepared checks it is still
            # the one a layer of this class would run)
            cls._prepared_forward = cls.forward_cpu

    def uses_prepared(self):
        """Whether a Net may run this layer through prepare_cpu: it defines one, and neither
        a subclass nor the instance replaced the forward_cpu it was written for."""
        cls = type(self)
        return ("forward_cpu" not in self.__dict__
                and getattr(cls, "_prepared_forward", None) is cls.forward_cpu)

    def __init__(self, layer_param):
        self.layer_param = caffe_pb2.LayerParameter()
        self.layer_param.CopyFrom(layer_param)
        self.phase = self.layer_param.phase
        bad = _non_finite(self.layer_param)
        if bad:
            raise self.error(f"{bad[0]} is {bad[1]}; parameters must be finite numbers")
        self.blobs = []
        for i, bp in enumerate(self.layer_param.blobs):
            b = Blob(name=f"{self.name}[{i}]")
            b.from_proto(bp, source=f"layer '{self.name}' blob {i}")
            self.blobs.append(b)
        self.layer_param.ClearField("blobs")  # loaded; don't keep a second copy
        self.param_propagate_down = []
        self.loss_weights = []

    # --- identity --------------------------------------------------------------------------
    @property
    def name(self):
        return self.layer_param.name

    def __repr__(self):
        return f"<{type(self).__name__} '{self.name}'>"

    def error(self, detail):
        return LayerSetupError(self, detail)

    # --- setup -----------------------------------------------------------------------------
    def setup(self, bottom, top):
        self.check_blob_counts(bottom, top)
        self.layer_setup(bottom, top)
        if self.prunable and self.blobs and not self.blobs[0].has_mask:
            self.blobs[0].init_mask()
        while len(self.param_propagate_down) < len(self.blobs):
            self.param_propagate_down.append(True)
        self.reshape(bottom, top)
        self.set_loss_weights(top)

    def layer_setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        raise NotImplementedError

    def check_blob_counts(self, bottom, top):
        nb, nt = len(bottom), len(top)

        def bad(what, n, rule):
            return self.error(f"takes {rule} {what} blob(s), got {n}")
        if self.exact_num_bottom >= 0 and nb != self.exact_num_bottom:
            raise bad("bottom", nb, f"exactly {self.exact_num_bottom}")
        if self.min_bottom >= 0 and nb < self.min_bottom:
            raise bad("bottom", nb, f"at least {self.min_bottom}")
        if self.max_bottom >= 0 and nb > self.max_bottom:
            raise bad("bottom", nb, f"at most {self.max_bottom}")
        if self.exact_num_top >= 0 and nt != self.exact_num_top:
            raise bad("top", nt, f"exactly {self.exact_num_top}")
        if self.min_top >= 0 and nt < self.min_top:
            raise bad("top", nt, f"at least {self.min_top}")
        if self.max_top >= 0 and nt > self.max_top:
            raise bad("top", nt, f"at most {self.max_top}")
        if self.equal_num_bottom_top and nb != nt:
            raise self.error(f"needs as many tops as bottoms, got {nb} bottom(s), {nt} top(s)")

    def set_loss_weights(self, top):
        """Caffe's SetLossWeights: a top with a nonzero loss weight gets its diff filled with
        that weight; forward then returns sum(weight * top) as the layer's loss."""
        lw = list(self.layer_param.loss_weight)
        if lw and len(lw) != len(top):
            raise self.error(f"has {len(lw)} loss_weight value(s) for {len(top)} top(s)")
        self.loss_weights = lw + [0.0] * (len(top) - len(lw))
        for w, t in zip(self.loss_weights, top):
            if w != 0:
                t.diff[...] = w

    def loss(self, top_index):
        return self.loss_weights[top_index] if top_index < len(self.loss_weights) else 0.0

    def channel_params(self):
        """Indices of the blobs that hold one entry per channel (channelwise layers)."""
        return ()

    def allow_force_backward(self, bottom_index):
        """False for bottoms no gradient can be computed for (labels, say)."""
        return True

    # --- forward / backward ----------------------------------------------------------------
    # A Net skips reshape while no blob's shape has changed (caffe_lite/plan.py); a layer whose
    # reshape reads more than its bottoms' shapes (the data it is about to produce, a user's
    # Python code) sets this to be reshaped before every forward, as Caffe does.
    reshape_each_forward = False
    # False when the Net this layer belongs to never runs its backward (Net sets it): forward
    # may then skip what only backward reads (a pooling's argmax, an in-place input copy).  A
    # backward called anyway recomputes or refuses, never reads stale state.
    backward_needed = True
    # Set by a Net: bottom_kept(j) is True while the rest of a forward pass leaves bottom j's
    # data as this layer read it (no later layer writes its memory), so what forward derived
    # from it may serve the backward (a convolution's columns).  None: not known.
    bottom_kept = None
    _reshape_key = None

    def forward(self, bottom, top):
        """reshape, forward on the current device, and the loss: Caffe's Layer::Forward (a Net
        runs the parts itself, reshaping only when shapes changed: caffe_lite/plan.py)."""
        self.run_forward(bottom, top)
        return self.loss_value(top)

    def run_forward(self, bottom, top):
        """Forward without reading the loss back (Net.forward_backward reads it after the
        backward pass on the GPU: no synchronisation in the middle of a step)."""
        if _mode.mode() == _mode.GPU:
            self.reshape_if_changed(bottom, top)
            self.forward_gpu(bottom, top)
        else:
            self.reshape(bottom, top)  # as Caffe's Layer::Forward: inputs may have changed shape
            with cpu_pass():
                self.forward_cpu(bottom, top)

    def reshape_if_changed(self, bottom, top):
        """reshape(), unless this is a layer with a GPU implementation whose bottoms and tops
        are the blobs, shapes and memory of its last reshape: then nothing can have changed,
        and a repeated step skips the per-layer shape logic (host time per layer)."""
        key = None
        if gpu_impl_for(self) is not None:
            key = _blob_key(bottom, top)
            if key == self._reshape_key:
                return
        self.reshape(bottom, top)
        self._reshape_key = _blob_key(bottom, top) if key is not None else None

    def prepare_cpu(self, bottom, top):
        """A callable that runs forward_cpu(bottom, top) on the blobs as they are shaped now,
        with what it needs (views of the blobs' host arrays, buffers, kernels, the split over
        the thread pool) bound once; or None.  A Net's plan calls it after each reshape and
        runs the callable until a blob's shape or memory changes (caffe_lite/plan.py)."""
        return None

    def loss_value(self, top):
        """sum(weight * top) over the tops with a loss weight (reads them on the host)."""
        loss = 0.0
        for w, t in zip(self.loss_weights, top):
            if w != 0:
                loss += float(np.dot(t.cpu_data.ravel().astype(np.float64),
                                     t.cpu_diff.ravel()))
        return loss

    def backward(self, top, propagate_down, bottom):
        if _mode.mode() == _mode.GPU:
            self.backward_gpu(top, propagate_down, bottom)
        else:
            with cpu_pass():
                self.backward_cpu(top, propagate_down, bottom)
        # Pruned weights receive no gradient.  Applied here, once, for every prunable layer.
        for b in self.blobs:
            if b.has_mask:
                b.mask_diff()

    def forward_cpu(self, bottom, top):
        raise NotImplementedError

    def backward_cpu(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise self.error("has no backward pass")

    # The GPU computations of a layer family live in caffe_lite/layers/cuda/<family>.py
    # (kernels in layers/kernels/*.cu), registered per type with @gpu_impl; they use the
    # shapes and buffers this class set up in layer_setup / reshape.  A type without a GPU
    # implementation runs its CPU code on host copies, as Caffe's layers without Forward_gpu do.
    def forward_gpu(self, bottom, top):
        impl = gpu_impl_for(self)
        if impl is None:
            self.forward_cpu(bottom, top)
        else:
            impl.forward(self, bottom, top)

    def backward_gpu(self, top, propagate_down, bottom):
        impl = gpu_impl_for(self)
        if impl is None:
            self.backward_cpu(top, propagate_down, bottom)
        else:
            impl.backward(self, top, propagate_down, bottom)

    # --- helpers for subclasses ------------------------------------------------------------
    def param_blob(self, shape, filler=None, name_suffix=None):
        """A new parameter Blob of `shape`, filled by `filler` (a FillerParameter)."""
        from ..fillers import fill
        b = Blob(shape, name=f"{self.name}[{len(self.blobs) if name_suffix is None else name_suffix}]")
        if filler is not None:
            fill(b, filler)
        return b

    def check_loaded_blobs(self, shapes):
        """When the prototxt carried blobs, they must have the shapes this layer needs."""
        for i, (b, s) in enumerate(zip(self.blobs, shapes)):
            if tuple(b.shape) != tuple(s):
                raise self.error(f"blob {i} has shape {b.shape} but the layer needs {tuple(s)}")


def _blob_key(bottom, top):
    return (tuple((id(b), b.shape, id(b._data.mem)) for b in bottom),
            tuple((id(t), t.shape, id(t._data.mem)) for t in top))


class NeuronLayer(Layer):
    """One bottom, one top of the same shape; may run in place."""
    channelwise = True
    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        top[0].reshape_like(bottom[0])


class LossLayer(Layer):
    """Two bottoms (prediction, target); a scalar top whose loss weight defaults to 1."""
    channelwise = False
    exact_num_bottom = 2
    exact_num_top = 1
    auto_top_blobs = True

    def setup(self, bottom, top):
        if not self.layer_param.loss_weight:
            self.layer_param.loss_weight.append(1.0)
        super().setup(bottom, top)

    def reshape(self, bottom, top):
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise self.error(f"the data and label should have the same first dimension, "
                             f"got {bottom[0].shape} and {bottom[1].shape}")
        top[0].reshape(())

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1
