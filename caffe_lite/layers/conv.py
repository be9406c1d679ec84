"""Convolution and Deconvolution: Caffe's BaseConvolutionLayer family, N-d, grouped.

The arithmetic lives in engines (im2col.GemmEngine, depthwise.DepthwiseEngine); this module
reads convolution_param exactly as Caffe does, shapes blobs, and wires the engines to
bottoms and tops.  Deconvolution is the same engine with bottom and top exchanged: its
forward is the convolution's backward-data, its backward-data the convolution's forward."""
import math

import numpy as np

from .. import blob as _blob
from . import sparse
from .base import Layer
from .im2col import ConvGeometry, GemmEngine
from . import gemm_pool
from .parallel import kernel_tail
from .program import in_order, ready_while
from .registry import register


def _spatial_param(layer, p, name, h_name, w_name, nsp, default, must_be_positive, what):
    """One value per spatial axis from a repeated field or its _h/_w pair (Caffe's rules)."""
    values = list(getattr(p, name))
    if h_name and (p.HasField(h_name) or p.HasField(w_name)):
        if nsp != 2:
            raise layer.error(f"{h_name} & {w_name} can only be used for 2-D convolution "
                              f"(the input has {nsp} spatial axes)")
        if values:
            raise layer.error(f"either {name} or {h_name}/{w_name} should be specified, not "
                              f"both (got {name}: {values}, {h_name}: {getattr(p, h_name)}, "
                              f"{w_name}: {getattr(p, w_name)})")
        result = [getattr(p, h_name), getattr(p, w_name)]
    else:
        allowed = (1, nsp) if default is None else (0, 1, nsp)
        if len(values) not in allowed:
            raise layer.error(f"{name} must be specified once, or once per spatial dimension "
                              f"({name} specified {len(values)} times; {nsp} spatial dims)")
        if not values:
            result = [default] * nsp
        else:
            result = [values[0] if len(values) == 1 else values[i] for i in range(nsp)]
    if must_be_positive and any(v <= 0 for v in result):
        raise layer.error(f"{what} dimensions must be nonzero, got {result}")
    return tuple(result)


class BaseConvolution(Layer):
    """Caffe's BaseConvolutionLayer: parameters, blob shapes, and the bottom/top loop."""
    prunable = True
    min_bottom = 1
    min_top = 1
    equal_num_bottom_top = True
    reverse_dimensions = False   # Deconvolution: the convolution runs from top to bottom
    depthwise_type = False       # the forks' DepthwiseConvolution: always the depthwise engine

    # --- setup -----------------------------------------------------------------------------
    def layer_setup(self, bottom, top):
        p = self.layer_param.convolution_param
        self.channel_axis = bottom[0].canonical_axis_index(p.axis)
        nsp = bottom[0].num_axes - self.channel_axis - 1
        self.num_spatial_axes = nsp
        kernel = _spatial_param(self, p, "kernel_size", "kernel_h", "kernel_w", nsp, None,
                                True, "filter")
        stride = _spatial_param(self, p, "stride", "stride_h", "stride_w", nsp, 1, True,
                                "stride")
        pad = _spatial_param(self, p, "pad", "pad_h", "pad_w", nsp, 0, False, "pad")
        dilation = _spatial_param(self, p, "dilation", None, None, nsp, 1, True, "dilation")
        self.geom = ConvGeometry(kernel, stride, pad, dilation)

        self.channels = bottom[0].shape[self.channel_axis]
        self.num_output = p.num_output
        self.group = p.group
        if self.num_output <= 0:
            raise self.error(f"num_output must be positive, got {self.num_output}")
        if self.group <= 0 or self.channels % self.group:
            raise self.error(f"the number of input channels ({self.channels}) must be a "
                             f"multiple of group ({self.group})")
        if self.num_output % self.group:
            raise self.error(f"num_output ({self.num_output}) must be a multiple of group "
                             f"({self.group})")
        if self.reverse_dimensions:
            self.conv_in, self.conv_out = self.num_output, self.channels
        else:
            self.conv_in, self.conv_out = self.channels, self.num_output
        self.bias_term = p.bias_term
        weight_shape = (self.conv_out, self.conv_in // self.group) + kernel
        bias_shape = (self.num_output,)
        if self.blobs:
            if len(self.blobs) != 1 + int(self.bias_term):
                raise self.error(f"incorrect number of weight blobs: {len(self.blobs)}, "
                                 f"expected {1 + int(self.bias_term)} (bias_term: "
                                 f"{str(self.bias_term).lower()})")
            self.check_loaded_blobs([weight_shape, bias_shape][:len(self.blobs)])
        else:
            # An unset weight_filler is the proto default: constant 0, as in Caffe.
            self.blobs.append(self.param_blob(weight_shape, p.weight_filler))
            if self.bias_term:
                self.blobs.append(self.param_blob(bias_shape, p.bias_filler))
        self.engine = self.make_engine()
        if self.reverse_dimensions:
            why = "Deconvolution runs dense"
        elif not isinstance(self.engine, GemmEngine):
            why = "the depthwise kernel runs dense"
        else:
            why = ""
        self.sparse = sparse.SparsePath(self, None if why else "conv", group=self.group,
                                        unsupported=why)

    def make_engine(self):
        if select_engine(self, "cpu") == "depthwise":
            from .depthwise import DepthwiseEngine
            return DepthwiseEngine(self.geom, self.conv_in, self.conv_out // self.conv_in)
        return GemmEngine(self.geom, self.conv_in, self.conv_out, self.group)

    # --- shapes ----------------------------------------------------------------------------
    def output_spatial(self, in_spatial):
        return self.geom.conv_output(in_spatial)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        ax = self.channel_axis
        if len(shape) != ax + 1 + self.num_spatial_axes:
            raise self.error(f"bottom num_axes may not change: set up with "
                             f"{ax + 1 + self.num_spatial_axes}, got shape {shape}")
        if shape[ax] != self.channels:
            raise self.error(f"input size incompatible with convolution kernel: the bottom has "
                             f"{shape[ax]} channels (shape {shape}), set up with {self.channels}")
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != shape:
                raise self.error(f"all bottoms must have the same shape: bottom[0] is {shape}, "
                                 f"bottom[{i}] is {b.shape}")
        in_spatial = shape[ax + 1:]
        out_spatial = self.output_spatial(in_spatial)
        if any(o < 0 for o in out_spatial):
            raise self.error(f"input spatial shape {in_spatial} gives a negative output shape "
                             f"{out_spatial} (kernel {self.geom.kernel}, stride "
                             f"{self.geom.stride}, pad {self.geom.pad}, dilation "
                             f"{self.geom.dilation})")
        self.num = math.prod(shape[:ax])
        top_shape = shape[:ax] + (self.num_output,) + out_spatial
        for t in top:
            t.reshape(top_shape)
        self.bottom_shape = (self.num, self.channels) + tuple(in_spatial)
        self.top_shape = (self.num, self.num_output) + tuple(out_spatial)
        self.columns = math.prod(out_spatial)  # positions per image, for the sparse path
        # A zero-size bottom or top (Caffe allows e.g. (1 - 3) / 2 + 1 = 0): every product is
        # empty, so the top is just the bias and every gradient but the bias's is zero.
        self.empty = 0 in self.bottom_shape or 0 in self.top_shape
        if self.reverse_dimensions:
            self.engine.reshape(self.num, out_spatial, in_spatial)
        else:
            self.engine.reshape(self.num, in_spatial, out_spatial)

    # --- forward / backward ----------------------------------------------------------------
    def _bias(self):
        return self.blobs[1].cpu_data if self.bias_term else None

    def forward_cpu(self, bottom, top, post=None):
        """`post`: a fusion.Epilogue that adds the bias (and applies what follows the layer
        in a fused group) in one pass after the products."""
        self.prepare_cpu(bottom, top, post)()

    def prepare_cpu(self, bottom, top, post=None):
        # (a net that never runs this backward has no use for the columns' token)
        keep = self.backward_needed and self.param_propagate_down[0]
        runs = [self._prepare_one(b.cpu_data.reshape(self.bottom_shape),
                                  t.data.reshape(self.top_shape), post,
                                  (lambda b=b, j=j: self._columns_token(b, j)) if keep else None)
                for j, (b, t) in enumerate(zip(bottom, top))]
        if len(runs) == 1:
            return runs[0]

        def run():
            for r in runs:
                r()
        return run

    # --- the bottom / top loop, written once for both devices ---------------------------------
    # `ops` supplies the device's few elementwise pieces (set_bias, add_bias, bias_gradient,
    # zero) and the engine the three products; x, y, w, ... are host arrays on the CPU, device
    # addresses on the GPU (layers/cuda/conv.py).
    def forward_one(self, engine, ops, x, w, bias, y):
        """y from x for one bottom: the products and the bias (bias None: not added)."""
        if self.empty:
            ops.set_bias(self, bias, y)       # an empty product: the bias alone (or 0)
        elif self.reverse_dimensions:
            engine.backward_data(x, w, y)
            if bias is not None:
                ops.add_bias(self, bias, y)
        else:
            engine.forward(x, w, bias, y)

    def backward_one(self, engine, ops, x, dy, w, dx, dw, db, token=None):
        """The gradients of one bottom / top pair: db += bias gradient, dw += weight
        gradient, dx (overwritten) the input gradient; each None when not wanted.  x is
        read only for the weight gradient; token: x's (_columns_token), on the CPU."""
        if db is not None:
            ops.bias_gradient(self, dy, db)
        if self.empty:
            if dx is not None:
                ops.zero(self, dx)
            return
        both = getattr(engine, "backward", None)
        if both is not None and not self.reverse_dimensions:
            both(x, dy, w, dx, dw)            # one pass for both gradients (depthwise)
            return
        if dw is not None:
            if self.reverse_dimensions:
                engine.backward_weight(dy, x, dw)
            elif token is not None:
                engine.backward_weight(x, dy, dw, token)
            else:
                engine.backward_weight(x, dy, dw)
        if dx is not None:
            if self.reverse_dimensions:
                engine.forward(dy, w, None, dx)
            else:
                engine.backward_data(dy, w, dx)

    def _columns_token(self, blob, j):
        """What identifies bottom j's data from a forward to the backward after it: its
        memory, the memory's version (a user's write through Blob.data changes it) and the
        shape epoch; None when a later layer of the net may write it (Layer.bottom_kept)."""
        kept = self.bottom_kept
        if kept is None or not kept(j):
            return None
        mem = blob._data.mem
        return mem, mem.version, _blob.shape_epoch

    def _prepare_one(self, x, y, post, token=None):
        """A callable computing y from x (one bottom): the sparse path's choice each time,
        then the products and the bias (or the epilogue).  token(): see _columns_token."""
        w = self.blobs[0].cpu_data
        bias = self._bias() if post is None else None
        tail = None if post is None else post.prepare(y.reshape(self.num, self.num_output, -1))
        # few output positions: one kernel with the bias and the tail (the sparse path still
        # runs them after its product)
        fused = None
        if not (self.empty or self.reverse_dimensions) and isinstance(self.engine, GemmEngine):
            fused = self.engine.prepare_positions(x, w, y, kernel_tail(post, bias,
                                                                       self.num_output))
        if fused is not None:
            dense = fused
        elif self.empty or self.reverse_dimensions:
            engine = self.engine

            def dense():
                self.forward_one(engine, _CPU_OPS, x, w, bias, y)
        elif isinstance(self.engine, GemmEngine):
            dense = self.engine.prepare_forward(x, w, bias, y, exact=self.backward_needed,
                                                w_memory=self.blobs[0]._data.mem, token=token)
        else:
            dense = self.engine.prepare_forward(x, w, bias, y)
        path, empty, engine = self.sparse, self.empty, self.engine
        choose = path.chooser(self.columns)

        def run():
            csr = None if empty else choose()
            if csr is None:
                dense()
                if fused is not None:
                    return
            else:
                engine.cols_token = None    # (the sparse product may use the buffer)
                sparse.convolution(path, csr, x, bias, y)
            if tail is not None:
                tail()
        if empty:
            return run
        # what a native program (layers/program.py) runs instead, while the path is dense
        body = dense if fused is not None else in_order(dense, tail)
        inner = body.ready if gemm_pool.phases_of(body) is not None else None
        return gemm_pool.attach(run, gemm_pool.phases_of(body), ready_while(
            lambda: choose() is None and (inner is None or inner()), choose.watch, inner))

    def forward_gpu(self, bottom, top):
        csr = None if self.empty else self.sparse.choose(self.columns, gpu=True)
        if csr is None:
            super().forward_gpu(bottom, top)
        else:
            from .cuda import sparse as cuda_sparse
            cuda_sparse.convolution(self, csr, bottom, top)

    def backward_cpu(self, top, propagate_down, bottom):
        w = self.blobs[0].cpu_data
        want_w = self.param_propagate_down[0]
        want_b = self.bias_term and self.param_propagate_down[1]
        for i, (t, b) in enumerate(zip(top, bottom)):
            self.backward_one(
                self.engine, _CPU_OPS,
                b.cpu_data.reshape(self.bottom_shape) if want_w else None,
                t.cpu_diff.reshape(self.top_shape), w,
                b.diff.reshape(self.bottom_shape) if propagate_down[i] else None,
                self.blobs[0].diff if want_w else None,
                self.blobs[1].diff if want_b else None,
                self._columns_token(b, i) if want_w else None)


def select_engine(layer, device):
    """"depthwise" or "gemm": which engine runs a convolution layer on `device` ("cpu" or
    "gpu"), Caffe's one choice (layer_factory.cpp's GetConvolutionLayer) made in one place.

    A depthwise convolution (group == the convolution's input channels: Convolution with
    group == channels > 1, or the forks' DepthwiseConvolution types) runs on the dedicated
    kernels; everything else on im2col + matrix products.  On the GPU the depthwise kernels
    cover 1-D and 2-D convolutions with at most 65535 output channels (a grid limit), and also
    take single-channel inputs (group == channels == 1)."""
    depthwise = layer.group == layer.conv_in and (layer.group > 1 or device == "gpu"
                                                  or layer.depthwise_type)
    if device == "gpu":
        depthwise = depthwise and layer.num_spatial_axes <= 2 and layer.conv_out <= 65535
    return "depthwise" if depthwise else "gemm"


class _CpuOps:
    """The CPU's elementwise pieces of BaseConvolution.forward_one / backward_one."""

    @staticmethod
    def set_bias(layer, bias, y):
        y[...] = 0
        if bias is not None:
            _CpuOps.add_bias(layer, bias, y)

    @staticmethod
    def add_bias(layer, bias, y):
        y3 = y.reshape(layer.num, layer.num_output, -1)
        np.add(y3, bias.reshape(-1, 1), out=y3)

    @staticmethod
    def bias_gradient(layer, dy, db):
        np.add(db, np.einsum("nop->o", dy.reshape(layer.num, layer.num_output, -1)), out=db)

    @staticmethod
    def zero(layer, dx):
        dx[...] = 0


_CPU_OPS = _CpuOps()


@register("Convolution")
class Convolution(BaseConvolution):
    """Caffe's ConvolutionLayer.  group == channels (> 1) runs on the depthwise kernel."""


@register("Deconvolution")
class Deconvolution(BaseConvolution):
    """Caffe's DeconvolutionLayer: the transpose of Convolution.  Weight shape
    (channels, num_output / group, *kernel); output stride*(in-1) + extent - 2*pad."""
    reverse_dimensions = True

    def output_spatial(self, in_spatial):
        return self.geom.deconv_output(in_spatial)
