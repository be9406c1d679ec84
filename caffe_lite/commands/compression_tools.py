"""Compression verbs: quantize (weight sharing), compress, decompress; and the weight-sharing
flags of train.  Outputs are checked before any work and never replace a file without
-overwrite."""
import logging
import os

import numpy as np

from .registry import command, flag
from ..errors import CaffeLiteError
from .prune_tools import _check_outputs, _model_flags, load_model

log = logging.getLogger("caffe_lite")


# --- quantize ----------------------------------------------------------------------------------
@command("quantize", "share weights (Deep Compression's trained quantisation): k-means each "
                     "layer's live weights into 2^bits values, write the caffemodel")
def quantize_cmd(args):
    from ..compression.quantize import make_plan, quantize_net
    from ..io.caffemodel import write_net_binary
    _check_outputs(args, "output")
    if args.bits is None and args.spec is None:
        raise CaffeLiteError("give -bits (e.g. conv=8,fc=5) or -spec with a quantize block")
    net, _ = load_model(args)
    with net:
        plan = make_plan(net, args.bits, args.spec)   # every name checked before any work
        before = {n: net.layer_dict[n].blobs[0].cpu_data.copy() for n in plan}
        books = quantize_net(net, args.bits, args.spec)
        write_net_binary(args.output, net.to_proto(), overwrite=args.overwrite)
        width = max([len(n) for n in books] + [5])
        print(f"{'layer':<{width}}  {'type':<14} {'live':>8} {'bits':>4} {'values':>6} "
              f"{'k-means':>7}  {'rms change':>10}")
        for name, book in books.items():
            layer = net.layer_dict[name]
            live = book.labels >= 0
            w = layer.blobs[0].cpu_data.ravel()
            rms = float(np.sqrt(np.mean((w[live] - before[name].ravel()[live]) ** 2))) \
                if live.any() else 0.0
            it = f"{book.iterations}" if book.iterations else "adopted"
            print(f"{name:<{width}}  {layer.type:<14} {int(live.sum()):>8} {book.bits:>4} "
                  f"{book.size:>6} {it:>7}  {rms:10.3g}")
        print(f"wrote {args.output} (caffe-lite compress stores it with the shared values)")


def _configure_quantize(p):
    _model_flags(p, "caffemodel (pruned or dense) whose weights to share")
    flag(p, "output", required=True, help="quantised caffemodel to write")
    flag(p, "bits", default=None, metavar="SPEC",
         help="bits per kind or layer: conv=8,fc=5 / ip1=4,fc=5 / 6 (a layer's entry beats "
              "its kind's; 0 keeps a layer float)")
    flag(p, "spec", default=None, help="PruningSpec prototxt with a quantize { } block and "
                                       "per-layer bits (-bits overrides it key by key)")
    flag(p, "overwrite", action="store_true", help="replace an existing output file")


quantize_cmd.configure = _configure_quantize


# --- compress ----------------------------------------------------------------------------------
def _verify(data, source):
    """Decode what was written and compare every value with the source (a bug guard)."""
    from ..compression.format import decode_bytes
    from ..io.blobproto import proto_values
    back = decode_bytes(data)
    for la, lb in zip(source.layer, back.layer):
        for i, (a, b) in enumerate(zip(la.blobs, lb.blobs)):
            va, vb = proto_values(a).view(np.uint32), proto_values(b).view(np.uint32)
            zero = (va & 0x7FFFFFFF) == 0
            if not (np.array_equal(va[~zero], vb[~zero]) and np.all(vb[zero] == 0)):
                raise CaffeLiteError(f"internal error: layer '{la.name}' blob {i} does not "
                                     "decompress to its values; nothing written")


@command("compress", "store a caffemodel compactly (relative indices, shared values, Huffman "
                     "coding); Net(..., weights=) and every verb load the result")
def compress_cmd(args):
    from ..compression.format import KIND_NAMES, _net_param_of, encode_net_param
    from ..util.atomic import atomic_write_bytes
    _check_outputs(args, "output")
    if args.model:
        net, _ = load_model(args)
        with net:
            source = net.to_proto()
    else:
        source = _net_param_of(args.weights)
    data, stats = encode_net_param(source)
    _verify(data, source)
    atomic_write_bytes(args.output, data, overwrite=args.overwrite)
    width = max([len(s.layer) for s in stats] + [5])
    print(f"{'layer':<{width}} {'blob':>4}  {'kind':<6} {'values':>10} {'entries':>9} "
          f"{'index bits':>10} {'codebook':>8} {'bytes':>10}")
    for s in stats:
        print(f"{s.layer:<{width}} {s.index:>4}  {KIND_NAMES[s.kind]:<6} {s.count:>10} "
              f"{s.entries:>9} {s.width or '':>10} {s.codebook or '':>8} {s.nbytes:>10}")
    dense = 4 * sum(s.count for s in stats)
    original = os.path.getsize(args.weights)
    print(f"{args.weights}: {original:,d} bytes; {args.output}: {len(data):,d} bytes "
          f"({original / len(data):.1f}x smaller; parameters as float32: {dense:,d} bytes)")


def _configure_compress(p):
    flag(p, "weights", required=True, help="caffemodel to compress (binary; HDF5 needs -model)")
    flag(p, "model", default=None, help="net prototxt: store its TEST net with these weights "
                                        "(default: the caffemodel as it is)")
    flag(p, "input_shape", default=None, metavar="N,C,H,W",
         help="with -model: replace the net's data layers by an Input of this shape")
    flag(p, "output", required=True, help="compressed file to write (e.g. model.cmodel)")
    flag(p, "overwrite", action="store_true", help="replace an existing output file")
    flag(p, "train_source", default=None, help="with -model: TRAIN data source override")
    flag(p, "test_source", default=None, help="with -model: TEST data source override")


compress_cmd.configure = _configure_compress


# --- decompress --------------------------------------------------------------------------------
@command("decompress", "write the caffemodel that a compressed model holds (caffe-lite's "
                       "format, or Deep Compression's published files with -model)")
def decompress_cmd(args):
    from ..compression import deepcompression, format as compressed
    from ..io.caffemodel import write_net_binary
    _check_outputs(args, "output")
    if compressed.is_compressed(args.weights):
        net = compressed.decompress(args.weights, args.output, overwrite=args.overwrite)
        n = sum(len(lp.blobs) for lp in net.layer)
        print(f"wrote {args.output} ({n} blobs, {os.path.getsize(args.output):,d} bytes)")
        return
    if not args.model:
        raise CaffeLiteError(f"{args.weights} is not a caffe-lite compressed model (no magic "
                             "number); for a file Deep Compression published, give -model "
                             "with the net it belongs to")
    net, _ = load_model(args, weights=False)
    with net:
        if not deepcompression.matches(args.weights, net):
            deepcompression.load_weights(args.weights, net)     # raises, saying why
        net.copy_from(args.weights)
        write_net_binary(args.output, net.to_proto(), overwrite=args.overwrite)
        names = [n for n, _, _ in deepcompression.layers_of(net)]
    print(f"read {args.weights} as a Deep Compression file (layers {', '.join(names)}); "
          f"wrote {args.output}")


def _configure_decompress(p):
    flag(p, "weights", required=True, help="compressed model")
    flag(p, "output", required=True, help="caffemodel to write")
    flag(p, "model", default=None, help="net prototxt (needed for Deep Compression's files, "
                                        "which hold no names or shapes)")
    flag(p, "input_shape", default=None, metavar="N,C,H,W",
         help="with -model: replace the net's data layers by an Input of this shape")
    flag(p, "overwrite", action="store_true", help="replace an existing output file")
    flag(p, "train_source", default=None, help="with -model: TRAIN data source override")
    flag(p, "test_source", default=None, help="with -model: TEST data source override")


decompress_cmd.configure = _configure_decompress


# --- train's weight-sharing flags --------------------------------------------------------------
def add_sharing_flags(p):
    flag(p, "quantize_bits", default=None, metavar="SPEC",
         help="fine-tune with shared weights: bits per kind or layer (conv=8,fc=5); the "
              "weights are quantised when training starts")
    flag(p, "quantize_spec", default=None, metavar="SPEC",
         help="fine-tune with shared weights as this PruningSpec's quantize { } block and "
              "layer bits say")


def attach_sharing(solver, args):
    """Attach a WeightSharing callback when -quantize_* asks for one (before -snapshot
    restores, so the clusters are restored with it)."""
    if not (getattr(args, "quantize_bits", None) or getattr(args, "quantize_spec", None)):
        return None
    from ..compression.sharing import WeightSharing
    ws = WeightSharing(solver, args.quantize_bits, args.quantize_spec).attach()
    log.info("Fine-tuning with shared weights (%s gradient) in %s", ws.gradient,
             ", ".join(f"{L.name} ({L.bits} bits)" for L in ws.layers))
    return ws
