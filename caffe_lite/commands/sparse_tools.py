"""`caffe-lite sparse`: what sparse inference does for a pruned model — per layer the density,
dense and CSR sizes and the path taken — and the forward time dense vs sparse, side by side."""
import json

from .registry import command, flag


@command("sparse", "per-layer density and sparse vs dense forward time of a pruned model")
def sparse_cmd(args):
    from ..compression import sparse
    from .caffe_tools import select_mode
    select_mode(args.gpu)
    net = sparse.inference_net(args.model, args.weights.split(",") if args.weights else None,
                               args.batch)
    sparse.configure(net, args.mode)
    net.forward_from_to()
    rows = sparse.report(net)
    timing = None
    if args.iterations > 0:
        timing = sparse.time_forward(net, None, repeats=args.iterations)
    if args.format == "json":
        print(json.dumps({"layers": rows, "timing": timing}, indent=1, default=str))
        return
    print(sparse.format_report(rows))
    if timing is not None:
        print(f"\nforward, median of {args.iterations} (dense and sparse alternately): "
              f"dense {timing['dense_ms']:.3f} ms, sparse {timing['sparse_ms']:.3f} ms, "
              f"dense/sparse {timing['speedup']:.2f} ({args.mode})")
        for name, t in timing["layers"].items():
            print(f"  {name:<16} dense {t['dense_ms']:9.3f} ms  sparse {t['sparse_ms']:9.3f} ms"
                  f"  {t['speedup']:6.2f}  ({t['ran']})")


def _configure(p):
    flag(p, "model", required=True, help="net prototxt (TEST phase is used)")
    flag(p, "weights", default=None, help="caffemodel(s), comma-separated")
    flag(p, "batch", type=int, default=None, help="batch size of the net's inputs")
    flag(p, "mode", default="auto",
         help="auto|sparse|dense, or a SparseInferenceSpec file (default auto)")
    flag(p, "iterations", type=int, default=50,
         help="timed forward passes per path (0: only the report)")
    flag(p, "format", default="table", choices=["table", "json"])
    flag(p, "gpu", default=None, help="GPU id to use")


sparse_cmd.configure = _configure
