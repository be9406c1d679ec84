"""Softmax and SoftmaxWithLoss.

Both work on a blob seen as (outer, channels, inner): outer = count(0, axis),
inner = count(axis + 1); the softmax runs over `channels`, every (outer, inner) position on its
own."""
import numpy as np

from ..blob import Blob
from ..errors import CaffeLiteError
from ..proto import caffe_pb2
from . import jit, parallel
from .base import Layer, LossLayer
from .parallel import prepare_blocks
from .loss import get_normalizer, labels_as_int, normalization_mode
from .registry import register

FLT_MIN = np.float32(np.finfo(np.float32).tiny)


def _axis_split(layer, blob, axis):
    """(axis, outer, channels, inner) for `axis` of `blob`, as a layer error when out of range."""
    try:
        axis = blob.canonical_axis_index(axis)
    except CaffeLiteError as e:
        raise layer.error(str(e)) from None
    return axis, blob.count_range(0, axis), blob.shape[axis], blob.count_range(axis + 1)


@register("Softmax")
class SoftmaxLayer(Layer):
    channelwise = False
    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        self.axis, self.outer, self.channels, self.inner = _axis_split(
            self, bottom[0], self.layer_param.softmax_param.axis)
        top[0].reshape_like(bottom[0])
        shape = (self.outer, 1, self.inner)
        if getattr(self, "_scale", None) is None or self._scale.shape != shape:
            self._scale = np.empty(shape, np.float32)

    def _view(self, array):
        return array.reshape(self.outer, self.channels, self.inner)

    def prepare_cpu(self, bottom, top):
        k = jit.kernels("softmax")
        if k is None:
            return None
        x = self._view(bottom[0].cpu_data)
        y = self._view(top[0].data)      # may be the same memory as x (in place)
        # (an exp an element: a row of a few channels costs as much as dozens of elements of
        # the other kernels, hence the lower threshold)
        return prepare_blocks(self.outer, self.channels * self.inner,
                              lambda a, b, slot: k.softmax_forward(x, y, a, b),
                              native=(k.softmax_forward_task, (x, y)),
                              spin_elements=parallel.MIN_SPIN_KERNEL_ELEMENTS // 8)

    def forward_cpu(self, bottom, top):
        run = self.prepare_cpu(bottom, top)
        if run is not None:
            return run()
        x = self._view(bottom[0].cpu_data)
        y = self._view(top[0].data)      # may be the same memory as x (in place)
        s = self._scale
        np.max(x, axis=1, keepdims=True, out=s)
        np.subtract(x, s, out=y)
        np.exp(y, out=y)
        np.sum(y, axis=1, keepdims=True, out=s)
        np.divide(y, s, out=y)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = self._view(top[0].cpu_data)
        dy = self._view(top[0].cpu_diff)
        s = self._scale
        # dx = y * (dy - sum_c(dy * y)); the sum is taken before dx (maybe dy's memory) is written.
        np.einsum("ocz,ocz->oz", dy, y, out=s.reshape(self.outer, self.inner))
        dx = self._view(bottom[0].diff)
        np.subtract(dy, s, out=dx)
        np.multiply(dx, y, out=dx)


@register("SoftmaxWithLoss")
class SoftmaxWithLossLayer(LossLayer):
    """Softmax over softmax_param.axis, then the multinomial logistic loss of the labels.

    An optional second top holds the probabilities.  As in Caffe, a two-top SoftmaxWithLoss
    needs one loss_weight per top (usually `loss_weight: 1 loss_weight: 0`): the default single
    loss weight of a loss layer does not fit two tops."""
    exact_num_top = -1
    min_top = 1
    max_top = 2

    def layer_setup(self, bottom, top):
        p = caffe_pb2.LayerParameter()
        p.CopyFrom(self.layer_param)
        p.type = "Softmax"
        # The inner softmax carries no loss (Caffe later fixed the same copy to drop the weights).
        p.ClearField("loss_weight")
        self.softmax = SoftmaxLayer(p)
        self._own_prob = Blob(name=f"{self.name}.prob")
        self.softmax.setup([bottom[0]], [self._own_prob])
        lp = self.layer_param.loss_param
        self.has_ignore_label = lp.HasField("ignore_label")
        self.ignore_label = lp.ignore_label
        self.normalization = normalization_mode(lp, caffe_pb2.LossParameter.VALID)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        # With a second top the softmax writes straight into it (Caffe shares prob_'s data with
        # top[1]); backward only reads the probabilities' data, never top[1]'s diff.
        self.prob = top[1] if len(top) > 1 else self._own_prob
        self.softmax.reshape([bottom[0]], [self.prob])
        sm = self.softmax
        self.outer, self.channels, self.inner = sm.outer, sm.channels, sm.inner
        if bottom[1].count != self.outer * self.inner:
            raise self.error(
                f"number of labels must match number of predictions: label blob "
                f"{bottom[1].shape} has {bottom[1].count} values, but prediction "
                f"{bottom[0].shape} with softmax axis {sm.axis} needs "
                f"outer*inner = {self.outer}*{self.inner} = {self.outer * self.inner}")

    def _labels(self, label_blob):
        return labels_as_int(self, label_blob.cpu_data.reshape(self.outer, self.inner),
                             self.channels, self.has_ignore_label, self.ignore_label)

    def _kernel_args(self, bottom):
        return (bottom[1].cpu_data.reshape(self.outer, self.inner), self.has_ignore_label,
                int(self.ignore_label))

    def forward_cpu(self, bottom, top):
        k = jit.kernels("softmax")
        if k is not None:
            # (one compiled pass: the dozen numpy calls below cost 0.2 ms in a training step,
            # their code and data cold after the convolutions)
            loss, count, bad = k.softmax_loss_forward(
                self.softmax._view(bottom[0].cpu_data), self.softmax._view(self.prob.data),
                *self._kernel_args(bottom), FLT_MIN)
            if bad < 0:
                norm = get_normalizer(self.normalization, self.outer, self.inner, count)
                top[0].data[...] = loss / norm
                return
            self._labels(bottom[1])     # (raises, naming the label)
        self.softmax.forward([bottom[0]], [self.prob])
        prob = self.prob.cpu_data.reshape(self.outer, self.channels, self.inner)
        labels, valid, count = self._labels(bottom[1])
        p = np.take_along_axis(prob, labels[:, None, :], axis=1)[:, 0, :]
        np.maximum(p, FLT_MIN, out=p)
        logp = np.log(p)
        loss = -float(logp.sum(dtype=np.float64) if valid is None
                      else logp[valid].sum(dtype=np.float64))
        norm = get_normalizer(self.normalization, self.outer, self.inner, count)
        top[0].data[...] = loss / norm

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise self.error("cannot backpropagate to label inputs")
        if not propagate_down[0]:
            return
        prob = self.prob.cpu_data.reshape(self.outer, self.channels, self.inner)
        k = jit.kernels("softmax")
        if k is not None:
            labels, has_ignore, ignore = self._kernel_args(bottom)
            count = self.outer * self.inner
            if has_ignore:
                count = int(np.count_nonzero(labels.astype(np.int64) != ignore))
            scale = float(top[0].cpu_diff) / get_normalizer(self.normalization, self.outer,
                                                            self.inner, count)
            dx = bottom[0].diff.reshape(self.outer, self.channels, self.inner)
            if k.softmax_loss_backward(prob, labels, dx, has_ignore, ignore,
                                       np.float32(scale)) < 0:
                return
        labels, valid, count = self._labels(bottom[1])
        dx = bottom[0].diff.reshape(self.outer, self.channels, self.inner)
        np.copyto(dx, prob)
        dx[np.arange(self.outer)[:, None], labels, np.arange(self.inner)[None, :]] -= 1
        scale = float(top[0].cpu_diff) / get_normalizer(self.normalization, self.outer,
                                                        self.inner, count)
        if valid is None:
            np.multiply(dx, np.float32(scale), out=dx)
        else:  # ignored positions get no gradient
            np.multiply(dx, (valid * np.float32(scale))[:, None, :], out=dx)
