"""Running BatchNorm -> Scale (-> ReLU) as one step inside a Net (CPU, compiled kernels).

Caffe nets normalise with three layers that share one blob in place: BatchNorm (bottom X, top
T, often X itself), Scale with a bias on T, and usually ReLU on T.  Run one by one they read
and write the activations about ten times forward and as many backward; run as one step, two
or three times.  The Net runs such a chain as a group when:
  * the compiled kernels are available (numba; CAFFE_LITE_FUSE=0 turns grouping off) and the
    Net is in CPU mode;
  * Scale and ReLU are in place on BatchNorm's top, Scale multiplies along axis 1 by a (C,)
    blob (with a (C,) bias or none), ReLU has negative_slope 0, none of the tops has a loss
    weight;
  * backward is needed by all three layers or by none; BatchNorm uses batch statistics when
    backward is needed.

Every observable result is what the layers give one by one, up to float32 rounding: the top's
data, BatchNorm's running statistics, the Scale parameter gradients (accumulated), X's diff,
and the diff the layers leave on T (the gradient at Scale's input).  The layers' own state is
filled as their own forward would fill it, so running any of them alone afterwards (a partial
backward, `caffe time`) works."""
import os

import numpy as np

from ..backend import state as _mode
from . import jit
from .neuron import ReLULayer
from .normalization import BatchNormLayer, same_memory
from .parallel import run_blocks
from .scale_bias import _NO_BIAS, ScaleLayer

_F = np.float32


def enabled():
    return os.environ.get("CAFFE_LITE_FUSE", "1").lower() not in ("0", "false", "no", "off")


class BatchNormScaleGroup:
    """Layers first..last of a net (BatchNorm, Scale, optional ReLU) run as one step."""

    def __init__(self, net, first, relu):
        self.net = net
        self.first = first
        self.last = first + (2 if relu else 1)
        self.bn, self.scale = net.layers[first], net.layers[first + 1]
        self.relu = relu
        self.x_blob = net.bottom_vecs[first][0]
        self.t_blob = net.top_vecs[first][0]
        need = net.layer_need_backward[first:self.last + 1]
        self.backward_ok = all(need) and net.bottom_need_backward[first][0]

    def active(self):
        return _mode.mode() == _mode.CPU and jit.kernels("batchnorm") is not None

    def _reshape(self):
        net = self.net
        for i in range(self.first, self.last + 1):
            net.layers[i].reshape(net.bottom_vecs[i], net.top_vecs[i])

    def _params(self):
        scale = self.scale
        s = scale.blobs[0].cpu_data.reshape(-1)
        b = scale.blobs[scale.bias_id].cpu_data.reshape(-1) if scale.bias is not None \
            else _NO_BIAS
        return s, b

    def forward(self):
        self._reshape()
        k = jit.kernels("batchnorm")
        bn = self.bn
        x = bn._view3(self.x_blob.cpu_data)
        y = bn._view3(self.t_blob.data)
        in_place = same_memory(x, y)
        s, b = self._params()
        has_bias = self.scale.bias is not None
        c = bn.channels
        rows = x.shape[0] * x.shape[2]
        if bn.use_global_stats:
            mean, var = bn._global_stats()
            bn._std = np.sqrt(var + bn.eps)
            std = bn._std

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
        else:
            self.scale._saved_input = None

    def backward(self):
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
    """(True, relu) when layers i, i+1 (, i+2) form a group the kernels can run."""
    layers = net.layers
    if i + 1 >= len(layers):
        return False, False
    bn, scale = layers[i], layers[i + 1]
    if type(bn) is not BatchNormLayer or type(scale) is not ScaleLayer:
        return False, False
    t = net.top_vecs[i][0]
    if net.bottom_vecs[i + 1] != [t] or net.top_vecs[i + 1] != [t]:
        return False, False
    if t.num_axes < 2 or bn.channels != t.shape[1]:
        return False, False
    c = bn.channels
    if scale.blobs[0].shape != (c,) or scale.dims[1] != c or scale.dims[0] != t.shape[0]:
        return False, False
    if scale.bias is not None and (scale.blobs[scale.bias_id].shape != (c,)
                                   or scale.bias.dims != scale.dims):
        return False, False
    relu = False
    if i + 2 < len(layers):
        r = layers[i + 2]
        relu = (type(r) is ReLULayer and r.negative_slope == 0
                and net.bottom_vecs[i + 2] == [t] and net.top_vecs[i + 2] == [t])
    last = i + (2 if relu else 1)
    if any(w for j in range(i, last + 1) for w in layers[j].loss_weights):
        return False, False
    need = net.layer_need_backward[i:last + 1]
    if any(need) and not (all(need) and net.bottom_need_backward[i][0]
                          and not bn.use_global_stats):
        return False, False
    return True, relu


def plan(net):
    """{first layer index: group} for the net's fusable chains ({} when disabled)."""
    if not enabled() or jit.kernels("batchnorm") is None:
        return {}
    groups = {}
    i = 0
    while i < len(net.layers):
        ok, relu = _is_chain(net, i)
        if ok:
            g = BatchNormScaleGroup(net, i, relu)
            groups[i] = g
            i = g.last + 1
        else:
            i += 1
    return groups
