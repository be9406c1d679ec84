"""`caffe-lite draw`: python/draw_net.py's picture of a net, plus weight densities."""
import logging

from .registry import command, flag

log = logging.getLogger("caffe_lite")

PHASES = {"TRAIN": 0, "TEST": 1, "ALL": None}


@command("draw", "draw a net prototxt as png/svg/pdf (pydot + Graphviz); with -weights, "
                 "label and shade prunable layers by weight density")
def draw_cmd(args):
    from ..draw import draw_net_to_file, weight_densities
    from ..errors import CaffeLiteError
    from ..io import load_message, upgrade_net
    from ..proto import caffe_pb2
    model = args.model or args.input_net_proto_file
    output = args.output or args.output_image_file
    if not model or not output:
        raise CaffeLiteError("draw needs -model NET.prototxt and -output IMAGE.png (or the "
                             "two as arguments, as draw_net.py takes them)")
    phase = args.phase.upper()
    if phase not in PHASES:
        raise CaffeLiteError(f"-phase must be TRAIN, TEST or ALL, got '{args.phase}'")
    net, _ = load_message(model, caffe_pb2.NetParameter, "net prototxt")
    upgrade_net(net, model)
    densities = weight_densities(net, args.weights) if args.weights else None
    log.info("Drawing net to %s", output)
    draw_net_to_file(net, output, args.rankdir, PHASES[phase], args.display_lrm, densities,
                     overwrite=args.overwrite)
    if densities:
        for name, d in densities.items():
            print(f"{name}: {100 * d:.1f} % of weights nonzero")


def _configure(p):
    p.add_argument("input_net_proto_file", nargs="?", help="net prototxt (or -model)")
    p.add_argument("output_image_file", nargs="?", help="image file (or -output)")
    flag(p, "model", help="net prototxt")
    flag(p, "output", help="image file; its extension (png, svg, pdf, ...) picks the format")
    flag(p, "weights", help="caffemodel: show and shade each prunable layer's weight density")
    flag(p, "rankdir", default="LR", help="LR (default), TB, BT or RL: Graphviz's direction")
    flag(p, "phase", default="ALL", help="TRAIN, TEST or ALL (default): the layers to draw")
    flag(p, "display_lrm", action="store_true",
         help="show the lr_mult of Convolution, Deconvolution and InnerProduct layers")
    flag(p, "overwrite", action="store_true", help="replace an existing output file")


draw_cmd.configure = _configure
