"""Convolution machinery shared by Convolution, Deconvolution and DepthwiseConvolution:
the spatial geometry, row-block parallelism, im2col / col2im and the GEMM engine.

Arrays are handled as "rows": an input (num, channels, *spatial) is seen as (num*channels,
*spatial), so work can be split into blocks of rows that fit the cache and run on a few
threads (numpy releases the GIL inside its loops).  Every block is a whole-array numpy
operation; the block loop exists for cache locality and the CPU's cores, not per image.

An engine computes the three products a convolution needs, for x (num, conv_in, *in),
w (conv_out, conv_in / group, *kernel) and y (num, conv_out, *out):
    forward(x, w, b, y)          y  = conv(x, w) (+ b)          overwrite
    backward_data(dy, w, dx)     dx = conv_transpose(dy, w)     overwrite
    backward_weight(x, dy, dw)   dw += d(sum y*dy)/dw           accumulate
Deconvolution uses the same three with the roles of its bottom and top swapped."""
import itertools

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..blob import checked_count
from . import jit, winograd
from .winograd import Winograd
from .parallel import (MIN_PARALLEL_MACS, MIN_SPIN_FEW_ROWS_MACS, matmul,  # noqa: F401
                       num_threads, prepare_bias, prepare_blocks, prepare_matmul, run_blocks,
                       run_flat, run_tasks, unpack_tail)
from .program import in_order

# Elements of output per row block: small enough that a block's input, output and scratch
# stay in cache, large enough that the Python overhead per numpy call is negligible.
BLOCK_ELEMENTS = 1 << 17
# Upper bound (elements) of a GEMM column buffer; larger batches are processed in image chunks
# (Caffe itself keeps one image's columns at a time).
COL_BUFFER_ELEMENTS = 1 << 24
# Grouped 2-D convolutions whose per-group weight matrix has at most this many columns
# (input channels per group x kernel taps) run on the direct kernels of layers/numba/grouped.py
# when numba is there: below this, the per-group products are too small for BLAS (a ResNeXt
# 3x3 with 4 channels per group: 36).
DIRECT_GROUP_ROWS = 64
# 2-D convolutions (group 1) with at most this many output positions in a batch (the last
# layers of MTCNN's R-Net and O-Net: 3 x 3) run with numba as one kernel that gathers the
# patches, multiplies and applies the bias or fused tail (layers/numba/dense.py `positions`):
# im2col, a product and a tail cost three times as long there.
FEW_POSITIONS = 16


class Scratch:
    """Grow-only float32 buffers, reused across calls: scratch.get(key, shape)."""

    def __init__(self):
        self._bufs = {}

    def get(self, key, shape, zero=False):
        n = checked_count(shape, f"work buffer '{key}'")
        buf = self._bufs.get(key)
        if buf is None or buf.size < n:
            buf = np.zeros(n, np.float32) if zero else np.empty(n, np.float32)
            self._bufs[key] = buf
        elif zero:
            buf[:n] = 0
        return buf[:n].reshape(shape)


def c_div(a, b):
    """Integer division truncating toward zero, as C++ does (Caffe's output-size formula)."""
    q = abs(a) // b
    return q if a >= 0 else -q


class ConvGeometry:
    """Kernel, stride, pad and dilation per spatial axis, and the index arithmetic on them."""

    def __init__(self, kernel, stride, pad, dilation):
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)
        self.pad = tuple(pad)
        self.dilation = tuple(dilation)
        self.extent = tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))
        self.kernel_count = int(np.prod(self.kernel, dtype=np.int64))
        # Caffe's is_1x1_: im2col is the identity (dilation is irrelevant for a 1-tap kernel).
        self.is_1x1 = all(k == 1 and s == 1 and p == 0
                          for k, s, p in zip(self.kernel, self.stride, self.pad))

    def conv_output(self, in_spatial):
        """(in + 2 pad - extent) / stride + 1 per axis.  C's truncating division: an input
        a little smaller than the kernel still gives one output (Caffe's im2col reads zeros
        beyond the edge); more negative sizes are an error the caller reports."""
        return tuple(c_div(i + 2 * p - e, s) + 1
                     for i, p, e, s in zip(in_spatial, self.pad, self.extent, self.stride))

    def deconv_output(self, in_spatial):
        return tuple(s * (i - 1) + e - 2 * p
                     for i, p, e, s in zip(in_spatial, self.pad, self.extent, self.stride))

    _FILL = {"pad": 0}

    def pack(self, *fields, axes=None, **values):
        """The named per-axis fields concatenated, in the order named: "kernel", "stride",
        "pad", "dilation", or any keyword given (input=(h, w), output=(oh, ow)).  With `axes`,
        each is left-filled to that many axes (0 for pad, 1 for the rest), as kernels taking
        3-D geometry for 1-D and 2-D convolutions want.  Naming the fields keeps pad and
        stride from trading places between the CPU and GPU kernels' argument lists."""
        out = ()
        for name in fields:
            v = tuple(values[name] if name in values else getattr(self, name))
            if axes is not None:
                v = (self._FILL.get(name, 1),) * (axes - len(v)) + v
            out += v
        return out

    def taps(self):
        return list(itertools.product(*(range(k) for k in self.kernel)))

    def padded_shape(self, in_spatial, out_spatial):
        """Spatial shape of a zero-padded input that every tap's strided view fits in."""
        return tuple(max(i + 2 * p, (o - 1) * s + e) if o > 0 else i + 2 * p
                     for i, o, p, s, e in zip(in_spatial, out_spatial, self.pad, self.stride,
                                              self.extent))

    def padded_tap_slices(self, out_spatial):
        """Per tap: the slices of the padded input that the tap reads for every output."""
        return [tuple(slice(t * d, t * d + s * (o - 1) + 1, s)
                      for t, d, s, o in zip(tap, self.dilation, self.stride, out_spatial))
                for tap in self.taps()]

    def clipped_tap_slices(self, in_spatial, out_spatial):
        """Per tap (index, in_slices, out_slices): the outputs whose input position for that
        tap lies inside the unpadded input, and those input positions.  Taps reading only
        padding are left out."""
        result = []
        for index, tap in enumerate(self.taps()):
            ins, outs = [], []
            for t, d, s, p, i, o in zip(tap, self.dilation, self.stride, self.pad,
                                        in_spatial, out_spatial):
                off = t * d - p                     # input position read by output 0
                lo = max(0, -(off // s))            # first o with o*s + off >= 0
                hi = min(o - 1, (i - 1 - off) // s)  # last o with o*s + off <= i - 1
                if hi < lo:
                    break
                start = lo * s + off
                ins.append(slice(start, start + (hi - lo) * s + 1, s))
                outs.append(slice(lo, hi + 1))
            else:
                result.append((index, tuple(ins), tuple(outs)))
        return result


def strided_columns(xp, geom, out_spatial):
    """Read-only view (rows, *kernel, *out) of padded rows xp (rows, *padded): im2col without
    copying."""
    sp = xp.strides[1:]
    shape = (xp.shape[0],) + geom.kernel + tuple(out_spatial)
    strides = ((xp.strides[0],) + tuple(st * d for st, d in zip(sp, geom.dilation))
               + tuple(st * s for st, s in zip(sp, geom.stride)))
    return as_strided(xp, shape, strides, writeable=False)


class PaddedRows:
    """A zero-bordered copy of input rows, kept across calls: the border is written once, each
    call copies only the interior.  Without padding the input itself is used."""

    def __init__(self):
        self.buf = None
        self.interior = None

    def reshape(self, rows, in_spatial, padded_spatial, pad):
        self.needed = tuple(padded_spatial) != tuple(in_spatial)
        if not self.needed:
            self.buf = None
            return
        shape = (rows,) + tuple(padded_spatial)
        checked_count(shape, "the padded input (pad too large?)")
        if self.buf is None or self.buf.shape != shape:
            self.buf = np.zeros(shape, np.float32)
        self.interior = (slice(None),) + tuple(slice(p, p + i) for p, i in zip(pad, in_spatial))

    def fill(self, x_rows, a, b):
        """Rows a:b of the padded input of x_rows (rows, *in)."""
        if not self.needed:
            return x_rows[a:b]
        block = self.buf[a:b]
        block[self.interior] = x_rows[a:b]
        return block


def col2im_rows(col, geom, clipped, dx):
    """dx (rows, *in) = scatter-add of col (rows, kernel_count, *out) over the kernel taps."""
    dx[...] = 0
    every = (slice(None),)
    for index, ins, outs in clipped:
        target = dx[every + ins]
        np.add(target, col[(slice(None), index) + outs], out=target)


def _weight_gradient(dy, col, dw, scratch):
    """dw (G, Og, K) += sum over images and positions of dy (n, G, Og, P) x col (n, G, K, P).

    Either a batch of per-image products summed afterwards, or one product per group over
    all images at once after transposing copies; whichever moves fewer elements."""
    n, g, og, p = dy.shape
    k = col.shape[2]
    if n == 1:
        prod = matmul(dy[0], col[0].swapaxes(-1, -2), scratch.get("wgrad", (g, og, k)))
    elif og * k <= (og + k) * p:
        prod = matmul(dy, col.swapaxes(-1, -2), scratch.get("wgrad", (n, g, og, k)))
        prod = prod.sum(axis=0)
    else:
        dyt = scratch.get("dyt", (g, og, n, p))
        colt = scratch.get("colt", (g, k, n, p))
        run_tasks([lambda: np.copyto(dyt, dy.transpose(1, 2, 0, 3)),
                   lambda: np.copyto(colt, col.transpose(1, 2, 0, 3))])
        prod = matmul(dyt.reshape(g, og, n * p), colt.reshape(g, k, n * p).swapaxes(-1, -2),
                      scratch.get("wgrad", (g, og, k)))
    np.add(dw, prod, out=dw)


class GemmEngine:
    """Grouped N-d convolution as im2col + batched matrix products over (image, group); with
    numba, 2-D convolutions of many groups with few channels each (DIRECT_GROUP_ROWS) run as
    direct correlations instead (`self.direct`, layers/numba/grouped.py)."""

    def __init__(self, geom, conv_in, conv_out, group):
        self.geom = geom
        self.conv_in, self.conv_out, self.group = conv_in, conv_out, group
        self.padded = PaddedRows()
        self.scratch = Scratch()
        self.in_spatial = self.out_spatial = None
        # What the column buffer holds: the token (BaseConvolution._columns_token) of the
        # input whose columns the last forward left there, for the weight gradient to reuse;
        # None once anything else may have written the buffer.
        self.cols_token = None

    def reshape(self, num, in_spatial, out_spatial):
        key = (num, tuple(in_spatial), tuple(out_spatial), jit.kernels("im2col") is not None)
        if key == getattr(self, "_key", None):
            return  # called before every forward; nothing changed
        self._key = key
        self.cols_token = None
        g = self.geom
        self.num = num
        self.winograd = None
        self.winograd_ok = key[-1] and winograd.applies(g, self.group, in_spatial)
        self.in_spatial, self.out_spatial = tuple(in_spatial), tuple(out_spatial)
        self.in_count = int(np.prod(in_spatial, dtype=np.int64))
        self.out_count = int(np.prod(out_spatial, dtype=np.int64))
        rows = num * self.conv_in
        per_image = self.conv_in * g.kernel_count * self.out_count
        self.chunk = max(1, min(num, COL_BUFFER_ELEMENTS // max(1, per_image)))
        # 2-D with numba: compiled im2col / col2im (no padded copy of the input is kept).
        self.jit = jit.kernels("im2col") if len(in_spatial) == 2 and not g.is_1x1 else None
        self.direct = None
        if self.jit is not None and self.group > 1 and \
                self.conv_in // self.group * g.kernel_count <= DIRECT_GROUP_ROWS:
            self.direct = jit.kernels("grouped")
        if self.direct is not None:
            geometry = np.array(g.pack("kernel", "stride", "pad", "dilation"), np.int64)
            self.direct_data = bool(self.direct.direct_backward_data(geometry))
        self.positions = None
        if len(in_spatial) == 2 and self.group == 1:
            self.positions = jit.kernels("dense")
            self.positions_geometry = np.array(
                g.pack("kernel", "stride", "pad", "dilation", "width", width=out_spatial[1:]),
                np.int64)
        if self.jit is not None:
            self.jit_geometry = np.array(g.pack("kernel", "stride", "pad", "dilation"),
                                         np.int64)
            self.padded.reshape(rows, in_spatial, in_spatial, g.pad)  # no copy kept
            return
        self.padded.reshape(rows, in_spatial, g.padded_shape(in_spatial, out_spatial), g.pad)
        self.pad_taps = g.padded_tap_slices(out_spatial)
        self.clipped = g.clipped_tap_slices(in_spatial, out_spatial)

    # --- shapes ----------------------------------------------------------------------------
    def _wg(self, w):
        """(G, Og, Cg*K) weight matrices."""
        return w.reshape(self.group, self.conv_out // self.group, -1)

    def _groups(self, a, channels, spatial_count):
        return a.reshape(a.shape[0], self.group, channels // self.group, spatial_count)

    def _direct_rows(self, a, channels, spatial):
        """a (num, G * channels, *spatial) as the direct kernels' rows (num * G, channels,
        *spatial)."""
        return a.reshape((self.num * self.group, channels // self.group) + tuple(spatial))

    def _direct_weights(self, w):
        """(G, Og, Cg, K) weights of the direct kernels."""
        return w.reshape(self.group, self.conv_out // self.group, self.conv_in // self.group,
                         self.geom.kernel_count)

    def _direct_split(self, fn):
        """(rows, work per row, fn) for prepare_blocks / run_blocks over (image, group)."""
        work = self.conv_out // self.group * self.out_count * (self.conv_in // self.group)
        return self.num * self.group, work, fn

    def _prepare_direct_forward(self, x, w, y):
        k, geo = self.direct, self.jit_geometry
        x4 = self._direct_rows(x, self.conv_in, self.in_spatial)
        y4 = self._direct_rows(y, self.conv_out, self.out_spatial)
        w4 = self._direct_weights(w)
        return prepare_blocks(*self._direct_split(
            lambda a, b, slot: k.grouped_forward(x4, w4, y4, geo, a, b)),
            native=(k.grouped_forward_task, (x4, w4, y4, geo)))

    def _chunks(self):
        return [(n0, min(n0 + self.chunk, self.num)) for n0 in range(0, self.num, self.chunk)]

    def _im2col(self, x, n0, n1):
        """Columns (n, G, Cg*K, P) of images n0:n1 of x, in the reused column buffer."""
        fill, col = self._prepare_im2col(x, n0, n1)
        fill()
        return col

    def _prepare_im2col(self, x, n0, n1):
        """(a callable filling the columns of images n0:n1 of x, the columns (n, G, Cg*K, P)
        in the reused column buffer)."""
        g = self.geom
        cin = self.conv_in
        x_rows = x.reshape(self.num * cin, *self.in_spatial)
        n = n1 - n0
        col = self.scratch.get("col", (n * cin, g.kernel_count, self.out_count))
        base = n0 * cin
        out_shape = g.kernel + self.out_spatial
        cols = col.reshape(n, self.group, -1, self.out_count)
        if self.jit is not None:
            k, geo = self.jit, self.jit_geometry
            x3 = x_rows[base:base + n * cin]
            col4 = col.reshape(n * cin, g.kernel_count, *self.out_spatial)
            return prepare_blocks(n * cin, g.kernel_count * self.out_count,
                                  lambda a, b, slot: k.im2col(x3, col4, geo, a, b),
                                  native=(k.im2col_task, (x3, col4, geo))), cols

        def block(a, b, slot):
            xp = self.padded.fill(x_rows, base + a, base + b)
            np.copyto(col[a:b].reshape((b - a,) + out_shape),
                      strided_columns(xp, g, self.out_spatial))
        return prepare_blocks(n * cin, g.kernel_count * self.out_count, block,
                              BLOCK_ELEMENTS), cols

    def prepare_positions(self, x, w, y, tail):
        """A callable computing y = conv(x, w), then `tail` (parallel.kernel_tail's: the bias
        or a fused group's Epilogue), as one compiled kernel split over the output channels,
        where the convolution has few output positions (FEW_POSITIONS); else None."""
        k = self.positions
        if k is None or self.num * self.out_count > FEW_POSITIONS or \
                not all(a.dtype == np.float32 and a.flags.c_contiguous for a in (x, w, y)):
            return None
        x4 = x.reshape((self.num, self.conv_in) + self.in_spatial)
        y3 = y.reshape(self.num, self.conv_out, self.out_count)
        w2 = w.reshape(self.conv_out, -1)
        patches = self.scratch.get("patches", (num_threads(), self.out_count, w2.shape[1]))
        arguments = (x4, w2, y3, self.positions_geometry, patches)
        rest = unpack_tail(tail, y3)
        kernel = k.positions
        self.cols_token = None      # (the column buffer is not written)
        return prepare_blocks(self.conv_out, self.num * self.out_count * w2.shape[1],
                              lambda n0, n1, slot: kernel(*arguments, *rest, n0, n1, slot),
                              min_elements=MIN_PARALLEL_MACS,
                              native=(k.positions_task, arguments + rest),
                              spin_elements=MIN_SPIN_FEW_ROWS_MACS)

    # --- the three products ----------------------------------------------------------------
    def forward(self, x, w, b, y):
        self.prepare_forward(x, w, b, y)()

    def prepare_forward(self, x, w, b, y, exact=True, w_memory=None, token=None):
        """A callable computing forward(x, w, b, y) for these arrays (Layer.prepare_cpu).
        exact=False (a layer whose backward never runs) allows the Winograd products, whose
        float32 rounding differs from im2col's; w_memory is then the weight's buffer
        (SyncedMemory: its version is the data's).  token(): what identifies x's current data (None when it cannot be known),
        noted with columns that cover the whole batch for backward_weight."""
        wg = self._wg(w)
        steps = []
        if not exact and w_memory is not None and self.winograd_ok and \
                winograd.worth(self.conv_in, self.conv_out, self.num, self.out_spatial):
            if self.winograd is None:
                self.winograd = Winograd(self.num, self.conv_in, self.conv_out,
                                         self.in_spatial, self.out_spatial, self.geom.pad)
            steps.append(self.winograd.prepare(x, w, w_memory, y))
        elif self.direct is not None:
            steps.append(self._prepare_direct_forward(x, w, y))
        elif self.geom.is_1x1:
            steps.append(prepare_matmul(wg, self._groups(x, self.conv_in, self.in_count),
                                        self._groups(y, self.conv_out, self.out_count)))
        else:
            for n0, n1 in self._chunks():
                fill, col = self._prepare_im2col(x, n0, n1)
                steps += [fill, prepare_matmul(wg, col, self._groups(y[n0:n1], self.conv_out,
                                                                     self.out_count))]
            fill = steps[0]
            if token is None:
                self.cols_token = None   # (no fill of this forward notes a token)
            elif self.chunk >= self.num:
                steps[0] = lambda: (fill(), setattr(self, "cols_token", token()))
            else:
                steps[0] = lambda: (setattr(self, "cols_token", None), fill())
        if b is not None:
            steps.append(prepare_bias(y.reshape(self.num, self.conv_out, self.out_count), b))
        return in_order(*steps)

    def backward_data(self, dy, w, dx):
        self.cols_token = None
        if self.direct is not None and self.direct_data:
            k, geo = self.direct, self.jit_geometry
            dy4 = self._direct_rows(dy, self.conv_out, self.out_spatial)
            dx4 = self._direct_rows(dx, self.conv_in, self.in_spatial)
            w4 = self._direct_weights(w)
            run_blocks(*self._direct_split(
                lambda a, b, slot: k.grouped_backward_data(dy4, w4, dx4, geo, a, b)),
                block_elements=None,
                native=(k.grouped_backward_data_task, (dy4, w4, dx4, geo)))
            return
        wgt = self._wg(w).swapaxes(-1, -2)
        if self.geom.is_1x1:
            matmul(wgt, self._groups(dy, self.conv_out, self.out_count),
                   self._groups(dx, self.conv_in, self.in_count))
            return
        g = self.geom
        cin = self.conv_in
        dx_rows = dx.reshape(self.num * cin, *self.in_spatial)
        for n0, n1 in self._chunks():
            n = n1 - n0
            col = self.scratch.get("col", (n * cin, g.kernel_count) + self.out_spatial)
            matmul(wgt, self._groups(dy[n0:n1], self.conv_out, self.out_count),
                   col.reshape(n, self.group, -1, self.out_count))
            base = n0 * cin
            if self.jit is not None:
                k, geo = self.jit, self.jit_geometry
                dx3 = dx_rows[base:base + n * cin]
                run_blocks(n * cin, g.kernel_count * self.out_count,
                           lambda a, b, slot: k.col2im(col, dx3, geo, a, b), block_elements=None,
                           native=(k.col2im_task, (col, dx3, geo)))
                continue

            def block(a, b, slot):
                col2im_rows(col[a:b], g, self.clipped, dx_rows[base + a:base + b])
            run_blocks(n * cin, g.kernel_count * self.out_count, block)

    def backward_weight(self, x, dy, dw, token=None):
        """dw += the weight gradient; `token`: x's (as prepare_forward's), whose columns the
        last forward may have left in the buffer."""
        if self.direct is not None:
            k, geo = self.direct, self.jit_geometry
            x4 = self._direct_rows(x, self.conv_in, self.in_spatial)
            dy4 = self._direct_rows(dy, self.conv_out, self.out_spatial)
            w4 = self._direct_weights(dw)
            gw = self.scratch.get("gw", (self.num * self.group,) + w4.shape[1:])
            run_blocks(*self._direct_split(
                lambda a, b, slot: k.grouped_weight(x4, dy4, gw, geo, a, b)),
                block_elements=None, native=(k.grouped_weight_task, (x4, dy4, gw, geo)))
            sums = gw.reshape(self.num, -1).sum(axis=0)
            np.add(dw, sums.reshape(dw.shape), out=dw)
            return
        dwg = self._wg(dw)
        if self.geom.is_1x1:
            _weight_gradient(self._groups(dy, self.conv_out, self.out_count),
                             self._groups(x, self.conv_in, self.in_count), dwg, self.scratch)
            return
        for n0, n1 in self._chunks():
            if token is not None and token == self.cols_token:
                col = self._prepare_im2col(x, n0, n1)[1]     # (as the forward filled it)
            else:
                col = self._im2col(x, n0, n1)
            _weight_gradient(self._groups(dy[n0:n1], self.conv_out, self.out_count), col, dwg,
                             self.scratch)
