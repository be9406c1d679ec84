"""Interchange verbs: export-onnx (a Caffe model as an ONNX model for ONNX Runtime and other
deploy tools)."""
from .registry import command, flag
from .prune_tools import _check_outputs, _model_flags, load_model


def _names(text):
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def _without_input_shape_unless_data_layers(args):
    """load_model replaces data layers by -input_shape; a deploy net (Input layers only) is
    reshaped after it is built instead."""
    import copy
    from ..io import load_message, upgrade_net
    from ..proto import caffe_pb2
    if not args.input_shape:
        return args
    param, _ = load_message(args.model, caffe_pb2.NetParameter, "net prototxt")
    upgrade_net(param, args.model)
    from ..io.onnx import DATA_LAYERS
    if any(lp.type in DATA_LAYERS and lp.type != "Input" for lp in param.layer):
        return args
    plain = copy.copy(args)
    plain.input_shape = None
    return plain


def _reshape_input(net, text):
    """-input_shape for a deploy net: its first Input top takes the shape (the data layers of
    a train/val net were already replaced by load_model)."""
    from .prune_tools import _parse_shape
    if not text or not net.inputs:
        return
    shape = tuple(_parse_shape(text))
    blob = net.blobs[net.inputs[0]]
    if blob.shape != shape:
        blob.reshape(shape)
        net.reshape()


@command("export-onnx", "export a model (TEST phase, with its weights) to ONNX; loss and "
                        "Accuracy layers are left out, pruned zeros are kept")
def export_onnx_cmd(args):
    from ..io import onnx as onnx_io
    onnx_io.check_opset(args.opset)
    onnx_io._onnx()  # a missing package is reported before the (slow) net build
    _check_outputs(args, "output")
    net, user = load_model(_without_input_shape_unless_data_layers(args))
    with net:
        _reshape_input(net, args.input_shape)
        result = onnx_io.export(net, args.output, opset=args.opset,
                                outputs=_names(args.outputs), overwrite=args.overwrite)

    def shapes(d):
        return ", ".join(f"{n} {'x'.join(map(str, s)) or 'scalar'}" for n, s in d.items())
    print(f"inputs: {shapes(result.inputs)}")
    print(f"outputs: {shapes(result.outputs)}")
    if result.dropped:
        print("left out: " + ", ".join(f"{n} ({t})" for n, t in result.dropped))
    print(f"nodes: {len(result.model.graph.node)}; prunable weights: {result.weights}, "
          f"{result.zeros} zero")
    for note in dict.fromkeys(result.notes + onnx_io.input_notes(user.layer)):
        print(f"note: {note}")
    print(f"wrote {args.output} (ONNX opset {result.opset})")


def _configure_export_onnx(p):
    from ..io.onnx import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
    _model_flags(p)
    flag(p, "output", required=True, help="ONNX file to write")
    flag(p, "opset", type=int, default=DEFAULT_OPSET,
         help=f"ONNX opset version, {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})")
    flag(p, "outputs", default=None, metavar="BLOB,BLOB",
         help="blobs to expose as outputs (default: the net's outputs other than losses, and "
              "the blobs its loss and Accuracy layers read)")
    flag(p, "overwrite", action="store_true", help="replace an existing output file")


export_onnx_cmd.configure = _configure_export_onnx
