"""darknet layers -> a Caffe NetParameter (deploy form) and the values of its blobs.

Every darknet section becomes the Caffe layers that compute exactly what darknet computes; where
Caffe has no such layer the construction is spelled out beside it.  Layer names carry darknet's
layer index (conv0, conv0/bn, maxpool2, ...); the output blob of darknet layer i is the last
top its layers write."""
import logging
import math

import numpy as np

from ...layers.pooling import pooled_size
from ...proto import caffe_pb2
from . import bn as _bn

log = logging.getLogger("caffe_lite")
_F = np.float32
_LEAKY = 0.1  # darknet's leaky slope (.1f)


class Out:
    """A darknet layer's output: the Caffe blob `top`, darknet's (c, h, w), and the blob's
    Caffe shape without the batch axis (it differs when darknet's layer is flat)."""

    def __init__(self, top, shape, caffe_shape=None, alias=False):
        self.top, self.shape = top, tuple(shape)
        self.caffe_shape = tuple(caffe_shape) if caffe_shape is not None else self.shape
        self.alias = alias  # another darknet layer's blob, reused without a copy


class Builder:
    def __init__(self, name):
        self.param = caffe_pb2.NetParameter(name=name)
        self.values = {}  # layer name -> [arrays], in the layer's blob order

    def add(self, type_, name, bottom, top):
        return self.param.layer.add(name=name, type=type_, bottom=list(bottom), top=list(top))

    @staticmethod
    def params(lp, *mults):
        for lr, decay in mults:
            lp.param.add(lr_mult=lr, decay_mult=decay)

    def as4d(self, x, prefix):
        """x as a 4-D (N, c, h, w) blob: a Reshape when darknet's layer was flat."""
        if len(x.caffe_shape) == 3 and x.caffe_shape == x.shape:
            return x
        top = f"{prefix}/reshape"
        lp = self.add("Reshape", top, [x.top], [top])
        lp.reshape_param.shape.dim.extend([0, *x.shape])
        return Out(top, x.shape)


# --- activations ------------------------------------------------------------------------------
def activation(b, prefix, blob, act, in_place=True):
    """The Caffe layers of a darknet activation on `blob`; returns the output blob.

    leaky = ReLU(negative_slope 0.1); relu6 = Clip(0, 6); logistic = Sigmoid;
    mish = x * tanh(softplus(x)) = Eltwise PROD of x and TanH(BNLL(x))."""
    if act == "linear":
        if in_place:
            return blob
        top = f"{prefix}/linear"  # [activation] linear: a copy, as darknet makes one
        b.add("Power", top, [blob], [top])
        return top
    if act == "mish":
        sp = f"{prefix}/softplus"
        b.add("BNLL", sp, [blob], [sp])
        b.add("TanH", f"{prefix}/tanh", [sp], [sp])
        top = f"{prefix}/mish"
        lp = b.add("Eltwise", top, [blob, sp], [top])
        lp.eltwise_param.operation = caffe_pb2.EltwiseParameter.PROD
        return top
    top = blob if in_place else f"{prefix}/{act}"
    kind = {"leaky": "ReLU", "relu": "ReLU", "relu6": "Clip", "logistic": "Sigmoid",
            "tanh": "TanH", "swish": "Swish", "elu": "ELU"}[act]
    lp = b.add(kind, f"{prefix}/{act}", [blob], [top])
    if act == "leaky":
        lp.relu_param.negative_slope = _LEAKY
    elif act == "relu6":
        lp.clip_param.min, lp.clip_param.max = 0, 6
    return top


# --- weighted layers --------------------------------------------------------------------------
def batch_norm(b, prefix, blob, n, arrays):
    """BatchNorm (darknet's mean and variance) -> Scale (the divisor correction, frozen) ->
    Scale (darknet's scales and biases), in place on `blob`.  See bn.py."""
    if arrays is None:  # no weights file: the statistics of an identity
        arrays = {"scales": np.ones(n, _F), "biases": np.zeros(n, _F),
                  "rolling_mean": np.zeros(n, _F), "rolling_variance": np.ones(n, _F)}
    lp = b.add("BatchNorm", f"{prefix}/bn", [blob], [blob])
    lp.batch_norm_param.eps = _bn.EPS
    b.params(lp, (0, 0), (0, 0), (0, 0))
    b.values[lp.name] = [arrays["rolling_mean"], arrays["rolling_variance"], np.ones(1, _F)]
    lp = b.add("Scale", f"{prefix}/bn_darknet", [blob], [blob])
    lp.scale_param.bias_term = False
    b.params(lp, (0, 0))
    b.values[lp.name] = [_bn.correction(arrays["rolling_variance"])]
    lp = b.add("Scale", f"{prefix}/scale", [blob], [blob])
    lp.scale_param.bias_term = True
    b.params(lp, (1, 0), (1, 0))  # darknet decays neither scales nor biases
    b.values[lp.name] = [arrays["scales"], arrays["biases"]]


def conv(b, ly, x, arrays):
    p = ly.p
    prefix = f"conv{ly.index}"
    x = b.as4d(x, prefix)
    lp = b.add("Convolution", prefix, [x.top], [prefix])
    cp = lp.convolution_param
    cp.num_output, cp.bias_term = p["filters"], not p["bn"]
    cp.kernel_size.append(p["size"])
    if p["stride_h"] == p["stride_w"]:
        if p["stride_h"] != 1:
            cp.stride.append(p["stride_h"])
    else:
        cp.stride_h, cp.stride_w = p["stride_h"], p["stride_w"]
    if p["padding"]:
        cp.pad.append(p["padding"])
    if p["groups"] > 1:
        cp.group = p["groups"]
    cp.weight_filler.type = "msra"  # darknet's initialisation: N(0, 2 / fan_in)
    b.params(lp, (1, 1), *([] if p["bn"] else [(1, 0)]))
    if arrays is not None:
        b.values[prefix] = [arrays["weights"]] + ([] if p["bn"] else [arrays["biases"]])
    if p["bn"]:
        batch_norm(b, prefix, prefix, p["filters"], arrays)
    return Out(activation(b, prefix, prefix, p["activation"]), ly.out_shape)


def connected(b, ly, x, arrays):
    p = ly.p
    prefix = f"fc{ly.index}"
    lp = b.add("InnerProduct", prefix, [x.top], [prefix])
    ip = lp.inner_product_param
    ip.num_output, ip.bias_term = p["output"], not p["bn"]
    bound = math.sqrt(2.0 / ly.weights[1][1][1])  # darknet: U(-sqrt(2/inputs), sqrt(2/inputs))
    ip.weight_filler.type = "uniform"
    ip.weight_filler.min, ip.weight_filler.max = -bound, bound
    b.params(lp, (1, 1), *([] if p["bn"] else [(1, 0)]))
    if arrays is not None:
        b.values[prefix] = [arrays["weights"]] + ([] if p["bn"] else [arrays["biases"]])
    if p["bn"]:
        batch_norm(b, prefix, prefix, p["output"], arrays)
    top = activation(b, prefix, prefix, p["activation"])
    return Out(top, ly.out_shape, (p["output"],))


# --- pooling ----------------------------------------------------------------------------------
def maxpool_plan(n, size, stride, padding):
    """(Caffe pad, first kept window, kept windows, Caffe windows) that reproduce darknet's
    maxpool along one axis, or None.

    darknet: windows start at j * stride - padding // 2, and there are
    (n + padding - size) // stride + 1 of them; out-of-image taps never win.  Caffe: windows at
    i * stride - pad, ceil((n + 2 pad - size) / stride) + 1 of them (less one that would start
    in the padding).  With pad = padding // 2 + m * stride, Caffe's window m + j is darknet's
    window j: pick the smallest m whose windows cover darknet's, then keep out_d of them."""
    left = padding // 2
    out_d = int((n + padding - size) / stride) + 1
    pad = left
    while pad < size:  # Caffe requires pad < kernel
        m = (pad - left) // stride
        out_c = pooled_size(n, size, pad, stride)
        if pad and (out_c - 1) * stride >= n + pad:
            out_c -= 1
        if out_c >= m + out_d:
            return pad, m, out_d, out_c
        pad += stride
    return None


def maxpool(b, ly, x, arrays):
    p = ly.p
    c, h, w = ly.in_shape
    prefix = f"maxpool{ly.index}"
    x = b.as4d(x, prefix)
    plans = [maxpool_plan(h, p["size"], p["stride_h"], p["padding"]),
             maxpool_plan(w, p["size"], p["stride_w"], p["padding"])]
    if None in plans:
        raise ly.error(f"size={p['size']}, stride={p['stride_h']}x{p['stride_w']}, "
                       f"padding={p['padding']} on a {h}x{w} input: Caffe's Pooling cannot "
                       "place darknet's windows (it needs pad < size)")
    (ph, mh, kh, ch), (pw, mw, kw, cw) = plans
    crop = (mh, kh, ch) != (0, kh, kh) or (mw, kw, cw) != (0, kw, kw)
    pooled = f"{prefix}/pool" if crop else prefix
    lp = b.add("Pooling", prefix, [x.top], [pooled])
    pp = lp.pooling_param
    pp.pool = caffe_pb2.PoolingParameter.MAX
    pp.kernel_size = p["size"]
    if p["stride_h"] == p["stride_w"]:
        pp.stride = p["stride_h"]
    else:
        pp.stride_h, pp.stride_w = p["stride_h"], p["stride_w"]
    if ph == pw:
        if ph:
            pp.pad = ph
    else:
        pp.pad_h, pp.pad_w = ph, pw
    if not crop:
        return Out(prefix, ly.out_shape)
    # Caffe rounds its window count up and pads both sides alike: keep darknet's windows
    # (a Slice per axis; the windows darknet does not have go to a Silence layer)
    discard, blob = [], pooled
    for axis, (m, k, count) in ((2, (mh, kh, ch)), (3, (mw, kw, cw))):
        if (m, k) == (0, count):
            continue
        name = f"{prefix}/crop_{'hw'[axis - 2]}"
        points = [v for v in (m, m + k) if 0 < v < count]
        tops = []
        for lo in [0] + points:
            keep = lo == m
            tops.append(name if keep else f"{name}/drop{lo}")
        lp = b.add("Slice", name, [blob], tops)
        lp.slice_param.axis = axis
        lp.slice_param.slice_point.extend(points)
        discard += [t for t in tops if t != name]
        blob = name
    b.add("Silence", f"{prefix}/silence", discard, [])
    return Out(blob, ly.out_shape)


def avgpool(b, ly, x, arrays):
    prefix = f"avgpool{ly.index}"
    x = b.as4d(x, prefix)
    lp = b.add("Pooling", prefix, [x.top], [prefix])
    lp.pooling_param.pool = caffe_pb2.PoolingParameter.AVE
    lp.pooling_param.global_pooling = True
    return Out(prefix, ly.out_shape)


# --- the rest ---------------------------------------------------------------------------------
def softmax(b, ly, x, arrays):
    """Over all c*h*w inputs (groups=1) or over `groups` equal runs of them."""
    p = ly.p
    prefix = f"softmax{ly.index}"
    blob, shape = x.top, x.caffe_shape
    inputs = int(np.prod(ly.in_shape))
    if p["temperature"] != 1:
        top = f"{prefix}/temperature"
        lp = b.add("Power", top, [blob], [top])
        lp.power_param.scale = 1.0 / p["temperature"]
        blob = top
    if p["groups"] > 1:
        top = f"{prefix}/groups"
        lp = b.add("Reshape", top, [blob], [top])
        lp.reshape_param.shape.dim.extend([0, p["groups"], -1])
        blob, shape = top, (p["groups"], inputs // p["groups"])
        axis = 2
    else:
        if int(np.prod(shape[1:])) != 1:
            top = f"{prefix}/flatten"
            b.add("Flatten", top, [blob], [top])
            blob, shape = top, (inputs,)
        axis = 1
    lp = b.add("Softmax", prefix, [blob], [prefix])
    if axis != 1:
        lp.softmax_param.axis = axis
    return Out(prefix, ly.out_shape, shape)


def dropout(b, ly, x, arrays):
    name = f"dropout{ly.index}"
    top = name if x.alias else x.top  # in place, as darknet's dropout is
    lp = b.add("Dropout", name, [x.top], [top])
    lp.dropout_param.dropout_ratio = ly.p["probability"]
    return Out(top, ly.out_shape, x.caffe_shape)


def activation_layer(b, ly, x, arrays):
    prefix = f"act{ly.index}"
    return Out(activation(b, prefix, x.top, ly.p["activation"], in_place=False), ly.out_shape,
               x.caffe_shape)


def route(b, ly, outs):
    """Concat (axis 1) of the layers; with groups=G, group_id=k each input contributes its k-th
    channel group (a Slice, the other groups to a Silence layer).  One layer without groups is
    that layer's blob itself."""
    p = ly.p
    prefix = f"route{ly.index}"
    srcs = [b.as4d(outs[i], f"{prefix}/in{i}") for i in ly.inputs]
    if len(srcs) == 1 and p["groups"] == 1:
        return Out(srcs[0].top, ly.out_shape, alias=True)
    parts, discard = [], []
    for i, src in zip(ly.inputs, srcs):
        if p["groups"] == 1:
            parts.append(src.top)
            continue
        name = f"{prefix}/slice{i}"
        step = src.shape[0] // p["groups"]
        tops = [name if g == p["group_id"] else f"{name}/drop{g}" for g in range(p["groups"])]
        lp = b.add("Slice", name, [src.top], tops)
        lp.slice_param.axis = 1
        lp.slice_param.slice_point.extend(step * g for g in range(1, p["groups"]))
        parts.append(name)
        discard += [t for t in tops if t != name]
    if discard:
        b.add("Silence", f"{prefix}/silence", discard, [])
    if len(parts) == 1:
        return Out(parts[0], ly.out_shape)
    b.add("Concat", prefix, parts, [prefix])
    return Out(prefix, ly.out_shape)


def shortcut(b, ly, outs):
    """Eltwise SUM: alpha * previous layer + beta * layer `from` (darknet's order)."""
    p = ly.p
    prefix = f"shortcut{ly.index}"
    a = b.as4d(outs[ly.index - 1], f"{prefix}/in")
    s = b.as4d(outs[p["src"]], f"{prefix}/from")
    lp = b.add("Eltwise", prefix, [a.top, s.top], [prefix])
    lp.eltwise_param.operation = caffe_pb2.EltwiseParameter.SUM
    if (p["alpha"], p["beta"]) != (1, 1):
        lp.eltwise_param.coeff.extend([p["alpha"], p["beta"]])
    return Out(activation(b, prefix, prefix, p["activation"]), ly.out_shape)


def upsample(b, ly, x, arrays):
    """Nearest neighbour, exactly, from data movement only: (N,C,H,W) -> (N,C,H,1,W,1) ->
    `stride` copies along each unit axis (Concat) -> (N,C,H*s,W*s); then * scale."""
    s, w = ly.p["stride"], ly.in_shape[2]
    prefix = f"upsample{ly.index}"
    x = b.as4d(x, prefix)
    top = f"{prefix}/expand"
    lp = b.add("Reshape", top, [x.top], [top])
    lp.reshape_param.axis, lp.reshape_param.num_axes = 2, 2
    lp.reshape_param.shape.dim.extend([0, 1, -1, 1])
    blob = top
    for axis in (5, 3):
        top = f"{prefix}/tile{axis}"
        lp = b.add("Concat", top, [blob] * s, [top])
        lp.concat_param.axis = axis
        blob = top
    lp = b.add("Reshape", prefix, [blob], [prefix])
    lp.reshape_param.shape.dim.extend([0, 0, -1, w * s])
    if ly.p["scale"] != 1:
        lp = b.add("Power", f"{prefix}/scale", [prefix], [prefix])
        lp.power_param.scale = ly.p["scale"]
    return Out(prefix, ly.out_shape)


def reorg(b, ly, x, arrays):
    """darknet's reorg as Reshape -> Permute -> Reshape.

    pjreddie's darknet (reorg_cpu called with the input's sizes) reads the (C, H, W) input as
    (C/s^2, H, s, W, s) and writes output channel (dy*s + dx)*C/s^2 + c from element
    (c, y, dy, x, dx): the well-known quirk, which is not space-to-depth.  AlexeyAB's [reorg]
    reads (C, H/s, s, W/s, s) the same way (a true space-to-depth with channels dy, dx, c)."""
    s, (c, h, w) = ly.p["stride"], ly.in_shape
    prefix = f"reorg{ly.index}"
    x = b.as4d(x, prefix)
    if ly.p["semantics"] == "pjreddie":
        split = [0, c // (s * s), h, s, w, s]
    else:
        split = [0, c, h // s, s, w // s, s]
    top = f"{prefix}/split"
    lp = b.add("Reshape", top, [x.top], [top])
    lp.reshape_param.shape.dim.extend(split)
    perm = f"{prefix}/permute"
    lp = b.add("Permute", perm, [top], [perm])
    lp.permute_param.order.extend([0, 3, 5, 1, 2, 4])
    lp = b.add("Reshape", prefix, [perm], [prefix])
    lp.reshape_param.shape.dim.extend([0, *ly.out_shape])
    return Out(prefix, ly.out_shape)


SEQUENTIAL = {"convolutional": conv, "depthwise_convolutional": conv, "connected": connected,
              "maxpool": maxpool, "avgpool": avgpool, "softmax": softmax, "dropout": dropout,
              "upsample": upsample, "reorg": reorg, "reorg_old": reorg,
              "activation": activation_layer}


def build(name, input_shape, layers, arrays=None):
    """(NetParameter, {layer name: [arrays]}, [note]) for described darknet layers and the
    arrays read from a weights file ({index: {name: array}}, or None)."""
    arrays = arrays or {}
    b = Builder(name)
    lp = b.add("Input", "data", [], ["data"])
    lp.input_param.shape.add().dim.extend([1, *input_shape])
    outs, notes = [], []
    x = Out("data", input_shape)
    for ly in layers:
        if ly.kind == "route":
            out = route(b, ly, outs)
        elif ly.kind == "shortcut":
            out = shortcut(b, ly, outs)
        elif ly.kind == "cost":
            out = Out(x.top, x.shape, x.caffe_shape, alias=True)
            notes.append(f"layer {ly.index} [cost] (type={ly.p['type']}) is a training loss: "
                         "no layer; put a loss layer in a train_val prototxt to train")
        elif ly.head:
            # a Split names the head's input as a net output even when later layers read it
            top = f"{ly.kind}{ly.index}"
            b.add("Split", top, [x.top], [top])
            out = Out(x.top, x.shape, x.caffe_shape, alias=True)
            keys = ", ".join(f"{k}={v}" for k, v in ly.p.items()
                             if k in ("classes", "num", "coords", "anchors", "mask",
                                      "scale_x_y", "new_coords"))
            notes.append(f"layer {ly.index} [{ly.kind}] is a detection head, left to the user: "
                         f"its input '{x.top}' {x.shape} is the net output '{top}'; decode it "
                         f"as darknet does ({keys})")
        else:
            out = SEQUENTIAL[ly.kind](b, ly, x, arrays.get(ly.index))
        outs.append(out)
        x = out
    return b.param, b.values, notes
