"""One converter per Caffe layer type: the ONNX nodes that compute what the built layer computes
in the TEST phase.

A converter gets the Graph and a Site (the layer, its bottoms as tensor ids, bottom and top
shapes) and returns one tensor id per top; returning a bottom's id makes the top an alias (no
node).  It reads the layer object's resolved fields (kernel, pads, canonical axes), so defaults
and legacy fields are Caffe's, settled once by the layer itself.  A configuration with no exact
ONNX form raises Refused with the reason."""
import dataclasses

import numpy as np

from ...proto import caffe_pb2

_P = caffe_pb2.PoolingParameter
_F = np.float32
_FLT_MIN = float(np.finfo(np.float32).tiny)
CONVERTERS = {}


class Refused(Exception):
    """This layer (as configured) has no ONNX equivalent; the message says why."""


@dataclasses.dataclass
class Site:
    layer: object
    name: str
    type: str
    ins: list
    in_shapes: list
    out_shapes: list

    @property
    def x(self):
        return self.ins[0]

    @property
    def rank(self):
        return len(self.in_shapes[0])


def converts(*types):
    def deco(fn):
        for t in types:
            CONVERTERS[t] = fn
        return fn
    return deco


def _data(blob):
    return blob.cpu_data


def _axis(axis, rank):
    return axis + rank if axis < 0 else axis


# --- convolution and inner product -----------------------------------------------------------
@converts("Convolution", "DepthwiseConvolution", "ConvolutionDepthwise", "Deconvolution")
def convolution(g, s):
    """Conv / ConvTranspose with group (depthwise: group == channels) and dilation.  A channel
    axis other than 1 is moved there by reshaping the leading axes into one."""
    layer, geo = s.layer, s.layer.geom
    w = g.const(_data(layer.blobs[0]), f"{s.name}/weight", prunable=True)
    args = [w] + ([g.const(_data(layer.blobs[1]), f"{s.name}/bias")] if layer.bias_term else [])
    deconv = layer.reverse_dimensions
    ax = layer.channel_axis
    outs = []
    for x, shape, out_shape in zip(s.ins, s.in_shapes, s.out_shapes):
        spatial_in, spatial_out = shape[ax + 1:], out_shape[ax + 1:]
        if deconv:
            pads_end = list(geo.pad)
        else:
            # Caffe's truncating division gives one output for an input slightly smaller than
            # the kernel, reading zeros beyond the edge: more padding at the end says so.
            pads_end = [p + max(0, (o - 1) * st + e - (i + 2 * p)) for i, o, p, st, e in
                        zip(spatial_in, spatial_out, geo.pad, geo.stride, geo.extent)]
        if 0 in shape or 0 in out_shape:
            raise Refused(f"a zero-size blob ({shape} -> {out_shape})")
        if ax != 1:
            lead = int(np.prod(shape[:ax], dtype=np.int64))
            x = g.reshape(x, (lead,) + tuple(shape[ax:]), s.name)
        y = g.op("ConvTranspose" if deconv else "Conv", [x] + args, s.name,
                 kernel_shape=list(geo.kernel), strides=list(geo.stride),
                 pads=list(geo.pad) + pads_end, dilations=list(geo.dilation), group=layer.group)
        if ax != 1:
            y = g.reshape(y, out_shape, s.name)
        outs.append(y)
    return outs


@converts("InnerProduct")
def inner_product(g, s):
    """Flatten at `axis` to (M, K), Gemm with the (N, K) weight (transB; `transpose: true`
    stores (K, N)), reshape back when the top has more than 2 axes."""
    layer = s.layer
    x = s.x
    if not (s.rank == 2 and layer.axis == 1):
        x = g.op("Flatten", [x], s.name, axis=layer.axis)
    args = [x, g.const(_data(layer.blobs[0]), f"{s.name}/weight", prunable=True)]
    if layer.bias_term:
        args.append(g.const(_data(layer.blobs[1]), f"{s.name}/bias"))
    y = g.op("Gemm", args, s.name, transB=0 if layer.transpose else 1)
    if len(s.out_shapes[0]) != 2:
        y = g.reshape(y, s.out_shapes[0], s.name)
    return [y]


# --- pooling ---------------------------------------------------------------------------------
@converts("Pooling")
def pooling(g, s):
    """Caffe rounds the output size up (and drops a last window starting in the padding); the
    exported node uses explicit end pads that give exactly Caffe's output size with floor
    rounding.  AVE divides by the window clipped to the padded input (the pad counts, the
    extra ceil rows do not): count_include_pad=1 when no window passes the pad, else an explicit
    zero Pad followed by count_include_pad=0 over the extra rows."""
    layer = s.layer
    n, c, h, w = s.in_shapes[0]
    if layer.global_pooling or (layer.out_h == layer.out_w == 1 and (h, w) == (
            layer.kernel_h, layer.kernel_w) and not (layer.pad_h or layer.pad_w)):
        if layer.pool == _P.MAX:
            y = g.op("GlobalMaxPool", [s.x], s.name)
        elif layer.pool == _P.AVE:
            y = g.op("GlobalAveragePool", [s.x], s.name)
        else:
            y = _stochastic_test(g, s, [0, 0])
        if len(s.out_shapes) > 1:
            raise Refused("the argmax top of global MAX pooling")
        return [y]
    kernel = [layer.kernel_h, layer.kernel_w]
    stride = [layer.stride_h, layer.stride_w]
    pad = [layer.pad_h, layer.pad_w]
    # Padding after the input that makes floor((size + pad + end - kernel) / stride) + 1 equal
    # Caffe's size: the last window's end, less what the input and the front pad cover.
    end = [max(0, (o - 1) * st + k - size - p) for o, st, k, size, p in
           zip((layer.out_h, layer.out_w), stride, kernel, (h, w), pad)]
    if layer.pool == _P.MAX:
        outs = g.op("MaxPool", [s.x], s.name, outputs=len(s.out_shapes), kernel_shape=kernel,
                    strides=stride, pads=pad + end)
        if len(s.out_shapes) == 1:
            return [outs]
        # Caffe's mask is h * W + w; ONNX's index also counts the image and the channel.
        index = g.op("Mod", [outs[1], g.const(np.int64(h * w), f"{s.name}/plane", np.int64)],
                     s.name)
        return [outs[0], g.op("Cast", [index], s.name, to=1)]
    if layer.pool == _P.STOCHASTIC:
        return [_stochastic_test(g, s, end)]
    if all(e <= p for e, p in zip(end, pad)):
        return [g.op("AveragePool", [s.x], s.name, kernel_shape=kernel, strides=stride,
                     pads=pad + end, count_include_pad=1)]
    x = s.x
    if any(pad):
        x = g.op("Pad", [x, g.ints([0, 0] + pad + [0, 0] + pad, f"{s.name}/pads")], s.name)
        end = [max(0, e - p) for e, p in zip(end, pad)]
    return [g.op("AveragePool", [x], s.name, kernel_shape=kernel, strides=stride,
                 pads=[0, 0] + end, count_include_pad=0)]


def _stochastic_test(g, s, end):
    """Caffe's TEST-phase stochastic pooling: sum(x^2) / (FLT_MIN + sum(x)) over each window
    (no padding), as a ratio of two averages over the same windows."""
    layer = s.layer
    sq = g.op("Mul", [s.x, s.x], s.name)
    attrs = dict(kernel_shape=[layer.kernel_h, layer.kernel_w],
                 strides=[layer.stride_h, layer.stride_w], pads=[0, 0] + list(end),
                 count_include_pad=0)
    num = g.op("AveragePool", [sq], s.name, **attrs)
    den = g.op("AveragePool", [s.x], s.name, **attrs)
    # Same windows: avg(x^2) / avg(x) = sum(x^2) / sum(x).  FLT_MIN keeps 0 / 0 at 0.
    den = g.op("Add", [den, g.scalar(_FLT_MIN, f"{s.name}/flt_min")], s.name)
    return g.op("Div", [num, den], s.name)


# --- normalisation ---------------------------------------------------------------------------
@converts("BatchNorm")
def batch_norm(g, s):
    """use_global_stats: the stored sums divided by Caffe's scale-factor blob (0 when it is
    0), as BatchNormalization (a following Scale is folded into its scale and B later);
    otherwise the statistics of the batch itself, over every axis but the channels."""
    layer = s.layer
    c, eps = layer.channels, float(layer.eps)
    if not layer.use_global_stats:
        axes = [a for a in range(s.rank) if a != 1 or s.rank == 1]
        mean = g.reduce_mean(s.x, axes, s.name)
        xc = g.op("Sub", [s.x, mean], s.name)
        var = g.reduce_mean(g.op("Mul", [xc, xc], s.name), axes, s.name)
        std = g.op("Sqrt", [g.op("Add", [var, g.scalar(eps, f"{s.name}/eps")], s.name)],
                   s.name)
        return [g.op("Div", [xc, std], s.name)]
    factor = _data(layer.blobs[2])[0]
    factor = _F(0) if factor == 0 else _F(1) / factor
    mean = _data(layer.blobs[0]) * factor
    var = _data(layer.blobs[1]) * factor
    if s.rank < 2:  # one "channel": the whole blob
        std = np.sqrt(var + layer.eps).astype(_F)
        xc = g.op("Sub", [s.x, g.const(mean.reshape(()), f"{s.name}/mean")], s.name)
        return [g.op("Div", [xc, g.const(std.reshape(()), f"{s.name}/std")], s.name)]
    return [g.op("BatchNormalization",
                 [s.x, g.const(np.ones(c, _F), f"{s.name}/scale"),
                  g.const(np.zeros(c, _F), f"{s.name}/B"), g.const(mean, f"{s.name}/mean"),
                  g.const(var, f"{s.name}/var")], s.name, epsilon=eps, _plain_rank=s.rank)]


@converts("LRN")
def lrn(g, s):
    """ACROSS_CHANNELS is ONNX's LRN (bias = k).  WITHIN_CHANNEL as Caffe composes it: x *
    (1 + alpha * avg over the n x n window of x^2, zero padded) ^ -beta."""
    layer = s.layer
    if layer.across:
        return [g.op("LRN", [s.x], s.name, size=layer.size, alpha=float(layer.alpha),
                     beta=float(layer.beta), bias=float(layer.k))]
    p = layer.pre_pad
    sq = g.op("Mul", [s.x, s.x], s.name)
    avg = g.op("AveragePool", [sq], s.name, kernel_shape=[layer.size] * 2, strides=[1, 1],
               pads=[p] * 4, count_include_pad=1)
    scale = g.op("Add", [g.op("Mul", [avg, g.scalar(layer.alpha, f"{s.name}/alpha")], s.name),
                         g.scalar(1, f"{s.name}/one")], s.name)
    power = g.op("Pow", [scale, g.scalar(-layer.beta, f"{s.name}/beta")], s.name)
    return [g.op("Mul", [s.x, power], s.name)]


# --- elementwise -----------------------------------------------------------------------------
@converts("ReLU")
def relu(g, s):
    slope = float(s.layer.negative_slope)
    if slope == 0:
        return [g.op("Relu", [s.x], s.name)]
    return [g.op("LeakyRelu", [s.x], s.name, alpha=slope)]


@converts("PReLU")
def prelu(g, s):
    a = _data(s.layer.blobs[0])
    shape = (1,) if s.layer.channel_shared else (a.size,) + (1,) * max(0, s.rank - 2)
    return [g.op("PRelu", [s.x, g.const(a.reshape(shape), f"{s.name}/slope")], s.name)]


@converts("ELU")
def elu(g, s):
    return [g.op("Elu", [s.x], s.name, alpha=float(s.layer.alpha))]


@converts("Sigmoid")
def sigmoid(g, s):
    return [g.op("Sigmoid", [s.x], s.name)]


@converts("TanH")
def tanh(g, s):
    return [g.op("Tanh", [s.x], s.name)]


@converts("AbsVal")
def absval(g, s):
    return [g.op("Abs", [s.x], s.name)]


@converts("BNLL")
def bnll(g, s):
    return [g.op("Softplus", [s.x], s.name)]  # log(1 + exp(x))


@converts("Threshold")
def threshold(g, s):
    above = g.op("Greater", [s.x, g.scalar(s.layer.threshold, f"{s.name}/threshold")], s.name)
    return [g.op("Cast", [above], s.name, to=1)]


@converts("Clip")
def clip(g, s):
    return [g.op("Clip", [s.x, g.scalar(s.layer.min, f"{s.name}/min"),
                          g.scalar(s.layer.max, f"{s.name}/max")], s.name)]


@converts("Swish")
def swish(g, s):
    bx = s.x if s.layer.beta == 1 else g.op(
        "Mul", [s.x, g.scalar(s.layer.beta, f"{s.name}/beta")], s.name)
    return [g.op("Mul", [s.x, g.op("Sigmoid", [bx], s.name)], s.name)]


def _affine(g, s, x, scale, shift):
    """x * scale + shift, skipping a multiply by 1 and an add of 0."""
    if scale != 1:
        x = g.op("Mul", [x, g.scalar(scale, f"{s.name}/scale")], s.name)
    if shift != 0:
        x = g.op("Add", [x, g.scalar(shift, f"{s.name}/shift")], s.name)
    return x


@converts("Power")
def power(g, s):
    """(shift + scale * x) ^ power; with power 0 or scale 0 Caffe outputs a constant."""
    layer = s.layer
    if layer.diff_scale == 0:
        value = _F(1) if layer.power == 0 else np.power(layer.shift, layer.power)
        return [g.op("Expand", [g.scalar(value, f"{s.name}/value"),
                                g.ints(s.out_shapes[0], f"{s.name}/shape")], s.name)]
    y = _affine(g, s, s.x, layer.scale, layer.shift)
    if layer.power != 1:
        y = g.op("Pow", [y, g.scalar(layer.power, f"{s.name}/power")], s.name)
    return [y if y != s.x else g.op("Identity", [y], s.name)]


@converts("Exp")
def exp(g, s):
    """outer * exp(inner * x): inner = ln(base) * scale, outer = base ^ shift."""
    y = g.op("Exp", [_affine(g, s, s.x, s.layer.inner_scale, 0)], s.name)
    return [_affine(g, s, y, s.layer.outer_scale, 0)]


@converts("Log")
def log(g, s):
    y = g.op("Log", [_affine(g, s, s.x, s.layer.scale, s.layer.shift)], s.name)
    return [_affine(g, s, y, s.layer.base_scale, 0)]


@converts("Dropout")
def dropout(g, s):
    return [s.x]  # TEST phase: the identity


@converts("Eltwise")
def eltwise(g, s):
    """PROD and MAX as Mul / Max; SUM as x0 * c0 + x1 * c1 + ... in Caffe's order."""
    op = s.layer.op
    Op = caffe_pb2.EltwiseParameter
    if op == Op.MAX:
        return [g.op("Max", list(s.ins), s.name)]
    if op == Op.PROD:
        y = s.ins[0]
        for x in s.ins[1:]:
            y = g.op("Mul", [y, x], s.name)
        return [y]
    terms = [_affine(g, s, x, c, 0) for x, c in zip(s.ins, s.layer.coeffs)]
    y = terms[0]
    for t in terms[1:]:
        y = g.op("Add", [y, t], s.name)
    return [y if y not in s.ins else g.op("Identity", [y], s.name)]


def _operand(g, s, value, shape, axis, what):
    """A Scale / Bias operand of `shape` applied at `axis` of bottom[0], shaped for ONNX's
    right-aligned broadcasting: shape + (1,) * (axes after it)."""
    target = tuple(shape) + (1,) * (s.rank - axis - len(shape)) if shape else ()
    if isinstance(value, str):  # a bottom: reshape it when needed
        return value if tuple(shape) == target else g.reshape(value, target, s.name)
    return g.const(value.reshape(target), f"{s.name}/{what}")


def _operand_axis(axis, operand_rank, rank):
    return 0 if operand_rank == 0 else _axis(axis, rank)


@converts("Scale")
def scale(g, s):
    layer, p = s.layer, s.layer.layer_param.scale_param
    if len(s.ins) > 1:
        shape, value = s.in_shapes[1], s.ins[1]
    else:
        shape, value = layer.blobs[0].shape, _data(layer.blobs[0])
    axis = _operand_axis(p.axis, len(shape), s.rank)
    y = g.op("Mul", [s.x, _operand(g, s, value, shape, axis, "scale")], s.name)
    if layer.bias is not None:
        b = layer.blobs[layer.bias_id]
        axis = _operand_axis(p.axis, len(b.shape), s.rank)
        y = g.op("Add", [y, _operand(g, s, _data(b), b.shape, axis, "bias")], s.name)
    return [y]


@converts("Bias")
def bias(g, s):
    p = s.layer.layer_param.bias_param
    if len(s.ins) > 1:
        shape, value = s.in_shapes[1], s.ins[1]
    else:
        shape, value = s.layer.blobs[0].shape, _data(s.layer.blobs[0])
    axis = _operand_axis(p.axis, len(shape), s.rank)
    return [g.op("Add", [s.x, _operand(g, s, value, shape, axis, "bias")], s.name)]


# --- shapes and routing ----------------------------------------------------------------------
@converts("Split")
def split(g, s):
    return [s.x] * len(s.out_shapes)


@converts("Concat")
def concat(g, s):
    if len(s.ins) == 1:
        return [s.x]
    return [g.op("Concat", list(s.ins), s.name, axis=s.layer.axis)]


@converts("Slice")
def slice_(g, s):
    if len(s.out_shapes) == 1:
        return [s.x]
    b = s.layer.bounds
    sizes = [hi - lo for lo, hi in zip(b, b[1:])]
    return g.op("Split", [s.x, g.ints(sizes, f"{s.name}/split")], s.name,
                outputs=len(sizes), axis=s.layer.axis)


@converts("Flatten", "Reshape")
def reshape(g, s):
    return [g.reshape(s.x, s.out_shapes[0], s.name)]


@converts("Permute")
def permute(g, s):
    if not s.layer.need_permute:
        return [s.x]
    return [g.op("Transpose", [s.x], s.name, perm=list(s.layer.order))]


@converts("Crop")
def crop(g, s):
    """bottom[0] cut to bottom[1]'s shape from crop_param.axis on, at the offsets."""
    offsets, shape = s.layer.offsets, s.out_shapes[0]
    axes = [a for a in range(s.rank) if shape[a] != s.in_shapes[0][a] or offsets[a]]
    if not axes:
        return [s.x]
    starts = [offsets[a] for a in axes]
    ends = [offsets[a] + shape[a] for a in axes]
    return [g.op("Slice", [s.x, g.ints(starts, f"{s.name}/starts"),
                           g.ints(ends, f"{s.name}/ends"), g.ints(axes, f"{s.name}/axes")],
                 s.name)]


@converts("Softmax")
def softmax(g, s):
    return [g.op("Softmax", [s.x], s.name, axis=s.layer.axis)]


@converts("ArgMax")
def argmax(g, s):
    """TopK over the reversed axis, so that of equal values the larger index comes first (as
    Caffe sorts (value, index) pairs); indices as floats, or the values with out_max_val."""
    layer = s.layer
    k, dim = layer.top_k, layer.dim
    x = g.reshape(s.x, (layer.outer, dim, layer.inner), s.name)
    rev = g.op("Slice", [x, g.ints([-1], f"{s.name}/starts"),
                         g.ints([-dim - 1], f"{s.name}/ends"), g.ints([1], f"{s.name}/axes"),
                         g.ints([-1], f"{s.name}/steps")], s.name)
    values, idx = g.op("TopK", [rev, g.ints([k], f"{s.name}/k")], s.name, outputs=2, axis=1,
                       largest=1, sorted=1)
    idx = g.op("Sub", [g.const(np.int64(dim - 1), f"{s.name}/last", np.int64), idx], s.name)
    idx = g.op("Cast", [idx], s.name, to=1)
    if layer.has_axis:
        y = values if layer.out_max_val else idx
    else:  # (N, k, 1) each; Caffe's top is (N, 1 or 2, k)
        y = g.reshape(idx, (layer.outer, 1, k), s.name)
        if layer.out_max_val:
            vals = g.reshape(values, (layer.outer, 1, k), s.name)
            y = g.op("Concat", [y, vals], s.name, axis=1)
    return [g.reshape(y, s.out_shapes[0], s.name)]
