"""Concat, Slice, Split and Silence: layers that join, cut, fan out or swallow blobs."""
import numpy as np

from ..errors import CaffeLiteError
from . import jit, parallel, program
from .base import Layer
from .parallel import prepare_blocks
from .registry import register


def _axis(layer, blob, axis_param, legacy_param, legacy_name):
    """Caffe's axis / deprecated `*_dim` choice, as a canonical axis index of `blob`."""
    if layer._legacy:
        if legacy_param >= blob.num_axes:
            raise layer.error(f"{legacy_name} {legacy_param} out of range for bottom "
                              f"{blob.shape} with {blob.num_axes} axes")
        return legacy_param
    try:
        return blob.canonical_axis_index(axis_param)
    except CaffeLiteError as e:
        raise layer.error(f"axis {axis_param}: {e}") from None


def _check_not_in_place(layer, bottom, top):
    for t in top:
        if any(t is b for b in bottom):
            raise layer.error("does not allow in-place computation")


def _index(axis, start, stop):
    return (slice(None),) * axis + (slice(start, stop),)


@register("Concat")
class ConcatLayer(Layer):
    """Join bottoms along concat_param.axis (default 1)."""
    channel_route = "concat"
    min_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.concat_param
        if p.HasField("axis") and p.HasField("concat_dim"):
            raise self.error("either axis or concat_dim should be specified; not both")
        self._legacy = p.HasField("concat_dim")

    def reshape(self, bottom, top):
        p = self.layer_param.concat_param
        if len(bottom) > 1:
            _check_not_in_place(self, bottom, top)
        b0 = bottom[0]
        axis = self.axis = _axis(self, b0, p.axis, p.concat_dim, "concat_dim")
        shape = list(b0.shape)
        for i, b in enumerate(bottom[1:], 1):
            if b.num_axes != b0.num_axes:
                raise self.error(f"all inputs must have the same number of axes: bottom[0] "
                                 f"is {b0.shape}, bottom[{i}] is {b.shape}")
            if b.shape[:axis] != b0.shape[:axis] or b.shape[axis + 1:] != b0.shape[axis + 1:]:
                raise self.error(f"all inputs must have the same shape except at concat axis "
                                 f"{axis}: bottom[0] is {b0.shape}, bottom[{i}] is {b.shape}")
            shape[axis] += b.shape[axis]
        top[0].reshape(shape)
        if len(bottom) == 1:
            top[0].share_data(b0)
            top[0].share_diff(b0)

    def forward_cpu(self, bottom, top):
        if len(bottom) == 1:
            return
        np.concatenate([b.cpu_data for b in bottom], axis=self.axis, out=top[0].data)

    def prepare_cpu(self, bottom, top):
        """With numba, each bottom's rows (the axes before `axis`) copied into the top by the
        kernel of layers/numba/concat.py: natively inside a program."""
        if len(bottom) == 1:
            return program.nothing      # (the top shares the bottom's data)
        k = jit.kernels("concat")
        y = top[0].data
        if k is None or y.dtype != np.float32:
            return None
        rows = top[0].count_range(0, self.axis)
        y2 = y.reshape(rows, -1)
        copies, offset = [], 0
        for b in bottom:
            x2 = b.cpu_data.reshape(rows, -1)
            copies.append(prepare_blocks(
                rows, x2.shape[1], lambda a, e, slot, x2=x2, offset=offset: k.copy_rows(
                    x2, y2, offset, a, e),
                spin_elements=parallel.MIN_SPIN_STREAM_ELEMENTS,
                native=(k.copy_rows_task, (x2, y2, offset))))
            offset += x2.shape[1]
        return program.in_order(*copies)

    def backward_cpu(self, top, propagate_down, bottom):
        if len(bottom) == 1:
            return
        dy = top[0].cpu_diff
        start = 0
        for b, down in zip(bottom, propagate_down):
            stop = start + b.shape[self.axis]
            if down:
                np.copyto(b.diff, dy[_index(self.axis, start, stop)])
            start = stop


@register("Slice")
class SliceLayer(Layer):
    """Cut the bottom along slice_param.axis at slice_point, or into equal parts."""
    channel_route = "slice"
    exact_num_bottom = 1
    min_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.slice_param
        if p.HasField("axis") and p.HasField("slice_dim"):
            raise self.error("either axis or slice_dim should be specified; not both")
        self._legacy = p.HasField("slice_dim")
        self.slice_point = list(p.slice_point)

    def reshape(self, bottom, top):
        p = self.layer_param.slice_param
        _check_not_in_place(self, bottom, top)
        b = bottom[0]
        axis = self.axis = _axis(self, b, p.axis, p.slice_dim, "slice_dim")
        n = b.shape[axis]
        if self.slice_point:
            if len(self.slice_point) != len(top) - 1:
                raise self.error(f"{len(self.slice_point)} slice_point value(s) for "
                                 f"{len(top)} tops; need one fewer than the tops")
            if len(top) > n:
                raise self.error(f"{len(top)} tops but slice axis {axis} of bottom {b.shape} "
                                 f"has only {n} entries")
            bounds = [0]
            for sp in self.slice_point:
                if sp <= bounds[-1]:
                    raise self.error(f"slice_point values must increase, got {self.slice_point}")
                bounds.append(sp)
            if bounds[-1] > n:
                raise self.error(f"slice_point {bounds[-1]} beyond slice axis {axis} of size "
                                 f"{n} (bottom {b.shape})")
            bounds.append(n)
        else:
            if n % len(top):
                raise self.error(f"number of top blobs ({len(top)}) should evenly divide "
                                 f"input slice axis ({n}) of bottom {b.shape}")
            step = n // len(top)
            bounds = [i * step for i in range(len(top) + 1)]
        self.bounds = bounds
        shape = list(b.shape)
        for t, start, stop in zip(top, bounds, bounds[1:]):
            shape[axis] = stop - start
            t.reshape(shape)
        if len(top) == 1:
            top[0].share_data(b)
            top[0].share_diff(b)

    def forward_cpu(self, bottom, top):
        if len(top) == 1:
            return
        x = bottom[0].cpu_data
        for t, start, stop in zip(top, self.bounds, self.bounds[1:]):
            np.copyto(t.data, x[_index(self.axis, start, stop)])

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0] or len(top) == 1:
            return
        dx = bottom[0].diff
        for t, start, stop in zip(top, self.bounds, self.bounds[1:]):
            np.copyto(dx[_index(self.axis, start, stop)], t.cpu_diff)


@register("Split")
class SplitLayer(Layer):
    """Give one blob to several consumers: the tops share the bottom's data; backward sums
    their diffs.  The Net inserts these for blobs that feed several layers."""
    channelwise = True
    exact_num_bottom = 1
    min_top = 1

    def reshape(self, bottom, top):
        _check_not_in_place(self, bottom, top)
        for t in top:
            t.reshape_like(bottom[0])
            t.share_data(bottom[0])

    prepare_cpu = program.prepare_nothing

    def forward_cpu(self, bottom, top):
        pass  # the data is shared

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        if len(top) == 1:
            np.copyto(dx, top[0].cpu_diff)
            return
        np.add(top[0].cpu_diff, top[1].cpu_diff, out=dx)
        for t in top[2:]:
            np.add(dx, t.cpu_diff, out=dx)


@register("Silence")
class SilenceLayer(Layer):
    """Swallow its bottoms (so they are not reported as net outputs); backward gives them
    zero gradient."""
    channel_route = "sink"
    min_bottom = 1
    exact_num_top = 0

    def reshape(self, bottom, top):
        pass

    prepare_cpu = program.prepare_nothing

    def forward_cpu(self, bottom, top):
        pass

    def backward_cpu(self, top, propagate_down, bottom):
        for b, down in zip(bottom, propagate_down):
            if down:
                b.diff[...] = 0
