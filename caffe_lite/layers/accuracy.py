"""Accuracy and ArgMax: evaluation layers without a backward pass."""
import numpy as np

from ..errors import CaffeLiteError
from .base import Layer
from .loss import labels_as_int
from .registry import register


def _canonical_axis(layer, blob, axis):
    try:
        return blob.canonical_axis_index(axis)
    except CaffeLiteError as e:
        raise layer.error(str(e)) from None


@register("Accuracy")
class AccuracyLayer(Layer):
    """Top-k classification accuracy over accuracy_param.axis; optional second top: per-class
    accuracy (correct / occurrences of each class in the labels, 0 for absent classes).

    Ties count against the true class, as in Caffe: a position is correct when fewer than top_k
    OTHER classes score >= the true class's score.  So with top_k 1 a tie for the maximum is
    wrong, whatever the class indices."""
    channelwise = False
    exact_num_bottom = 2
    min_top = 1
    max_top = 2

    def layer_setup(self, bottom, top):
        ap = self.layer_param.accuracy_param
        self.top_k = ap.top_k
        self.has_ignore_label = ap.HasField("ignore_label")
        self.ignore_label = ap.ignore_label

    def reshape(self, bottom, top):
        b0 = bottom[0]
        self.axis = _canonical_axis(self, b0, self.layer_param.accuracy_param.axis)
        self.outer = b0.count_range(0, self.axis)
        self.channels = b0.shape[self.axis]
        self.inner = b0.count_range(self.axis + 1)
        if self.outer * self.inner != bottom[1].count:
            raise self.error(
                f"number of labels must match number of predictions: label blob "
                f"{bottom[1].shape} has {bottom[1].count} values, but prediction {b0.shape} "
                f"with axis {self.axis} needs {self.outer}*{self.inner} = "
                f"{self.outer * self.inner}")
        if self.top_k > self.channels:
            raise self.error(f"top_k ({self.top_k}) must be less than or equal to the number "
                             f"of classes ({self.channels})")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((self.channels,))

    def forward_cpu(self, bottom, top):
        x = bottom[0].cpu_data.reshape(self.outer, self.channels, self.inner)
        labels, valid, count = labels_as_int(
            self, bottom[1].cpu_data.reshape(self.outer, self.inner), self.channels,
            self.has_ignore_label, self.ignore_label)
        true_score = np.take_along_axis(x, labels[:, None, :], axis=1)
        # Caffe counts the classes scoring >= the true one (itself included) and calls the
        # prediction correct when that count minus one is below top_k.
        n_ge = np.count_nonzero(x >= true_score, axis=1)
        correct = n_ge <= self.top_k
        if valid is not None:
            correct &= valid
        hits = int(np.count_nonzero(correct))
        top[0].data[...] = 0.0 if count == 0 else hits / count
        if len(top) > 1:
            seen = labels if valid is None else labels[valid]
            nums = np.bincount(seen.ravel(), minlength=self.channels)
            good = np.bincount(labels[correct], minlength=self.channels)
            per_class = top[1].data
            per_class[...] = 0
            np.divide(good, nums, out=per_class, where=nums > 0, casting="unsafe")

    def backward_cpu(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise self.error("has no backward pass (Caffe: NOT_IMPLEMENTED)")


@register("ArgMax")
class ArgMaxLayer(Layer):
    """Indices (as floats) of the top_k largest values, optionally with the values.

    Without argmax_param.axis: per sample over the flattened trailing dims; top shape
    (N, 1, top_k) -- (N, 2, top_k) with out_max_val, indices then values -- padded with 1s to
    the bottom's number of axes when that is more than 3 (Caffe's shape).  With axis: the bottom
    shape with that axis replaced by top_k, holding indices, or the values with out_max_val.
    Ties: Caffe sorts (value, index) pairs descending, so of equal values the larger index
    comes first."""
    channelwise = False
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        ap = self.layer_param.argmax_param
        self.out_max_val = ap.out_max_val
        self.top_k = ap.top_k
        self.has_axis = ap.HasField("axis")
        if self.top_k < 1:
            raise self.error("top_k must not be less than 1")
        if bottom[0].num_axes < 1:
            raise self.error(f"needs a bottom with at least one axis, got {bottom[0].shape}")
        if self.has_axis:
            self.axis = _canonical_axis(self, bottom[0], ap.axis)

    def reshape(self, bottom, top):
        b = bottom[0]
        if self.has_axis:
            self.outer = b.count_range(0, self.axis)
            self.dim = b.shape[self.axis]
            self.inner = b.count_range(self.axis + 1)
            what = f"the dimension of axis {self.axis}"
            shape = list(b.shape)
            shape[self.axis] = self.top_k
        else:
            self.outer, self.dim, self.inner = b.shape[0], b.count_range(1), 1
            what = "the flattened bottom blob per instance"
            shape = [1] * max(b.num_axes, 3)
            shape[0] = b.shape[0]
            shape[1] = 2 if self.out_max_val else 1
            shape[2] = self.top_k
        if self.top_k > self.dim:
            raise self.error(f"top_k ({self.top_k}) must be less than or equal to {what} "
                             f"({self.dim}) of bottom {b.shape}")
        top[0].reshape(shape)

    def forward_cpu(self, bottom, top):
        x = bottom[0].cpu_data.reshape(self.outer, self.dim, self.inner)
        rev = x[:, ::-1, :]   # search the reversed axis so ties resolve to the larger index
        last = self.dim - 1
        if self.top_k == 1:
            idx = last - np.argmax(rev, axis=1)[:, None, :]
        else:
            idx = last - np.argsort(-rev, axis=1, kind="stable")[:, :self.top_k, :]
        if self.has_axis:
            out = top[0].data.reshape(self.outer, self.top_k, self.inner)
            out[...] = np.take_along_axis(x, idx, axis=1) if self.out_max_val else idx
        else:
            out = top[0].data.reshape(self.outer, -1, self.top_k)
            out[:, 0, :] = idx[:, :, 0]
            if self.out_max_val:
                out[:, 1, :] = np.take_along_axis(x, idx, axis=1)[:, :, 0]

    def backward_cpu(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise self.error("has no backward pass (Caffe: NOT_IMPLEMENTED)")
