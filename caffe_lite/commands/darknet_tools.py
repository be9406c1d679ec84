"""darknet verbs: convert-darknet (cfg + weights -> prototxt + caffemodel [+ solver]) and
export-darknet (prototxt + caffemodel -> cfg + weights)."""
import logging
import re

from .registry import command, flag
from ..errors import CaffeLiteError
from .prune_tools import _check_outputs, _model_flags, load_model

log = logging.getLogger("caffe_lite")


# --- convert-darknet ---------------------------------------------------------------------------
@command("convert-darknet", "convert a darknet .cfg (and .weights) to a Caffe deploy prototxt "
                            "and caffemodel (and a solver prototxt from [net])")
def convert_darknet_cmd(args):
    from ..io import darknet, to_text
    from ..io.darknet.solver import solver_from_net
    from ..util.atomic import atomic_write_text
    if args.weights and not args.output:
        raise CaffeLiteError("-weights given without -output: name the caffemodel to write")
    _check_outputs(args, "output_model", "output", "solver")
    conv = darknet.convert(args.cfg, args.weights, reorg=args.reorg)
    solver = None
    if args.solver:  # before writing anything: [net] may hold a policy Caffe lacks
        solver = solver_from_net(conv.net_section, args.output_model, args.solver)
    net = conv.net()  # builds every layer: a conversion Caffe cannot run is refused here
    with net:
        atomic_write_text(args.output_model, conv.prototxt(), overwrite=args.overwrite)
        if args.output:
            net.save(args.output, overwrite=args.overwrite)
    if solver is not None:
        sp, notes = solver
        text = "".join(f"# {n}\n" for n in notes) + to_text(sp)
        atomic_write_text(args.solver, text, overwrite=args.overwrite)
        for n in notes[2:]:
            log.warning("%s", n)
    for n in conv.notes:
        log.warning("%s", n)
    weighted = sum(1 for ly in conv.layers if ly.weights)
    print(f"{args.cfg}: {len(conv.layers)} darknet layers ({weighted} with weights) -> "
          f"{len(conv.param.layer)} Caffe layers; outputs: {', '.join(net.outputs)}")
    if conv.header is not None:
        print(f"weights header {conv.header}")
    for p in (args.output_model, args.output, args.solver):
        if p:
            print(f"wrote {p}")


def _configure_convert(p):
    flag(p, "cfg", required=True, help="darknet .cfg")
    flag(p, "weights", default=None, help="darknet .weights (without it, -output holds "
                                          "darknet's initialisation drawn by Caffe's fillers)")
    flag(p, "output_model", required=True, help="deploy prototxt to write")
    flag(p, "output", default=None, help="caffemodel to write")
    flag(p, "solver", default=None, help="also write a solver prototxt from [net]'s training "
                                         "options")
    flag(p, "reorg", default="pjreddie", choices=["pjreddie", "alexeyab"],
         help="what [reorg] means: pjreddie's darknet (default) or AlexeyAB's")
    flag(p, "overwrite", action="store_true", help="replace existing output files")


convert_darknet_cmd.configure = _configure_convert


# --- export-darknet ----------------------------------------------------------------------------
_HEADER = re.compile(r"^#\s*darknet-weights-header:\s*major=(-?\d+)\s+minor=(-?\d+)\s+"
                     r"revision=(-?\d+)\s+seen=(\d+)", re.M)
_DEPTHWISE = re.compile(r"^#\s*darknet-sections:.*\bdepthwise_convolutional\b", re.M)


def _provenance(model):
    """(Header or None, depthwise sections?) from the comment convert-darknet writes."""
    from ..io.darknet import Header
    try:
        with open(model, "r", encoding="utf-8", errors="replace") as f:
            head = "".join(line for line in f if line.startswith("#"))
    except OSError:
        return None, False
    m = _HEADER.search(head)
    header = Header(*(int(v) for v in m.groups())) if m else None
    return header, bool(_DEPTHWISE.search(head))


@command("export-darknet", "write a caffe-lite model as a darknet .cfg and .weights (pruned "
                           "zeros included); layers darknet lacks are refused by name")
def export_darknet_cmd(args):
    from ..io import darknet
    _check_outputs(args, "output_cfg", "output_weights")
    header, depthwise = _provenance(args.model)
    header = header or darknet.Header()
    if args.seen is not None:
        if args.seen < 0:
            raise CaffeLiteError(f"-seen must be >= 0, got {args.seen}")
        header.seen = args.seen
    if args.depthwise != "auto":
        depthwise = args.depthwise == "yes"
    net, _ = load_model(args)
    with net:
        layers = darknet.export(net, args.output_cfg, args.output_weights, header=header,
                                depthwise=depthwise, reorg=args.reorg,
                                overwrite=args.overwrite)
    weighted = sum(1 for ly in layers if ly.weights)
    print(f"{args.model}: {len(layers)} darknet layers ({weighted} with weights); weights "
          f"header {header}")
    print(f"wrote {args.output_cfg}\nwrote {args.output_weights}")


def _configure_export(p):
    _model_flags(p)
    flag(p, "output_cfg", required=True, help="darknet .cfg to write")
    flag(p, "output_weights", required=True, help="darknet .weights to write")
    flag(p, "depthwise", default="auto", choices=["auto", "yes", "no"],
         help="write depthwise convolutions as the darknet-mobilenet fork's "
              "[depthwise_convolutional] (yes) or as [convolutional] groups= (no); auto: as "
              "the converted cfg had them")
    flag(p, "reorg", default="pjreddie", choices=["pjreddie", "alexeyab"],
         help="the darknet that reads the cfg: its [reorg] (default pjreddie's)")
    flag(p, "seen", type=int, default=None,
         help="the header's count of training images (default: the converted file's, else 0)")
    flag(p, "overwrite", action="store_true", help="replace existing output files")


export_darknet_cmd.configure = _configure_export
