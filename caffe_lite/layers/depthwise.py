"""Depthwise convolution: a dedicated kernel, and the DepthwiseConvolution layer type.

Depthwise means group == input channels C: output channel o = c*M + m (M = num_output / C,
the channel multiplier) convolves input channel c = o // M alone with its own filter
weight[o, 0].  The weight shape (C*M, 1, *kernel) is exactly what Caffe's Convolution with
group = C has, so caffemodels interchange between "Convolution" + group and the forks'
"DepthwiseConvolution" / "ConvolutionDepthwise".

Caffe's grouped path does one tiny matrix product per group.  The kernel here instead loops
over the kernel taps only: each tap is one multiply-add of a strided view of the (padded)
input with a per-channel weight, over all images and channels at once (split into
cache-sized row blocks that run on a few threads).  For 2-D convolutions, when numba is
installed, compiled kernels (layers/numba/depthwise.py) do the same per (image, channel) plane at memory speed,
forward and both gradients in one pass."""
import numpy as np

from . import jit
from .conv import Convolution
from .im2col import PaddedRows, Scratch, prepare_blocks, run_blocks
from .registry import register

_NO_BIAS = np.zeros(0, np.float32)
_NO_BIAS.flags.writeable = False  # the same array type as a bias blob's cpu_data


class DepthwiseEngine:
    """x (N, C, *in), w (C*M, 1, *kernel), y (N, C*M, *out); rows are the N*C (image,
    channel) pairs."""

    def __init__(self, geom, channels, multiplier):
        self.geom = geom
        self.channels = channels
        self.multiplier = multiplier
        self.padded = PaddedRows()
        self.scratch = Scratch()

    def reshape(self, num, in_spatial, out_spatial):
        key = (num, tuple(in_spatial), tuple(out_spatial), jit.kernels("depthwise") is not None)
        if key == getattr(self, "_key", None):
            return  # called before every forward; nothing changed
        self._key = key
        g = self.geom
        self.num = num
        self.rows = num * self.channels
        self.in_spatial, self.out_spatial = tuple(in_spatial), tuple(out_spatial)
        self.out_count = int(np.prod(out_spatial, dtype=np.int64))
        nsp = len(out_spatial)
        self.jit = jit.kernels("depthwise") if nsp == 2 else None
        if self.jit is not None:
            self.jit_geometry = np.array(
                (self.channels, self.multiplier) + g.pack("kernel", "stride", "pad", "dilation"),
                np.int64)
            self.padded.reshape(self.rows, in_spatial, in_spatial, g.pad)  # no copy kept
            return
        self.padded.reshape(self.rows, in_spatial, g.padded_shape(in_spatial, out_spatial),
                            g.pad)
        self.ones = (1,) * nsp
        all_, new = (slice(None),), (slice(None), None)
        # Index tuples per tap, built once: (tap, view of padded input rows as (B, 1, *out)).
        self.fwd_taps = [(t, new + sl) for t, sl in enumerate(g.padded_tap_slices(out_spatial))]
        # Backward taps read/write only the unpadded region (padding contributes nothing).
        # A tap that covers the whole input (the centre tap of a 'same' convolution) goes
        # first and writes instead of adding, which saves zeroing dx.
        clipped = g.clipped_tap_slices(in_spatial, out_spatial)
        full = tuple(slice(0, i, 1) for i in in_spatial)
        clipped.sort(key=lambda c: c[1] != full)
        self.bwd_first_covers = bool(clipped) and clipped[0][1] == full
        self.bwd_taps = [(t, all_ + ins, new + ins, all_ + all_ + outs)
                         for t, ins, outs in clipped]
        letters = "hwdefgijklopqrstuvyz"[:nsp]  # not b, m, x
        self.wgrad_subscripts = f"bm{letters},bx{letters}->bm"

    # --- compiled path (2-D, numba) ----------------------------------------------------------
    def prepare_forward(self, x, w, b, y):
        """A callable computing forward(x, w, b, y) for these arrays (Layer.prepare_cpu)."""
        if self.jit is None:
            return lambda: self.forward(x, w, b, y)
        k, geo, m = self.jit, self.jit_geometry, self.multiplier
        x3 = x.reshape(self.rows, *self.in_spatial)
        w2 = w.reshape(self.channels * m, -1)
        y4 = y.reshape(self.rows, m, *self.out_spatial)
        bias = _NO_BIAS if b is None else b
        return prepare_blocks(self.rows, m * self.out_count, lambda a, c, slot:
                              k.depthwise_forward(x3, w2, bias, y4, geo, a, c),
                              native=(k.depthwise_forward_task, (x3, w2, bias, y4, geo)))

    def backward(self, x, dy, w, dx, dw):
        """Both gradients in one pass over x and dy: dx (overwritten) unless None, and
        dw += the weight gradient unless dw is None."""
        if self.jit is None:
            if dw is not None:
                self.backward_weight(x, dy, dw)
            if dx is not None:
                self.backward_data(dy, w, dx)
            return
        k, geo, m = self.jit, self.jit_geometry, self.multiplier
        kc = self.geom.kernel_count
        x3 = None if x is None else x.reshape(self.rows, *self.in_spatial)
        dy4 = dy.reshape(self.rows, m, *self.out_spatial)
        w2 = np.zeros((1, kc), np.float32) if w is None else w.reshape(self.channels * m, kc)
        want_dx, want_dw = dx is not None, dw is not None
        # Without dx the kernel gets a writable placeholder; without dw it reads only the
        # shape of x, and dx stands in for it.
        dx3 = dx.reshape(self.rows, *self.in_spatial) if want_dx else np.zeros((1, 1, 1),
                                                                               np.float32)
        x3 = x3 if want_dw else dx3
        per_row = self.scratch.get("jit_row_grad",
                                   (self.rows, m, kc) if want_dw else (1, 1, 1))

        def block(a, c, slot):
            k.depthwise_backward(x3, dy4, w2, dx3, per_row, want_dx, want_dw, geo, a, c)
        run_blocks(self.rows, m * self.out_count, block, block_elements=None,
                   native=(k.depthwise_backward_task,
                           (x3, dy4, w2, dx3, per_row, want_dx, want_dw, geo)))
        if want_dw:
            dw3 = dw.reshape(self.channels, m, kc)
            np.add(dw3, per_row.reshape(self.num, self.channels, m, kc).sum(axis=0), out=dw3)

    def _row_weights(self, w):
        """(rows, kernel_count, M, 1, ...): each row's filters per tap, ready to broadcast."""
        c, m = self.channels, self.multiplier
        wt = w.reshape(c, m, -1).transpose(0, 2, 1)
        rw = self.scratch.get("row_weights", (self.num, c, wt.shape[1], m))
        rw[...] = wt
        return rw.reshape((self.rows, wt.shape[1], m) + self.ones)

    def _tmp(self, slot, shape):
        return self.scratch.get(("tmp", slot), shape)

    # --- forward ---------------------------------------------------------------------------
    def forward(self, x, w, b, y):
        if self.jit is not None:
            return self.prepare_forward(x, w, b, y)()
        m = self.multiplier
        x_rows = x.reshape(self.rows, *self.in_spatial)
        y_rows = y.reshape(self.rows, m, *self.out_spatial)
        rw = self._row_weights(w)
        rb = None
        if b is not None:
            rb = np.broadcast_to(b.reshape((1, self.channels, m) + self.ones),
                                 (self.num, self.channels, m) + self.ones)
            rb = rb.reshape((self.rows, m) + self.ones)
        taps = self.fwd_taps

        def block(a, c, slot):
            xp = self.padded.fill(x_rows, a, c)
            yb = y_rows[a:c]
            wb = rw[a:c]
            tmp = self._tmp(slot, yb.shape)
            t, view = taps[0]
            np.multiply(xp[view], wb[:, t], out=yb)
            for t, view in taps[1:]:
                np.multiply(xp[view], wb[:, t], out=tmp)
                np.add(yb, tmp, out=yb)
            if rb is not None:
                np.add(yb, rb[a:c], out=yb)
        run_blocks(self.rows, m * self.out_count, block)

    # --- backward --------------------------------------------------------------------------
    def backward_data(self, dy, w, dx):
        """dx[c] = sum over taps and m of the scatter of w[c*M+m, tap] * dy[c*M+m]."""
        if self.jit is not None:
            return self.backward(None, dy, w, dx, None)
        m = self.multiplier
        dy_rows = dy.reshape(self.rows, m, *self.out_spatial)
        dx_rows = dx.reshape(self.rows, *self.in_spatial)
        rw = self._row_weights(w)
        taps = self.bwd_taps
        write_first = self.bwd_first_covers

        def block(a, c, slot):
            dxb = dx_rows[a:c]
            dyb = dy_rows[a:c]
            wb = rw[a:c]
            if not write_first:
                dxb[...] = 0
            for k, (t, ins, _, outs) in enumerate(taps):
                d = dyb[outs]
                target = dxb[ins]
                if m == 1:
                    if k == 0 and write_first:
                        np.multiply(d[:, 0], wb[:, t, 0], out=target)
                        continue
                    tmp = self._tmp(slot, target.shape)
                    np.multiply(d[:, 0], wb[:, t, 0], out=tmp)
                else:
                    prod = self.scratch.get(("prod", slot), d.shape)
                    np.multiply(d, wb[:, t], out=prod)
                    if k == 0 and write_first:
                        np.sum(prod, axis=1, out=target)
                        continue
                    tmp = self._tmp(slot, target.shape)
                    np.sum(prod, axis=1, out=tmp)
                np.add(target, tmp, out=target)
        run_blocks(self.rows, m * self.out_count, block)

    def backward_weight(self, x, dy, dw):
        """dw[c*M+m, tap] += sum over images and outputs of x(tap view) * dy[c*M+m]."""
        if self.jit is not None:
            return self.backward(x, dy, None, None, dw)
        m = self.multiplier
        x_rows = x.reshape(self.rows, *self.in_spatial)
        dy_rows = dy.reshape(self.rows, m, *self.out_spatial)
        kc = self.geom.kernel_count
        per_row = self.scratch.get("row_grad", (self.rows, kc, m), zero=True)
        subscripts = self.wgrad_subscripts
        taps = self.bwd_taps

        def block(a, c, slot):
            xb = x_rows[a:c]
            dyb = dy_rows[a:c]
            for t, _, ins, outs in taps:
                np.einsum(subscripts, dyb[outs], xb[ins], out=per_row[a:c, t])
        run_blocks(self.rows, m * self.out_count, block)
        grad = per_row.reshape(self.num, self.channels, kc, m).sum(axis=0)
        dw3 = dw.reshape(self.channels, m, kc)
        np.add(dw3, grad.transpose(0, 2, 1), out=dw3)


@register("DepthwiseConvolution", "ConvolutionDepthwise")
class DepthwiseConvolution(Convolution):
    """The DepthwiseConvolution fork's layer (also named "ConvolutionDepthwise"):
    convolution_param as Convolution, with group == input channels."""
    type = None

    def __init__(self, layer_param):
        super().__init__(layer_param)
        self.type = self.layer_param.type or type(self).type

    def layer_setup(self, bottom, top):
        p = self.layer_param.convolution_param
        ax = bottom[0].canonical_axis_index(p.axis)
        channels = bottom[0].shape[ax]
        if p.group != channels:
            raise self.error(f"a depthwise convolution needs group == input channels, got "
                             f"group {p.group} and {channels} input channels (set group: "
                             f"{channels}; num_output may be any multiple of {channels})")
        super().layer_setup(bottom, top)

    depthwise_type = True
