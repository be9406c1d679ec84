"""Where sparse inference starts to pay: the break-even densities behind mode "auto".

    python -m benchmarks.sparse_thresholds          table on stdout, JSON in benchmarks/
                                                    results/sparse-thresholds-<date>.json
    python -m benchmarks.sparse_thresholds --quick  fewer shapes and repetitions

For InnerProduct and Convolution shapes from LeNet, AlexNet and MobileNet, and a range of
batch sizes, the layer's forward is timed on the dense path and on the sparse path at several
densities, alternately in one run (medians).  The sparse time grows about linearly with the
density, so a robust line (Theil-Sen) through the sparse times gives the density at which it
meets the dense time: the break-even density of that shape.  Per kind and number of columns
(the batch for InnerProduct, the output positions of one image for Convolution) the smallest
break-even over the shapes is about what caffe_lite/layers/sparse.py:BREAK_EVEN should hold,
so that "auto" only picks the sparse path where it was faster for the shapes measured.

By default both paths run on one thread (--threads 1): the break-even is a ratio of the two
kernels' costs, and on a machine shared with other work a product split over two threads
often waits milliseconds for the second core, which says nothing about the kernels."""
import argparse
import json
import os
import pathlib
import time

import numpy as np

from caffe_lite.blob import Blob
from caffe_lite.proto import caffe_pb2
from caffe_lite.testing import layer_from_text

from . import machine

DENSITIES = (0.03, 0.08, 0.15, 0.25, 0.4, 0.6)

# (kind, label, layer text, input shape without the batch, batches)
CASES = [
    ("ip", "LeNet ip1 500x800", "inner_product_param { num_output: 500 }", (800,),
     (1, 2, 4, 8, 16, 64, 256)),
    ("ip", "AlexNet fc7 4096x4096", "inner_product_param { num_output: 4096 }", (4096,),
     (1, 2, 4, 8, 16, 64)),
    ("ip", "AlexNet fc8 1000x4096", "inner_product_param { num_output: 1000 }", (4096,),
     (1, 8, 64)),
    ("conv", "MobileNet 1x1 256->256 28x28",
     "convolution_param { num_output: 256 kernel_size: 1 }", (256, 28, 28), (1, 8)),
    ("conv", "MobileNet 1x1 512->512 14x14",
     "convolution_param { num_output: 512 kernel_size: 1 }", (512, 14, 14), (1, 8)),
    ("conv", "MobileNet 1x1 1024->1024 7x7",
     "convolution_param { num_output: 1024 kernel_size: 1 }", (1024, 7, 7), (1, 8, 64)),
    ("conv", "LeNet conv2 20->50 5x5 12x12",
     "convolution_param { num_output: 50 kernel_size: 5 }", (20, 12, 12), (1, 8, 64)),
    ("conv", "3x3 pad 1 64->64 28x28",
     "convolution_param { num_output: 64 kernel_size: 3 pad: 1 }", (64, 28, 28), (1, 8)),
    ("conv", "3x3 stride 2 64->128 28x28",
     "convolution_param { num_output: 128 kernel_size: 3 pad: 1 stride: 2 }", (64, 28, 28),
     (1, 8)),
]
QUICK_CASES = [0, 3, 6]


def _layer(kind, text, shape, batch):
    typ = "InnerProduct" if kind == "ip" else "Convolution"
    layer = layer_from_text(f'name: "l" type: "{typ}" {text}', caffe_pb2.TEST)
    g = np.random.default_rng(0)
    bottom = [Blob.from_array(g.standard_normal((batch,) + shape).astype(np.float32))]
    top = [Blob()]
    layer.setup(bottom, top)
    dense = g.standard_normal(layer.blobs[0].shape).astype(np.float32)
    order = g.random(layer.blobs[0].shape)
    return layer, bottom, top, dense, order


def _median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def measure(case, batch, repeats, densities):
    kind, label, text, shape, _ = case
    layer, bottom, top, dense_w, order = _layer(kind, text, shape, batch)
    w = layer.blobs[0]

    def run(mode):
        layer.sparse.mode = mode
        layer.forward(bottom, top)
    sparse_ms, dense_ms = [], []
    for d in densities:
        w.data[...] = np.where(order < d, dense_w, 0)
        for mode in ("dense", "sparse"):
            run(mode)   # builds the CSR copy; warms the caches
        dense_t, sparse_t = [], []
        for _ in range(repeats):
            dense_t.append(_median_ms(lambda: run("dense"), 1))
            sparse_t.append(_median_ms(lambda: run("sparse"), 1))
        assert layer.sparse.active, layer.sparse.reason
        dense_ms.append(float(np.median(dense_t)))
        sparse_ms.append(float(np.median(sparse_t)))
    t_dense = float(np.median(dense_ms))
    # Theil-Sen line (median of pairwise slopes): one disturbed point does not tilt it
    d, s = np.asarray(densities), np.asarray(sparse_ms)
    i, j = np.triu_indices(len(d), 1)
    slope = float(np.median((s[j] - s[i]) / (d[j] - d[i])))
    intercept = float(np.median(s - slope * d))
    if slope <= 0:
        breakeven = 1.0 if intercept < t_dense else 0.0
    else:
        breakeven = float(np.clip((t_dense - intercept) / slope, 0.0, 1.0))
    columns = batch if kind == "ip" else int(np.prod(layer.top_shape[2:]))
    return {"kind": kind, "case": label, "batch": batch, "columns": columns,
            "dense_ms": t_dense, "densities": list(densities), "sparse_ms": sparse_ms,
            "break_even": breakeven}


def table(results):
    lines = [f"{'case':<32} {'batch':>5} {'columns':>7} {'dense ms':>9}  "
             + " ".join(f"{d:>6.2f}" for d in DENSITIES) + "  break-even"]
    for r in results:
        lines.append(f"{r['case']:<32} {r['batch']:>5} {r['columns']:>7} {r['dense_ms']:9.3f}  "
                     + " ".join(f"{s:6.3f}" for s in r["sparse_ms"])
                     + f"  {r['break_even']:.2f}")
    return "\n".join(lines)


def suggest(results):
    """Per kind and column count, the smallest break-even over the shapes measured."""
    out = {}
    for kind in ("ip", "conv"):
        rs = sorted((r for r in results if r["kind"] == kind), key=lambda r: r["columns"])
        steps = []
        for cols in sorted({r["columns"] for r in rs}):
            here = min(r["break_even"] for r in rs if r["columns"] == cols)
            steps.append([cols, round(here, 2)])
        out[kind] = steps
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=1,
                    help="CAFFE_LITE_NUM_THREADS for both paths (default 1)")
    args = ap.parse_args(argv)
    os.environ["CAFFE_LITE_NUM_THREADS"] = str(args.threads)
    repeats = args.repeats or (3 if args.quick else 9)
    cases = [CASES[i] for i in QUICK_CASES] if args.quick else CASES
    densities = DENSITIES[::2] if args.quick else DENSITIES
    info = machine.describe()
    results = []
    for case in cases:
        for batch in (case[4][:2] if args.quick else case[4]):
            r = measure(case, batch, repeats, densities)
            results.append(r)
            print(f"{r['case']:<32} batch {batch:>4}: break-even {r['break_even']:.2f} "
                  f"(dense {r['dense_ms']:.3f} ms)", flush=True)
    print()
    print(table(results))
    steps = suggest(results)
    print("\nsmallest break-even per kind and column count:", json.dumps(steps))
    out = pathlib.Path(args.out) if args.out else (
        pathlib.Path(__file__).parent / "results" /
        f"sparse-thresholds-{info['date']}{'-quick' if args.quick else ''}.json")
    out.write_text(json.dumps({"machine": info, "threads": args.threads, "results": results,
                               "steps": steps},
                              indent=1))
    print("wrote", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
