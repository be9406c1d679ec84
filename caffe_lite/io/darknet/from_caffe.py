"""A caffe-lite Net -> darknet sections and weights.

darknet runs its layers in a row, each reading the one before unless it is a [route] or a
[shortcut].  The exporter walks the Caffe layers in order, recognises the groups of layers that
are one darknet section (Convolution -> BatchNorm -> Scale... -> activation, the converter's
maxpool crops, upsample and reorg constructions, mish), and inserts a [route] wherever a
section's input is not the previous section's output.  Each Caffe blob version maps to the
darknet layer that computes it.  Layers with no darknet equivalent are collected and refused
together, by name."""
import logging

import numpy as np

from . import bn as _bn
from .cfg import DarknetError, format_cfg, parse_cfg
from .layers import describe, section
from .weights import Header, write_weights

log = logging.getLogger("caffe_lite")
_F = np.float32
_ACTS = {"Sigmoid": "logistic", "TanH": "tanh", "Swish": "swish", "ELU": "elu"}


class Ref:
    """The darknet layer computing a Caffe blob version, and darknet's (c, h, w) of it.  A
    `part` (groups, group_id) is a channel group of it that no section has written yet."""

    def __init__(self, index, shape, part=None, temperature=None):
        self.index, self.shape, self.part = index, tuple(shape), part
        self.temperature = temperature  # scaled by 1 / temperature for a [softmax]


class _Refused(Exception):
    pass


class Exporter:
    def __init__(self, net, depthwise=False, reorg="pjreddie"):
        self.net, self.depthwise, self.reorg = net, depthwise, reorg
        # the layers as the user wrote them (Net._user_layers: None for the Splits it inserted)
        self.items = [(u, ly) for u, ly in zip(net._user_layers, net.layers) if u is not None]
        self.sections, self.arrays = [], {}
        self.refs = {}        # (producing layer k, blob name) -> Ref (None: refused upstream)
        self.refused = []
        self.done = set()
        self.net_section = None
        self._graph()

    # --- the Caffe graph: which version of a blob each bottom reads, who reads each version --
    def _graph(self):
        last, self.reads, self.readers = {}, [], {}
        for k, (u, _) in enumerate(self.items):
            vs = [(last.get(b, -1), b) for b in u.bottom]
            self.reads.append(vs)
            for v in vs:
                self.readers.setdefault(v, []).append(k)
            for t in u.top:
                last[t] = k

    def shape(self, name):
        return tuple(self.net.blobs[name].shape)

    def sole_reader(self, k, name, types=None):
        """The layer that alone reads version (k, name), if not yet used and of `types`."""
        rs = sorted(set(self.readers.get((k, name), [])))
        if len(rs) != 1 or rs[0] in self.done:
            return None
        if types is not None and self.items[rs[0]][0].type not in types:
            return None
        return rs[0]

    # --- emitting sections -------------------------------------------------------------------
    def emit(self, kind, out_shape, arrays=None, **options):
        s = section(kind, **options)
        s.index = len(self.sections)
        self.sections.append(s)
        if arrays is not None:
            self.arrays[s.index] = arrays
        return Ref(s.index, out_shape)

    def last(self):
        return len(self.sections) - 1

    def materialise(self, ref):
        """A Ref that a section can name: a channel group gets its [route] now."""
        if ref.part is None:
            return ref
        groups, gid = ref.part
        c, h, w = ref.shape
        return self.emit("route", (c // groups, h, w), layers=[ref.index], groups=groups,
                         group_id=gid)

    def take(self, ref):
        """Make `ref` the next section's input (a [route] when it is not the last output)."""
        ref = self.materialise(ref)
        if ref.index != self.last():
            if ref.index < 0:
                raise _Refused("darknet's [route] cannot read the network input")
            ref = self.emit("route", ref.shape, layers=[ref.index - len(self.sections)])
        return ref

    def bottom(self, k, j=0, spatial=False):
        u = self.items[k][0]
        ref = self.refs.get(self.reads[k][j])
        if ref is None:
            raise _Refused(None)
        if ref.temperature is not None and u.type not in ("Softmax", "Reshape", "Flatten",
                                                          "Split"):
            raise _Refused(f"reads '{u.bottom[j]}' through a Power layer, which darknet has "
                           "only as a softmax temperature")
        if spatial:
            cs = self.shape(u.bottom[j])
            if cs[1:] != ref.shape:
                raise _Refused(f"reads blob '{u.bottom[j]}' of shape {cs}, which darknet holds "
                               f"as {ref.shape}")
        return ref

    def set(self, k, name, ref):
        self.refs[(k, name)] = ref

    # --- the walk ----------------------------------------------------------------------------
    def run(self):
        for k, (u, layer) in enumerate(self.items):
            if k in self.done:
                continue
            self.done.add(k)
            try:
                if any(v in self.refs and self.refs[v] is None for v in self.reads[k]):
                    raise _Refused(None)  # its input was refused already
                handler = getattr(self, "on_" + u.type, None)
                if handler is None:
                    act = self.activation_at(k)
                    if act is None:
                        raise _Refused(f"darknet has no {u.type} layer")
                    self.standalone_activation(k, act)
                else:
                    handler(k, u, layer)
            except _Refused as exc:
                for t in u.top:
                    self.refs[(k, t)] = None
                if exc.args[0]:
                    self.refused.append(f"'{u.name}' ({u.type}): {exc.args[0]}")
        if self.refused:
            raise DarknetError("cannot export to darknet: " + "; ".join(self.refused))
        if self.net_section is None:
            raise DarknetError("cannot export to darknet: the net has no Input layer (give "
                               "-input_shape N,C,H,W for a net with data layers)")

    # --- activations -------------------------------------------------------------------------
    def activation_at(self, k):
        """(darknet activation, [layers], output blob) for an activation starting at layer k."""
        u, layer = self.items[k]
        x = u.bottom[0] if u.bottom else None
        if u.type == "ReLU":
            slope = _F(u.relu_param.negative_slope)
            if slope == _F(0.1):
                return "leaky", [k], u.top[0]
            if slope != 0:
                return None
            k2 = self.sole_reader(k, u.top[0], {"Clip"})
            if k2 is not None and self.relu6(k2):
                return "relu6", [k, k2], self.items[k2][0].top[0]
            return "relu", [k], u.top[0]
        if u.type == "Clip":
            return ("relu6", [k], u.top[0]) if self.relu6(k) else None
        if u.type in _ACTS:
            if u.type == "Swish" and _F(u.swish_param.beta) != 1:
                return None
            if u.type == "ELU" and _F(u.elu_param.alpha) != 1:
                return None
            return _ACTS[u.type], [k], u.top[0]
        if u.type == "BNLL" and u.top[0] != x:
            # mish: Eltwise PROD(x, TanH(BNLL(x)))
            kt = self.sole_reader(k, u.top[0], {"TanH"})
            if kt is None:
                return None
            tu = self.items[kt][0]
            kp = self.sole_reader(kt, tu.top[0], {"Eltwise"})
            if kp is None:
                return None
            pu = self.items[kp][0]
            xv = self.reads[k][0]
            if (pu.eltwise_param.operation != 0 or len(pu.bottom) != 2
                    or sorted(self.reads[kp]) != sorted([xv, (kt, tu.top[0])])
                    or pu.eltwise_param.coeff):
                return None
            return "mish", [k, kt, kp], pu.top[0]
        return None

    def relu6(self, k):
        p = self.items[k][0].clip_param
        return _F(p.min) == 0 and _F(p.max) == 6

    def chain_activation(self, k, name):
        """The activation that alone follows version (k, name): (act, last layer, top)."""
        rs = sorted(set(self.readers.get((k, name), [])))
        candidates = [r for r in rs if r not in self.done]
        if not candidates:
            return "linear", k, name
        first = min(candidates)
        act = self.activation_at(first)
        if act is None:
            return "linear", k, name
        act_name, ks, top = act
        extra = [r for r in rs if r not in ks]  # mish also reads x
        if extra:
            return "linear", k, name
        self.done.update(ks)
        return act_name, ks[-1], top

    def standalone_activation(self, k, act):
        act_name, ks, top = act
        ref = self.take(self.bottom(k))
        self.done.update(ks)
        self.set(ks[-1], top, self.emit("activation", ref.shape, activation=act_name))

    # --- layers ------------------------------------------------------------------------------
    def on_Input(self, k, u, layer):
        if self.net_section is not None or self.sections:
            raise _Refused("darknet has one input, first")
        dims = self.shape(u.top[0])
        if len(dims) == 2:
            dims = dims + (1, 1)
        if len(dims) != 4:
            raise _Refused(f"input shape {dims}: darknet takes N x C x H x W")
        self.net_section = section("net", batch=1, subdivisions=1, height=dims[2],
                                   width=dims[3], channels=dims[1])
        self.set(k, u.top[0], Ref(-1, dims[1:]))
        for t in u.top[1:]:  # labels: only losses and accuracy read them
            self.set(k, t, Ref(-1, ()))

    def on_Split(self, k, u, layer):
        ref = self.bottom(k)
        for t in u.top:
            self.set(k, t, ref)

    def on_Silence(self, k, u, layer):
        pass

    def on_Accuracy(self, k, u, layer):
        log.info("export-darknet: leaving out '%s' (Accuracy)", u.name)

    def on_Convolution(self, k, u, layer):
        g = layer.geom
        if len(g.kernel) != 2:
            raise _Refused("darknet convolutions are 2-D")
        if g.kernel[0] != g.kernel[1]:
            raise _Refused(f"kernel {g.kernel[0]}x{g.kernel[1]}: darknet's are square")
        if g.dilation != (1, 1):
            raise _Refused(f"dilation {g.dilation}: not supported")
        if g.pad[0] != g.pad[1]:
            raise _Refused(f"pad {g.pad[0]}x{g.pad[1]}: darknet pads all sides alike")
        if layer.channel_axis != 1:
            raise _Refused("darknet convolves along axis 1")
        self.take(self.bottom(k, spatial=True))
        n, c, size = layer.num_output, layer.channels, g.kernel[0]
        blobs = [b.cpu_data for b in layer.blobs]
        weights = blobs[0].reshape(n, c // layer.group, size, size)
        conv_bias = blobs[1] if layer.bias_term else None
        top, last, bn = self.batch_norm_chain(k, u.top[0], n, conv_bias)
        act, last, top = self.chain_activation(last, top)
        depthwise = self.depthwise and layer.group == c == n
        opts = {} if depthwise else {"filters": n}
        opts.update(size=size)
        sh, sw = g.stride
        if sh == sw:
            opts["stride"] = sh
        else:
            opts["stride_x"], opts["stride_y"] = sw, sh
        pad = g.pad[0]
        if pad and pad == size // 2:
            opts["pad"] = 1
        elif pad:
            opts["padding"] = pad
        if layer.group > 1 and not depthwise:
            opts["groups"] = layer.group
        if bn is not None:
            opts["batch_normalize"] = 1
        opts["activation"] = act
        out = self.shape(u.top[0])[1:]
        arrays = {"weights": weights}
        if bn is None:
            arrays["biases"] = np.zeros(n, _F) if conv_bias is None else conv_bias
        else:
            arrays.update(bn)
        kind = "depthwise_convolutional" if depthwise else "convolutional"
        self.set(last, top, self.emit(kind, out, arrays, **opts))

    on_DepthwiseConvolution = on_Convolution
    on_ConvolutionDepthwise = on_Convolution

    def on_InnerProduct(self, k, u, layer):
        p = u.inner_product_param
        if p.transpose or p.axis not in (1, -3):
            raise _Refused("darknet's connected layer flattens from axis 1, untransposed")
        self.take(self.bottom(k))
        w = layer.blobs[0].cpu_data
        n = w.shape[0]
        conv_bias = layer.blobs[1].cpu_data if p.bias_term else None
        top, last, bn = self.batch_norm_chain(k, u.top[0], n, conv_bias)
        act, last, top = self.chain_activation(last, top)
        arrays = {"weights": w.reshape(n, -1)}
        if bn is None:
            arrays["biases"] = np.zeros(n, _F) if conv_bias is None else conv_bias
        else:
            arrays.update(bn)
        opts = {"output": n}
        if bn is not None:
            opts["batch_normalize"] = 1
        opts["activation"] = act
        self.set(last, top, self.emit("connected", (n, 1, 1), arrays, **opts))

    def batch_norm_chain(self, k, top, n, conv_bias):
        """BatchNorm -> Scale... after a weighted layer: (top, last layer, darknet arrays or
        None)."""
        kb = self.sole_reader(k, top, {"BatchNorm"})
        if kb is None:
            return top, k, None
        bu, bl = self.items[kb]
        if len(bl.blobs) != 3:
            return top, k, None
        mean, var, sf = (b.cpu_data for b in bl.blobs)
        self.done.add(kb)
        last, top = kb, bu.top[0]
        factors, bias = [], None
        while True:
            ks = self.sole_reader(last, top, {"Scale"})
            if ks is None:
                break
            su, sl = self.items[ks]
            sp = su.scale_param
            if len(su.bottom) != 1 or sp.axis not in (1, -3) or sp.num_axes != 1:
                break
            s = sl.blobs[0].cpu_data.reshape(-1)
            if bias is not None:  # a bias before this scale is scaled by it
                bias = bias.astype(np.float64) * s
            factors.append(s)
            if sp.bias_term:
                b = sl.blobs[1].cpu_data.reshape(-1)
                bias = b.copy() if bias is None else bias + b
            self.done.add(ks)
            last, top = ks, su.top[0]
        eps = bu.batch_norm_param.eps
        scales, mean_d, var_d, bias_d = _bn.to_darknet(
            mean, var, eps, sf[0], factors, None if bias is None else bias.astype(_F),
            conv_bias)
        arrays = {"biases": bias_d, "scales": scales, "rolling_mean": mean_d,
                  "rolling_variance": var_d}
        return top, last, arrays

    def on_Pooling(self, k, u, layer):
        p = u.pooling_param
        ref = self.bottom(k, spatial=True)
        c, h, w = ref.shape
        if p.pool == 1:  # AVE
            if not (layer.kernel_h == h and layer.kernel_w == w and not layer.pad_h
                    and not layer.pad_w):
                raise _Refused("darknet's avgpool is global only")
            self.take(ref)
            self.set(k, u.top[0], self.emit("avgpool", (c, 1, 1)))
            return
        if p.pool != 0 or len(u.top) != 1:
            raise _Refused("darknet pools MAX (one top) or global AVE")
        if layer.kernel_h != layer.kernel_w:
            raise _Refused(f"kernel {layer.kernel_h}x{layer.kernel_w}: darknet's are square")
        size = layer.kernel_h
        top, last, keep = self.maxpool_crop(k, u.top[0])
        axes = []
        for n, pad, stride, (m, kept) in ((h, layer.pad_h, layer.stride_h, keep[0]),
                                          (w, layer.pad_w, layer.stride_w, keep[1])):
            axes.append((n, pad - m * stride, stride, kept))
        lefts = {a[1] for a in axes}
        padding = None
        if len(lefts) == 1 and min(lefts) >= 0:
            left = lefts.pop()
            cands = (2 * left, 2 * left + 1)
            if size - 1 in cands:  # darknet's default first: a converted cfg comes back as it was
                cands = (size - 1,) + cands
            for cand in cands:
                if all(int((n + cand - size) / s) + 1 == kept for n, _, s, kept in axes):
                    padding = cand
                    break
        if padding is None:
            raise _Refused(f"kernel {size}, stride {layer.stride_h}x{layer.stride_w}, pad "
                           f"{layer.pad_h}x{layer.pad_w} on {h}x{w} gives windows darknet's "
                           "maxpool cannot place")
        self.take(ref)
        opts = {"size": size}
        if layer.stride_h == layer.stride_w:
            opts["stride"] = layer.stride_h
        else:
            opts["stride_x"], opts["stride_y"] = layer.stride_w, layer.stride_h
        opts["padding"] = padding
        self.set(last, top, self.emit("maxpool", (c, axes[0][3], axes[1][3]), **opts))

    def maxpool_crop(self, k, top):
        """The converter's Slices that keep darknet's windows of a MAX pooling:
        (top, last layer, ((first, count) along h, (first, count) along w))."""
        shape = self.shape(top)
        keep = [(0, shape[2]), (0, shape[3])]
        last = k
        while True:
            ks = self.sole_reader(last, top, {"Slice"})
            if ks is None:
                break
            su = self.items[ks][0]
            axis = su.slice_param.axis
            if axis not in (2, 3):
                break
            used = [t for t in su.top if any(self.items[r][0].type != "Silence"
                                             for r in self.readers.get((ks, t), []))]
            if len(used) != 1:
                break
            t = used[0]
            start = sum(self.shape(x)[axis] for x in su.top[:list(su.top).index(t)])
            m0, _ = keep[axis - 2]
            keep[axis - 2] = (m0 + start, self.shape(t)[axis])
            self.done.add(ks)
            last, top = ks, t
        return top, last, keep

    def on_Concat(self, k, u, layer):
        p = u.concat_param
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        if axis % len(self.shape(u.top[0])) != 1:
            raise _Refused(f"axis {axis}: darknet's route joins channels")
        refs = [self.bottom(k, j) for j in range(len(u.bottom))]
        parts = {r.part for r in refs}
        if len(parts) == 1 and None not in parts:
            groups, gid = parts.pop()
            idx = [r.index - len(self.sections) for r in refs]
            c = sum(r.shape[0] // groups for r in refs)
            self.set(k, u.top[0], self.emit("route", (c,) + refs[0].shape[1:], layers=idx,
                                            groups=groups, group_id=gid))
            return
        refs = [self.materialise(r) for r in refs]
        if any(r.shape[1:] != refs[0].shape[1:] for r in refs):
            raise _Refused("route needs inputs of one size")
        idx = [r.index - len(self.sections) for r in refs]
        c = sum(r.shape[0] for r in refs)
        self.set(k, u.top[0], self.emit("route", (c,) + refs[0].shape[1:], layers=idx))

    def on_Slice(self, k, u, layer):
        p = u.slice_param
        axis = p.slice_dim if p.HasField("slice_dim") else p.axis
        ref = self.materialise(self.bottom(k))
        c = ref.shape[0]
        groups = len(u.top)
        if axis % len(self.shape(u.bottom[0])) != 1 or c % groups:
            raise _Refused("darknet's route groups= splits channels into equal groups")
        points = list(p.slice_point) or [c // groups * g for g in range(1, groups)]
        if points != [c // groups * g for g in range(1, groups)]:
            raise _Refused(f"slice points {points}: darknet's route groups= splits channels "
                           "into equal groups")
        for g, t in enumerate(u.top):
            self.set(k, t, Ref(ref.index, ref.shape, part=(groups, g)))

    def on_Eltwise(self, k, u, layer):
        p = u.eltwise_param
        if p.operation != 1 or len(u.bottom) != 2:
            raise _Refused("darknet's shortcut adds two blobs (Eltwise SUM of 2)")
        coeff = list(p.coeff) or [1.0, 1.0]
        a, b = (self.materialise(self.bottom(k, j, spatial=True)) for j in (0, 1))
        if a.shape != b.shape:
            raise _Refused(f"adds shapes {a.shape} and {b.shape}")
        if b.index == self.last() and a.index != self.last():
            a, b, coeff = b, a, coeff[::-1]
        if b.index < 0:
            raise _Refused("darknet's shortcut cannot add the network input")
        self.take(a)
        act, last, top = self.chain_activation(k, u.top[0])
        opts = {"from": b.index - len(self.sections)}
        if coeff != [1.0, 1.0]:
            opts.update(alpha=float(coeff[0]), beta=float(coeff[1]))
        opts["activation"] = act
        self.set(last, top, self.emit("shortcut", a.shape, **opts))

    def on_Dropout(self, k, u, layer):
        ref = self.take(self.bottom(k))
        self.set(k, u.top[0], self.emit("dropout", ref.shape,
                                        probability=float(_F(u.dropout_param.dropout_ratio))))

    def on_Power(self, k, u, layer):
        p = u.power_param
        ref = self.bottom(k)
        if p.power != 1 or p.shift != 0 or p.scale <= 0 or ref.temperature is not None:
            raise _Refused("darknet has no Power layer (only a softmax temperature)")
        self.set(k, u.top[0], Ref(ref.index, ref.shape, ref.part, 1.0 / float(_F(p.scale))))

    def on_Softmax(self, k, u, layer):
        ref = self.bottom(k)
        self.softmax(k, u, ref.temperature or 1.0, Ref(ref.index, ref.shape, ref.part))

    def softmax(self, k, u, temperature, ref):
        shape = self.shape(u.bottom[0])
        axis = u.softmax_param.axis % len(shape)
        if int(np.prod(shape[axis + 1:])) != 1:
            raise _Refused(f"softmax over axis {axis} of {shape}: darknet's runs over "
                           "contiguous runs of the flattened input")
        groups = int(np.prod(shape[1:axis]))
        ref = self.take(ref)
        opts = {"groups": groups}
        if temperature != 1:
            opts["temperature"] = temperature
        self.set(k, u.top[0], self.emit("softmax", ref.shape, **opts))

    def on_SoftmaxWithLoss(self, k, u, layer):
        self.on_Softmax(k, u, layer)
        ref = self.refs[(k, u.top[0])]
        self.set(k, u.top[0], self.emit("cost", ref.shape))

    def on_Flatten(self, k, u, layer):
        self.set(k, u.top[0], self.bottom(k))

    def on_Reshape(self, k, u, layer):
        ref = self.bottom(k)
        for match in (self.upsample, self.reorg_pattern):
            if match(k, u, ref):
                return
        self.set(k, u.top[0], ref)  # darknet's layers read memory, which Reshape keeps

    def upsample(self, k, u, ref):
        src, dst = self.shape(u.bottom[0]), self.shape(u.top[0])
        if len(src) != 4 or dst != (src[0], src[1], src[2], 1, src[3], 1):
            return False
        k1 = self.sole_reader(k, u.top[0], {"Concat"})
        if k1 is None:
            return False
        c1 = self.items[k1][0]
        s = len(c1.bottom)
        k2 = self.sole_reader(k1, c1.top[0], {"Concat"})
        if (c1.concat_param.axis != 5 or any(v != (k, u.top[0]) for v in self.reads[k1])
                or k2 is None):
            return False
        c2 = self.items[k2][0]
        k3 = self.sole_reader(k2, c2.top[0], {"Reshape"})
        if (c2.concat_param.axis != 3 or len(c2.bottom) != s
                or any(v != (k1, c1.top[0]) for v in self.reads[k2]) or k3 is None):
            return False
        r = self.items[k3][0]
        n, c, h, w = src
        if self.shape(r.top[0]) != (n, c, h * s, w * s):
            return False
        self.bottom(k, spatial=True)
        self.done.update((k1, k2, k3))
        last, top, scale = k3, r.top[0], 1.0
        kp = self.sole_reader(k3, top, {"Power"})
        if kp is not None:
            pp = self.items[kp][0].power_param
            if pp.power == 1 and pp.shift == 0:
                scale = float(_F(pp.scale))
                self.done.add(kp)
                last, top = kp, self.items[kp][0].top[0]
        self.take(ref)
        opts = {"stride": s}
        if scale != 1:
            opts["scale"] = scale
        self.set(last, top, self.emit("upsample", (c, h * s, w * s), **opts))
        return True

    def reorg_pattern(self, k, u, ref):
        src, split = self.shape(u.bottom[0]), self.shape(u.top[0])
        if len(src) != 4 or len(split) != 6:
            return False
        kp = self.sole_reader(k, u.top[0], {"Permute"})
        if kp is None or list(self.items[kp][0].permute_param.order) != [0, 3, 5, 1, 2, 4]:
            return False
        pu = self.items[kp][0]
        kr = self.sole_reader(kp, pu.top[0], {"Reshape"})
        if kr is None:
            return False
        n, c, h, w = src
        s = split[3]
        if split[5] != s or s <= 0:
            return False
        if split == (n, c // (s * s), h, s, w, s) and c % (s * s) == 0:
            semantics = "pjreddie"
        elif split == (n, c, h // s, s, w // s, s):
            semantics = "alexeyab"
        else:
            return False
        out = (c * s * s, h // s, w // s)
        ru = self.items[kr][0]
        if self.shape(ru.top[0])[1:] != out:
            return False
        self.bottom(k, spatial=True)
        if semantics == self.reorg:
            kind = "reorg"
        elif semantics == "pjreddie":
            kind = "reorg_old"  # AlexeyAB's name for pjreddie's reorg
        else:
            raise _Refused("AlexeyAB's reorg (a true space-to-depth) has no section in "
                           "pjreddie's darknet; export with reorg='alexeyab'")
        self.done.update((kp, kr))
        self.take(ref)
        self.set(kr, ru.top[0], self.emit(kind, out, stride=s))
        return True


def export_net(net, cfg_path, weights_path, header=None, depthwise=False, reorg="pjreddie",
               overwrite=True):
    ex = Exporter(net, depthwise=depthwise, reorg=reorg)
    ex.run()
    sections = [ex.net_section] + ex.sections
    text = format_cfg(sections)
    parsed = parse_cfg(text, cfg_path)
    _, layers = describe(parsed, reorg)
    for ly in layers:  # what we write must read back as the same shapes
        for name, shape in ly.weights:
            have = ex.arrays[ly.index][name].shape
            if int(np.prod(have)) != int(np.prod(shape)):
                raise DarknetError(f"internal: layer {ly.index} [{ly.kind}] {name} has shape "
                                   f"{have}, darknet expects {shape}")
    header = header or Header()
    from ...util.atomic import atomic_write_text
    atomic_write_text(cfg_path, text, overwrite=overwrite)
    write_weights(weights_path, header, layers, ex.arrays, overwrite=overwrite)
    return layers

