"""Host work per GPU step, measured without a GPU: caffe-lite's Python time and kernel launch
count for one forward + backward, with every kernel launch and cuBLAS call returning at once.

    python3 benchmarks/gpu/host_overhead.py [--compare OTHER_CHECKOUT] [--rounds 3]

Runs on the CPU emulator's stand-in for PyCUDA (tests/gpu_emu) in its null-device mode
(CAFFE_LITE_EMU_NULL=1): launches are counted but not executed, so what is timed is the
host's own work per step -- shape logic, buffer lookups, argument packing in caffe-lite --
which is what bounds small batches on a fast GPU.  Real PyCUDA adds its own cost per launch
(packing the arguments, cuLaunchKernel: a few microseconds), hence the launch counts.  Times
are the process's CPU time (less disturbed by other load than wall time), medians over steps;
with --compare, the same measurement runs for another checkout (e.g. main) in alternating
subprocesses and the ratio is reported.  Nets: MobileNet-v1 at batch 1 (224 x 224) and LeNet
at batch 64."""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
EMU = ROOT / "tests" / "gpu_emu"


def measure(steps=20, warmup=3):
    sys.path[:0] = [str(EMU), str(HERE)]
    import gpu_emu_plugin
    gpu_emu_plugin.install()
    import emu_memory
    import caffe_lite as caffe   # the checkout's (first on PYTHONPATH), before bench_gpu's
    from caffe_lite.solvers import get_solver
    import bench_gpu
    out = {}
    for name, text in (("mobilenet_b1", bench_gpu.mobilenet_prototxt(1, 224)),
                       ("lenet_b64", bench_gpu.lenet_prototxt(64))):
        caffe.set_mode_cpu()
        solver = get_solver('type: "SGD" base_lr: 0.01 lr_policy: "fixed" momentum: 0.9 '
                            'display: 0 snapshot_after_train: false net_param { ' + text + ' }')
        net = solver.net
        caffe.set_mode_gpu()
        for _ in range(warmup):
            net.forward_backward()
        n0 = emu_memory.launches
        times = []
        for _ in range(steps):
            t0 = time.thread_time()
            net.forward_backward()
            times.append(time.thread_time() - t0)
        out[name] = {"host_ms": statistics.median(times) * 1e3,
                     "launches": (emu_memory.launches - n0) / steps, "layers": len(net.layers)}
        caffe.set_mode_cpu()
    return out


def _child(checkout):
    env = dict(os.environ, CAFFE_LITE_EMU_NULL="1",
               PYTHONPATH=os.pathsep.join([str(checkout), str(EMU), str(HERE)]))
    res = subprocess.run([sys.executable, __file__, "--child"], cwd=checkout, env=env,
                         capture_output=True, text=True, timeout=1800)
    if res.returncode:
        raise SystemExit(f"measurement in {checkout} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compare", default=None, metavar="CHECKOUT",
                   help="another checkout of caffe-lite to measure the same way")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure()))
        return 0
    checkouts = {"this": ROOT}
    if args.compare:
        checkouts["other"] = pathlib.Path(args.compare).resolve()
    runs = {k: [] for k in checkouts}
    for _ in range(args.rounds):   # alternating subprocesses
        for k, path in checkouts.items():
            runs[k].append(_child(path))
    report = {}
    for k, rs in runs.items():
        report[k] = {net: {"host_ms": statistics.median(r[net]["host_ms"] for r in rs),
                           "launches": rs[0][net]["launches"], "layers": rs[0][net]["layers"]}
                     for net in rs[0]}
    for net in report["this"]:
        line = f"{net}: host {report['this'][net]['host_ms']:.2f} ms, " \
               f"{report['this'][net]['launches']:.0f} launches"
        if "other" in report:
            o = report["other"][net]
            line += (f"; other checkout {o['host_ms']:.2f} ms, {o['launches']:.0f} launches "
                     f"(ratio {report['this'][net]['host_ms'] / o['host_ms']:.2f})")
        print(line)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
