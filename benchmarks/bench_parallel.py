"""Data-parallel scaling on this machine: training images/s of 2 MPI ranks (1 thread each) next
to one process with 2 threads, at the same effective batch (so the same model updates).

    python benchmarks/bench_parallel.py [--models lenet,mobilenet_v1] [--rounds 3]
                                        [--out benchmarks/results/parallel-DATE-vm.json]

For each model (LeNet batch 64, MobileNet-v1 batch 8 at 224x224, per rank) it times an SGD
training step (forward, backward, gradient allreduce, update; inputs are random arrays held in
Input layers, so no data loading) in these configurations:

  1p1t   one process, 1 thread, batch B            (one rank's share of the work)
  1p2t   one process, 2 threads, batch 2B          (the baseline the ranks compete with)
  2r     mpirun -n 2, 1 thread per rank, B per rank, gradients summed during backward
  2r-nl  the same with layer_wise_reduce false (one allreduce after backward)

With --collectives it instead times, on 2 ranks, MPI_Allreduce against MPI_Iallreduce + Wait
of float32 buffers of LeNet's and MobileNet-v1's gradient sizes and of a 4 MiB bucket
(alternating, medians): why the overlap uses a thread with the blocking call.

Each configuration runs in its own launch; the launches alternate round by round (1p1t, 1p2t,
2r, 2r-nl, 1p1t, ...) so that load from other processes falls on all of them; the figure is
the median step time over every timed step of every round.  The 2-rank launches also time the
allreduce of the model's gradients alone (MPI over shared memory on this host).  Needs mpi4py
and mpirun (pip install -e '.[mpi]')."""
import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = {"lenet": 64, "mobilenet_v1": 8}
CONFIGS = ("1p1t", "1p2t", "2r", "2r-nl")


# --- the worker: one launch, several timed steps -------------------------------------------------
def worker(args):
    import numpy as np
    import caffe_lite as caffe
    from benchmarks import nets
    world = None
    if args.mpi:
        from caffe_lite import parallel
        world = parallel.init()
    net_param = getattr(nets, args.model)(batch=args.batch)
    solver_text = (f"base_lr: 0.001 momentum: 0.9 weight_decay: 0.0005 lr_policy: 'fixed' "
                   f"display: 0 max_iter: 1000000 random_seed: 1 layer_wise_reduce: "
                   f"{'true' if args.layer_wise else 'false'}")
    from google.protobuf import text_format
    from caffe_lite.proto import caffe_pb2
    param = caffe_pb2.SolverParameter()
    text_format.Parse(solver_text, param)
    param.net_param.CopyFrom(net_param)
    solver = caffe.SGDSolver(param)
    g = np.random.default_rng(0 if world is None else world.rank)
    for name in solver.net.inputs:
        blob = solver.net.blobs[name]
        if name == "label":
            loss = next(n for n, lay in solver.net.layer_dict.items()
                        if lay.type == "SoftmaxWithLoss")
            n_out = solver.net.blobs[solver.net.bottom_names[loss][0]].shape[1]
            blob.data[...] = g.integers(0, n_out, blob.shape)
        else:
            blob.data[...] = g.standard_normal(blob.shape)
    dp = None
    if world is not None:
        dp = parallel.DataParallel(solver)
    solver.step(args.warmup)
    times = []
    for _ in range(args.steps):
        if world is not None:
            world.comm.Barrier()
        t = time.perf_counter()
        solver.step(1)
        times.append(time.perf_counter() - t)
    out = {"step_s": times}
    if world is not None:
        buf = np.ones(sum(b.count for b in solver.net.learnable_params), np.float32)
        ar = []
        for _ in range(args.steps):
            world.comm.Barrier()
            t = time.perf_counter()
            world.comm.Allreduce(world.MPI.IN_PLACE, buf, op=world.MPI.SUM)
            ar.append(time.perf_counter() - t)
        out.update(allreduce_s=ar, gradient_bytes=buf.nbytes, buckets=len(dp.buckets.buckets),
                   mpi=world.library)
        times = world.comm.gather(times)
        if world.rank == 0:  # a step ends when the slower rank's ends
            out["step_s"] = [max(ts) for ts in zip(*times)]
    if world is None or world.rank == 0:
        print("RESULT " + json.dumps(out), flush=True)


def collectives_worker(args):
    import numpy as np
    from caffe_lite import parallel
    world = parallel.init()
    comm, MPI = world.comm, world.MPI
    out = {"mpi": world.library, "sizes_mb": {}}
    for mb in (1.72, 4.19, 8.3, 17.02):
        buf = np.ones(int(mb * 1e6 / 4), np.float32)
        times = {"Allreduce": [], "Iallreduce": []}
        for _ in range(args.steps):
            for name in times:
                comm.Barrier()
                t = time.perf_counter()
                if name == "Allreduce":
                    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
                else:
                    comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM).Wait()
                times[name].append(time.perf_counter() - t)
        out["sizes_mb"][mb] = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    if world.rank == 0:
        print("RESULT " + json.dumps(out), flush=True)


# --- the driver ----------------------------------------------------------------------------------
def _mpirun_cmd():
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    mpirun = shutil.which("mpirun", path=path)
    if mpirun is None:
        raise SystemExit("no mpirun: pip install -e '.[mpi]'")
    return [mpirun, "-n", "2"]


def _env(threads):
    return dict(os.environ, PYTHONPATH=str(ROOT), OMPI_ALLOW_RUN_AS_ROOT="1",
                OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", CAFFE_LITE_NUM_THREADS=str(threads))


def _result(res, what):
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if res.returncode != 0 or line is None:
        raise SystemExit(f"{what} failed:\n{res.stderr[-3000:]}")
    return json.loads(line[7:])


def collectives(steps):
    cmd = _mpirun_cmd() + [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker",
                           "--collectives", "--steps", str(steps)]
    out = _result(subprocess.run(cmd, env=_env(1), capture_output=True, text=True,
                                 timeout=3600), "collectives")
    print(f"{'MB':>6} {'Allreduce ms':>13} {'Iallreduce ms':>14} {'ratio':>6}")
    for mb, t in out["sizes_mb"].items():
        print(f"{float(mb):6.2f} {t['Allreduce']:13.2f} {t['Iallreduce']:14.2f} "
              f"{t['Iallreduce'] / t['Allreduce']:6.1f}")
    return out


def launch(model, config, steps, warmup):
    batch = BATCH[model]
    me = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", "--model", model,
          "--steps", str(steps), "--warmup", str(warmup)]
    if config == "1p1t":
        env, cmd = _env(1), me + ["--batch", str(batch)]
    elif config == "1p2t":
        env, cmd = _env(2), me + ["--batch", str(2 * batch)]
    else:
        env, cmd = _env(1), _mpirun_cmd() + me + ["--batch", str(batch), "--mpi"]
        if config == "2r-nl":
            cmd += ["--layer-wise", "0"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    return _result(res, f"{config} {model}")


def doc_table(results):
    """The table of docs/distributed.md from a results file."""
    names = {"lenet": "LeNet (64)", "mobilenet_v1": "MobileNet-v1 (8)"}
    rows = ["| model (batch per rank) | 1 process, 1 thread, B | 1 process, 2 threads, 2B | "
            "2 ranks, overlapped | 2 ranks, after backward | 2 ranks / 1 process 2 threads |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for m, s in results["configs"].items():
        def cell(c):
            rounds = "/".join(f"{x:.0f}" for x in s[c]["step_ms_per_round"])
            return f"{s[c]['images_per_s']:.0f} img/s ({rounds} ms)"
        rows.append(f"| {names.get(m, m)} | {cell('1p1t')} | {cell('1p2t')} | {cell('2r')} | "
                    f"{cell('2r-nl')} | {s['ratios']['2r_over_1p2t']:.2f} |")
    return "\n".join(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mpi", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="lenet", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--layer-wise", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--collectives", action="store_true",
                   help="time MPI_Allreduce against MPI_Iallreduce instead")
    p.add_argument("--models", default="lenet,mobilenet_v1")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=0, help="timed steps per launch (default: 30 "
                   "for LeNet, 4 for MobileNet-v1)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("--table", default=None, metavar="RESULTS.json",
                   help="print docs/distributed.md's table from a results file")
    args = p.parse_args()
    if args.table:
        print(doc_table(json.loads(pathlib.Path(args.table).read_text())))
        return
    if args.worker:
        return collectives_worker(args) if args.collectives else worker(args)
    from benchmarks.machine import describe
    results = {"machine": describe(), "configs": {}}
    if args.collectives:
        results["collectives"] = collectives(args.steps or 15)
        results["machine"]["load_average_end"] = os.getloadavg()
        if args.out:
            pathlib.Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        return
    for model in args.models.split(","):
        steps = args.steps or (30 if model == "lenet" else 4)
        runs = {c: [] for c in CONFIGS}
        for r in range(args.rounds):
            for c in CONFIGS:
                runs[c].append(launch(model, c, steps, args.warmup))
                print(f"{model} round {r + 1} {c}: median step "
                      f"{statistics.median(runs[c][-1]['step_s']) * 1e3:.1f} ms", flush=True)
        summary = {}
        for c in CONFIGS:
            steps_s = [t for run in runs[c] for t in run["step_s"]]
            images = BATCH[model] * (1 if c == "1p1t" else 2)
            med = statistics.median(steps_s)
            summary[c] = {"step_ms": med * 1e3, "images_per_s": images / med,
                          "step_ms_per_round": [statistics.median(run["step_s"]) * 1e3
                                                for run in runs[c]]}
            if c.startswith("2r"):
                summary[c]["allreduce_ms"] = statistics.median(
                    t for run in runs[c] for t in run["allreduce_s"]) * 1e3
                summary[c]["gradient_bytes"] = runs[c][0]["gradient_bytes"]
                summary[c]["buckets"] = runs[c][0]["buckets"]
                summary[c]["mpi"] = runs[c][0]["mpi"]
        summary["ratios"] = {
            "2r_over_1p2t": summary["2r"]["images_per_s"] / summary["1p2t"]["images_per_s"],
            "2r_over_1p1t": summary["2r"]["images_per_s"] / summary["1p1t"]["images_per_s"],
            "1p2t_over_1p1t": summary["1p2t"]["images_per_s"] / summary["1p1t"]["images_per_s"],
            "2r_layer_wise_over_after_backward": summary["2r"]["images_per_s"] /
            summary["2r-nl"]["images_per_s"]}
        results["configs"][model] = summary
        print(f"\n{model} (batch {BATCH[model]} per rank)")
        print(f"{'config':8} {'step ms':>9} {'images/s':>9}")
        for c in CONFIGS:
            print(f"{c:8} {summary[c]['step_ms']:9.1f} {summary[c]['images_per_s']:9.1f}")
        for k, v in summary["ratios"].items():
            print(f"  {k}: {v:.2f}")
        print(f"  allreduce of {summary['2r']['gradient_bytes'] / 1e6:.2f} MB alone: "
              f"{summary['2r']['allreduce_ms']:.2f} ms", flush=True)
    results["machine"]["load_average_end"] = os.getloadavg()
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
