"""A second, independent evaluation of darknet cfgs for the tests: darknet's forward pass
written straight from its formulas (direct loops and windows, no Caffe layer), in float64.

Also: random .weights files and the groups= twin of a [depthwise_convolutional] cfg."""
import numpy as np

from caffe_lite.io.darknet import format_cfg, parse_cfg
from caffe_lite.io.darknet.layers import describe
from caffe_lite.io.darknet.weights import Header, pack_weights


def activate(x, act):
    if act == "linear":
        return x
    if act == "leaky":
        return np.where(x > 0, x, 0.1 * x)
    if act == "relu":
        return x * (x > 0)
    if act == "relu6":
        return np.minimum(np.maximum(x, 0), 6)
    if act == "logistic":
        return 1 / (1 + np.exp(-x))
    if act == "tanh":
        return 2 / (1 + np.exp(-2 * x)) - 1
    if act == "swish":
        return x / (1 + np.exp(-x))
    if act == "mish":
        sp = np.where(x > 20, x, np.where(x < -20, np.exp(x), np.log1p(np.exp(x))))
        return x * np.tanh(sp)
    if act == "elu":
        return np.where(x >= 0, x, np.exp(x) - 1)
    raise ValueError(act)


def batchnorm(x, a):
    """darknet's normalize_cpu / scale_bias / add_bias on (N, C, ...)"""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m, v = a["rolling_mean"].reshape(shape), a["rolling_variance"].reshape(shape)
    x = (x - m) / (np.sqrt(v) + 1e-6)
    return x * a["scales"].reshape(shape) + a["biases"].reshape(shape)


def conv(x, w, sh, sw, pad, groups):
    n, c, h, wd = x.shape
    f, cg, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - k) // sh + 1, (wd + 2 * pad - k) // sw + 1
    out = np.zeros((n, f, oh, ow))
    fg = f // groups
    for g in range(groups):
        win = np.lib.stride_tricks.sliding_window_view(xp[:, g * cg:(g + 1) * cg], (k, k),
                                                       axis=(2, 3))
        win = win[:, :, ::sh, ::sw][:, :, :oh, :ow]
        out[:, g * fg:(g + 1) * fg] = np.einsum("ncyxij,ocij->noyx", win,
                                                w[g * fg:(g + 1) * fg])
    return out


def maxpool(x, size, sh, sw, padding):
    """darknet's forward_maxpool_layer: window (i, j) starts at (i*sh, j*sw) - padding/2; taps
    outside the input count as -FLT_MAX."""
    n, c, h, w = x.shape
    oh, ow = int((h + padding - size) / sh) + 1, int((w + padding - size) / sw) + 1
    off = -(padding // 2)
    out = np.full((n, c, oh, ow), -np.finfo(np.float32).max)
    for i in range(oh):
        for j in range(ow):
            for dy in range(size):
                for dx in range(size):
                    y, xx = off + i * sh + dy, off + j * sw + dx
                    if 0 <= y < h and 0 <= xx < w:
                        out[:, :, i, j] = np.maximum(out[:, :, i, j], x[:, :, y, xx])
    return out


def reorg_cpu(x, w, h, c, stride, forward):
    """darknet's reorg_cpu(x, w, h, c, batch, stride, forward, out) for one batch item, as a
    loop over its index arithmetic."""
    flat = x.reshape(-1)
    out = np.empty_like(flat)
    out_c = c // (stride * stride)
    for k in range(c):
        for j in range(h):
            for i in range(w):
                in_index = i + w * (j + h * k)
                c2, offset = k % out_c, k // out_c
                w2, h2 = i * stride + offset % stride, j * stride + offset // stride
                out_index = w2 + w * stride * (h2 + h * stride * c2)
                if forward:
                    out[out_index] = flat[in_index]
                else:
                    out[in_index] = flat[out_index]
    return out


def reorg(x, stride, semantics):
    n, c, h, w = x.shape
    s2 = stride * stride
    res = []
    for b in range(n):
        if semantics == "pjreddie":  # forward_reorg_layer: the input's sizes
            res.append(reorg_cpu(x[b], w, h, c, stride, 0))
        else:  # AlexeyAB: the output's sizes
            res.append(reorg_cpu(x[b], w // stride, h // stride, c * s2, stride, 0))
    return np.stack(res).reshape(n, c * s2, h // stride, w // stride)


def softmax(x, groups, temperature):
    n = x.shape[0]
    v = x.reshape(n, groups, -1) / temperature
    e = np.exp(v - v.max(axis=2, keepdims=True))
    return (e / e.sum(axis=2, keepdims=True)).reshape(x.shape)


def forward(cfg_text, arrays, x, reorg_semantics="pjreddie"):
    """{layer index: output} of the cfg's layers for input x (N, C, H, W)."""
    _, layers = describe(parse_cfg(cfg_text), reorg_semantics)
    outs = {}
    cur = np.asarray(x, np.float64)
    for ly in layers:
        p, a = ly.p, arrays.get(ly.index)
        k = ly.kind
        if k in ("convolutional", "depthwise_convolutional"):
            y = conv(cur, a["weights"].astype(np.float64), p["stride_h"], p["stride_w"],
                     p["padding"], p["groups"])
            y = batchnorm(y, a) if p["bn"] else y + a["biases"].reshape(1, -1, 1, 1)
            y = activate(y, p["activation"])
        elif k == "connected":
            y = cur.reshape(cur.shape[0], -1) @ a["weights"].astype(np.float64).T
            y = batchnorm(y, a) if p["bn"] else y + a["biases"]
            y = activate(y, p["activation"]).reshape(-1, p["output"], 1, 1)
        elif k == "maxpool":
            y = maxpool(cur, p["size"], p["stride_h"], p["stride_w"], p["padding"])
        elif k == "avgpool":
            y = cur.mean(axis=(2, 3), keepdims=True)
        elif k == "softmax":
            y = softmax(cur, p["groups"], p["temperature"])
        elif k in ("dropout", "cost") or ly.head:
            y = cur
        elif k == "activation":
            y = activate(cur, p["activation"])
        elif k == "route":
            parts = []
            for i in ly.inputs:
                src = outs[i]
                step = src.shape[1] // p["groups"]
                parts.append(src[:, step * p["group_id"]:step * (p["group_id"] + 1)])
            y = np.concatenate(parts, axis=1)
        elif k == "shortcut":
            y = activate(p["alpha"] * cur + p["beta"] * outs[p["src"]], p["activation"])
        elif k == "upsample":
            s = p["stride"]
            y = p["scale"] * cur.repeat(s, axis=2).repeat(s, axis=3)
        elif k in ("reorg", "reorg_old"):
            y = reorg(cur, p["stride"], p["semantics"])
        else:
            raise ValueError(k)
        outs[ly.index] = y.reshape((y.shape[0],) + tuple(ly.out_shape))
        cur = outs[ly.index]
    return outs


def random_arrays(cfg_text, seed=0, var_range=(0.5, 2.0), reorg="pjreddie"):
    """Random weights for every weighted layer: He-scaled weights, BN variances in
    `var_range`."""
    _, layers = describe(parse_cfg(cfg_text), reorg)
    rng = np.random.default_rng(seed)
    arrays = {}
    for ly in layers:
        if not ly.weights:
            continue
        d = {}
        for name, shape in ly.weights:
            if name == "rolling_variance":
                d[name] = rng.uniform(*var_range, shape)
            elif name == "weights":
                d[name] = rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[1:]))
            elif name == "scales":
                d[name] = rng.uniform(0.5, 1.5, shape)
            else:
                d[name] = rng.uniform(-0.5, 0.5, shape)
        arrays[ly.index] = {n: v.astype(np.float32) for n, v in d.items()}
    return arrays


def write_weights(path, cfg_text, arrays, header=None, reorg="pjreddie"):
    _, layers = describe(parse_cfg(cfg_text), reorg)
    data = pack_weights(header or Header(0, 2, 0, 0), layers, arrays)
    with open(path, "wb") as f:
        f.write(data)
    return data


def groups_twin(cfg_text):
    """The cfg with each [depthwise_convolutional] as [convolutional] filters=C groups=C."""
    sections = parse_cfg(cfg_text)
    _, layers = describe(sections)
    for s, ly in zip(sections[1:], layers):
        if s.kind == "depthwise_convolutional":
            c = ly.in_shape[0]
            s.kind = "convolutional"
            s.options = {"filters": str(c), "groups": str(c), **s.options}
    return format_cfg(sections)


def small(cfg_text, size):
    """A cfg with its [net] input size replaced."""
    sections = parse_cfg(cfg_text)
    sections[0].options["height"] = sections[0].options["width"] = str(size)
    return format_cfg(sections)
