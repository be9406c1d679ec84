"""One setting of caffe-lite's, with and without, on one net in one process (A/B).

    python -m benchmarks.ab mtcnn_onet --batch 1 \\
        --set caffe_lite.layers.parallel.MIN_SPIN_MACS=2097152
    python -m benchmarks.ab lenet_train --set caffe_lite.layers.gemm_pool.CLAIM_POLLS=1e12
    python -m benchmarks.ab googlenet --control        (both sides alike: the method's noise)

The net is built twice from the same prototxt and weights (deploy nets of
benchmarks/deploy_nets.py, forward; or `lenet_train`, a LeNet b64 SGD step as
`python -m benchmarks` times it).  Side B has the --set module attributes while it is prepared
(its first pass: prepared steps bind thresholds then) and while it runs; side A has the values
as shipped.  The sides run in alternating blocks, medians and 90th percentiles are reported
with the ratio B / A.  Against a benchmark that alternates with another library (OpenCV,
PyTorch), whose threads and caches move a small net's time by tens of percent from block to
block, this isolates what one change does to caffe-lite; `--control` runs the same comparison
with no setting changed, which bounds the method's own noise (within a few percent on the
2-vCPU VM of docs/performance.md).

`--load` runs the comparison while another process keeps one core busy.  A constant that
another module imported by name (`from .parallel import MIN_PARALLEL_STREAM_ELEMENTS` in
layers/fusion.py) is that module's own attribute: set it there too."""
import argparse
import importlib
import json
import multiprocessing
import os
import pathlib
import sys
import tempfile
import time

import numpy as np


def _setup_threads(threads):
    os.environ["CAFFE_LITE_NUM_THREADS"] = str(threads)


def _parse_sets(items):
    """[(module, attribute, value)] from 'package.module.ATTRIBUTE=value' strings."""
    out = []
    for item in items:
        path, _, raw = item.partition("=")
        modname, _, attr = path.rpartition(".")
        if not modname or not raw:
            raise SystemExit(f"--set wants module.ATTRIBUTE=value, got {item!r}")
        module = importlib.import_module(modname)
        if not hasattr(module, attr):
            raise SystemExit(f"--set: {modname} has no attribute {attr}")
        old = getattr(module, attr)
        value = type(old)(float(raw)) if isinstance(old, (int, float)) else raw
        out.append((module, attr, value))
    return out


class _Switch:
    """Puts the --set values in place (B) or back (A)."""

    def __init__(self, sets):
        self.sets = sets
        self.shipped = [(m, a, getattr(m, a)) for m, a, _ in sets]

    def b(self):
        for m, a, v in self.sets:
            setattr(m, a, v)

    def a(self):
        for m, a, v in self.shipped:
            setattr(m, a, v)


def _side(name, batch, folder):
    """A callable running one pass (or training step) of a freshly built net."""
    if name == "lenet_train":
        import caffe_lite as caffe
        from . import cases, nets
        solver = caffe.SGDSolver(cases._solver_param(nets.lenet(64)))
        cases._feed(solver.net, cases._inputs(solver.net))
        return lambda: solver.step(1)
    from .opencv import build
    net = build(name, batch, folder)[0]
    x = np.random.default_rng(1).standard_normal(net.blobs["data"].shape, dtype=np.float32)
    return lambda: net.forward(data=x)


def _busy(seconds):
    t = time.monotonic()
    while time.monotonic() - t < seconds:
        pass


def compare(name, batch, sets, seconds=10.0):
    """{'a_ms', 'b_ms', 'a_p90_ms', 'b_p90_ms', 'ratio', 'runs'} of the two sides."""
    switch = _Switch(sets)
    with tempfile.TemporaryDirectory() as folder:
        run_a = _side(name, batch, folder)
        switch.a()
        run_a()
        run_b = _side(name, batch, folder)
        switch.b()
        run_b()
        switch.a()
        t = time.perf_counter()
        run_a()
        one = time.perf_counter() - t
        per_block = 4
        blocks = max(5, min(400, int(seconds / max(one, 1e-6) / per_block / 2)))
        times = {"a": [], "b": []}
        try:
            for _ in range(blocks):
                for key, run, put in (("a", run_a, switch.a), ("b", run_b, switch.b)):
                    put()
                    run()
                    for _ in range(per_block):
                        t = time.perf_counter()
                        run()
                        times[key].append(time.perf_counter() - t)
        finally:
            switch.a()
    res = {k + "_ms": 1e3 * float(np.median(v)) for k, v in times.items()}
    res.update({k + "_p90_ms": 1e3 * float(np.percentile(v, 90)) for k, v in times.items()})
    res["ratio"] = res["b_ms"] / res["a_ms"]
    res["runs"] = len(times["a"])
    return res


def main(argv=None):
    from . import deploy_nets
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab",
                                description=__doc__.split("\n")[0])
    p.add_argument("net", help=f"one of {', '.join(deploy_nets.NETS)}, lenet_train")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="MODULE.ATTR=VALUE",
                   help="side B's value (repeatable)")
    p.add_argument("--control", action="store_true", help="no --set: both sides alike")
    p.add_argument("--load", action="store_true", help="another process keeps a core busy")
    p.add_argument("--seconds", type=float, default=10.0, help="rough time per comparison")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.net not in list(deploy_nets.NETS) + ["lenet_train"]:
        p.error(f"unknown net {args.net}")
    if not args.set and not args.control:
        p.error("give --set MODULE.ATTR=VALUE (or --control)")
    _setup_threads(args.threads)
    from .machine import describe
    sets = _parse_sets(args.set)
    hog = None
    if args.load:
        hog = multiprocessing.get_context("spawn").Process(target=_busy, args=(3600,),
                                                           daemon=True)
        hog.start()
    try:
        res = compare(args.net, args.batch, sets, args.seconds)
    finally:
        if hog is not None:
            hog.terminate()
            hog.join()
    what = ", ".join(args.set) or "control (nothing changed)"
    print(f"{args.net} b{args.batch}{' under load' if args.load else ''}: {what}")
    print(f"  A (as shipped) {res['a_ms']:.3f} ms (p90 {res['a_p90_ms']:.3f}), "
          f"B {res['b_ms']:.3f} ms (p90 {res['b_p90_ms']:.3f}); B / A {res['ratio']:.3f} "
          f"over {res['runs']} runs each")
    if args.out:
        report = {"machine": describe(), "net": args.net, "batch": args.batch,
                  "set": args.set, "load": args.load, **res}
        pathlib.Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
