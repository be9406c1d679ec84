"""GPU paths of Concat, Slice, Split, Silence, Flatten, Reshape, Crop and Permute: strided
block copies (copy_nd in layers/kernels/common.cu), sums and fills.  Flatten and Reshape
share memory with their bottom (nothing to run); a Crop or Permute whose copy needs more than
6 axes (after merging contiguous ones) runs its CPU code."""
from ...backend import ops
from ..base import gpu_impl
from .common import data, diff, mdata, mdiff
from ...backend.ops import contiguous_strides


def _axis_copy(outer, length, inner, src, src_len, src_start, dst, dst_len, dst_start):
    """Copy (outer, length, inner) from a blob with src_len entries on the axis (starting at
    src_start) to one with dst_len entries (starting at dst_start)."""
    ops.copy_nd((outer, length, inner), src + 4 * src_start * inner,
                (src_len * inner, inner, 1), dst + 4 * dst_start * inner,
                (dst_len * inner, inner, 1))


@gpu_impl("Concat")
class Concat:
    @staticmethod
    def forward(layer, bottom, top):
        if len(bottom) == 1:
            return
        t = top[0]
        ax = layer.axis
        outer, inner, total = t.count_range(0, ax), t.count_range(ax + 1), t.shape[ax]
        y, start = mdata(t), 0
        for b in bottom:
            n = b.shape[ax]
            _axis_copy(outer, n, inner, data(b), n, 0, y, total, start)
            start += n

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        if len(bottom) == 1:
            return
        t = top[0]
        ax = layer.axis
        outer, inner, total = t.count_range(0, ax), t.count_range(ax + 1), t.shape[ax]
        dy, start = diff(t), 0
        for b, down in zip(bottom, propagate_down):
            n = b.shape[ax]
            if down:
                _axis_copy(outer, n, inner, dy, total, start, mdiff(b), n, 0)
            start += n


@gpu_impl("Slice")
class Slice:
    @staticmethod
    def forward(layer, bottom, top):
        if len(top) == 1:
            return
        b = bottom[0]
        ax = layer.axis
        outer, inner, total = b.count_range(0, ax), b.count_range(ax + 1), b.shape[ax]
        x = data(b)
        for t, start, stop in zip(top, layer.bounds, layer.bounds[1:]):
            _axis_copy(outer, stop - start, inner, x, total, start, mdata(t), stop - start, 0)

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        if not propagate_down[0] or len(top) == 1:
            return
        b = bottom[0]
        ax = layer.axis
        outer, inner, total = b.count_range(0, ax), b.count_range(ax + 1), b.shape[ax]
        dx = mdiff(b)
        for t, start, stop in zip(top, layer.bounds, layer.bounds[1:]):
            _axis_copy(outer, stop - start, inner, diff(t), stop - start, 0, dx, total, start)


@gpu_impl("Split")
class Split:
    @staticmethod
    def forward(layer, bottom, top):
        pass  # the tops share the bottom's data

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        n = bottom[0].count
        dx = mdiff(bottom[0])
        if len(top) == 1:
            ops.copy(n, diff(top[0]), dx)
            return
        ops.add(n, diff(top[0]), diff(top[1]), dx)
        for t in top[2:]:
            ops.add(n, dx, diff(t), dx)


@gpu_impl("Silence")
class Silence:
    @staticmethod
    def forward(layer, bottom, top):
        pass

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        for b, down in zip(bottom, propagate_down):
            if down:
                ops.fill(b.count, 0.0, mdiff(b))


@gpu_impl("Flatten", "Reshape")
class SharedView:
    """The top shares data and diff with the bottom: nothing to compute."""

    @staticmethod
    def forward(layer, bottom, top):
        pass

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        pass


@gpu_impl("Crop")
class Crop:
    @staticmethod
    def _geometry(layer, b, t):
        strides = contiguous_strides(b.shape)
        offset = sum(o * s for o, s in zip(layer.offsets, strides))
        own = contiguous_strides(t.shape)
        return offset, strides, own, ops.fits_nd(t.shape, strides, own)

    @staticmethod
    def forward(layer, bottom, top):
        t = top[0]
        off, strides, own, fits = Crop._geometry(layer, bottom[0], t)
        if not fits:
            layer.forward_cpu(bottom, top)
            return
        ops.copy_nd(t.shape, data(bottom[0]) + 4 * off, strides, mdata(t), own)

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        t, b = top[0], bottom[0]
        off, strides, own, fits = Crop._geometry(layer, b, t)
        if not fits:
            layer.backward_cpu(top, propagate_down, bottom)
            return
        if propagate_down[0]:
            dx = mdiff(b)
            ops.fill(b.count, 0.0, dx)
            ops.copy_nd(t.shape, diff(t), own, dx + 4 * off, strides)
        # bottom[1] gives only a shape: its gradient is zero
        if len(propagate_down) > 1 and propagate_down[1]:
            ops.fill(bottom[1].count, 0.0, mdiff(bottom[1]))


@gpu_impl("Permute")
class Permute:
    @staticmethod
    def _geometry(layer, b, t):
        src = contiguous_strides(b.shape)
        permuted = [src[o] for o in layer.order]
        own = contiguous_strides(t.shape)
        return permuted, own, ops.fits_nd(t.shape, permuted, own)

    @staticmethod
    def forward(layer, bottom, top):
        if not layer.need_permute:
            return
        b, t = bottom[0], top[0]
        permuted, own, fits = Permute._geometry(layer, b, t)
        if not fits:
            layer.forward_cpu(bottom, top)
            return
        ops.copy_nd(t.shape, data(b), permuted, mdata(t), own)

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        if not layer.need_permute or not propagate_down[0]:
            return
        b, t = bottom[0], top[0]
        permuted, own, fits = Permute._geometry(layer, b, t)
        if not fits:
            layer.backward_cpu(top, propagate_down, bottom)
            return
        ops.copy_nd(t.shape, diff(t), own, mdiff(b), permuted)
