"""ONNX export: a TEST-phase caffe-lite Net, with its weights, as an ONNX model that ONNX Runtime
(or any ONNX consumer) runs to the same numbers.  The net's data and Input layers become the
graph inputs (what reaches the first layer, after any transform_param); loss, Accuracy and
Silence layers are left out, and the blobs they judged (their first bottom: the predictions)
become outputs beside the net's own; every other layer maps to ONNX operators by a converter
per Caffe type (`converters.py`), which reads the built layer, so Caffe's defaults, ceil-rounded
pooling and BatchNorm's scale-factor blob come out exactly as caffe-lite computes them.  Weights
are written as they are, so pruned zeros stay zeros.  Layers with no ONNX equivalent are all
named in one CaffeLiteError.  Needs the `onnx` package (`pip install caffe-lite[onnx]`)."""
import dataclasses

from ...errors import CaffeLiteError
from ...proto import caffe_pb2
from .converters import CONVERTERS, Refused, Site
from .graph import Graph

MIN_OPSET = 13      # Softmax over one axis, Split/Slice/Pad/Clip with tensor inputs
MAX_OPSET = 21
DEFAULT_OPSET = 17
DATA_LAYERS = {"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData",
               "Input"}
DROPPED_LAYERS = {"Accuracy", "Silence"}   # and every loss layer (type ending in "Loss")


def _onnx():
    try:
        import onnx
        import onnx.numpy_helper  # noqa: F401
    except ImportError:
        raise CaffeLiteError("ONNX export needs the onnx package: pip install "
                             "'caffe-lite[onnx]' (or pip install onnx)") from None
    return onnx


def exportable_types():
    """The Caffe layer types the exporter converts (data layers become graph inputs)."""
    return sorted(set(CONVERTERS) | DATA_LAYERS)


def _label(net):
    return f"net '{net.name}'" if net.name else "the net"


def _dropped(layer_type):
    return layer_type in DROPPED_LAYERS or layer_type.endswith("Loss")


@dataclasses.dataclass
class Export:
    """What `to_onnx` made: the model (and its serialized bytes, as written to a file), its
    opset, its inputs and outputs ({name: shape}), the Caffe
    blob each output holds ({output name: blob name}: the same name unless it had to change,
    e.g. a blob changed in place from a graph input), the layers left out ([(name, type)]),
    and how many prunable weights (Convolution, Deconvolution, InnerProduct) it holds and how
    many of them are zero."""
    model: object
    data: bytes
    opset: int
    inputs: dict
    outputs: dict
    output_blobs: dict
    dropped: list
    weights: int
    zeros: int
    notes: list = dataclasses.field(default_factory=list)


def input_notes(layer_params, phase=caffe_pb2.TEST):
    """One line per data layer (of `phase`) whose transform_param changes the data before
    the first layer: the exported model takes the data after it."""
    notes = []
    for lp in layer_params:
        if lp.type not in DATA_LAYERS or not lp.HasField("transform_param"):
            continue
        if lp.include and all(r.HasField("phase") and r.phase != phase for r in lp.include):
            continue
        t = lp.transform_param
        steps = [f"{f.name} {v if f.name != 'mean_value' else list(v)}"
                 for f, v in t.ListFields() if f.name not in ("mirror", "force_color",
                                                              "force_gray")]
        if steps:
            notes.append(f"the graph input '{lp.top[0]}' is layer '{lp.name}'s output: apply "
                         f"its transform_param ({', '.join(steps)}) before feeding the model")
    return notes


def check_opset(opset):
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise CaffeLiteError(f"ONNX opset {opset!r} is not supported: the exporter writes "
                             f"opsets {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})")
    return opset


def to_onnx(net, opset=DEFAULT_OPSET, outputs=None):
    """The ONNX model of `net` (a TEST-phase Net) as an Export.

    outputs: blob names to expose (default: the net's outputs that are not losses, plus the
    predictions its loss and Accuracy layers read).  Only what they depend on is kept."""
    onnx = _onnx()
    check_opset(opset)
    if net.phase != caffe_pb2.TEST:
        raise CaffeLiteError(f"{_label(net)} was built for the TRAIN phase; ONNX export "
                             "writes what the net computes in TEST (build it with "
                             "caffe_lite.TEST)")
    g = Graph(opset)
    names = net.blob_names
    current = {}            # blob id -> tensor id holding its latest value
    shapes = {}             # blob id -> shape
    wanted, dropped, refused = [], [], []
    for lid, layer in enumerate(net.layers):
        lp = layer.layer_param
        bids, tids = net.bottom_ids[lid], net.top_ids[lid]
        shapes.update((t, top.shape) for t, top in zip(tids, net.top_vecs[lid]))
        if lp.type in DATA_LAYERS and not bids:
            for tid, top in zip(tids, net.top_vecs[lid]):
                current[tid] = g.add_input(names[tid], top.shape)
            continue
        if _dropped(lp.type):
            dropped.append((lp.name, lp.type))
            if lp.type != "Silence" and bids and bids[0] in current:
                wanted.append((current[bids[0]], bids[0]))
            continue
        if any(b not in current for b in bids):
            continue  # fed by a refused layer: that one is reported
        convert = CONVERTERS.get(lp.type)
        if convert is None:
            refused.append(f"'{lp.name}' ({lp.type}): no ONNX mapping for this layer type")
            continue
        site = Site(layer, lp.name, lp.type, [current[b] for b in bids],
                    [b.shape for b in net.bottom_vecs[lid]],
                    [t.shape for t in net.top_vecs[lid]])
        mark = g.mark
        try:
            results = convert(g, site)
        except Refused as exc:
            refused.append(f"'{lp.name}' ({lp.type}): {exc}")
            continue
        for tid, t in zip(tids, results):
            if g.created_since(t, mark):
                g.prefer[t] = names[tid]
            current[tid] = t
    if refused:
        raise CaffeLiteError(f"{_label(net)} cannot be exported to ONNX: "
                             f"{len(refused)} layer(s) have no ONNX equivalent: "
                             + "; ".join(refused))
    out = _outputs(net, current, shapes, wanted, outputs)
    model, out = g.finish(out, net.name or "caffe_lite_net",
                          "exported by caffe-lite from a Caffe net (TEST phase)")
    data = model.SerializeToString()
    try:
        # full_check: ONNX's shape inference must agree with the shapes caffe-lite computed.
        onnx.checker.check_model(data, full_check=True)
    except Exception as exc:  # the checker's error types vary between onnx versions
        raise CaffeLiteError(f"the ONNX model exported from {_label(net)} does not pass "
                             f"onnx.checker (an exporter bug; please report it): {exc}") from exc
    inputs = {i.name for i in model.graph.input}
    return Export(model, data, opset, {n: s for n, s in g.input_shapes() if n in inputs},
                  {n: s for n, s, _ in out}, {n: b for n, _, b in out}, dropped,
                  sum(g.inits[t].size for t in g.prunable if t in g.inits),
                  sum(int((g.inits[t] == 0).sum()) for t in g.prunable if t in g.inits),
                  input_notes(layer.layer_param for layer in net.layers))


def _outputs(net, current, shapes, wanted, requested):
    """[(tensor id, shape, blob name)] of the graph outputs."""
    index = {n: i for i, n in enumerate(net.blob_names)}
    if requested:
        out = []
        for name in requested:
            if name not in index:
                raise CaffeLiteError(f"{_label(net)} has no blob named '{name}' (outputs "
                                     "must be blob names)")
            if index[name] not in current:
                raise CaffeLiteError(f"blob '{name}' of {_label(net)} is computed only by "
                                     "layers left out of the export (losses, Accuracy)")
            out.append((current[index[name]], shapes[index[name]], name))
        return out
    out = [(current[index[n]], shapes[index[n]], n) for n in net.outputs if index[n] in current]
    for t, bid in wanted:
        if all(t != o[0] for o in out):
            out.append((t, shapes[bid], None))
    if not out:
        raise CaffeLiteError(f"{_label(net)} has no output left to export once its loss "
                             "and Accuracy layers are left out")
    return out


def export(net, path, opset=DEFAULT_OPSET, outputs=None, overwrite=True):
    """Write `net` as an ONNX file at `path` (atomically); returns the Export."""
    from ...util.atomic import atomic_write_bytes
    result = to_onnx(net, opset, outputs)
    atomic_write_bytes(path, result.data, overwrite=overwrite)
    return result


__all__ = ["export", "to_onnx", "exportable_types", "Export", "DEFAULT_OPSET", "MIN_OPSET",
           "MAX_OPSET"]
