"""Caffe's `caffe` tool verbs: train, test, time, device_query."""
import glob
import logging
import time

import numpy as np

from .outputs import at_least_one, check_snapshot_prefix
from .registry import command, flag
from ..errors import CaffeLiteError, DeviceError

log = logging.getLogger("caffe_lite")


# --- shared helpers ----------------------------------------------------------------------------
def select_mode(gpu_flag, solver_mode_gpu=False, device_id=0, local_rank=None):
    """Caffe's rule: -gpu wins; otherwise a solver asking for GPU gets it.  A solver's GPU
    request on a machine without one falls back to the CPU with a warning; an explicit -gpu
    that cannot be met is an error.  In data-parallel training (`local_rank`: this rank's
    number on its host) each rank takes its own GPU: the local_rank-th of the -gpu list
    (cycling), or device_id + local_rank."""
    from .. import backend
    if gpu_flag:
        ids = _gpu_ids(gpu_flag) if gpu_flag != "all" else [0]
        if local_rank is not None:
            if gpu_flag == "all":
                ids = [local_rank]
            device = ids[local_rank % len(ids)]
        else:
            if len(ids) > 1:
                log.warning("one process trains on one GPU; using GPU %d (for several, run "
                            "one process per GPU: mpirun -n %d caffe-lite train ...)", ids[0],
                            len(ids))
            device = ids[0]
        backend.set_device(device)
        backend.set_mode_gpu()
        return f"GPU {device}"
    if solver_mode_gpu:
        ok, reason = backend.gpu_available()
        if ok:
            device_id += local_rank or 0
            backend.set_device(device_id)
            backend.set_mode_gpu()
            return f"GPU {device_id}"
        log.warning("The solver asks for solver_mode: GPU but no GPU is usable (%s); "
                    "training on the CPU", reason)
    backend.set_mode_cpu()
    return "CPU"


def add_gpu_flag(p, what="run"):
    """-gpu ID for a verb that runs nets (as Caffe's tools); select_mode(args.gpu) applies it:
    a GPU that cannot be used is a one-line error."""
    flag(p, "gpu", default=None, metavar="ID",
         help=f"GPU id to {what} on (default: the CPU)")


def _gpu_ids(text):
    try:
        ids = [int(x) for x in text.split(",")]
    except ValueError:
        ids = [-1]
    if any(i < 0 for i in ids):
        raise CaffeLiteError(f"-gpu takes device ids like 0 or 0,1 (or 'all'), got '{text}'")
    return ids


def add_source_overrides(p):
    flag(p, "train_source", default=None, metavar="PATH",
         help="use PATH as the source of the TRAIN-phase data layer(s) (caffe-lite's addition: "
              "run a net unchanged whose LMDB paths point elsewhere)")
    flag(p, "test_source", default=None, metavar="PATH",
         help="use PATH as the source of the TEST-phase data layer(s)")


def override_sources(net_param, train_source=None, test_source=None):
    """Point the data layers of each phase at new sources; returns how many were changed."""
    from ..proto import caffe_pb2
    changed = 0
    for layer in net_param.layer:
        for field in ("data_param", "image_data_param", "hdf5_data_param", "window_data_param"):
            if not layer.HasField(field):
                continue
            phases = {r.phase for r in layer.include if r.HasField("phase")}
            for phase, src in ((caffe_pb2.TRAIN, train_source), (caffe_pb2.TEST, test_source)):
                if src and (phase in phases or not phases):
                    getattr(layer, field).source = src
                    changed += 1
    return changed


def _net_param_with_overrides(path, args):
    from ..io import load_message, upgrade_net
    from ..proto import caffe_pb2
    param, _ = load_message(path, caffe_pb2.NetParameter, "net prototxt")
    upgrade_net(param, path)
    if getattr(args, "train_source", None) or getattr(args, "test_source", None):
        if not override_sources(param, args.train_source, args.test_source):
            raise CaffeLiteError(f"{path}: -train_source/-test_source given but the net has no "
                                 "data layer with a source")
    return param


def _stage_args(p):
    flag(p, "level", type=int, default=0, help="network level (NetState.level)")
    flag(p, "stage", default="", help="comma-separated network stages (NetState.stage)")


# --- train -------------------------------------------------------------------------------------
@command("train", "train or fine-tune a model (caffe train); under mpirun -n N: data-parallel")
def train_cmd(args):
    from .. import parallel
    world = parallel.cli_world(force=args.mpi)
    if world is None:
        return _train(args, None)
    with parallel.abort_on_error("train", world):
        return _train(args, world)


def _train(args, world):
    from ..solvers import load_solver_param, solver_from_type
    from ..util.progress import training_bar
    if world is not None and world.rank > 0:
        logging.getLogger("caffe_lite").setLevel(logging.WARNING)  # rank 0 logs
    if args.snapshot and args.weights:
        raise CaffeLiteError("give -snapshot to resume training or -weights to fine-tune, "
                             "not both")
    param = load_solver_param(args.solver)
    if args.train_source or args.test_source:
        if not param.HasField("net"):
            raise CaffeLiteError("-train_source/-test_source need a solver whose net is a file "
                                 "(the `net:` field)")
        param.net_param.CopyFrom(_net_param_with_overrides(param.net, args))
        param.ClearField("net")
    if args.level or args.stage:
        param.train_state.level = args.level
        param.train_state.stage.extend(s for s in args.stage.split(",") if s)
    if args.max_iter is not None:
        param.max_iter = args.max_iter
    root = world is None or world.rank == 0  # the rank that writes snapshots
    if root:
        check_snapshot_prefix(param.snapshot_prefix)
    where = select_mode(args.gpu, param.solver_mode == param.GPU, param.device_id,
                        world.local_rank if world is not None else None)
    log.info("Using %s", where)
    solver = solver_from_type(param.type)(param)
    if args.weights:
        for w in args.weights.split(","):
            log.info("Finetuning from %s", w)
            solver.net.copy_from(w)
    from .prune_tools import attach_gradual
    attach_gradual(solver, args)  # before restore: a snapshot carries the schedule's progress
    from .compression_tools import attach_sharing
    attach_sharing(solver, args)  # likewise the clusters of shared weights
    dp = None
    if world is not None:
        from ..parallel import DataParallel
        dp = DataParallel(solver)  # before restore: a snapshot carries each rank's state
    with solver.snapshot_lock():  # for the whole run; clears an interrupted snapshot write
        start = 0
        if args.snapshot:
            solver.restore(args.snapshot)
            start = solver.iter
            log.info("Resuming from %s at iteration %d", args.snapshot, start)
        if not args.overwrite and root:
            _refuse_snapshot_overwrite(param, start)
        (dp or solver).install_signal_handlers()
        with training_bar(solver, param.max_iter - start,
                          enabled=None if root else False):
            solver.solve()
    if solver.requested_early_exit:
        log.info("Stopped at iteration %d; resume with -snapshot %s_iter_%d.solverstate",
                 solver.iter, param.snapshot_prefix, solver.iter)


def _refuse_snapshot_overwrite(param, start):
    """Snapshots this run would write must not replace files a user already has."""
    if not param.snapshot_prefix:
        return
    its = set(range(start + param.snapshot, param.max_iter + 1, param.snapshot)) \
        if param.snapshot else set()
    if param.snapshot_after_train:
        its.add(param.max_iter)
    clash = []
    for path in glob.glob(glob.escape(param.snapshot_prefix) + "_iter_*"):
        tail = path[len(param.snapshot_prefix) + 6:]
        num = tail.split(".", 1)[0]
        if num.isdigit() and int(num) in its:
            clash.append(path)
    if clash:
        raise CaffeLiteError(f"this run would overwrite {len(clash)} existing snapshot file(s) "
                             f"(e.g. {sorted(clash)[0]}); move them, change snapshot_prefix, "
                             "or pass -overwrite")


def _configure_train(p):
    flag(p, "solver", required=True, help="solver prototxt")
    flag(p, "weights", default=None, help="comma-separated caffemodels to fine-tune from")
    flag(p, "snapshot", default=None, help="solverstate to resume from")
    flag(p, "gpu", default=None, help="GPU id to use ('0'); default: the solver's solver_mode")
    flag(p, "max_iter", type=int, default=None, help="override the solver's max_iter")
    flag(p, "overwrite", action="store_true", help="allow snapshots to replace existing files")
    flag(p, "mpi", action="store_true",
         help="train data-parallel over MPI even when no MPI launcher is recognised (under "
              "mpirun -n N with N > 1 this is automatic; docs/distributed.md)")
    _stage_args(p)
    add_source_overrides(p)
    from .prune_tools import add_gradual_flags
    add_gradual_flags(p)
    from .compression_tools import add_sharing_flags
    add_sharing_flags(p)


train_cmd.configure = _configure_train


# --- test --------------------------------------------------------------------------------------
@command("test", "score a model over N batches (caffe test)")
def test_cmd(args):
    from ..net import Net
    from ..proto import caffe_pb2
    at_least_one(args, "iterations")
    select_mode(args.gpu)
    param = _net_param_with_overrides(args.model, args)
    stages = [s for s in args.stage.split(",") if s]
    net = Net(param, caffe_pb2.TEST, level=args.level, stages=stages)
    if args.weights:
        for w in args.weights.split(","):
            net.copy_from(w)
    else:
        log.warning("No -weights given: testing randomly initialised parameters")
    _configure_sparse(net, args)
    log.info("Running for %d iterations.", args.iterations)
    totals, loss = None, 0.0
    for i in range(args.iterations):
        loss += net.forward_from_to()
        vals = [net.blobs[o].cpu_data.astype(np.float64).ravel().copy() for o in net.outputs]
        for o, v in zip(net.outputs, vals):
            for x in v:
                log.info("Batch %d, %s = %.6g", i, o, x)
        totals = vals if totals is None else [a + b for a, b in zip(totals, vals)]
    loss /= max(args.iterations, 1)
    log.info("Loss: %.6g", loss)
    results = {}
    for o, t in zip(net.outputs, totals or []):
        w = net.blob_loss_weights[o]
        for x in t / args.iterations:
            extra = f" (* {w:.6g} = {w * x:.6g} loss)" if w else ""
            log.info("%s = %.6g%s", o, x, extra)
        results[o] = t / args.iterations
    for o, v in results.items():
        print(f"{o} = {' '.join(f'{x:.6g}' for x in v)}")


def _sparse_arg(p):
    flag(p, "sparse", default=None,
         help="auto|sparse|dense, or a SparseInferenceSpec file: which InnerProduct / "
              "Convolution layers compute on their nonzero weights only (default auto, or "
              "$CAFFE_LITE_SPARSE); see docs/sparse.md")


def _configure_sparse(net, args):
    if args.sparse:
        from ..compression import sparse
        sparse.configure(net, args.sparse)


def _configure_test(p):
    flag(p, "model", required=True, help="net prototxt (TEST phase is used)")
    flag(p, "weights", default=None, help="caffemodel(s), comma-separated")
    flag(p, "iterations", type=int, default=50, help="number of batches to run")
    add_gpu_flag(p)
    _sparse_arg(p)
    _stage_args(p)
    add_source_overrides(p)


test_cmd.configure = _configure_test


# --- time --------------------------------------------------------------------------------------
@command("time", "benchmark a model's execution time layer by layer (caffe time)")
def time_cmd(args):
    from ..net import Net
    from ..proto import caffe_pb2
    at_least_one(args, "iterations")
    select_mode(args.gpu)
    param = _net_param_with_overrides(args.model, args)
    phase = caffe_pb2.TRAIN if args.phase.upper() == "TRAIN" else caffe_pb2.TEST
    net = Net(param, phase, level=args.level, stages=[s for s in args.stage.split(",") if s])
    if args.weights:
        net.copy_from(args.weights)
    _configure_sparse(net, args)
    log.info("Performing Forward")
    net.forward_from_to()
    log.info("Performing Backward")
    net.backward_from_to()
    n = len(net.layers)
    fwd, bwd = np.zeros((args.iterations, n)), np.zeros((args.iterations, n))
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", args.iterations)
    for it in range(args.iterations):
        for i, layer in enumerate(net.layers):
            t0 = time.perf_counter()
            layer.forward(net.bottom_vecs[i], net.top_vecs[i])
            fwd[it, i] = time.perf_counter() - t0
        for i in range(n - 1, -1, -1):
            t0 = time.perf_counter()
            if net.layer_need_backward[i]:
                net.layers[i].backward(net.top_vecs[i], net.bottom_need_backward[i],
                                       net.bottom_vecs[i])
            bwd[it, i] = time.perf_counter() - t0
        log.info("Iteration: %d forward-backward time: %.3f ms.", it + 1,
                 1e3 * (fwd[it].sum() + bwd[it].sum()))
    log.info("Average time per layer: ")
    f_ms, b_ms = 1e3 * fwd.mean(0), 1e3 * bwd.mean(0)
    width = max(len(x) for x in net.layer_names)
    print(f"{'layer':<{width}}  {'type':<22} {'forward ms':>11} {'backward ms':>12}")
    for name, layer, f, b in zip(net.layer_names, net.layers, f_ms, b_ms):
        log.info("%s\tforward: %.5g ms.", name, f)
        log.info("%s\tbackward: %.5g ms.", name, b)
        print(f"{name:<{width}}  {layer.type:<22} {f:11.3f} {b:12.3f}")
    log.info("Average Forward pass: %.5g ms.", f_ms.sum())
    log.info("Average Backward pass: %.5g ms.", b_ms.sum())
    log.info("Average Forward-Backward: %.5g ms.", f_ms.sum() + b_ms.sum())
    log.info("Total Time: %.5g ms.", 1e3 * (fwd.sum() + bwd.sum()))
    log.info("*** Benchmark ends ***")
    print(f"{'total':<{width}}  {'':<22} {f_ms.sum():11.3f} {b_ms.sum():12.3f}")


def _configure_time(p):
    flag(p, "model", required=True, help="net prototxt")
    flag(p, "weights", default=None, help="caffemodel (optional)")
    flag(p, "iterations", type=int, default=50, help="number of timed iterations")
    flag(p, "phase", default="TRAIN", choices=["TRAIN", "TEST", "train", "test"],
         help="net phase (Caffe times the TRAIN net)")
    flag(p, "gpu", default=None, help="GPU id to use")
    _sparse_arg(p)
    _stage_args(p)
    add_source_overrides(p)


time_cmd.configure = _configure_time


# --- device_query ------------------------------------------------------------------------------
@command("device_query", "show GPU diagnostic information (caffe device_query)")
def device_query_cmd(args):
    from ..backend import gpu
    ok, reason = gpu.available()
    if not ok:
        raise DeviceError(f"no usable GPU: {reason}")
    import pycuda.driver as drv
    ids = range(drv.Device.count()) if args.gpu in (None, "all") else _gpu_ids(args.gpu)
    for i in ids:
        d = drv.Device(i)
        attrs = d.get_attributes()
        A = drv.device_attribute
        print(f"Device id:                     {i}")
        print(f"Name:                          {d.name()}")
        print(f"Major revision number:         {d.compute_capability()[0]}")
        print(f"Minor revision number:         {d.compute_capability()[1]}")
        print(f"Total global memory:           {d.total_memory()}")
        print(f"Total shared memory per block: {attrs[A.MAX_SHARED_MEMORY_PER_BLOCK]}")
        print(f"Warp size:                     {attrs[A.WARP_SIZE]}")
        print(f"Maximum threads per block:     {attrs[A.MAX_THREADS_PER_BLOCK]}")
        print(f"Clock rate:                    {attrs[A.CLOCK_RATE]}")
        print(f"Number of multiprocessors:     {attrs[A.MULTIPROCESSOR_COUNT]}")


device_query_cmd.configure = lambda p: flag(p, "gpu", default=None,
                                            help="device id(s), comma-separated, or 'all'")
