"""What each darknet section computes, as darknet defines it: its options with darknet's
defaults, its output shape, and the arrays it keeps in a .weights file.  Both directions of the
conversion go through these DkLayer descriptions."""
from .cfg import DarknetError, Section

ACTIVATIONS = ("linear", "leaky", "relu", "relu6", "logistic", "tanh", "swish", "mish", "elu")
HEADS = ("yolo", "region", "detection", "gaussian_yolo")
REORG_SEMANTICS = ("pjreddie", "alexeyab")
# darknet's batch norm divides by sqrt(var) + BN_EPS (normalize_cpu in blas.c)
BN_EPS = 1e-6

# options that only training reads (the learning rate scale of a layer, freezing, ...)
_TRAINING = {"stopbackward", "train_only_bn", "dontupdate", "learning_rate", "burnin_update"}
# options this converter accepts only at darknet's default, since they change the numbers
_DEFAULT_ONLY = {"binary": 0, "xnor": 0, "flipped": 0, "dilation": 1, "dontload": 0,
                 "dontloadscales": 0, "numload": 0, "antialiasing": 0, "maxpool_depth": 0,
                 "reverse": 0, "flatten": 0, "extra": 0, "spatial": 0, "dropblock": 0,
                 "weights_type": "none", "weights_normalization": "none", "share_index": -1,
                 "deform": 0, "coordconv": 0, "assisted_excitation": 0}


class DkLayer:
    """One darknet layer: `index`, `kind`, `p` (its options with defaults applied), `in_shape`
    and `out_shape` as (c, h, w) (None for a detection head), `inputs` (the layer indices it
    reads), and `weights`: [(name, shape)] in .weights file order."""

    def __init__(self, section, in_shape, inputs):
        self.section, self.index, self.kind = section, section.index, section.kind
        self.in_shape, self.inputs = in_shape, inputs
        self.p, self.weights, self.out_shape = {}, [], None

    @property
    def head(self):
        return self.kind in HEADS

    def error(self, detail):
        return self.section.error(detail)

    def __repr__(self):
        return f"<DkLayer {self.index} [{self.kind}] {self.in_shape} -> {self.out_shape}>"


def _check(s, known, extra_ignored=()):
    for k, default in _DEFAULT_ONLY.items():
        if k in s.options and k not in known:
            v = s.options[k]
            ok = (v == default) if isinstance(default, str) else _is_int(v, default)
            if not ok:
                raise s.error(f"'{k}={v}' is not supported (only darknet's default "
                              f"{k}={default})")
    s.check_keys(set(known) | set(_DEFAULT_ONLY), _TRAINING | set(extra_ignored))


def _is_int(v, want):
    try:
        return int(v) == want
    except ValueError:
        return False


def _activation(s, default):
    act = s.str("activation", default)
    if act not in ACTIVATIONS:
        raise s.error(f"activation '{act}' has no exact caffe-lite construction (supported: "
                      f"{', '.join(ACTIVATIONS)})")
    return act


def _spatial(ly, h, w):
    if h <= 0 or w <= 0:
        c, ih, iw = ly.in_shape
        raise ly.error(f"gives an empty output {h}x{w} for input {ih}x{iw}")


def _bn(n):
    return [("scales", (n,)), ("rolling_mean", (n,)), ("rolling_variance", (n,))]


def _conv(ly, s, depthwise=False):
    c, h, w = ly.in_shape
    known = ["size", "stride", "stride_x", "stride_y", "pad", "padding", "batch_normalize",
             "activation"]
    _check(s, known + ([] if depthwise else ["filters", "groups"]),
           ["filters", "groups"] if depthwise else ())
    if h <= 0 or w <= 0 or c <= 0:
        raise s.error(f"needs an image input, got c={c} h={h} w={w}")
    size, stride = s.int("size", 1), s.int("stride", 1)
    sy, sx = s.int("stride_y", stride), s.int("stride_x", stride)
    padding = s.int("padding", 0)
    if s.int("pad", 0):
        padding = size // 2
    if depthwise:
        n = groups = c
    else:
        n, groups = s.int("filters", 1), s.int("groups", 1)
    if size <= 0 or sy <= 0 or sx <= 0 or n <= 0 or groups <= 0 or padding < 0:
        raise s.error(f"size {size}, stride {sy}x{sx}, padding {padding}, filters {n} and "
                      f"groups {groups} must be positive (padding >= 0)")
    if c % groups or n % groups:
        raise s.error(f"groups={groups} must divide the input channels ({c}) and filters "
                      f"({n})")
    bn = bool(s.int("batch_normalize", 0))
    ly.p = dict(filters=n, size=size, stride_h=sy, stride_w=sx, padding=padding, groups=groups,
                bn=bn, activation=_activation(s, "logistic"))
    oh, ow = (h + 2 * padding - size) // sy + 1, (w + 2 * padding - size) // sx + 1
    _spatial(ly, oh, ow)
    ly.out_shape = (n, oh, ow)
    ly.weights = [("biases", (n,))] + (_bn(n) if bn else []) + \
                 [("weights", (n, c // groups, size, size))]


def _connected(ly, s):
    _check(s, ["output", "activation", "batch_normalize"])
    n = s.int("output", 1)
    if n <= 0:
        raise s.error(f"output={n} must be positive")
    inputs = ly.in_shape[0] * ly.in_shape[1] * ly.in_shape[2]
    bn = bool(s.int("batch_normalize", 0))
    ly.p = dict(output=n, bn=bn, activation=_activation(s, "logistic"))
    ly.out_shape = (n, 1, 1)
    ly.weights = [("biases", (n,)), ("weights", (n, inputs))] + (_bn(n) if bn else [])


def _maxpool(ly, s):
    _check(s, ["size", "stride", "stride_x", "stride_y", "padding"], ["out_channels"])
    c, h, w = ly.in_shape
    stride = s.int("stride", 1)
    size = s.int("size", stride)
    sy, sx = s.int("stride_y", stride), s.int("stride_x", stride)
    padding = s.int("padding", size - 1)
    if size <= 0 or sy <= 0 or sx <= 0 or padding < 0:
        raise s.error(f"size {size} and stride {sy}x{sx} must be positive, padding {padding} "
                      ">= 0")
    ly.p = dict(size=size, stride_h=sy, stride_w=sx, padding=padding)
    # C's integer division truncates towards zero: (h + padding - size) / stride + 1
    oh = int((h + padding - size) / sy) + 1
    ow = int((w + padding - size) / sx) + 1
    _spatial(ly, oh, ow)
    ly.out_shape = (c, oh, ow)


def _avgpool(ly, s):
    _check(s, [])
    ly.out_shape = (ly.in_shape[0], 1, 1)


def _softmax(ly, s):
    _check(s, ["groups", "temperature"], ["noloss"])
    if s.has("tree"):
        raise s.error("softmax trees (tree=) are not supported")
    groups = s.int("groups", 1)
    inputs = ly.in_shape[0] * ly.in_shape[1] * ly.in_shape[2]
    if groups <= 0 or inputs % groups:
        raise s.error(f"groups={groups} must divide the {inputs} inputs")
    ly.p = dict(groups=groups, temperature=s.float("temperature", 1.0))
    if ly.p["temperature"] <= 0:
        raise s.error(f"temperature={ly.p['temperature']} must be positive")
    ly.out_shape = ly.in_shape


def _dropout(ly, s):
    _check(s, ["probability"], ["dropblock_size_rel", "dropblock_size_abs"])
    p = s.float("probability", 0.5)
    if not 0 <= p < 1:
        raise s.error(f"probability={p} must be in [0, 1)")
    ly.p = dict(probability=p)
    ly.out_shape = ly.in_shape


def _activation_layer(ly, s):
    _check(s, ["activation"])
    ly.p = dict(activation=_activation(s, "linear"))
    ly.out_shape = ly.in_shape


def _cost(ly, s):
    # the training loss: nothing at inference (the output is the input)
    s.check_keys(set(), {"type", "scale", "ratio", "noobject_scale", "thresh"} | _TRAINING)
    ly.p = dict(type=s.str("type", "sse"))
    ly.out_shape = ly.in_shape


def _upsample(ly, s):
    _check(s, ["stride", "scale"])
    stride, scale = s.int("stride", 2), s.float("scale", 1.0)
    if stride <= 0:
        raise s.error(f"stride={stride}: only upsampling (stride > 0) is supported")
    c, h, w = ly.in_shape
    ly.p = dict(stride=stride, scale=scale)
    ly.out_shape = (c, h * stride, w * stride)


def _reorg(ly, s, semantics):
    _check(s, ["stride"])
    stride = s.int("stride", 1)
    c, h, w = ly.in_shape
    if stride <= 0 or h % stride or w % stride:
        raise s.error(f"stride={stride} must be positive and divide the input size {h}x{w}")
    if semantics == "pjreddie" and c % (stride * stride):
        raise s.error(f"pjreddie's reorg needs the channels ({c}) to be a multiple of "
                      f"stride^2 = {stride * stride}")
    ly.p = dict(stride=stride, semantics=semantics)
    ly.out_shape = (c * stride * stride, h // stride, w // stride)


def _head(ly, s):
    ly.p = dict(s.options)
    ly.out_shape = ly.in_shape  # darknet's heads pass their input's shape on


def _index(ly, s, key, rel):
    i = ly.index + rel if rel < 0 else rel
    if not 0 <= i < ly.index:
        raise s.error(f"{key} refers to layer {i}, which is not an earlier layer")
    return i


def _route(ly, s, layers):
    _check(s, ["layers", "groups", "group_id"])
    refs = s.ints("layers")
    if not refs:
        raise s.error("needs layers=")
    ly.inputs = [_index(ly, s, "layers", r) for r in refs]
    groups, gid = s.int("groups", 1), s.int("group_id", 0)
    if groups <= 0 or not 0 <= gid < groups:
        raise s.error(f"groups={groups}, group_id={gid}: need 0 <= group_id < groups")
    shapes = [_source(ly, layers[i]) for i in ly.inputs]
    for i, (c, h, w) in zip(ly.inputs, shapes):
        if (h, w) != shapes[0][1:]:
            raise s.error(f"layer {i} is {h}x{w} but layer {ly.inputs[0]} is "
                          f"{shapes[0][1]}x{shapes[0][2]}: route needs equal sizes")
        if c % groups:
            raise s.error(f"groups={groups} does not divide layer {i}'s {c} channels")
    ly.p = dict(groups=groups, group_id=gid)
    ly.out_shape = (sum(c // groups for c, _, _ in shapes),) + shapes[0][1:]


def _shortcut(ly, s, layers):
    _check(s, ["from", "activation", "alpha", "beta"])
    refs = s.ints("from")
    if len(refs) != 1:
        raise s.error(f"from={s.options['from']}: only one source layer is supported")
    src = _index(ly, s, "from", refs[0])
    ly.inputs = [ly.index - 1, src]
    shape = _source(ly, layers[src])
    if shape != ly.in_shape:
        raise s.error(f"adds layer {src}'s output {shape} to an input of shape "
                      f"{ly.in_shape}: only equal shapes are supported")
    ly.p = dict(src=src, activation=_activation(s, "linear"), alpha=s.float("alpha", 1.0),
                beta=s.float("beta", 1.0))
    ly.out_shape = ly.in_shape


def _source(ly, src):
    if src.head:
        raise ly.error(f"reads the output of layer {src.index} [{src.kind}], a detection "
                       "head, which is left to the user")
    return src.out_shape


def net_input(net):
    """(c, h, w) of the network input, from [net]."""
    h, w, c = net.int("height", 0), net.int("width", 0), net.int("channels", 0)
    inputs = net.int("inputs", h * w * c)
    if not (h and w and c):
        if inputs <= 0:
            raise net.error("no input size: set height=, width= and channels= (or inputs=)")
        return (inputs, 1, 1)
    if h < 0 or w < 0 or c < 0:
        raise net.error(f"height={h}, width={w}, channels={c} must be positive")
    return (c, h, w)


def describe(sections, reorg="pjreddie"):
    """(input (c, h, w), [DkLayer]) for parsed cfg sections."""
    if reorg not in REORG_SEMANTICS:
        raise DarknetError(f"reorg semantics '{reorg}': expected one of "
                           f"{', '.join(REORG_SEMANTICS)}")
    shape = net_input(sections[0])
    layers = []
    for s in sections[1:]:
        prev = layers[-1] if layers else None
        ly = DkLayer(s, shape, [s.index - 1] if s.index else [])
        if prev is not None and prev.head and s.kind not in ("route",) + HEADS:
            raise s.error(f"takes the output of layer {prev.index} [{prev.kind}], a detection "
                          "head, which is left to the user")
        kind = s.kind
        if kind == "convolutional":
            _conv(ly, s)
        elif kind == "depthwise_convolutional":
            _conv(ly, s, depthwise=True)
        elif kind in ("route", "shortcut"):
            (_route if kind == "route" else _shortcut)(ly, s, layers)
        elif kind in ("reorg", "reorg_old"):
            _reorg(ly, s, "pjreddie" if kind == "reorg_old" else reorg)
        elif kind in SIMPLE:
            SIMPLE[kind](ly, s)
        else:
            raise s.error(f"no caffe-lite equivalent for [{kind}] (supported: "
                          f"{', '.join(SUPPORTED)}; detection heads {', '.join(HEADS)} are "
                          "left to the user)")
        layers.append(ly)
        shape = ly.out_shape
    return sections[0], layers


SIMPLE = {"connected": _connected, "maxpool": _maxpool, "avgpool": _avgpool,
          "softmax": _softmax, "dropout": _dropout, "cost": _cost, "upsample": _upsample,
          "activation": _activation_layer, **{h: _head for h in HEADS}}
SUPPORTED = ("convolutional", "depthwise_convolutional", "connected", "maxpool", "avgpool",
             "softmax", "dropout", "route", "shortcut", "upsample", "reorg", "reorg_old",
             "activation", "cost")


def section(kind, **options):
    """A Section for writing a cfg (`index` filled in by the caller)."""
    from .cfg import number
    s = Section(kind, 0, None)
    for k, v in options.items():
        if isinstance(v, (list, tuple)):
            s.options[k] = ",".join(str(x) for x in v)
        elif isinstance(v, float):
            s.options[k] = number(v)
        else:
            s.options[k] = str(v)
    return s
