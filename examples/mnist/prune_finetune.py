"""Prune-then-fine-tune LeNet on MNIST to Han et al.'s LeNet-5 profile, offline.

    python examples/mnist/prune_finetune.py [--weights dense.caffemodel] [--workdir runs/mnist]
                                            [--gpu [ID]]

1. converts ../shared/data/mnist (the 5k training subset, the 10k test set) to LMDBs;
2. trains BVLC's LeNet (lenet_train_test.prototxt and lenet_solver.prototxt, unchanged but for
   the LMDB paths and max_iter) unless --weights gives a dense caffemodel;
3. scores the dense model on all 10,000 test images;
4. prunes it by magnitude to han_lenet5.prototxt (weights remaining: conv1 66 %, conv2 12 %,
   ip1 8 %, ip2 19 %) and scores it again;
5. fine-tunes with the masks (pruned weights stay exactly 0), by default pruning gradually on
   Zhu & Gupta's cubic schedule up to the same profile, and scores the result;
6. prints the accuracies, the sparsity table and the model sizes, and writes
   <workdir>/lenet_dense.caffemodel and <workdir>/lenet_pruned.caffemodel (ordinary
   caffemodels with exact zeros);
7. shares the pruned weights (Deep Compression's trained quantisation: conv 8 bits, fc 4 bits),
   fine-tunes the shared values, writes <workdir>/lenet_quantized.caffemodel and the
   compressed <workdir>/lenet_compressed.cmodel, and prints their sizes and accuracy, then
   times the compressed model's forward at batch 1 on the dense path and on sparse inference
   (docs/sparse.md) (--bits none skips this stage).

Everything is seeded: the same command gives the same numbers.  Training shows a progress bar
on a terminal (a line every 10 % otherwise); Ctrl-C stops as `caffe-lite train` does: the
iteration in flight finishes, a snapshot is written, and one line says where (a second
Ctrl-C stops at once).  --gpu trains, prunes and scores on a GPU (PyCUDA; see docs/gpu.md);
without a usable GPU it stops with a one-line error."""
import argparse
import contextlib
import os
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
# Multi-threaded OpenBLAS inside caffe-lite's own per-block threads can slow the small LeNet
# GEMMs down badly on a busy machine; one BLAS thread per worker is the fast setting here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, REPO)  # run from a checkout without installing

import caffe_lite  # noqa: E402
from caffe_lite.commands.caffe_tools import override_sources  # noqa: E402
from caffe_lite.io import load_message, upgrade_net  # noqa: E402
from caffe_lite.proto import caffe_pb2  # noqa: E402
from caffe_lite.pruning import (GradualPruner, load_spec, prune_net, report,  # noqa: E402
                                sparsity_report)
from caffe_lite.solvers import SGDSolver, load_solver_param  # noqa: E402
from caffe_lite.util.progress import training_bar  # noqa: E402

FILES = {"train_images": "train5k-images-idx3-ubyte.gz",
         "train_labels": "train5k-labels-idx1-ubyte.gz",
         "test_images": "t10k-images-idx3-ubyte.gz",
         "test_labels": "t10k-labels-idx1-ubyte.gz"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", default=os.path.join(REPO, "..", "shared"),
                   help="the shared folder with data/mnist and models/bvlc_mnist "
                        "(default: ../shared beside the repository)")
    p.add_argument("--workdir", default=os.path.join("runs", "mnist"),
                   help="where the LMDBs and caffemodels go (default: ./runs/mnist)")
    p.add_argument("--weights", default=None,
                   help="a dense LeNet caffemodel to prune instead of training one")
    p.add_argument("--spec", default=os.path.join(HERE, "han_lenet5.prototxt"),
                   help="pruning spec (default: Han et al.'s LeNet-5 profile)")
    p.add_argument("--train-iters", type=int, default=2000,
                   help="dense training iterations (batch 64; default 2000 = ~25 epochs of "
                        "the 5k subset)")
    p.add_argument("--finetune-iters", type=int, default=2000,
                   help="fine-tuning iterations after pruning (default 2000)")
    p.add_argument("--finetune-lr", type=float, default=0.005,
                   help="base_lr while fine-tuning (the dense run uses the solver's 0.01)")
    p.add_argument("--schedule", choices=["gradual", "oneshot"], default="gradual",
                   help="gradual: prune on the cubic schedule while fine-tuning (default); "
                        "oneshot: prune to the profile at once, then fine-tune")
    p.add_argument("--steps", type=int, default=10,
                   help="gradual: number of pruning steps after the first (default 10)")
    p.add_argument("--every", type=int, default=100,
                   help="gradual: iterations between pruning steps (default 100)")
    p.add_argument("--control", action="store_true",
                   help="also fine-tune the dense model the same way without pruning, to "
                        "separate the cost of pruning from the benefit of more training")
    p.add_argument("--seed", type=int, default=1701, help="random seed (default 1701)")
    p.add_argument("--gpu", nargs="?", type=int, const=0, default=None, metavar="ID",
                   help="run on GPU ID (default 0 when the flag is given alone); the CPU "
                        "otherwise")
    p.add_argument("--test-batches", type=int, default=None, metavar="N",
                   help="score on the first N batches of 100 test images (default: all 100)")
    p.add_argument("--bits", default="conv=8,fc=4",
                   help="weight sharing: bits per kind or layer (default conv=8,fc=4); "
                        "'none' skips quantisation and compression")
    p.add_argument("--quantize-iters", type=int, default=300,
                   help="fine-tuning iterations with shared weights (default 300)")
    p.add_argument("--quantize-lr", type=float, default=1e-4,
                   help="base_lr while fine-tuning shared weights: each shared value moves "
                        "by the sum of its weights' gradients (default 1e-4)")
    return p.parse_args(argv)


def select_device(gpu):
    """CPU, or GPU `gpu`; a GPU that cannot be used stops the run with a one-line error."""
    if gpu is None:
        caffe_lite.set_mode_cpu()
        return "CPU"
    try:
        caffe_lite.set_device(gpu)
        caffe_lite.set_mode_gpu()
    except caffe_lite.CaffeLiteError as exc:
        die(f"--gpu {gpu}: {exc}")
    return f"GPU {gpu}"


def die(msg):
    print(f"prune_finetune.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


class Stopped(Exception):
    """Training stopped on SIGINT / SIGTERM (after its snapshot)."""


def train(solver):
    """solver.solve() as `caffe-lite train` runs it: the solver's own SIGINT / SIGTERM
    handling, and its progress bar."""
    total = solver.param.max_iter - solver.iter
    previous = solver.install_signal_handlers()
    try:
        with training_bar(solver, total, lines_every=max(total // 10, 1)):
            solver.solve()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if solver.requested_early_exit:
        raise Stopped(f"stopped at iteration {solver.iter}; snapshot "
                      f"{solver.param.snapshot_prefix}_iter_{solver.iter}.caffemodel")


def prepare_data(shared, workdir):
    from caffe_lite.data.convert import convert_mnist
    mnist = os.path.join(shared, "data", "mnist")
    paths = {k: os.path.join(mnist, v) for k, v in FILES.items()}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        die(f"MNIST files not found: {', '.join(missing)} (the example needs the shared "
            "folder; pass --shared DIR pointing at it)")
    dbs = {}
    for split in ("train", "test"):
        db = os.path.join(workdir, f"mnist_{split}_lmdb")
        if not os.path.exists(os.path.join(db, "data.mdb")):
            n = convert_mnist(paths[f"{split}_images"], paths[f"{split}_labels"], db)
            print(f"converted {n} {split} images to {db}")
        dbs[split] = db
    return dbs


def solver_param(shared, dbs, max_iter, base_lr, seed, prefix, test_batches=None):
    """BVLC's lenet_solver.prototxt and lenet_train_test.prototxt, with our LMDBs."""
    models = os.path.join(shared, "models", "bvlc_mnist")
    solver_file = os.path.join(models, "lenet_solver.prototxt")
    if not os.path.isfile(solver_file):
        die(f"{solver_file} not found (pass --shared DIR)")
    param = load_solver_param(solver_file)
    net, _ = load_message(param.net, caffe_pb2.NetParameter)
    upgrade_net(net)
    override_sources(net, dbs["train"], dbs["test"])
    param.ClearField("net")
    param.net_param.CopyFrom(net)
    param.max_iter = max_iter
    param.base_lr = base_lr
    param.random_seed = seed
    # We test when we want to (all 10k images: test_iter 100 x batch 100), not on a period.
    param.test_interval = 10 ** 9
    param.test_initialization = False
    param.display = 0
    param.snapshot = 0
    param.snapshot_after_train = False
    param.snapshot_prefix = prefix
    # The device is chosen by --gpu (caffe_lite's mode), as the CLI's -gpu does.
    param.solver_mode = caffe_pb2.SolverParameter.CPU
    if test_batches is not None:
        param.test_iter[0] = test_batches
    return param


def accuracy(solver):
    return solver.test(0)["accuracy"]


def size_line(label, path):
    return f"{label:<34} {os.path.getsize(path):>10,d} bytes  {path}"


def compress_stage(args, shared, dbs, dense_path, pruned_path, acc_dense):
    """Quantise the pruned model (weight sharing), fine-tune the shared values, write the
    quantised caffemodel and the compressed file; print sizes and accuracies.  Returns the
    figures as a dict."""
    import gzip
    from caffe_lite.compression import WeightSharing, compress
    ft = SGDSolver(solver_param(shared, dbs, args.quantize_iters, args.quantize_lr, args.seed,
                                os.path.join(args.workdir, "lenet_q"), args.test_batches))
    ft.net.copy_from(pruned_path)
    sharing = WeightSharing(ft, args.bits).attach()
    acc_shared = accuracy(ft)
    print(f"weights shared ({args.bits}), before fine-tuning: {acc_shared:.4f}; fine-tuning "
          f"the shared values {args.quantize_iters} iterations ...", flush=True)
    ft.solve()
    acc_q = accuracy(ft)
    quantized_path = os.path.join(args.workdir, "lenet_quantized.caffemodel")
    compressed_path = os.path.join(args.workdir, "lenet_compressed.cmodel")
    ft.net.save(quantized_path)
    compress(quantized_path, compressed_path)
    # The compressed file loads like a caffemodel and scores the same.
    ft.net.copy_from(compressed_path)
    acc_loaded = accuracy(ft)
    untied = sum(sharing.untied().values())
    values = {n: b.size for n, b in sharing.codebooks().items()}
    ft.net.close()
    with open(pruned_path, "rb") as f:
        gz = len(gzip.compress(f.read(), 9))
    sizes = {"dense": os.path.getsize(dense_path), "pruned": os.path.getsize(pruned_path),
             "pruned_gzip": gz, "quantized": os.path.getsize(quantized_path),
             "compressed": os.path.getsize(compressed_path)}
    dense = sizes["dense"]
    print()
    print(f"== weight sharing ({args.bits}) + compression ==")
    print("shared values per layer: "
          + ", ".join(f"{n} {k}" for n, k in values.items())
          + f" (every cluster's weights identical after fine-tuning: {untied == 0})")
    print(f"accuracy: shared, before fine-tuning {100 * acc_shared:6.2f} %; fine-tuned "
          f"{100 * acc_q:6.2f} % ({100 * (acc_q - acc_dense):+.2f} points vs dense); loaded "
          f"from the compressed file {100 * acc_loaded:6.2f} %")
    rows = [("dense caffemodel", sizes["dense"]),
            ("pruned caffemodel", sizes["pruned"]),
            ("pruned caffemodel, gzip -9", sizes["pruned_gzip"]),
            ("quantised caffemodel", sizes["quantized"]),
            ("compressed (caffe-lite compress)", sizes["compressed"])]
    for label, n in rows:
        print(f"{label:<34} {n:>10,d} bytes  {dense / n:6.1f}x smaller than dense")
    speed = speed_stage(shared, compressed_path)
    return {"shared": acc_shared, "quantized": acc_q, "loaded": acc_loaded, "sizes": sizes,
            "values": values, "untied": untied, "speed": speed}


def speed_stage(shared, weights, batch=1, repeats=200):
    """Time LeNet's deploy net (lenet.prototxt) with `weights` (the compressed file loads like
    a caffemodel) on the dense path and on sparse inference's default (mode auto), alternately
    in one run; print the medians per net and per pruned layer.  Returns time_model's dict."""
    from caffe_lite.compression import sparse
    deploy = os.path.join(shared, "models", "bvlc_mnist", "lenet.prototxt")
    t = sparse.time_model(deploy, weights, batch=batch, sparse_mode="auto", repeats=repeats)
    print()
    print(f"== forward at batch {batch}: dense vs sparse (mode auto), median of {repeats}, "
          "alternately ==")
    print(f"{'whole net':<10} dense {t['dense_ms']:7.3f} ms  sparse {t['sparse_ms']:7.3f} ms  "
          f"{t['speedup']:5.2f}x")
    for name, v in t["layers"].items():
        print(f"{name:<10} dense {v['dense_ms']:7.3f} ms  sparse {v['sparse_ms']:7.3f} ms  "
              f"{v['speedup']:5.2f}x  (ran {v['ran']})")
    return t


def main(argv=None):
    args = parse_args(argv)
    t_start = time.perf_counter()
    device = select_device(args.gpu)
    shared = os.path.abspath(args.shared)
    if not os.path.isdir(shared):
        die(f"shared folder {shared} not found (pass --shared DIR)")
    os.makedirs(args.workdir, exist_ok=True)
    dbs = prepare_data(shared, args.workdir)
    spec = load_spec(args.spec)

    dense_path = args.weights
    if dense_path is None:
        dense_path = os.path.join(args.workdir, "lenet_dense.caffemodel")
        t = time.perf_counter()
        solver = SGDSolver(solver_param(shared, dbs, args.train_iters, 0.01, args.seed,
                                        os.path.join(args.workdir, "lenet"),
                                        args.test_batches))
        print(f"training LeNet for {args.train_iters} iterations ...", flush=True)
        with contextlib.closing(solver.net):
            train(solver)
            solver.net.save(dense_path)
        print(f"trained in {time.perf_counter() - t:.0f} s -> {dense_path}")
    elif not os.path.isfile(dense_path):
        die(f"--weights {dense_path}: no such file")

    ft = SGDSolver(solver_param(shared, dbs, args.finetune_iters, args.finetune_lr,
                                args.seed, os.path.join(args.workdir, "lenet_ft"),
                                args.test_batches))
    ft.net.copy_from(dense_path)
    acc_dense = accuracy(ft)
    print(f"dense accuracy: {acc_dense:.4f}", flush=True)

    # One-shot pruning to the profile: the accuracy before any fine-tuning.
    from caffe_lite.pruning.masks import restore_params, snapshot_params
    saved = snapshot_params(ft.net)
    prune_net(ft.net, spec)
    acc_pruned = accuracy(ft)
    print(f"pruned, before fine-tuning: {acc_pruned:.4f}", flush=True)
    if args.schedule == "gradual":
        restore_params(saved)   # start again from the dense weights
        g = {"begin_iter": 0, "num_steps": args.steps, "frequency": args.every}
        GradualPruner(ft, spec, gradual=g).attach()
        print(f"fine-tuning {args.finetune_iters} iterations, pruning gradually at "
              f"iterations 0..{args.steps * args.every} every {args.every} ...", flush=True)
    else:
        print(f"fine-tuning {args.finetune_iters} iterations ...", flush=True)
    del saved
    t = time.perf_counter()
    train(ft)
    acc_ft = accuracy(ft)
    print(f"fine-tuned in {time.perf_counter() - t:.0f} s", flush=True)
    pruned_path = os.path.join(args.workdir, "lenet_pruned.caffemodel")
    ft.net.save(pruned_path)
    rep = sparsity_report(ft.net, pruned_path)
    ft.net.close()
    acc_control = None
    if args.control:
        control = SGDSolver(solver_param(shared, dbs, args.finetune_iters, args.finetune_lr,
                                         args.seed, os.path.join(args.workdir, "lenet_ctl"),
                                         args.test_batches))
        control.net.copy_from(dense_path)
        print(f"control: fine-tuning the dense model {args.finetune_iters} iterations ...",
              flush=True)
        train(control)
        acc_control = accuracy(control)
        control.net.close()

    total = time.perf_counter() - t_start
    print()
    images = 100 * (args.test_batches if args.test_batches is not None else 100)
    print(f"== accuracy on {'the 10,000' if images == 10000 else f'the first {images:,d}'} "
          "MNIST test images ==")
    print(f"dense                          {100 * acc_dense:6.2f} %")
    print(f"pruned, before fine-tuning     {100 * acc_pruned:6.2f} %")
    print(f"pruned + fine-tuned ({args.schedule}){' ' * (9 - len(args.schedule))}"
          f"{100 * acc_ft:6.2f} %   "
          f"({100 * (acc_ft - acc_dense):+.2f} points vs dense)")
    if acc_control is not None:
        print(f"dense + the same fine-tuning   {100 * acc_control:6.2f} %   (control; "
              f"pruned is {100 * (acc_ft - acc_control):+.2f} points vs it)")
    print()
    print("== sparsity ==")
    print(report.to_table(rep))
    print()
    print("== model sizes ==")
    print(size_line("dense caffemodel", dense_path))
    print(size_line("pruned caffemodel (dense format)", pruned_path))
    s = rep["sizes"]
    print(f"{'pruned, sparse (CSR) estimate':<34} {s['sparse_bytes_estimate']:>10,d} bytes")
    print(f"{'parameters':<34} {rep['total']['params']:>10,d} prunable, "
          f"{rep['total']['nonzeros']:,d} nonzero ({rep['total']['compression']:.1f}x fewer)")
    compressed = None
    if args.bits.lower() != "none":
        compressed = compress_stage(args, shared, dbs, dense_path, pruned_path, acc_dense)
        total = time.perf_counter() - t_start
    print()
    where = f"{os.cpu_count()} CPU(s)" if device == "CPU" else device
    print(f"total time {total:.0f} s on {where}")
    return {"dense": acc_dense, "pruned": acc_pruned, "finetuned": acc_ft,
            "control": acc_control, "report": rep, "seconds": total, "device": device,
            "compressed": compressed}


if __name__ == "__main__":
    try:
        main()
    except caffe_lite.CaffeLiteError as exc:
        die(str(exc))
    except Stopped as exc:  # the CLI's convention: one line, status 130
        print(f"prune_finetune.py: {exc}", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("prune_finetune.py: interrupted", file=sys.stderr)
        sys.exit(130)
