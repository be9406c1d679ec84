"""coord_map: how spatial coordinates map between the tops of a NetSpec, pycaffe's module of
that name (FCN's way to compute Crop offsets).

A map is (axis, a, b): a coordinate y in one top is a * y + b in the other, along every
spatial axis after `axis` (a and b are arrays, one value per spatial axis or one for all;
axis None means "any", as for pointwise layers).  A Convolution / Pooling of kernel k
(dilated: (k - 1) * dilation + 1), stride s and pad p maps its bottom to its top by
(1 / s, (p - (k - 1) / 2) / s); a Deconvolution by (s, (k - 1) / 2 - p); a Crop by (1, -offset);
pointwise layers by (None, 1, 0).

    from caffe_lite import layers as L
    from caffe_lite.coord_map import crop
    n.score = crop(n.upscore, n.data)     # a Crop layer aligning upscore with data

`coord_map_from_to(top_from, top_to)` walks back from both tops to a common ancestor and
gives the map from top_from's coordinates to top_to's."""
import numpy as np

from .errors import CaffeLiteError
from .net_spec import PARAM_FIELD, layers as L

CONV_LAYERS = ["Convolution", "Pooling", "Im2col", "DepthwiseConvolution",
               "ConvolutionDepthwise"]
PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU",
                       "Log", "LRN", "Exp", "MVN", "Power", "ReLU", "PReLU", "Scale",
                       "Sigmoid", "Split", "TanH", "Threshold"]


class UndefinedMapException(CaffeLiteError):
    """A layer type whose coordinate mapping is not defined (InnerProduct, ...)."""


class AxisMismatchException(CaffeLiteError):
    """Two maps along different axes cannot be composed."""


class DisconnectedTopsError(CaffeLiteError, RuntimeError):
    """No chain of spatial layers connects the two tops (pycaffe raises RuntimeError)."""


class CropError(CaffeLiteError, AssertionError):
    """A crop that cannot be made: scales differ, or the offset is negative or fractional
    (pycaffe's crop() fails an assert, so this is also an AssertionError)."""


def _layer_params(fn):
    """The layer's own parameters: its `<type>_param` dict when given, else the keyword
    arguments (NetSpec puts both forms in the same proto)."""
    field = PARAM_FIELD.get(fn.type_name)
    sub = fn.params.get(field) if field else None
    return sub if isinstance(sub, dict) else fn.params


def _per_axis(params, name, default, h_w=None):
    """A repeated spatial parameter as an array; the legacy _h / _w pair when given."""
    if h_w is not None and (h_w[0] in params or h_w[1] in params):
        base = params.get(name, default)
        base = int(np.ravel(base)[0]) if np.size(base) else default
        return np.array([params.get(h_w[0], base), params.get(h_w[1], base)], ndmin=1)
    return np.array(params.get(name, default), ndmin=1)


def conv_params(fn):
    """(axis, stride, effective kernel size, pad) of a Convolution-like or Pooling Function;
    kernel_h / kernel_w, stride_h / stride_w and pad_h / pad_w are read as (h, w) pairs."""
    p = _layer_params(fn)
    axis = p.get("axis", 1)
    if "kernel_size" not in p and "kernel_h" not in p:
        raise UndefinedMapException(f"{fn.type_name}: no kernel_size (global pooling has no "
                                    "coordinate mapping)")
    ks = _per_axis(p, "kernel_size", 1, ("kernel_h", "kernel_w"))
    dilation = np.array(p.get("dilation", 1), ndmin=1)
    stride = _per_axis(p, "stride", 1, ("stride_h", "stride_w"))
    pad = _per_axis(p, "pad", 0, ("pad_h", "pad_w"))
    return axis, stride, (ks - 1) * dilation + 1, pad


def crop_params(fn):
    """(axis, offset) of a Crop Function (Caffe's defaults: axis 2, offset 0)."""
    p = _layer_params(fn)
    return p.get("axis", 2), np.array(p.get("offset", 0), ndmin=1)


def coord_map(fn):
    """The (axis, a, b) map from a layer's bottom coordinates to its top coordinates."""
    t = fn.type_name
    if t in CONV_LAYERS:
        axis, stride, ks, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (ks - 1) / 2) / stride
    if t == "Deconvolution":
        axis, stride, ks, pad = conv_params(fn)
        return axis, stride, (ks - 1) / 2 - pad
    if t in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if t == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset  # a map's axis is the last non-spatial one
    raise UndefinedMapException(f"{t} layers have no coordinate mapping")


def compose(base_map, next_map):
    """base_map after next_map: scales multiply, next_map's shift is scaled by base_map's."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise AxisMismatchException(f"cannot compose coordinate maps along axis {ax1} and "
                                    f"axis {ax2}")
    return ax, a1 * a2, a1 * b2 + b1


def inverse(coord_map):
    """The map back: y = a x + b  ->  x = y / a - b / a."""
    ax, a, b = coord_map
    return ax, 1 / a, -b / a


def _mapped_bottoms(top):
    # A Crop's second bottom only gives the size to crop to: its coordinates do not flow.
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == "Crop" else bottoms


def _ancestor_maps(start):
    """{top: map from that top's coordinates to start's} for start and its mappable
    ancestors, breadth first."""
    maps = {start: (None, 1, 0)}
    frontier = [start]
    while frontier:
        top = frontier.pop(0)
        try:
            m = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _mapped_bottoms(top):
            if bottom not in maps:
                maps[bottom] = compose(maps[top], m)
                frontier.append(bottom)
    return maps


def coord_map_from_to(top_from, top_to):
    """The map (axis, a, b) taking top_from's coordinates to top_to's, through their nearest
    common ancestor."""
    from_maps = _ancestor_maps(top_from)
    to_maps = {top_to: (None, 1, 0)}
    frontier = [top_to]
    while frontier:
        top = frontier.pop(0)
        if top in from_maps:
            return compose(to_maps[top], inverse(from_maps[top]))
        try:
            m = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _mapped_bottoms(top):
            if bottom not in to_maps:
                to_maps[bottom] = compose(to_maps[top], m)
                frontier.append(bottom)
    raise DisconnectedTopsError("cannot compute the coordinate map between the tops: no chain "
                                "of spatial layers connects them")


def crop(top_from, top_to):
    """A Crop layer (NetSpec Top) that crops top_from to align with top_to."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    a, b = np.asarray(a, float), np.asarray(b, float)
    if not (a == 1).all():
        raise CropError(f"scale mismatch on crop (a = {a}): the tops are at different "
                        "resolutions")
    if not (b <= 0).all():
        raise CropError(f"cannot crop negative width (b = {b}): top_from is smaller than "
                        "top_to")
    if not (np.round(b) == b).all():
        raise CropError(f"cannot crop noninteger width (b = {b})")
    axis = 2 if ax is None else int(ax) + 1  # Crop's axis is the first cropped one
    return L.Crop(top_from, top_to,
                  crop_param=dict(axis=axis, offset=[int(v) for v in -np.round(b)]))


__all__ = ["conv_params", "crop_params", "coord_map", "compose", "inverse",
           "coord_map_from_to", "crop", "UndefinedMapException", "AxisMismatchException",
           "PASS_THROUGH_LAYERS"]
