"""caffe-lite's CPU benchmarks, side by side with PyTorch on the same nets.

    python -m benchmarks                     every case; table on stdout, JSON in
                                             benchmarks/results/<date>-<host>.json
    python -m benchmarks --quick             fewer repetitions and shapes (a smoke run)
    python -m benchmarks --only depthwise,lenet_train_step
    python -m benchmarks --threads 2 --repeats 15 --out my.json

Cases: lenet_train_step, mobilenet_v1, mobilenet_v2, resnext_block, depthwise, masked_update.
PyTorch is optional (pip install -e .[bench]); without it only caffe-lite's times are given.
Every case checks once that the PyTorch translation computes the same numbers as the
caffe-lite net (tests/test_torch_parity.py does the same in the test suite).

Times are medians over --repeats (>= 10 by default) runs after --warmup runs, caffe-lite and
PyTorch interleaved.  Ratios are caffe-lite / PyTorch: below 1 is faster.  Rates: GFLOP/s of
the convolution and inner-product products against the machine's measured SGEMM rate, or GB/s
(the least bytes a memory-bound layer moves) against its measured copy bandwidth."""
import argparse
import json
import os
import pathlib
import sys
import time


def _setup_threads(threads):
    if threads:
        os.environ["CAFFE_LITE_NUM_THREADS"] = str(threads)


class Config:
    def __init__(self, args):
        from caffe_lite.layers import parallel
        self.threads = parallel.num_threads()
        self.quick = args.quick
        self.repeats = args.repeats or (3 if args.quick else 11)
        self.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(results, limits):
    gemm = limits["sgemm_gflops"]["best"]
    copy = limits["copy_gbps"]["best"]
    lines = [f"{'case':<46} {'caffe-lite ms':>13} {'PyTorch ms':>11} {'ratio':>6}  "
             f"{'caffe-lite rate':>22} {'PyTorch rate':>22}"]

    def rate(r, key):
        v = r.get(key)
        if v is None or "work_unit" not in r:
            return "-"
        if r["work_unit"] == "FLOP":
            return f"{v:6.1f} GFLOP/s ({100 * v / gemm:3.0f}%)"
        return f"{v:6.1f} GB/s ({100 * v / copy:3.0f}%)"
    for r in results:
        lines.append(f"{r['name']:<46} {_fmt(r['caffe_lite_ms'], '13.1f')} "
                     f"{_fmt(r.get('torch_ms'), '11.1f')} {_fmt(r.get('ratio'), '6.2f')}  "
                     f"{rate(r, 'caffe_lite_rate'):>22} {rate(r, 'torch_rate'):>22}")
        for sub in r.get("layers", []):
            lines.append(f"  {sub['name']:<44} {_fmt(sub['caffe_lite_ms'], '13.2f')} "
                         f"{_fmt(sub.get('torch_ms'), '11.2f')} {_fmt(sub.get('ratio'), '6.2f')}"
                         f"  {rate(sub, 'caffe_lite_rate'):>22} {rate(sub, 'torch_rate'):>22}")
        par = r.get("parity")
        if par is not None and not par.get("ok"):
            lines.append(f"  PARITY CHECK FAILED: {par.get('message')}")
        if "overhead_vs_unmasked" in r:
            lines.append(f"  {'mask overhead vs no masks':<44} "
                         f"{100 * r['overhead_vs_unmasked']:12.1f}%"
                         + (f" {100 * r['torch_overhead_vs_unmasked']:10.1f}%"
                            if r.get("torch_overhead_vs_unmasked") is not None else ""))
    checked = [r for r in results if r.get("parity")]
    if checked:
        worst = max((r["parity"].get("max_error", float("inf")) for r in checked))
        lines.append(f"PyTorch translations checked against caffe-lite: "
                     f"{sum(r['parity']['ok'] for r in checked)}/{len(checked)} agree "
                     f"(largest relative error {worst:.2g}, float32 vs float64 reference)")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="comma-separated case names (default: all)")
    p.add_argument("--quick", action="store_true", help="few repetitions, fewer shapes")
    p.add_argument("--threads", type=int, default=0,
                   help="threads for caffe-lite and PyTorch (default: CAFFE_LITE_NUM_THREADS "
                        "or the usable CPUs)")
    p.add_argument("--repeats", type=int, default=0, help="timed runs per case (default 11)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 3)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/"
                                               "<date>-<host>.json)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    args = p.parse_args(argv)
    _setup_threads(args.threads)

    from . import cases, machine
    if args.list:
        for name, (_, quick) in cases.CASES.items():
            print(name + ("" if quick else "   (skipped by --quick)"))
        return 0
    cfg = Config(args)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in cases.CASES]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(cases.CASES)}")
    names = wanted or [n for n, (_, quick) in cases.CASES.items() if quick or not args.quick]

    from caffe_lite.warmup import warm_up
    t0 = time.time()
    info = machine.describe()
    info["jit_kernels"] = warm_up()
    blas = ", ".join(b["internal_api"] + " " + b["version"] for b in info["blas"])
    print(f"# {info['cpu']}, {info['cpus_usable']} CPUs, {info['date']}; numpy "
          f"{info['numpy']} ({blas}); "
          f"torch {info['torch']}; numba {info['numba']}; threads {cfg.threads}; "
          f"load {info['load_average'][0]:.2f}", flush=True)
    limits = machine.limits(cfg.threads, quick=cfg.quick)
    print(f"# measured limits: SGEMM {limits['sgemm_gflops']['best']:.0f} GFLOP/s, copy "
          f"{limits['copy_gbps']['best']:.1f} GB/s", flush=True)
    results = []
    for name in names:
        fn, _ = cases.CASES[name]
        t = time.time()
        out = fn(cfg)
        results.extend(out)
        for r in out:
            print(f"  {r['name']}: {r['caffe_lite_ms']:.1f} ms vs PyTorch "
                  f"{_fmt(r.get('torch_ms'), '.1f')} ms ({time.time() - t:.0f} s)", flush=True)
    info["load_average_end"] = os.getloadavg()
    print()
    print(table(results, limits))
    report = {"machine": info, "limits": limits,
              "config": {"threads": cfg.threads, "repeats": cfg.repeats, "warmup": cfg.warmup,
                         "quick": cfg.quick, "cases": names},
              "results": results, "seconds": time.time() - t0}
    out = pathlib.Path(args.out) if args.out else (
        pathlib.Path(__file__).parent / "results" / f"{info['date']}-{info['host']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
