"""GPU paths of Softmax, SoftmaxWithLoss, SigmoidCrossEntropyLoss, EuclideanLoss and
HingeLoss (kernels in layers/kernels/softmax_loss.cu).

Labels are checked on the host with the CPU path's labels_as_int (same errors for labels out
of range; labels normally come from a data layer on the host), which also gives the count of
non-ignored labels for the normaliser.  The loss itself is summed on the device in double and
written to the top; Layer.forward reads that one number back."""
import numpy as np

from ...backend import ops
from ..base import gpu_impl
from ..loss import get_normalizer, labels_as_int
from .common import F32, I32, data, diff, elementwise, mdata, mdiff, state

M = "softmax_loss"


@gpu_impl("Softmax")
class Softmax:
    @staticmethod
    def forward(layer, bottom, top):
        elementwise(M, "softmax_forward", "iiiPP", layer.outer * layer.inner, I32(layer.channels),
                    I32(layer.inner), data(bottom[0]), mdata(top[0]))

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        elementwise(M, "softmax_backward", "iiiPPP", layer.outer * layer.inner,
                    I32(layer.channels), I32(layer.inner), data(top[0]), diff(top[0]),
                    mdiff(bottom[0]))


def _no_label_gradient(layer, propagate_down):
    if propagate_down[1]:
        raise layer.error("cannot backpropagate to label inputs")


@gpu_impl("SoftmaxWithLoss")
class SoftmaxWithLoss:
    @staticmethod
    def _count(layer, bottom):
        _, _, count = labels_as_int(layer, bottom[1].cpu_data.reshape(layer.outer, layer.inner),
                                    layer.channels, layer.has_ignore_label, layer.ignore_label)
        return count

    @staticmethod
    def forward(layer, bottom, top):
        layer.softmax.forward([bottom[0]], [layer.prob])   # the Softmax GPU path
        count = SoftmaxWithLoss._count(layer, bottom)
        n = layer.outer * layer.inner
        terms = state(layer).buf("loss", n)
        elementwise(M, "softmax_loss_forward", "iiiPPiiP", n, I32(layer.channels),
                    I32(layer.inner), data(layer.prob), data(bottom[1]),
                    I32(layer.has_ignore_label), I32(layer.ignore_label), terms)
        norm = get_normalizer(layer.normalization, layer.outer, layer.inner, count)
        ops.sum_to(n, terms, out_f=mdata(top[0]), scale_by=1.0 / norm)

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        _no_label_gradient(layer, propagate_down)
        if not propagate_down[0]:
            return
        count = SoftmaxWithLoss._count(layer, bottom)
        scale = float(top[0].cpu_diff) / get_normalizer(layer.normalization, layer.outer,
                                                        layer.inner, count)
        elementwise(M, "softmax_loss_backward", "iiiPPiifP", layer.outer * layer.inner,
                    I32(layer.channels), I32(layer.inner), data(layer.prob), data(bottom[1]),
                    I32(layer.has_ignore_label), I32(layer.ignore_label), F32(scale),
                    mdiff(bottom[0]))


@gpu_impl("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss:
    @staticmethod
    def forward(layer, bottom, top):
        st = state(layer)
        n = bottom[0].count
        if layer.has_ignore_label:
            t = bottom[1].cpu_data
            count = int(np.count_nonzero(t.astype(np.int64) != layer.ignore_label))
        else:
            count = n
        layer.normalizer = get_normalizer(layer.normalization, layer.outer, layer.inner, count)
        terms = st.buf("terms", n)
        elementwise(M, "sigmoid_xent_forward", "iPPiiPP", n, data(bottom[0]), data(bottom[1]),
                    I32(layer.has_ignore_label), I32(layer.ignore_label), st.buf("sigmoid", n),
                    terms)
        ops.sum_to(n, terms, out_f=mdata(top[0]), scale_by=1.0 / layer.normalizer)

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        _no_label_gradient(layer, propagate_down)
        if not propagate_down[0]:
            return
        n = bottom[0].count
        scale = F32(float(top[0].cpu_diff) / layer.normalizer)
        elementwise(M, "sigmoid_xent_backward", "iPPiifP", n, state(layer).buf("sigmoid", n),
                    data(bottom[1]), I32(layer.has_ignore_label), I32(layer.ignore_label),
                    scale, mdiff(bottom[0]))


@gpu_impl("EuclideanLoss")
class EuclideanLoss:
    @staticmethod
    def forward(layer, bottom, top):
        n = bottom[0].count
        d = state(layer).buf("diff", n)
        elementwise(M, "subtract", "iPPP", n, data(bottom[0]), data(bottom[1]), d)
        num = bottom[0].num
        ops.sum_to(n, d, out_f=mdata(top[0]), b=d, scale_by=1.0 / num / 2)

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        n = bottom[0].count
        d = state(layer).buf("diff", n)
        lw = float(top[0].cpu_diff)
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                ops.scale(n, F32(sign * lw / bottom[i].num), d, mdiff(bottom[i]))


@gpu_impl("HingeLoss")
class HingeLoss:
    @staticmethod
    def _check_labels(layer, bottom):
        labels_as_int(layer, bottom[1].cpu_data.ravel()[:layer.num], layer.dim, False, 0)

    @staticmethod
    def forward(layer, bottom, top):
        from ...proto import caffe_pb2
        HingeLoss._check_labels(layer, bottom)
        n = layer.num * layer.dim
        m = state(layer).buf("margin", n)
        elementwise(M, "hinge_forward", "iiPPP", n, I32(layer.dim), data(bottom[0]),
                    data(bottom[1]), m)
        l1 = layer.norm == caffe_pb2.HingeLossParameter.L1
        ops.sum_to(n, m, out_f=mdata(top[0]), b=0 if l1 else m, scale_by=1.0 / layer.num)

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        from ...proto import caffe_pb2
        _no_label_gradient(layer, propagate_down)
        if not propagate_down[0]:
            return
        HingeLoss._check_labels(layer, bottom)
        n = layer.num * layer.dim
        lw = float(top[0].cpu_diff)
        l1 = layer.norm == caffe_pb2.HingeLossParameter.L1
        scale = F32(lw / layer.num) if l1 else F32(lw * 2 / layer.num)
        elementwise(M, "hinge_backward", "iiPPifP", n, I32(layer.dim),
                    state(layer).buf("margin", n), data(bottom[1]), I32(l1), scale,
                    mdiff(bottom[0]))
