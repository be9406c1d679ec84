"""Pruning verbs: prune, sparsity, sensitivity, thin; and the gradual-pruning flags of train.

Every verb checks its inputs and its outputs' names before it writes anything, and refuses to
replace an existing file unless -overwrite is given."""
import io
import logging

from .registry import command, flag
from ..errors import CaffeLiteError, DataError
from .caffe_tools import (_net_param_with_overrides, add_gpu_flag, add_source_overrides,
                          select_mode)
from .outputs import at_least_one, check_outputs

log = logging.getLogger("caffe_lite")


# --- shared helpers ----------------------------------------------------------------------------
def _check_outputs(args, *names):
    """Refuse (before any work) outputs that cannot be written as asked (outputs.py)."""
    check_outputs([(f"-{n}", getattr(args, n, None)) for n in names], args.overwrite)


def _parse_shape(text):
    try:
        dims = [int(x) for x in text.replace("x", ",").split(",") if x.strip()]
    except ValueError:
        dims = []
    if not dims or any(d <= 0 for d in dims):
        raise CaffeLiteError(f"-input_shape must be positive integers like 1,3,224,224, got "
                             f"'{text}'")
    return dims


def _with_input_shape(param, shape):
    """The data layers replaced by Input layers: first top `shape`, other tops (labels)
    (N,)."""
    from ..pruning.netutil import replace_data_layers
    from ..pruning.structure import DATA_LAYERS
    shapes = {}
    for lp in param.layer:
        if lp.type in DATA_LAYERS and lp.type != "Input" and not lp.bottom:
            for j, t in enumerate(lp.top):
                shapes[t] = shape if j == 0 else shape[:1]
    if not shapes:
        log.info("-input_shape: the net has no data layer to replace")
    return replace_data_layers(param, shapes)


def load_model(args, weights=True):
    """The TEST-phase net of -model with -weights copied in (every prunable layer must get
    its weights from the file).  Returns (net, the user's NetParameter)."""
    from ..io import load_message, upgrade_net
    from ..io.caffemodel import load_weights
    from ..net import Net
    from ..proto import caffe_pb2
    from ..pruning.spec import prunable_layers
    user, _ = load_message(args.model, caffe_pb2.NetParameter, "net prototxt")
    upgrade_net(user, args.model)
    param = _net_param_with_overrides(args.model, args)
    if getattr(args, "input_shape", None):
        param = _with_input_shape(param, _parse_shape(args.input_shape))
    try:
        net = Net(param, caffe_pb2.TEST)
    except DataError as exc:
        raise CaffeLiteError(f"{exc} (this command builds the net only to know its shapes: "
                             "give -input_shape N,C,H,W, -test_source PATH, or a deploy "
                             "prototxt with an Input layer)") from None
    if weights:
        names = {n for n, _ in load_weights(args.weights)}
        missing = [n for n, _ in prunable_layers(net) if n not in names]
        if missing:
            net.close()
            raise CaffeLiteError(f"{args.weights} holds no weights for layer(s) "
                                 f"{', '.join(missing)} of {args.model}: do the weights belong "
                                 "to this model?")
        net.copy_from(args.weights)
    return net, user


def _model_flags(p, weights_help="caffemodel with the trained weights"):
    flag(p, "model", required=True, help="net prototxt (its TEST phase is used)")
    flag(p, "weights", required=True, help=weights_help)
    flag(p, "input_shape", default=None, metavar="N,C,H,W",
         help="replace the net's data layers by an Input of this shape (the tools need the "
              "data only for the shapes)")
    add_source_overrides(p)


def _write_bytes(path, data, overwrite):
    from ..util.atomic import atomic_write_bytes
    atomic_write_bytes(path, data, overwrite=overwrite)


# --- prune -------------------------------------------------------------------------------------
def _data_net(args, net):
    """The TRAIN-phase net of -model (its data layers read the training data), sharing `net`'s
    weights: what taylor and apoz measure activations on."""
    from ..net import Net
    from ..proto import caffe_pb2
    param = _net_param_with_overrides(args.model, args)
    try:
        data = Net(param, caffe_pb2.TRAIN)
    except DataError as exc:
        raise CaffeLiteError(f"{exc} (-method {args.method or 'of the spec'} ranks channels by "
                             "their activations on the training data: the TRAIN phase of "
                             "-model must read it; -train_source points it elsewhere)") from None
    data.share_with(net)
    return data


@command("prune", "prune a caffemodel (magnitude, std, global, dns, or whole filters by "
                  "l1-filter, l2-filter, fpgm, taylor, apoz, bn-scale) and write the pruned "
                  "caffemodel: pruned weights are exact zeros")
def prune_cmd(args):
    import contextlib
    from ..io import to_text
    from ..io.masks import check_writable
    from ..pruning import criteria, filters, load_spec, make_plan, prune_net, ratios
    from ..pruning import sparsity_report
    from ..pruning.spec import check_sparsity
    from ..util.atomic import atomic_write_text
    _check_outputs(args, "output", "output_spec")
    check_writable(args.output, args.overwrite)  # and its .masks sidecar
    if args.sparsity is not None:
        check_sparsity(args.sparsity, "-sparsity")  # before the (slow) net build
    select_mode(args.gpu)
    spec = load_spec(args.spec)
    if args.data_batches is not None:
        spec.data_batches = args.data_batches
    rows = ratios.read_sensitivity_csv(args.sensitivity_csv) if args.sensitivity_csv else None
    net, _ = load_model(args)
    with net, contextlib.ExitStack() as stack:
        plan = make_plan(net, spec, args.method, args.sparsity, args.q,
                         where=args.spec or "pruning spec", target_params=args.target_params,
                         target_flops=args.target_flops)
        auto = plan.target_params is not None or plan.target_flops is not None
        if (args.output_spec or rows) and not auto:
            raise CaffeLiteError("-output_spec and -sensitivity_csv go with -target_params or "
                                 "-target_flops")
        data = None
        if plan.method in criteria.CRITERIA and criteria.needs_data(plan.method):
            data = stack.enter_context(_data_net(args, net))
        if auto:
            sol = ratios.solve(net, plan, data, rows)
            print(f"solved per-layer ratios ({'sensitivity scan' if rows else 'global ranking'}"
                  f" of {plan.method} scores): {sol.summary()}")
            results = filters.filter_prune(net, sol.plan, plan.method, data, sol.graph,
                                           sol.scores)
        else:
            results = prune_net(net, plan=plan, data=data)
        net.save(args.output, overwrite=args.overwrite)
        if auto and args.output_spec:
            how = f"the sensitivity scan {args.sensitivity_csv}" if rows else \
                f"one ranking of normalised {plan.method} scores"
            header = (f"# Per-layer ratios solved by caffe-lite prune for target_{sol.what} "
                      f"{sol.target:g} from {how}:\n# {sol.summary()}\n")
            atomic_write_text(args.output_spec, header + to_text(sol.spec),
                              overwrite=args.overwrite)
        width = max([len(r.name) for r in results] + [5])
        print(f"{'layer':<{width}}  {'type':<14} {'params':>9} {'before':>8} {'after':>8}  "
              "detail")
        for r in results:
            print(f"{r.name:<{width}}  {r.type:<14} {r.params:>9} {100 * r.before:7.2f}% "
                  f"{100 * r.after:7.2f}%  {r.detail}")
        t = sparsity_report(net)["total"]
        print(f"prunable weights: {t['params']} params, {t['nonzeros']} nonzero, sparsity "
              f"{100 * t['sparsity']:.2f} %, compression {t['compression']:.2f}x")
        print(f"wrote {args.output}")
        if auto and args.output_spec:
            print(f"wrote {args.output_spec}")


def _configure_prune(p):
    from ..pruning import METHODS
    _model_flags(p)
    flag(p, "output", required=True, help="caffemodel to write")
    flag(p, "method", default=None, choices=list(METHODS),
         help="pruning method (default: the spec's, else magnitude)")
    flag(p, "sparsity", type=float, default=None,
         help="target sparsity in [0, 1) for every prunable layer (global: overall; "
              "structured methods: fraction of filters)")
    flag(p, "target_params", type=float, default=None, metavar="FRACTION",
         help="structured methods: solve per-layer ratios so that this fraction of the net's "
              "parameters remains after thinning (e.g. 0.3)")
    flag(p, "target_flops", type=float, default=None, metavar="FRACTION",
         help="the same for the FLOPs of the Convolution / InnerProduct layers (e.g. 0.5)")
    flag(p, "sensitivity_csv", default=None,
         help="solve the target from this sensitivity scan (caffe-lite sensitivity "
              "-output_csv) instead of one global ranking")
    flag(p, "output_spec", default=None,
         help="write the solved per-layer ratios as a PruningSpec prototxt")
    flag(p, "data_batches", type=int, default=None,
         help="taylor / apoz: training batches to average the activations over (default: "
              "the spec's, 10)")
    flag(p, "q", type=float, default=None,
         help="std method: prune |w| <= q * std(w) (default: the spec's q, else 1.0)")
    flag(p, "spec", default=None, help="PruningSpec prototxt with per-layer targets and "
                                       "exclusions (see proto/caffe_lite.proto)")
    flag(p, "overwrite", action="store_true", help="replace an existing output file")
    add_gpu_flag(p, "run the nets of the data-driven criteria (taylor, apoz)")


prune_cmd.configure = _configure_prune


# --- sparsity ----------------------------------------------------------------------------------
@command("sparsity", "report the sparsity of each prunable layer, totals, compression and sizes")
def sparsity_cmd(args):
    from ..pruning import report
    net, _ = load_model(args)
    with net:
        rep = report.sparsity_report(net, args.weights)
    out = {"table": report.to_table, "json": report.to_json, "csv": report.to_csv}[args.format]
    text = out(rep)
    print(text, end="" if text.endswith("\n") else "\n")


def _configure_sparsity(p):
    _model_flags(p)
    flag(p, "format", default="table", choices=["table", "json", "csv"], help="output format")


sparsity_cmd.configure = _configure_sparsity


# --- thin --------------------------------------------------------------------------------------
@command("thin", "turn all-zero (structurally pruned) channels into a smaller dense prototxt "
                 "and caffemodel that compute the same outputs")
def thin_cmd(args):
    import caffe_lite
    from ..io import to_text
    from ..io.masks import check_writable, save_model
    from ..net import Net
    from ..pruning import netutil
    from ..pruning.thin import max_output_difference, thin_net
    _check_outputs(args, "output_model", "output")
    check_writable(args.output, args.overwrite)  # and its .masks sidecar
    select_mode(args.gpu)
    net, user = load_model(args)
    with net:
        result = thin_net(net, user)
        # Check on random inputs that the thinned net computes what the pruned one does.
        shapes = netutil.data_top_shapes(net)
        ref = Net(netutil.with_blobs(netutil.replace_data_layers(user, shapes), net.to_proto()),
                  caffe_lite.TEST)
        small = Net(netutil.with_blobs(netutil.replace_data_layers(result.net_param, shapes),
                                       result.weights), caffe_lite.TEST)
        diff, names = max_output_difference(ref, small, netutil.random_inputs(ref))
        if diff > args.tolerance:
            raise CaffeLiteError(f"the thinned net's outputs differ from the pruned net's by "
                                 f"{diff:.3g} (> -tolerance {args.tolerance:g}); nothing "
                                 "written")
        save_model(args.output, result.weights, result.masks, overwrite=args.overwrite)
        from ..util.atomic import atomic_write_text
        atomic_write_text(args.output_model, to_text(result.net_param),
                          overwrite=args.overwrite)
    width = max([len(n) for n in result.channels] + [5])
    print(f"{'layer':<{width}}  {'channels':>8} -> {'kept':<6}")
    for n, (b, a) in result.channels.items():
        print(f"{n:<{width}}  {b:>8} -> {a:<6}")
    print(f"parameters: {result.params_before} -> {result.params_after} "
          f"({result.params_after / max(result.params_before, 1):.1%}); outputs "
          f"({', '.join(names)}) match the pruned net to {diff:.2g}")
    print(f"wrote {args.output_model} and {args.output}")


def _configure_thin(p):
    _model_flags(p, "caffemodel with structurally pruned (all-zero) filters / channels")
    flag(p, "output_model", required=True, help="thinned prototxt to write")
    flag(p, "output", required=True, help="thinned caffemodel to write")
    flag(p, "tolerance", type=float, default=1e-4,
         help="largest output difference (relative to max(1, |output|)) accepted in the "
              "random-input check")
    flag(p, "overwrite", action="store_true", help="replace existing output files")
    add_gpu_flag(p, "check the thinned net's outputs")


thin_cmd.configure = _configure_thin


# --- sensitivity -------------------------------------------------------------------------------
def _float_list(text, what):
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CaffeLiteError(f"{what} must be comma-separated numbers, got '{text}'") from None


@command("sensitivity", "prune each layer alone at several sparsities, score the test net, "
                        "write a CSV (and PNG) and propose per-layer targets")
def sensitivity_cmd(args):
    from ..io import to_text
    from ..pruning import sensitivity as sens
    from ..util.atomic import atomic_write_text
    _check_outputs(args, "output_csv", "output_png", "output_spec")
    at_least_one(args, "iterations")
    sparsities = _float_list(args.sparsities, "-sparsities")
    select_mode(args.gpu)
    png = args.output_png
    if png:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("caffe-lite sensitivity: matplotlib is not installed, so no PNG is written "
                  f"({png}); pip install 'caffe-lite[plot]' for the plot", flush=True)
            png = None
    net, _ = load_model(args)
    with net:
        metric = sens.pick_metric(net, args.metric)
        layers = [x for x in args.layers.split(",") if x] if args.layers else None
        evaluator = sens.CachedEvaluator(net, args.iterations)
        baseline, rows = sens.sensitivity(
            net, evaluator, metric, layers, sparsities, args.method,
            progress=lambda r: log.info("%s at sparsity %g: %s = %.6g", r.layer, r.sparsity,
                                        metric, r.metric))
    best = sens.propose(rows, args.max_drop)
    # Table: one line per layer, one column per sparsity.
    width = max([len(n) for n in best] + [5])
    print(f"{metric} of the dense net: {baseline:.6g}")
    print(f"{'layer':<{width}}  " + " ".join(f"{s:>7g}" for s in sparsities) + "  proposed")
    for n in best:
        vals = [r.metric for r in rows if r.layer == n]
        print(f"{n:<{width}}  " + " ".join(f"{v:7.4f}" for v in vals) + f"  {best[n]:g}")
    if args.output_csv:
        atomic_write_text(args.output_csv, sens.to_csv(baseline, rows, metric),
                          overwrite=args.overwrite)
        print(f"wrote {args.output_csv}")
    if png:
        buf = io.BytesIO()
        sens.plot_png(buf, baseline, rows, metric)
        _write_bytes(png, buf.getvalue(), args.overwrite)
        print(f"wrote {png}")
    if args.output_spec:
        spec = sens.proposal_spec(best, args.method)
        header = (f"# Proposed by caffe-lite sensitivity: per layer, the largest sparsity "
                  f"costing at most {args.max_drop:g} {metric} when pruned alone "
                  f"(dense {baseline:.6g}).\n")
        atomic_write_text(args.output_spec, header + to_text(spec), overwrite=args.overwrite)
        print(f"wrote {args.output_spec}")


def _configure_sensitivity(p):
    flag(p, "model", required=True, help="test net (or train_val) prototxt with an accuracy "
                                         "output and data layers")
    flag(p, "weights", required=True, help="caffemodel")
    flag(p, "iterations", type=int, default=50, help="test batches per evaluation")
    flag(p, "sparsities", default=",".join(f"{s:g}" for s in
                                            (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)),
         help="comma-separated sparsities to try")
    flag(p, "layers", default=None, help="comma-separated layers (default: every prunable one)")
    from ..pruning.sensitivity import SCAN_METHODS
    flag(p, "method", default="magnitude", choices=list(SCAN_METHODS),
         help="how each layer is pruned")
    flag(p, "metric", default=None, help="output to score (default: the accuracy output)")
    flag(p, "max_drop", type=float, default=0.01,
         help="metric drop tolerated when proposing targets (0.01 = one accuracy point)")
    flag(p, "output_csv", default=None, help="CSV to write (layer, sparsity, metric, drop)")
    flag(p, "output_png", default=None, help="PNG plot to write (needs matplotlib)")
    flag(p, "output_spec", default=None, help="PruningSpec prototxt of the proposed targets")
    flag(p, "overwrite", action="store_true", help="replace existing output files")
    add_source_overrides(p)
    add_gpu_flag(p, "score the pruned nets")


sensitivity_cmd.configure = _configure_sensitivity


# --- train's gradual-pruning flags -------------------------------------------------------------
def add_gradual_flags(p):
    from ..pruning import METHODS
    flag(p, "prune_spec", default=None, metavar="SPEC",
         help="prune while training on the cubic schedule of this PruningSpec's gradual block "
              "(method dns: splice as its dns block says)")
    flag(p, "prune_method", default=None, choices=[m for m in METHODS if m != "std"],
         help="gradual pruning method (overrides the spec's); dns: Dynamic Network Surgery")
    flag(p, "prune_sparsity", type=float, default=None,
         help="final sparsity of gradual pruning (overrides the spec's)")
    flag(p, "prune_schedule", default=None, metavar="BEGIN,STEPS,EVERY",
         help="gradual schedule: first pruning iteration, number of steps after it, "
              "iterations between steps (overrides the spec's gradual block)")
    flag(p, "bn_scale_l1", type=float, default=None, metavar="RATE",
         help="network slimming: add an L1 penalty RATE * |gamma| on every Scale after a "
              "BatchNorm (overrides the spec's bn_scale_l1)")


def _asks_to_prune(spec, args):
    """Whether the flags / spec ask for pruning (a spec may only set bn_scale_l1)."""
    if args.prune_sparsity is not None or args.prune_schedule or args.prune_method:
        return True
    return spec is not None and (spec.HasField("sparsity") or spec.HasField("gradual") or
                                 spec.HasField("dns") or spec.method == "dns" or
                                 any(e.HasField("sparsity") for e in spec.layer) or
                                 not spec.bn_scale_l1)


def attach_gradual(solver, args):
    """Attach the pruning callbacks the -prune_* / -bn_scale_l1 flags ask for (before
    -snapshot restores, so their progress is restored with them): a GradualPruner, or for
    method dns a DnsPruner; a BNScalePenalty for network slimming."""
    from ..pruning import BNScalePenalty, DnsPruner, GradualPruner, load_spec
    spec = load_spec(args.prune_spec) if args.prune_spec else None
    rate = args.bn_scale_l1 if args.bn_scale_l1 is not None else \
        (spec.bn_scale_l1 if spec is not None else 0)
    if rate:
        BNScalePenalty(solver, rate).attach()
    if not _asks_to_prune(spec, args):
        return None
    gradual = None
    if args.prune_schedule:
        parts = args.prune_schedule.split(",")
        try:
            begin, steps, every = (int(x) for x in parts)
        except ValueError:
            raise CaffeLiteError(f"-prune_schedule takes BEGIN,STEPS,EVERY (three integers), "
                                 f"got '{args.prune_schedule}'") from None
        gradual = {"begin_iter": begin, "num_steps": steps, "frequency": every}
    method = args.prune_method or (spec.method if spec is not None else "magnitude")
    if method == "dns":
        if spec is None:
            from ..proto import caffe_lite_pb2
            spec = caffe_lite_pb2.PruningSpec(method="dns")
        if gradual:
            for k, v in gradual.items():
                setattr(spec.gradual, k, v)
        pruner = DnsPruner(solver, spec, sparsity=args.prune_sparsity).attach()
        log.info("Dynamic Network Surgery: splicing every %d iterations from %d to %d",
                 pruner.frequency, pruner.begin, pruner.end)
        return pruner
    pruner = GradualPruner(solver, spec, method=args.prune_method,
                           sparsity=args.prune_sparsity, gradual=gradual).attach()
    log.info("Gradual pruning (%s) at iterations %s", pruner.method,
             ", ".join(map(str, pruner.step_iters())))
    return pruner
