"""draw: pictures of nets, pycaffe's caffe.draw (pydot and Graphviz's `dot`), and
caffe-lite's pruning view: given a caffemodel, every prunable layer shows the fraction of its
weights that are nonzero and its node is shaded by it (pale = sparse), so a pruned net's
profile shows at a glance.

    from caffe_lite import draw, io
    net = io.load_message("train_val.prototxt", caffe_pb2.NetParameter)[0]
    draw.draw_net_to_file(net, "net.png", rankdir="LR", phase=caffe_pb2.TRAIN)
    draw.draw_net_to_file(net, "pruned.png", densities=draw.weight_densities(net, "p.caffemodel"))

The CLI: `caffe-lite draw -model M [-weights W] -output net.png|svg [-rankdir LR] [-phase TRAIN]`.
Needs `pip install 'caffe-lite[draw]'` (pydot) and Graphviz (`apt-get install graphviz`); the
module itself imports without them and says what is missing when asked to draw."""
import numpy as np

from .errors import CaffeLiteError
from .net_builder import state_meets_rule
from .proto import caffe_pb2
from .util.atomic import atomic_write_bytes

# pycaffe's node styles
LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
LEARNING_LAYERS = ("Convolution", "Deconvolution", "InnerProduct")


class DrawError(CaffeLiteError, ValueError):
    """A net that cannot be drawn as asked (pycaffe raises ValueError)."""


class GraphvizError(CaffeLiteError, OSError):
    """pydot or Graphviz's `dot` is missing, or dot failed."""


def _pydot():
    try:
        import pydot
    except ImportError:
        raise GraphvizError("drawing nets needs pydot: pip install 'caffe-lite[draw]' (and "
                            "Graphviz's dot: apt-get install graphviz)") from None
    return pydot


def get_pooling_types_dict():
    """{PoolingParameter.PoolMethod number: name}"""
    return {v.number: k for k, v in
            caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR.values_by_name.items()}


def get_edge_label(layer):
    """The label of a layer's edges to its tops: the batch size of a Data layer, num_output
    of Convolution / Deconvolution / InnerProduct, else none ('""')."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer):
    """(weight lr_mult, bias lr_mult) of a Convolution, Deconvolution or InnerProduct layer."""
    if layer.type not in LEARNING_LAYERS:
        raise DrawError(f"{layer.type} layers do not have a learning rate multiplier")
    specs = list(layer.param)
    if len(specs) > 2:
        raise DrawError(f"layer '{layer.name}': could not parse the learning rate multiplier "
                        f"({len(specs)} param entries)")
    mults = [s.lr_mult for s in specs] + [1.0] * (2 - len(specs))
    return tuple(mults)


def _first(values, default):
    return values[0] if len(values) else default


def get_layer_label(layer, rankdir, display_lrm=False, density=None):
    """A layer's node label: name, (type), the kernel / stride / pad of spatial layers, the lr
    multipliers (display_lrm) and the weight density when given; words are separated by a
    space in vertical layouts (TB, BT) and by line breaks in horizontal ones."""
    sep = " " if rankdir in ("TB", "BT") else r"\n"
    parts = [layer.name]
    if layer.type == "Pooling":
        pool = get_pooling_types_dict()[layer.pooling_param.pool]
        parts.append(f"({layer.type} {pool})")
    else:
        parts.append(f"({layer.type})")
    if layer.type in ("Convolution", "Deconvolution", "Pooling"):
        if layer.type == "Pooling":
            p = layer.pooling_param
            ks, stride, pad = p.kernel_size, p.stride, p.pad
        else:
            p = layer.convolution_param
            ks, stride, pad = (_first(p.kernel_size, 1), _first(p.stride, 1),
                               _first(p.pad, 0))
        parts.append(sep.join([f"kernel size: {ks}", f"stride: {stride}", f"pad: {pad}"]))
    if display_lrm and layer.type in LEARNING_LAYERS:
        lrm = get_layer_lr_mult(layer)
        if any(lrm):
            parts.append(f"lr mult: {lrm[0]:.1f}, {lrm[1]:.1f}")
    if density is not None:
        parts.append(f"density: {100 * density:.1f} %")
    label = sep.join(parts).replace('"', r"\"")
    return f'"{label}"'


def choose_color_by_layertype(layertype):
    """Convolution / Deconvolution red, Pooling orange, InnerProduct purple, others blue."""
    return {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
            "InnerProduct": "#CC33FF"}.get(layertype, "#6495ED")


def shade(color, density):
    """`color` faded toward white by a layer's weight density (1: the color, 0: white)."""
    d = min(max(float(density), 0.0), 1.0)
    rgb = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(255 - d * (255 - c)):02X}" for c in rgb)


def _included(layer, phase):
    if phase is None:
        return True
    if layer.include and layer.exclude:
        raise DrawError(f"layer '{layer.name}' has both include and exclude specified")
    state = caffe_pb2.NetState(phase=phase)
    if layer.include:
        return any(state_meets_rule(state, r) for r in layer.include)
    return not any(state_meets_rule(state, r) for r in layer.exclude)


def get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False,
                    densities=None):
    """A pydot graph of a NetParameter: a node per layer and per blob, edges bottom -> layer
    -> top.  phase (caffe_pb2.TRAIN / TEST) keeps only that phase's layers (Caffe's include /
    exclude rules); densities ({layer name: fraction of nonzero weights}) label and shade
    those layers."""
    pydot = _pydot()
    densities = densities or {}
    graph = pydot.Dot(caffe_net.name or "Net", graph_type="digraph", rankdir=rankdir)
    blob_ids = {}

    def blob_node(name):
        if name not in blob_ids:
            blob_ids[name] = f"blob{len(blob_ids)}"
            graph.add_node(pydot.Node(blob_ids[name], label=f'"{name}"', **BLOB_STYLE))
        return blob_ids[name]

    for i, layer in enumerate(caffe_net.layer):
        if not _included(layer, phase):
            continue
        density = densities.get(layer.name)
        label = get_layer_label(layer, rankdir, display_lrm=display_lrm, density=density)
        in_place = len(layer.bottom) == 1 and len(layer.top) == 1 and \
            layer.bottom[0] == layer.top[0]
        style = dict(NEURON_LAYER_STYLE if in_place else LAYER_STYLE_DEFAULT)
        if not in_place:
            style["fillcolor"] = choose_color_by_layertype(layer.type)
        if density is not None:
            style["fillcolor"] = shade(style["fillcolor"], density)
        node = f"layer{i}"
        graph.add_node(pydot.Node(node, label=label, **style))
        for b in layer.bottom:
            graph.add_edge(pydot.Edge(blob_node(b), node, label='""'))
        edge_label = get_edge_label(layer) if label_edges else '""'
        for t in layer.top:
            graph.add_edge(pydot.Edge(node, blob_node(t), label=edge_label))
    if densities:
        graph.set_label('"shade: fraction of nonzero weights (pale = sparse)"')
        graph.set_labelloc("b")
    return graph


def draw_net(caffe_net, rankdir, ext="png", phase=None, display_lrm=False, densities=None):
    """The picture as bytes in format `ext` (png, svg, pdf, ...; 'raw' gives the dot source)."""
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm,
                            densities=densities)
    if ext == "raw":
        return graph.to_string().encode()
    try:
        return graph.create(format=ext)
    except FileNotFoundError:
        raise GraphvizError("drawing nets needs Graphviz's dot program (apt-get install "
                            "graphviz, or see graphviz.org)") from None
    except Exception as exc:  # dot's own complaint (an unknown format, ...)
        raise GraphvizError(f"dot could not draw the net as '{ext}': "
                            f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}") \
            from None


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None, display_lrm=False,
                     densities=None, overwrite=True):
    """Write the picture to `filename` (atomically), in the format its extension names."""
    filename = str(filename)
    ext = filename[filename.rfind(".") + 1:]
    atomic_write_bytes(filename, draw_net(caffe_net, rankdir, ext, phase, display_lrm,
                                          densities), overwrite=overwrite)


def weight_densities(caffe_net, weights):
    """{layer name: fraction of nonzero weights} for the prunable layers of `caffe_net` (a
    NetParameter) found in the caffemodel `weights` (binary or HDF5)."""
    from .io.caffemodel import load_weights
    from .layers import LAYERS
    types = {l.name: l.type for l in caffe_net.layer}
    out = {}
    for name, arrays in load_weights(weights):
        cls = LAYERS.get(types.get(name))
        if cls is None or not cls.prunable or not arrays or arrays[0] is None:
            continue
        w = np.asarray(arrays[0])
        out[name] = float(np.count_nonzero(w)) / max(w.size, 1)
    return out


__all__ = ["LAYER_STYLE_DEFAULT", "NEURON_LAYER_STYLE", "BLOB_STYLE", "get_pooling_types_dict",
           "get_edge_label", "get_layer_lr_mult", "get_layer_label", "choose_color_by_layertype",
           "get_pydot_graph", "draw_net", "draw_net_to_file", "weight_densities", "shade"]
