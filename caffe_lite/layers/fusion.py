"""Chains of consecutive layers a Net runs as one step.

Caffe nets write their activations as separate in-place layers: a Convolution (or
InnerProduct) followed by ReLU or PReLU on its top, BatchNorm -> Scale (-> ReLU) sharing one
blob.  Run one by one, each layer reads and writes the whole blob again; run as one step, the
bias, the normalisation and the activation are applied in one pass.  The prototxt keeps
Caffe's form: grouping is decided when the Net plans its passes (caffe_lite/plan.py).

The mechanism is general: a group class (`GROUPS`) is a pattern of consecutive layers,
`match(net, i)` (the group starting at layer i, or None), and device implementations: on the
CPU its own `forward_cpu` / `backward_cpu` (`cpu_available()` says whether it can run, e.g.
only with the compiled kernels), on the GPU a class registered for its `type` with
`@gpu_impl` (layers/cuda/).  A group runs only where its device has an implementation
(`active()`); elsewhere, and with CAFFE_LITE_FUSE=0, the layers run one by one.  A group with
`backward_ok` also runs its backward as one step; otherwise the Net runs its layers'
backward one by one, which the group's forward must leave possible (it fills whatever state
those backward passes read).

Every observable result is what the layers give one by one, up to float32 rounding: the
blobs' data and diffs, BatchNorm's running statistics, parameter gradients.  Groups only form
where the blobs inside them are in place (no intermediate value another layer or the user
could read is skipped) and no top inside carries a loss weight.

The groups:
  * ConvolutionGroup: Convolution / DepthwiseConvolution / InnerProduct (one bottom, one top),
    then in place on its top: [BatchNorm on global statistics -> Scale] and/or [ReLU with
    negative_slope >= 0, or PReLU].  The products are followed by one pass that adds the bias,
    applies BatchNorm and Scale as one per-channel affine map and the activation.  Backward
    runs the layers one by one: ReLU's reads its top (y > 0 exactly where x > 0); PReLU's
    reads the input copy the group keeps for it; BatchNorm / Scale join only when none of the
    group needs backward.
  * BatchNormScaleGroup: BatchNorm -> Scale (-> ReLU) on BatchNorm's top, in training
    (batch statistics, forward and backward as one step, compiled kernels) or on global
    statistics (forward only; compiled kernels or numpy)."""
import numpy as np

from ..backend import state as _mode
from ..proto import caffe_pb2
from ..util import env
from . import gemm_pool, jit, parallel
from .base import gpu_impl_for
from .conv import BaseConvolution
from .inner_product import InnerProductLayer
from .neuron import DropoutLayer, PReLULayer, ReLULayer
from .normalization import BatchNormLayer, same_memory
from .parallel import MIN_PARALLEL_STREAM_ELEMENTS, prepare_blocks, run_blocks
from .program import ready_while
from .scale_bias import _NO_BIAS, ScaleLayer

_F = np.float32


def enabled():
    return env.flag("CAFFE_LITE_FUSE")


class Group:
    """Layers first..last of a net run as one step."""
    type = None             # the name GPU implementations register under (@gpu_impl)
    backward_ok = False     # backward as one step too

    def __init__(self, net, first, last):
        self.net = net
        self.first, self.last = first, last

    @classmethod
    def match(cls, net, i):
        """The group starting at layer i, or None."""
        raise NotImplementedError

    def active(self):
        """Whether the current device can run the group as one step."""
        if _mode.mode() == _mode.GPU:
            return gpu_impl_for(self) is not None
        return self.cpu_available()

    def cpu_available(self):
        return True

    def reshape_layers(self, *unused):
        net = self.net
        for i in range(self.first, self.last + 1):
            layer = net.layers[i]
            layer.reshape(net.bottom_vecs[i], net.top_vecs[i])
            layer._reshape_key = None  # (Layer.reshape_if_changed's memo is stale)

    def forward(self, reshape=True):
        if reshape:
            self.reshape_layers()
        self.run_forward()

    def run_forward(self, *unused):
        if _mode.mode() == _mode.GPU:
            gpu_impl_for(self).forward(self)
        else:
            self.forward_cpu()

    def backward(self):
        if _mode.mode() == _mode.GPU:
            gpu_impl_for(self).backward(self)
        else:
            self.backward_cpu()

    def run_backward(self, *unused):
        self.backward()

    def prepare_cpu(self):
        """A callable running forward_cpu on the blobs as they are shaped now (see
        Layer.prepare_cpu)."""
        return self.forward_cpu

    def forward_cpu(self):
        raise NotImplementedError

    def backward_cpu(self):
        raise NotImplementedError


def _in_place_on(net, i, blob):
    """Layer i reads and writes `blob` alone (in place)."""
    return net.bottom_vecs[i] == [blob] and net.top_vecs[i] == [blob]


def _no_loss(net, first, last):
    return not any(w for j in range(first, last + 1) for w in net.layers[j].loss_weights)


def _channel_scale_ok(scale, channels, t):
    """Scale multiplies along axis 1 of t by a (C,) blob, with a (C,) bias or none."""
    if len(scale.blobs) < 1 or scale.blobs[0].shape != (channels,):
        return False
    if scale.dims[1] != channels or scale.dims[0] != t.shape[0]:
        return False
    return scale.bias is None or (scale.blobs[scale.bias_id].shape == (channels,)
                                  and scale.bias.dims == scale.dims)


# --------------------------------------------------------------------------------------------
# Per-channel affine map and activation in one pass: the tail of a fused Convolution
# --------------------------------------------------------------------------------------------

class Epilogue:
    """y (N, C, S) <- act(y * scale + shift) per channel c, in one pass: scale / shift come
    from the layer's bias and a folded BatchNorm + Scale (1 and 0 where there is none), act is
    ReLU, leaky ReLU / PReLU (`slope` per channel) or nothing.  `keep`: where to copy the value
    before the activation (PReLU's backward reads it), or None.  The arrays are allocated
    once and updated in place, so a prepared step always sees the current values."""

    NONE, RELU, SLOPE = 0, 1, 2

    def __init__(self, channels):
        self.scale = np.ones(channels, _F)
        self.shift = np.zeros(channels, _F)
        self.slope = np.zeros(channels, _F)
        self.kind = self.NONE
        self.keep = None

    def prepare(self, y3):
        """A callable applying the epilogue to y3 (N, C, S), a view of the output."""
        n, c, s = y3.shape
        k = jit.kernels("neuron")
        scale, shift, slope, kind = self.scale, self.shift, self.slope, self.kind
        keep = y3 if self.keep is None else self.keep.reshape(y3.shape)
        has_keep = self.keep is not None
        if k is not None:
            if s == 1:  # InnerProduct: per row of the batch, vectorised over the channels
                y2, k2 = y3.reshape(n, c), keep.reshape(n, c)
                return prepare_blocks(n, c, lambda a, b, slot: k.affine_act_rows(
                    y2, scale, shift, kind, slope, k2, has_keep, a, b),
                    min_elements=MIN_PARALLEL_STREAM_ELEMENTS,
                    spin_elements=parallel.MIN_SPIN_STREAM_ELEMENTS,
                    native=(k.affine_act_rows_task,
                            (y2, scale, shift, kind, slope, k2, has_keep)))
            return prepare_blocks(n * c, s, lambda a, b, slot: k.affine_act(
                y3, scale, shift, kind, slope, keep, has_keep, a, b),
                min_elements=MIN_PARALLEL_STREAM_ELEMENTS,
                spin_elements=parallel.MIN_SPIN_STREAM_ELEMENTS,
                native=(k.affine_act_task, (y3, scale, shift, kind, slope, keep, has_keep)))
        a, b, sl = scale.reshape(-1, 1), shift.reshape(-1, 1), slope.reshape(-1, 1)
        neg = np.empty(y3.shape, _F) if kind == self.SLOPE else None

        def run():
            np.multiply(y3, a, out=y3)
            np.add(y3, b, out=y3)
            if has_keep:
                np.copyto(keep, y3)
            if kind == self.RELU:
                np.maximum(y3, _F(0), out=y3)
            elif kind == self.SLOPE:
                np.minimum(y3, _F(0), out=neg)
                np.maximum(y3, _F(0), out=y3)
                np.multiply(neg, sl, out=neg)
                np.add(y3, neg, out=y3)
        return run

    def apply(self, y3):
        self.prepare(y3)()


class ConvolutionGroup(Group):
    """Convolution / InnerProduct, then in place [BatchNorm (global stats) -> Scale] and/or
    [ReLU / PReLU]: the products, then one Epilogue pass."""
    type = "Convolution+activation"

    @classmethod
    def match(cls, net, i):
        layers = net.layers
        conv = layers[i]
        if not isinstance(conv, (BaseConvolution, InnerProductLayer)) \
                or not conv.uses_prepared():   # (a subclass with its own forward_cpu: alone)
            return None
        if len(net.bottom_vecs[i]) != 1 or len(net.top_vecs[i]) != 1:
            return None
        if isinstance(conv, BaseConvolution) and conv.channel_axis != 1:
            return None
        if isinstance(conv, InnerProductLayer) and conv.axis != 1:
            return None
        t = net.top_vecs[i][0]
        if t is net.bottom_vecs[i][0] or t.num_axes < 2:
            return None
        c = t.shape[1]
        j = i + 1
        bn = scale = act = None
        if j + 1 < len(layers) and type(layers[j]) is BatchNormLayer \
                and type(layers[j + 1]) is ScaleLayer and _in_place_on(net, j, t) \
                and _in_place_on(net, j + 1, t):
            b, s = layers[j], layers[j + 1]
            if b.use_global_stats and b.channels == c and _channel_scale_ok(s, c, t):
                bn, scale = b, s
                j += 2
        # an in-place Dropout outside TRAIN copies nothing: it may sit before the activation
        while j < len(layers) and type(layers[j]) is DropoutLayer and \
                layers[j].phase != caffe_pb2.TRAIN and _in_place_on(net, j, t):
            j += 1
        if j < len(layers) and _in_place_on(net, j, t):
            a = layers[j]
            if (type(a) is ReLULayer and a.negative_slope >= 0) or (
                    type(a) is PReLULayer and (a.channel_shared or a.blobs[0].count == c)):
                act = a
                j += 1
        last = j - 1
        if act is None and bn is None:
            return None
        if not _no_loss(net, i, last):
            return None
        if bn is not None and any(net.layer_need_backward[i:last + 1]):
            return None  # a folded BatchNorm / Scale keeps none of what their backward reads
        return cls(net, i, last, bn, scale, act)

    def __init__(self, net, first, last, bn, scale, act):
        super().__init__(net, first, last)
        self.conv = net.layers[first]
        self.bn, self.scale, self.act = bn, scale, act
        self.act_backward = act is not None and act.backward_needed
        self.epilogue = Epilogue(net.top_vecs[first][0].shape[1])
        self._versions = None

    def _param_memories(self):
        """The memories of the parameters the epilogue is computed from."""
        conv, bn, scale, act = self.conv, self.bn, self.scale, self.act
        blobs = list(conv.blobs[1:2] if conv.bias_term else [])
        if bn is not None:
            blobs += bn.blobs + scale.blobs
        if type(act) is PReLULayer:
            blobs += act.blobs
        return [b._data.mem for b in blobs]

    def _refresh(self, mems=None):
        """The epilogue's per-channel values, recomputed (in place) when a parameter changed
        (`mems`: _param_memories(), when the caller holds them)."""
        versions = [m.version for m in (mems or self._param_memories())]
        if versions == self._versions:
            return
        self._versions = versions
        conv, bn, scale, act = self.conv, self.bn, self.scale, self.act
        e = self.epilogue
        bias = conv.blobs[1].cpu_data.reshape(-1) if conv.bias_term else 0
        if bn is not None:
            mean, var = bn._global_stats()
            bn._std = np.sqrt(var + bn.eps)
            a = scale.blobs[0].cpu_data.reshape(-1) / bn._std
            shift = (bias - mean) * a
            if scale.bias is not None:
                shift = shift + scale.blobs[scale.bias_id].cpu_data.reshape(-1)
            e.scale[...] = a
            e.shift[...] = shift
        else:
            e.scale[...] = 1
            e.shift[...] = bias
        if act is None:
            e.kind = Epilogue.NONE
        elif type(act) is ReLULayer:
            e.kind = Epilogue.RELU if act.negative_slope == 0 else Epilogue.SLOPE
            e.slope[...] = act.negative_slope
        else:
            e.kind = Epilogue.SLOPE
            e.slope[...] = act.blobs[0].cpu_data.reshape(-1)

    def _keep(self):
        """PReLU's input copy, when its backward will read it (its forward keeps the same)."""
        act, e = self.act, self.epilogue
        if self.act_backward and type(act) is PReLULayer:
            t = self.net.top_vecs[self.first][0]
            act._x = e.keep = act._saved.view(t.shape)
        else:
            e.keep = None
            if act is not None:
                # ReLU's backward reads its top; a PReLU that keeps no input refuses one
                act._x = False if type(act) is PReLULayer else None
        if self.scale is not None:
            self.scale._saved_input = None

    def forward_cpu(self):
        self._refresh()
        self._keep()
        i = self.first
        self.conv.forward_cpu(self.net.bottom_vecs[i], self.net.top_vecs[i], self.epilogue)

    def prepare_cpu(self):
        self._refresh()
        self._keep()
        i = self.first
        run = self.conv.prepare_cpu(self.net.bottom_vecs[i], self.net.top_vecs[i],
                                    self.epilogue)
        if run is None:
            return self.forward_cpu
        # (the memories stay while the plan does: sharing a blob anew re-prepares)
        mems = self._param_memories()
        if not mems:
            return run
        refresh = self._refresh

        def step():
            if [m.version for m in mems] != self._versions:
                refresh(mems)   # the epilogue's values follow the parameters (in place)
            run()
        if gemm_pool.phases_of(run) is None:
            return step
        inner = run.ready

        def ready():
            # (a native program runs only while the epilogue's values are current)
            return [m.version for m in mems] == self._versions and (inner is None or inner())
        return gemm_pool.attach(step, run.native, ready_while(ready, mems, inner))


# --------------------------------------------------------------------------------------------
# BatchNorm -> Scale (-> ReLU)
# --------------------------------------------------------------------------------------------

class BatchNormScaleGroup(Group):
    """BatchNorm, Scale and an optional ReLU run as one step.

    Forms when Scale and ReLU are in place on BatchNorm's top T, Scale multiplies along axis 1
    by a (C,) blob (with a (C,) bias or none), ReLU has negative_slope 0, no top has a loss
    weight, and backward is needed by all three layers or by none; BatchNorm uses batch
    statistics when backward is needed (compiled kernels), global statistics otherwise
    (compiled kernels or numpy)."""
    type = "BatchNorm+Scale"

    @classmethod
    def match(cls, net, i):
        ok, relu = _is_chain(net, i)
        return cls(net, i, relu) if ok else None

    def __init__(self, net, first, relu):
        super().__init__(net, first, first + (2 if relu else 1))
        self.bn, self.scale = net.layers[first], net.layers[first + 1]
        self.relu = relu
        self.x_blob = net.bottom_vecs[first][0]
        self.t_blob = net.top_vecs[first][0]
        need = net.layer_need_backward[first:self.last + 1]
        self.backward_ok = all(need) and net.bottom_need_backward[first][0]

    def cpu_available(self):
        return jit.kernels("batchnorm") is not None or self.bn.use_global_stats

    def _params(self):
        scale = self.scale
        s = scale.blobs[0].cpu_data.reshape(-1)
        b = scale.blobs[scale.bias_id].cpu_data.reshape(-1) if scale.bias is not None \
            else _NO_BIAS
        return s, b

    def prepare_cpu(self):
        """Inference (global statistics) with the kernels: the pass prepared once, its
        mean and standard deviation kept in buffers refreshed when BatchNorm's blobs change."""
        k = jit.kernels("batchnorm")
        bn, scale = self.bn, self.scale
        if k is None or not bn.use_global_stats:
            return self.forward_cpu
        x = bn._view3(self.x_blob.cpu_data)
        y = bn._view3(self.t_blob.data)
        in_place = same_memory(x, y)
        s, b = self._params()
        has_bias, relu = scale.bias is not None, self.relu
        mean, std = np.empty(bn.channels, _F), np.empty(bn.channels, _F)
        mems = [blob._data.mem for blob in bn.blobs]
        seen = [None]

        def refresh():
            m, var = bn._global_stats()
            mean[...] = m
            bn._std = np.sqrt(var + bn.eps)
            std[...] = bn._std
            seen[0] = [mem.version for mem in mems]
        run = prepare_blocks(
            bn.channels, x.shape[0] * x.shape[2], lambda a, e, slot: k.bn_scale_global_forward(
                x, y, mean, std, s, b, has_bias, relu, in_place, a, e),
            spin_elements=parallel.MIN_SPIN_STREAM_ELEMENTS,
            native=(k.bn_scale_global_forward_task,
                    (x, y, mean, std, s, b, has_bias, relu, in_place)))

        def step():
            scale._saved_input = None
            if [mem.version for mem in mems] != seen[0]:
                refresh()
            run()
        if gemm_pool.phases_of(run) is None:
            return step
        # natively (layers/program.py) while the statistics' buffers are current
        return gemm_pool.attach(step, run.native, ready_while(
            lambda: scale._saved_input is None and [mem.version for mem in mems] == seen[0],
            mems))

    def forward_cpu(self):
        k = jit.kernels("batchnorm")
        bn = self.bn
        x = bn._view3(self.x_blob.cpu_data)
        y = bn._view3(self.t_blob.data)
        in_place = same_memory(x, y)
        s, b = self._params()
        has_bias = self.scale.bias is not None
        c = bn.channels
        rows = x.shape[0] * x.shape[2]
        self.scale._saved_input = None
        if bn.use_global_stats:
            mean, var = bn._global_stats()
            bn._std = np.sqrt(var + bn.eps)
            std = bn._std
            if k is None:
                # numpy: one affine map per channel, then the ReLU
                a = (s / std).astype(_F)
                shift = (b - mean * a if has_bias else -mean * a).astype(_F)
                np.multiply(x, a.reshape(-1, 1), out=y)
                np.add(y, shift.reshape(-1, 1), out=y)
                if self.relu:
                    np.maximum(y, _F(0), out=y)
                return

            def block(a, e, slot):
                k.bn_scale_global_forward(x, y, mean, std, s, b, has_bias, self.relu,
                                          in_place, a, e)
        else:
            mean, var = np.empty(c, _F), np.empty(c, _F)
            xnorm = bn._view3(bn._xnorm)

            def block(a, e, slot):
                k.bn_scale_train_forward(x, y, xnorm, mean, var, bn.eps, s, b, has_bias,
                                         self.relu, in_place, a, e)
        run_blocks(c, rows, block, block_elements=None)
        if not bn.use_global_stats:
            bn._update_running_stats(mean, var, rows)
            bn._std = np.sqrt(var + bn.eps)
            # Scale's input was BatchNorm's output: a Scale backward run on its own reads it.
            self.scale._saved_input = bn._xnorm

    def backward_cpu(self):
        k = jit.kernels("batchnorm")
        bn, scale = self.bn, self.scale
        tdiff = bn._view3(self.t_blob.diff)
        xdiff = bn._view3(self.x_blob.diff)
        same = same_memory(tdiff, xdiff)
        y = bn._view3(self.t_blob.cpu_data)
        xnorm = bn._view3(bn._xnorm)
        s, _ = self._params()
        c = bn.channels
        sums = np.empty((2, c), _F)

        def block(a, e, slot):
            k.bn_scale_train_backward(tdiff, y, xnorm, bn._std, s, xdiff, sums, self.relu,
                                      same, a, e)
        run_blocks(c, tdiff.shape[0] * tdiff.shape[2], block, block_elements=None)
        if scale.param_propagate_down[0]:
            d = scale.blobs[0].diff
            d += sums[0].reshape(d.shape)
        if scale.bias is not None and scale.param_propagate_down[scale.bias_id]:
            d = scale.blobs[scale.bias_id].diff
            d += sums[1].reshape(d.shape)


def _is_chain(net, i):
    """(True, relu) when layers i, i+1 (, i+2) form a BatchNorm -> Scale (-> ReLU) group."""
    layers = net.layers
    if i + 1 >= len(layers):
        return False, False
    bn, scale = layers[i], layers[i + 1]
    if type(bn) is not BatchNormLayer or type(scale) is not ScaleLayer:
        return False, False
    t = net.top_vecs[i][0]
    if not _in_place_on(net, i + 1, t):
        return False, False
    if t.num_axes < 2 or bn.channels != t.shape[1]:
        return False, False
    if not _channel_scale_ok(scale, bn.channels, t):
        return False, False
    relu = False
    if i + 2 < len(layers):
        r = layers[i + 2]
        relu = type(r) is ReLULayer and r.negative_slope == 0 and _in_place_on(net, i + 2, t)
    last = i + (2 if relu else 1)
    if not _no_loss(net, i, last):
        return False, False
    need = net.layer_need_backward[i:last + 1]
    if any(need) and not (all(need) and net.bottom_need_backward[i][0]
                          and not bn.use_global_stats):
        return False, False
    return True, relu


GROUPS = (ConvolutionGroup, BatchNormScaleGroup)


def plan(net):
    """{first layer index: group} for the net's chains that the current device can run as one
    step ({} when CAFFE_LITE_FUSE=0).  Chains do not overlap; the first kind in GROUPS that
    matches and is `active()` wins (on the GPU, where no Convolution group has a GPU
    implementation, the BatchNorm -> Scale (-> ReLU) after a convolution is the group)."""
    if not enabled():
        return {}
    groups = {}
    i = 0
    while i < len(net.layers):
        g = next((g for g in (kind.match(net, i) for kind in GROUPS)
                  if g is not None and g.active()), None)
        if g is not None:
            groups[i] = g
            i = g.last + 1
        else:
            i += 1
    return groups
