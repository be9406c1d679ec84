"""Loss layers: SigmoidCrossEntropyLoss, EuclideanLoss, HingeLoss, and the loss
normalisation shared with SoftmaxWithLoss (softmax.py).

Every loss layer reads its loss weight from top[0].diff in backward (Caffe's convention: the Net
fills the top diff with the loss weight), so loss_weight scales the gradient."""
import numpy as np

from ..proto import caffe_pb2
from .base import LossLayer
from .registry import register

_LP = caffe_pb2.LossParameter


def normalization_mode(loss_param, default):
    """Caffe's choice of normalisation: `normalization` when set, else the deprecated
    `normalize` when set (true -> VALID, false -> BATCH_SIZE), else the layer's default."""
    if loss_param.HasField("normalization"):
        return loss_param.normalization
    if loss_param.HasField("normalize"):
        return _LP.VALID if loss_param.normalize else _LP.BATCH_SIZE
    return default


def get_normalizer(mode, outer, inner, valid_count):
    """The divisor of the loss; clamped to at least 1 so a batch whose labels are all ignored
    gives loss 0, not NaN (as Caffe)."""
    if mode == _LP.FULL:
        n = outer * inner
    elif mode == _LP.VALID:
        n = outer * inner if valid_count == -1 else valid_count
    elif mode == _LP.BATCH_SIZE:
        n = outer
    elif mode == _LP.NONE:
        n = 1
    else:
        raise ValueError(f"unknown normalization mode {mode}")
    return max(1.0, float(np.float32(n)))


def labels_as_int(layer, labels, num_classes, has_ignore_label, ignore_label):
    """Class labels as Caffe reads them (static_cast<int>: truncation toward zero).

    Returns (labels, valid, count): labels as int64 with ignored positions set to 0 (a safe
    index), valid a bool mask of non-ignored positions (None without ignore_label), count the
    number of non-ignored positions.  A label outside [0, num_classes) that is not the ignore
    label is an error (Caffe only DCHECKs it and reads out of bounds)."""
    with np.errstate(invalid="ignore"):     # (a NaN label: reported below as outside)
        lab = labels.astype(np.int64)
    valid = None
    if has_ignore_label:
        valid = lab != ignore_label
        bad = valid & ((lab < 0) | (lab >= num_classes))
    else:
        bad = (lab < 0) | (lab >= num_classes)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise layer.error(f"label value {labels.ravel()[k]:g} (at label index {k}) is outside "
                          f"[0, {num_classes}): there are {num_classes} classes")
    if valid is None:
        return lab, None, lab.size
    np.multiply(lab, valid, out=lab)
    return lab, valid, int(valid.sum())


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(LossLayer):
    """loss = -sum(t*log(p) + (1-t)*log(1-p)) / normalizer, p = sigmoid(x), in Caffe's stable
    form x*(t - [x>=0]) - log(1 + exp(-|x|)) that stays finite for any x."""

    def layer_setup(self, bottom, top):
        lp = self.layer_param.loss_param
        self.has_ignore_label = lp.HasField("ignore_label")
        self.ignore_label = lp.ignore_label
        # Surprising but Caffe's: unlike SoftmaxWithLoss (default VALID), this layer divides by
        # the batch size when neither `normalization` nor `normalize` is given, to keep the
        # behaviour it had before loss normalisation existed.
        self.normalization = normalization_mode(lp, _LP.BATCH_SIZE)
        self.normalizer = 1.0

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count != bottom[1].count:
            raise self.error(f"inputs must have the same count, got {bottom[0].shape} "
                             f"({bottom[0].count}) and {bottom[1].shape} ({bottom[1].count})")
        self.outer = bottom[0].shape[0]
        self.inner = bottom[0].count_range(1)
        if getattr(self, "_sigmoid", None) is None or self._sigmoid.shape != bottom[0].shape:
            self._sigmoid = np.empty(bottom[0].shape, np.float32)

    def _valid(self, t):
        if not self.has_ignore_label:
            return None
        return t.astype(np.int64) != self.ignore_label

    def forward_cpu(self, bottom, top):
        x = bottom[0].cpu_data
        t = bottom[1].cpu_data.reshape(x.shape)
        s = self._sigmoid      # Caffe's sigmoid: 0.5 * tanh(0.5 x) + 0.5, kept for backward
        np.multiply(x, np.float32(0.5), out=s)
        np.tanh(s, out=s)
        np.multiply(s, np.float32(0.5), out=s)
        np.add(s, np.float32(0.5), out=s)
        term = x * (t - (x >= 0)) - np.log1p(np.exp(-np.abs(x)))
        valid = self._valid(t)
        if valid is None:
            loss, count = -term.sum(dtype=np.float64), x.size
        else:
            loss, count = -term[valid].sum(dtype=np.float64), int(valid.sum())
        self.normalizer = get_normalizer(self.normalization, self.outer, self.inner, count)
        top[0].data[...] = loss / self.normalizer

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise self.error("cannot backpropagate to label inputs")
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        t = bottom[1].cpu_data.reshape(dx.shape)
        np.subtract(self._sigmoid, t, out=dx)
        valid = self._valid(t)
        if valid is not None:
            np.multiply(dx, valid, out=dx)   # ignored targets get no gradient
        # Caffe divides by the normalizer of the last forward.
        np.multiply(dx, np.float32(float(top[0].cpu_diff) / self.normalizer), out=dx)


@register("EuclideanLoss")
class EuclideanLossLayer(LossLayer):
    """loss = sum((a - b)^2) / num / 2 with num = bottom[0].shape[0]; both inputs get a
    gradient (+ for a, - for b)."""

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count_range(1) != bottom[1].count_range(1):
            raise self.error(f"inputs must have the same dimension, got {bottom[0].shape} "
                             f"and {bottom[1].shape}")
        if getattr(self, "_diff", None) is None or self._diff.shape != bottom[0].shape:
            self._diff = np.empty(bottom[0].shape, np.float32)

    def forward_cpu(self, bottom, top):
        d = self._diff
        np.subtract(bottom[0].cpu_data, bottom[1].cpu_data.reshape(d.shape), out=d)
        dot = float(np.dot(d.ravel(), d.ravel()))
        top[0].data[...] = dot / bottom[0].num / 2

    def backward_cpu(self, top, propagate_down, bottom):
        lw = float(top[0].cpu_diff)
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                alpha = np.float32(sign * lw / bottom[i].num)
                np.multiply(self._diff, alpha, out=bottom[i].diff.reshape(self._diff.shape))

    def allow_force_backward(self, bottom_index):
        return True


@register("HingeLoss")
class HingeLossLayer(LossLayer):
    """One-vs-all hinge loss over the count/num scores of each sample:
    margin_j = max(0, 1 + s_j * x_j) with s = -1 at the true label, +1 elsewhere;
    L1: loss = sum(margin) / num; L2: loss = sum(margin^2) / num.
    Gradients: L1 s_j * [margin_j > 0] / num, L2 2 * s_j * margin_j / num (Caffe's scaling),
    times the loss weight."""

    def layer_setup(self, bottom, top):
        self.norm = self.layer_param.hinge_loss_param.norm
        if self.norm not in (caffe_pb2.HingeLossParameter.L1, caffe_pb2.HingeLossParameter.L2):
            raise self.error(f"unknown hinge_loss_param norm {self.norm}")

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.num = bottom[0].num
        self.dim = bottom[0].count // self.num if self.num else 0
        shape = (self.num, self.dim)
        if getattr(self, "_margin", None) is None or self._margin.shape != shape:
            self._margin = np.empty(shape, np.float32)
            self._rows = np.arange(self.num)

    def _labels(self, bottom):
        # Caffe reads label[i] for i < num: the first num values of the label blob.
        lab, _, _ = labels_as_int(self, bottom[1].cpu_data.ravel()[:self.num], self.dim,
                                  False, 0)
        return lab

    def forward_cpu(self, bottom, top):
        lab = self._labels(bottom)
        m = self._margin
        np.copyto(m, bottom[0].cpu_data.reshape(m.shape))
        m[self._rows, lab] *= -1
        np.add(m, np.float32(1), out=m)
        np.maximum(m, 0, out=m)
        flat = m.ravel()
        total = float(flat.sum(dtype=np.float64)) if self.norm == caffe_pb2.HingeLossParameter.L1 \
            else float(np.dot(flat, flat))
        top[0].data[...] = total / self.num

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise self.error("cannot backpropagate to label inputs")
        if not propagate_down[0]:
            return
        lab = self._labels(bottom)
        g = bottom[0].diff.reshape(self._margin.shape)
        np.copyto(g, self._margin)
        g[self._rows, lab] *= -1
        lw = float(top[0].cpu_diff)
        if self.norm == caffe_pb2.HingeLossParameter.L1:
            np.sign(g, out=g)
            np.multiply(g, np.float32(lw / self.num), out=g)
        else:
            np.multiply(g, np.float32(lw * 2 / self.num), out=g)
