"""Flatten, Reshape, Crop and Permute: layers that change a blob's shape or layout."""
import numpy as np

from ..errors import CaffeLiteError
from .base import Layer
from .registry import register
from . import program


def _canonical(layer, blob, axis, what="axis"):
    try:
        return blob.canonical_axis_index(axis)
    except CaffeLiteError as e:
        raise layer.error(f"{what} {axis}: {e}") from None


def _not_in_place(layer, bottom, top):
    if top[0] is bottom[0]:
        raise layer.error("does not allow in-place computation")


def _share(top, bottom):
    """The top is a view of the bottom: same data, same diff (no copy either way)."""
    top.share_data(bottom)
    top.share_diff(bottom)


@register("Flatten")
class FlattenLayer(Layer):
    """Merge axes [axis, end_axis] into one; the top shares data and diff with the bottom."""
    channel_route = "flatten"
    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        _not_in_place(self, bottom, top)
        p = self.layer_param.flatten_param
        b = bottom[0]
        start = _canonical(self, b, p.axis)
        end = _canonical(self, b, p.end_axis, "end_axis")
        # end_axis == axis - 1 is legal in Caffe and inserts a 1 (count of an empty range).
        if end + 1 < start:
            raise self.error(f"end_axis {p.end_axis} comes before axis {p.axis} for bottom "
                             f"{b.shape}")
        shape = b.shape[:start] + (b.count_range(start, end + 1),) + b.shape[end + 1:]
        top[0].reshape(shape)
        _share(top[0], b)

    prepare_cpu = program.prepare_nothing

    def forward_cpu(self, bottom, top):
        pass

    def backward_cpu(self, top, propagate_down, bottom):
        pass


@register("Reshape")
class ReshapeLayer(Layer):
    """Replace axes [axis, axis + num_axes) of the bottom's shape with reshape_param.shape,
    where a 0 copies the bottom's dim and one -1 is inferred.  Shares data and diff."""
    channelwise = False
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        _not_in_place(self, bottom, top)
        dims = list(self.layer_param.reshape_param.shape.dim)
        self.new_dims = dims
        self.copy_axes = [i for i, d in enumerate(dims) if d == 0]
        inferred = [i for i, d in enumerate(dims) if d == -1]
        if len(inferred) > 1:
            raise self.error(f"new shape {dims} contains multiple -1 dims; at most a single "
                             "(1) value of -1 may be specified")
        bad = [d for d in dims if d < -1]
        if bad:
            raise self.error(f"new shape {dims} has dim {bad[0]}; dims must be >= -1")
        self.inferred_axis = inferred[0] if inferred else -1
        self.constant_count = int(np.prod([d for d in dims if d > 0], dtype=np.int64))

    def reshape(self, bottom, top):
        _not_in_place(self, bottom, top)
        p = self.layer_param.reshape_param
        b = bottom[0]
        n_in = b.num_axes
        start = p.axis if p.axis >= 0 else n_in + p.axis + 1
        if start < 0:
            raise self.error(f"axis {p.axis} out of range")
        if start > n_in:
            raise self.error(f"axis {p.axis} out of range for {n_in}-D input blob {b.shape}")
        if p.num_axes < -1:
            raise self.error(f"num_axes must be >= 0, or -1 for all; got {p.num_axes}")
        end = n_in if p.num_axes == -1 else start + p.num_axes
        if end > n_in:
            raise self.error(f"end_axis = axis + num_axes = {start} + {p.num_axes} is out of "
                             f"range for {n_in}-D input blob {b.shape}")
        shape = list(b.shape[:start]) + list(self.new_dims) + list(b.shape[end:])
        for i in self.copy_axes:
            if start + i >= n_in:
                raise self.error(f"new shape {self.new_dims} contains a 0 at index {i}, but "
                                 f"there was no corresponding bottom axis to copy "
                                 f"(bottom {b.shape}, axis {p.axis})")
            shape[start + i] = b.shape[start + i]
        if self.inferred_axis >= 0:
            explicit = self.constant_count * b.count_range(0, start) * b.count_range(end)
            for i in self.copy_axes:
                explicit *= shape[start + i]
            if explicit == 0 or b.count % explicit:
                raise self.error(f"bottom count ({b.count}) must be divisible by the product "
                                 f"of the specified dimensions ({explicit}); bottom {b.shape}, "
                                 f"new shape {self.new_dims}")
            shape[start + self.inferred_axis] = b.count // explicit
        count = int(np.prod(shape, dtype=np.int64))
        if count != b.count:
            raise self.error(f"output count must match input count: bottom {b.shape} has "
                             f"{b.count}, output {tuple(shape)} has {count}")
        top[0].reshape(shape)
        _share(top[0], b)

    prepare_cpu = program.prepare_nothing

    def forward_cpu(self, bottom, top):
        pass

    def backward_cpu(self, top, propagate_down, bottom):
        pass


@register("Crop")
class CropLayer(Layer):
    """Crop bottom[0] to bottom[1]'s shape on axes >= crop_param.axis (default 2), starting
    at crop_param.offset (one value for all cropped axes, or one per axis)."""
    exact_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.crop_param
        if bottom[0].num_axes != bottom[1].num_axes:
            raise self.error(f"input blobs must have the same number of axes: bottom[0] is "
                             f"{bottom[0].shape}, bottom[1] is {bottom[1].shape}")
        start = _canonical(self, bottom[0], p.axis)
        if len(p.offset) > 1 and start + len(p.offset) != bottom[0].num_axes:
            raise self.error(f"number of offset values ({len(p.offset)}) must be equal to the "
                             f"number of dimensions from axis {p.axis} on "
                             f"({bottom[0].num_axes - start}) for bottom {bottom[0].shape}")

    def reshape(self, bottom, top):
        _not_in_place(self, bottom, top)
        p = self.layer_param.crop_param
        b, ref = bottom
        if b.num_axes != ref.num_axes:
            raise self.error(f"input blobs must have the same number of axes: bottom[0] is "
                             f"{b.shape}, bottom[1] is {ref.shape}")
        start = _canonical(self, b, p.axis)
        shape, offsets = list(b.shape), [0] * b.num_axes
        for i in range(start, b.num_axes):
            off = p.offset[0] if len(p.offset) == 1 else (
                p.offset[i - start] if len(p.offset) > 1 else 0)
            if b.shape[i] - off < ref.shape[i]:
                raise self.error(f"the crop for dimension {i} is out of bounds: size "
                                 f"{ref.shape[i]} at offset {off} does not fit bottom[0] "
                                 f"{b.shape} (bottom[1] is {ref.shape})")
            shape[i], offsets[i] = ref.shape[i], off
        self.offsets = offsets
        self.region = tuple(slice(o, o + n) for o, n in zip(offsets, shape))
        top[0].reshape(shape)

    def forward_cpu(self, bottom, top):
        np.copyto(top[0].data, bottom[0].cpu_data[self.region])

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx = bottom[0].diff
            dx[...] = 0
            dx[self.region] = top[0].cpu_diff
        # bottom[1] gives only a shape: its gradient is zero (Caffe leaves its diff as is).
        if len(propagate_down) > 1 and propagate_down[1]:
            bottom[1].diff[...] = 0


@register("Permute")
class PermuteLayer(Layer):
    """(SSD fork) Reorder axes: top axis i is bottom axis order[i]; axes not listed follow
    in their original order.  The top is a contiguous copy (shared when order is identity)."""
    channelwise = False
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        n = bottom[0].num_axes
        given = list(self.layer_param.permute_param.order)
        order = []
        for o in given:
            if o >= n:
                raise self.error(f"order value {o} should be less than the input dimension "
                                 f"{n} (bottom {bottom[0].shape})")
            if o in order:
                raise self.error(f"there are duplicate orders: {given}")
            order.append(o)
        order += [i for i in range(n) if i not in order]
        self.order = tuple(order)
        self.inverse = tuple(int(i) for i in np.argsort(order))
        self.need_permute = self.order != tuple(range(n))

    def reshape(self, bottom, top):
        _not_in_place(self, bottom, top)
        b = bottom[0]
        if b.num_axes != len(self.order):
            raise self.error(f"bottom {b.shape} has {b.num_axes} axes but the layer was set "
                             f"up for {len(self.order)}")
        top[0].reshape(tuple(b.shape[o] for o in self.order))
        if not self.need_permute:
            _share(top[0], b)

    def forward_cpu(self, bottom, top):
        if self.need_permute:
            np.copyto(top[0].data, bottom[0].cpu_data.transpose(self.order))

    def backward_cpu(self, top, propagate_down, bottom):
        if self.need_permute and propagate_down[0]:
            np.copyto(bottom[0].diff, top[0].cpu_diff.transpose(self.inverse))
