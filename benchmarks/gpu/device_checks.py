"""Helpers of benchmarks/gpu/device_run.sh, the one prepared run on the GPU machine.

    python3 benchmarks/gpu/device_checks.py compile --out compile.json
        every kernel source compiled for the device, in parallel (warms the kernel cache);
    python3 benchmarks/gpu/device_checks.py determinism --out determinism.json [--small]
        a short MobileNet-v1 (reduced) training run twice on the GPU in separate processes
        (parameters and losses must be bit-identical) and once on the CPU (the distance is
        reported);
    python3 benchmarks/gpu/device_checks.py train --device gpu|cpu --out run.npz [--small]
        one such run (what `determinism` starts in each process);
    python3 benchmarks/gpu/device_checks.py summary --dir OUT
        summary.md from the files the run left in OUT.

`compile`, `determinism` and `train` need PyCUDA and a device (train --device cpu does not);
`summary` needs nothing."""
import argparse
import concurrent.futures
import hashlib
import json
import pathlib
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))


# --- compile ---------------------------------------------------------------------------------
def compile_all(args):
    from caffe_lite.backend import gpu, kernels
    gpu.require(0)
    arch = kernels.arch_of(gpu.compute_capability())

    def one(path):
        t0 = time.perf_counter()
        try:
            kernels.compile_source(path, arch)
            return path.name, time.perf_counter() - t0, None
        except Exception as exc:  # reported, not raised: every source gets its line
            return path.name, time.perf_counter() - t0, str(exc)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        rows = list(pool.map(one, kernels.all_sources()))
    out = {"arch": arch, "sources": {n: {"seconds": t, "error": e} for n, t, e in rows}}
    pathlib.Path(args.out).write_text(json.dumps(out, indent=1))
    for n, t, e in rows:
        print(f"{n:<22} {t:6.1f} s  {'ok' if e is None else 'FAILED: ' + e}")
    return 1 if any(e for _, _, e in rows) else 0


# --- determinism ------------------------------------------------------------------------------
def train(args):
    import caffe_lite as caffe
    from caffe_lite.solvers import get_solver
    import bench_gpu
    batch, size, iters = (2, 64, 3) if args.small else (8, 64, 10)
    text = bench_gpu.mobilenet_prototxt(batch, size, classes=10, width=0.25)
    caffe.set_mode_cpu()
    solver = get_solver('type: "SGD" base_lr: 0.01 lr_policy: "fixed" momentum: 0.9 '
                        'weight_decay: 4e-5 display: 0 random_seed: 7 '
                        'snapshot_after_train: false net_param { ' + text + ' }')
    g = np.random.default_rng(11)
    net = solver.net
    if args.device == "gpu":
        caffe.set_mode_gpu()
    losses = []
    for _ in range(iters):
        net.blobs["data"].data[...] = g.normal(size=net.blobs["data"].shape)
        net.blobs["label"].data[...] = g.integers(0, 10, batch)
        solver.step(1)
        losses.append(solver.smoothed_loss)
    arrays = {f"{n}/{i}": b.cpu_data.copy() for n, bs in net.params.items()
              for i, b in enumerate(bs)}
    arrays["losses"] = np.array(losses)
    np.savez(args.out, **arrays)
    return 0


def _digest(arrays):
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()


def determinism(args):
    out = pathlib.Path(args.out)
    runs = {}
    import os
    for name, device, fuse in (("gpu_a", "gpu", "1"), ("gpu_b", "gpu", "1"), ("cpu", "cpu", "1"),
                               ("cpu_unfused", "cpu", "0")):
        path = out.with_name(f"{out.stem}_{name}.npz")
        cmd = [sys.executable, __file__, "train", "--device", device, "--out", str(path)]
        if args.small:
            cmd.append("--small")
        res = subprocess.run(cmd, capture_output=True, text=True,
                             env=dict(os.environ, CAFFE_LITE_FUSE=fuse))
        if res.returncode:
            print(res.stdout[-3000:], res.stderr[-3000:])
            return res.returncode
        with np.load(path) as z:
            runs[name] = {k: z[k] for k in z.files}
    a, b, c, u = runs["gpu_a"], runs["gpu_b"], runs["cpu"], runs["cpu_unfused"]
    differing = [k for k in a if not np.array_equal(a[k], b[k])]

    def rel(x, k):   # norm of the difference relative to the CPU array's norm
        scale = float(np.linalg.norm(c[k])) or 1.0
        return float(np.linalg.norm(x[k] - c[k])) / scale
    stats = [k for k in a if "/bn/" in k]        # BatchNorm's running sums
    learned = [k for k in a if k != "losses" and k not in stats]
    # Two valid CPU orders of summation (BatchNorm + Scale fused or not) give the yardstick:
    # the small BatchNorm gradients of a freshly initialised net are sums with much
    # cancellation, so float32 summation order alone moves them by a visible amount.
    report = {"gpu_runs_bit_identical": not differing, "differing": differing,
              "digest_gpu_a": _digest(a), "digest_gpu_b": _digest(b),
              "learned_relative_diff_gpu_vs_cpu": max(rel(a, k) for k in learned),
              "learned_relative_diff_cpu_unfused_vs_cpu": max(rel(u, k) for k in learned),
              "bn_statistics_relative_diff_gpu_vs_cpu":
                  max(rel(a, k) for k in stats) if stats else 0.0,
              "losses_gpu": a["losses"].tolist(), "losses_cpu": c["losses"].tolist(),
              "losses_cpu_unfused": u["losses"].tolist()}
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0 if not differing else 1


# --- summary ----------------------------------------------------------------------------------
def _junit(path):
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root)
    keys = ("tests", "failures", "errors", "skipped")
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys} | {
        "seconds": sum(float(s.get("time", 0)) for s in suites)}


def _fmt_ms(s):
    return f"{s * 1e3:.2f}"


def summary(args):
    d = pathlib.Path(args.dir)
    lines = ["# Device run summary", ""]
    env = d / "environment.txt"
    if env.exists():
        lines += ["```", env.read_text().strip(), "```", ""]
    steps = d / "steps.tsv"
    if steps.exists():
        lines += ["| step | status | limit | seconds |", "| --- | --- | --- | ---: |"]
        for row in steps.read_text().splitlines():
            lines.append("| " + " | ".join(row.split("\t")) + " |")
        lines.append("")
    for name in ("tests_new", "tests_gpu"):
        j = _junit(d / f"{name}.xml")
        if j:
            lines.append(f"{name}: {j['tests']} tests, {j['failures']} failures, {j['errors']} "
                         f"errors, {j['skipped']} skipped, {j['seconds']:.0f} s")
    lines.append("")
    bench = d / "bench_gpu.json"
    if bench.exists():
        r = json.loads(bench.read_text())
        dev = r["device"]
        lines += [f"Device {dev['name']}, theoretical {dev['bandwidth_gbs']:.0f} GB/s, measured "
                  f"copy {dev['measured_copy_gbs']:.0f} GB/s; PyTorch {r.get('torch')}, cuDNN "
                  f"{r.get('cudnn')}, PyCUDA {r.get('pycuda')}, {r.get('date')}", ""]
        lines += ["| case | caffe-lite ms | PyTorch FP32 ms | ratio | caffe-lite MiB | "
                  "PyTorch peak MiB |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for name, row in r.get("cases", {}).items():
            t = row.get("torch_fp32_s")
            peak = row.get("torch_peak_bytes", {}).get("allocated")
            cells = [name, _fmt_ms(row["caffe_lite_s"]), _fmt_ms(t) if t else "-",
                     f"{row['ratio_vs_fp32']:.2f}" if t else "-",
                     f"{row['caffe_lite_device_bytes'] / 2**20:.0f}",
                     f"{peak / 2**20:.0f}" if peak else "-"]
            lines.append("| " + " | ".join(cells) + " |")
        if "process_device_bytes_first_case" in r:
            lines.append(f"\nProcess device memory after the first case (before PyTorch): "
                         f"{r['process_device_bytes_first_case'] / 2**20:.0f} MiB")
        lines += ["", "| depthwise (N, C, H, W, stride) | direction | us | GB/s | of copy | "
                      "cuDNN us |", "| --- | --- | ---: | ---: | ---: | ---: |"]
        for row in r.get("depthwise", []):
            for k, t in row["caffe_lite_s"].items():
                frac = row.get("fraction_of_copy", {}).get(k)
                tt = row.get("torch_s", {}).get(k)
                lines.append(f"| {tuple(row['shape'])} | {k} | {t * 1e6:.0f} | "
                             f"{row['gbs'][k]:.0f} | "
                             f"{'-' if frac is None else f'{frac * 100:.0f} %'} | "
                             f"{'-' if tt is None else f'{tt * 1e6:.0f}'} |")
        tg = r.get("targets", {})
        if tg:
            met = [k for k, v in tg.items() if v["met"]]
            lines += ["", f"Targets met: {len(met)} of {len(tg)}", ""]
            for k, v in tg.items():
                lines.append(f"- {k}: {v['value']:.3f} ({v['bound']}) "
                             f"{'met' if v['met'] else 'NOT met'}")
        for name, row in r.get("cases", {}).items():
            prof = row.get("caffe_lite_profile_ms")
            if prof:
                lines += ["", f"Device time by layer type, {name} (ms):", "",
                          "| layer type | forward | backward |", "| --- | ---: | ---: |"]
                for k, v in sorted(prof.items(), key=lambda kv: -sum(kv[1].values())):
                    lines.append(f"| {k} | {v['forward_ms']:.2f} | {v['backward_ms']:.2f} |")
    det = d / "determinism.json"
    if det.exists():
        r = json.loads(det.read_text())
        lines += ["", f"Determinism: GPU runs bit-identical: {r['gpu_runs_bit_identical']}; "
                      f"after the run, learned parameters GPU vs CPU within "
                      f"{r['learned_relative_diff_gpu_vs_cpu']:.3g} (relative norm; CPU "
                      f"unfused vs fused: {r['learned_relative_diff_cpu_unfused_vs_cpu']:.3g}), "
                      f"BatchNorm statistics within "
                      f"{r['bn_statistics_relative_diff_gpu_vs_cpu']:.3g}; losses GPU "
                      f"{r['losses_gpu']}, CPU {r['losses_cpu']}, CPU unfused "
                      f"{r['losses_cpu_unfused']}"]
    job = d / "main_job.log"
    if job.exists():
        tail = [ln for ln in job.read_text().splitlines()
                if "%" in ln or "total time" in ln or "trained in" in ln or "fine-tuned in" in ln]
        lines += ["", "Main job (examples/mnist/prune_finetune.py --gpu):", "", "```"] + \
            tail[-12:] + ["```"]
    print("\n".join(lines))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compile")
    c.add_argument("--out", required=True)
    t = sub.add_parser("train")
    t.add_argument("--device", choices=["gpu", "cpu"], required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--small", action="store_true")
    d = sub.add_parser("determinism")
    d.add_argument("--out", required=True)
    d.add_argument("--small", action="store_true")
    s = sub.add_parser("summary")
    s.add_argument("--dir", required=True)
    args = p.parse_args(argv)
    return {"compile": compile_all, "train": train, "determinism": determinism,
            "summary": summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
