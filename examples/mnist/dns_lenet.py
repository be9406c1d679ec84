"""Dynamic Network Surgery on LeNet / MNIST, offline: prune with splicing to >= 50x fewer weights.

    python examples/mnist/dns_lenet.py [--weights dense.caffemodel] [--workdir runs/mnist]

1. converts ../shared/data/mnist to LMDBs and trains the dense LeNet as prune_finetune.py does
   (BVLC's prototxts, 2,000 iterations on the 5k subset, seed 1701), unless --weights gives one;
2. scores it on all 10,000 test images;
3. fine-tunes it with DNS (dns_lenet5.prototxt: targets ramped on a cubic schedule, masks
   recomputed every 10 iterations with two thresholds, so wrongly pruned weights come back;
   masks frozen for the last iterations), then scores it again;
4. prints the accuracies, the compression and the sparsity table, and writes
   <workdir>/lenet_dns.caffemodel (an ordinary caffemodel whose pruned weights are exact 0).

Everything is seeded: the same command gives the same numbers."""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import caffe_lite  # noqa: E402
from caffe_lite.pruning import (DnsPruner, GradualPruner, load_spec, prune_net,  # noqa: E402
                                report, sparsity_report)
from caffe_lite.solvers import SGDSolver  # noqa: E402
from prune_finetune import accuracy, die, prepare_data, solver_param  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", default=os.path.join(REPO, "..", "shared"))
    p.add_argument("--workdir", default=os.path.join("runs", "mnist"))
    p.add_argument("--weights", default=None, help="a dense LeNet caffemodel (default: train)")
    p.add_argument("--spec", default=os.path.join(HERE, "dns_lenet5.prototxt"))
    p.add_argument("--train-iters", type=int, default=2000)
    p.add_argument("--iters", type=int, default=6000, help="DNS fine-tuning iterations")
    p.add_argument("--end-iter", type=int, default=None,
                   help="iteration at which the masks freeze (default: the spec's)")
    p.add_argument("--ramp", default=None, metavar="STEPS,EVERY",
                   help="cubic ramp of the targets (default: the spec's gradual block); "
                        "none: the full targets from the first iteration")
    p.add_argument("--lr", type=float, default=0.005, help="base_lr while fine-tuning")
    p.add_argument("--no-splicing", action="store_true",
                   help="control: the same targets on the same cubic schedule by magnitude, "
                        "masks only shrinking (GradualPruner), the same iterations")
    p.add_argument("--seed", type=int, default=1701)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    t0 = time.perf_counter()
    caffe_lite.set_mode_cpu()
    shared = os.path.abspath(args.shared)
    os.makedirs(args.workdir, exist_ok=True)
    dbs = prepare_data(shared, args.workdir)
    spec = load_spec(args.spec)
    if args.end_iter is not None:
        spec.dns.end_iter = args.end_iter
    if args.ramp == "none":
        spec.ClearField("gradual")
    elif args.ramp:
        steps, every = (int(x) for x in args.ramp.split(","))
        spec.gradual.num_steps, spec.gradual.frequency = steps, every
    dense = args.weights
    if dense is None:
        dense = os.path.join(args.workdir, "lenet_dense.caffemodel")
        if not os.path.isfile(dense):
            solver = SGDSolver(solver_param(shared, dbs, args.train_iters, 0.01, args.seed,
                                            os.path.join(args.workdir, "lenet")))
            print(f"training LeNet for {args.train_iters} iterations ...", flush=True)
            solver.solve()
            solver.net.save(dense)
            solver.net.close()
    elif not os.path.isfile(dense):
        die(f"--weights {dense}: no such file")
    ft = SGDSolver(solver_param(shared, dbs, args.iters, args.lr, args.seed,
                                os.path.join(args.workdir, "lenet_dns")))
    ft.net.copy_from(dense)
    acc_dense = accuracy(ft)
    print(f"dense accuracy: {acc_dense:.4f}", flush=True)
    if args.no_splicing:
        spec.method = "magnitude"
        spec.ClearField("dns")
        if spec.HasField("gradual"):
            pruner = GradualPruner(ft, spec).attach()
        else:                                    # everything at once, before fine-tuning
            prune_net(ft.net, spec)
            pruner = argparse.Namespace()
        pruner.spliced = pruner.updates = 0
        print(f"control: magnitude pruning on the same schedule, {args.iters} iterations ...",
              flush=True)
    else:
        pruner = DnsPruner(ft, spec).attach()
        print(f"DNS fine-tuning {args.iters} iterations (masks every {pruner.frequency}, "
              f"frozen at {pruner.end}) ...", flush=True)
    t = time.perf_counter()
    ft.solve()
    seconds = time.perf_counter() - t
    acc = accuracy(ft)
    path = os.path.join(args.workdir, "lenet_magnitude.caffemodel" if args.no_splicing else
                        "lenet_dns.caffemodel")
    ft.net.save(path)
    rep = sparsity_report(ft.net, path)
    ft.net.close()
    comp = rep["total"]["compression"]
    print()
    print("== accuracy on the 10,000 MNIST test images ==")
    print(f"dense                  {100 * acc_dense:6.2f} %")
    what = "magnitude" if args.no_splicing else "DNS"
    print(f"{what}, {comp:5.1f}x fewer    {100 * acc:6.2f} %   ({100 * (acc - acc_dense):+.2f} "
          "points vs dense)")
    print(f"weights spliced back: {pruner.spliced} over {pruner.updates} mask updates")
    print()
    print(report.to_table(rep))
    print(f"\nDNS fine-tuning {seconds:.0f} s, total {time.perf_counter() - t0:.0f} s on "
          f"{os.cpu_count()} CPU(s)")
    return {"dense": acc_dense, "dns": acc, "compression": comp, "spliced": pruner.spliced,
            "report": rep, "seconds": seconds}


if __name__ == "__main__":
    try:
        main()
    except caffe_lite.CaffeLiteError as exc:
        die(str(exc))
