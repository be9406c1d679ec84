"""Data pipeline throughput next to a training step: is the data layer what the solver waits on?

    python benchmarks/bench_data.py [--mnist-dir ../shared/data/mnist] [--out FILE.json]

Measures, on the CPU:
  1. MNIST LMDB (train5k, converted here) through the Data layer, scale 1/256, batch 64;
  2. an LMDB of encoded 256x256 JPEGs (synthetic, generated here) through the Data layer with
     crop 224 + mirror + mean_value (TRAIN), batch 64;
  3. a LeNet SGD step (BVLC lenet_train_test.prototxt + lenet_solver.prototxt, batch 64,
     reading the MNIST LMDB), and the part of that step spent waiting in the data layer.
Each pipeline is timed two ways: the layer's forward as the net sees it (prefetch thread
running ahead), and the loading work alone (decode + transform in this thread, no prefetch).
Prints a table and writes the numbers as JSON."""
import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import caffe_lite as caffe  # noqa: E402
from caffe_lite.blob import Blob  # noqa: E402
from caffe_lite.data.convert import convert_mnist  # noqa: E402
from caffe_lite.data.images import encode_image, resize_linear  # noqa: E402
from caffe_lite.data.lmdb_io import DBWriter  # noqa: E402
from caffe_lite.data.sources import DatumDBSource  # noqa: E402
from caffe_lite.data.transformer import DataTransformer  # noqa: E402
from caffe_lite.io import parse_text  # noqa: E402
from caffe_lite.proto import caffe_pb2  # noqa: E402
from caffe_lite.testing import layer_from_text  # noqa: E402


def data_layer(source, batch, transform, phase=caffe_pb2.TRAIN):
    text = (f'name: "data" type: "Data" top: "data" top: "label" '
            f'transform_param {{ {transform} }} '
            f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }}')
    layer = layer_from_text(text, phase)
    top = [Blob(), Blob()]
    layer.setup([], top)
    return layer, top


def time_layer(source, batch, transform, seconds):
    """Images/s of the Data layer's forward (prefetching) and of its loading work alone."""
    layer, top = data_layer(source, batch, transform)
    for _ in range(3):
        layer.forward([], top)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        layer.forward([], top)
        n += 1
    fwd = n * batch / (time.perf_counter() - t0)
    layer.close()
    # the same source and transformer, driven in this thread without prefetching
    tp = parse_text(transform, caffe_pb2.TransformationParameter())
    src = DatumDBSource(source, batch, DataTransformer(tp, caffe_pb2.TRAIN), "bench")
    src.next_batch()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        src.next_batch()
        n += 1
    work = n * batch / (time.perf_counter() - t0)
    src.close()
    return fwd, work, tuple(top[0].shape)


def make_jpeg_lmdb(path, count, size=256, seed=0):
    """`count` synthetic photo-like JPEGs (smooth colour fields plus noise) as encoded
    Datums, the way convert_imageset -encoded stores JPEG files."""
    rng = np.random.default_rng(seed)
    nbytes = 0
    with DBWriter(path) as db:
        for i in range(count):
            base = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
            img = resize_linear(base, size, size).astype(np.int16)
            img += rng.normal(0, 6, img.shape).astype(np.int16)
            jpg = encode_image(np.clip(img, 0, 255).astype(np.uint8), "jpg")
            nbytes += len(jpg)
            d = caffe_pb2.Datum(data=jpg, label=i % 1000, encoded=True)
            db.put(f"{i:08d}_synthetic_{i}.jpg", d.SerializeToString())
    return nbytes / count


def lenet_step(models_dir, train_db, iters):
    """Seconds per SGD step of BVLC LeNet (batch 64) and seconds per step in the data layer."""
    from caffe_lite.io import load_message
    from caffe_lite.solvers import solver_from_type
    net, _ = load_message(str(models_dir / "lenet_train_test.prototxt"),
                          caffe_pb2.NetParameter)
    for layer in net.layer:
        if layer.type == "Data":
            layer.data_param.source = str(train_db)
    sp, _ = load_message(str(models_dir / "lenet_solver.prototxt"), caffe_pb2.SolverParameter)
    sp.ClearField("net")
    sp.net_param.CopyFrom(net)
    sp.test_interval = 0
    sp.ClearField("test_iter")
    sp.display = 0
    sp.snapshot = 0
    sp.snapshot_after_train = False
    sp.solver_mode = caffe_pb2.SolverParameter.CPU
    solver = solver_from_type(sp.type or "SGD")(sp)
    data = solver.net.layer_dict["mnist"]
    waited = [0.0]
    inner = data.forward

    def timed(bottom, top):
        t = time.perf_counter()
        out = inner(bottom, top)
        waited[0] += time.perf_counter() - t
        return out
    data.forward = timed
    solver.step(5)
    waited[0] = 0.0
    t0 = time.perf_counter()
    solver.step(iters)
    step = (time.perf_counter() - t0) / iters
    data.close()
    return step, waited[0] / iters


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mnist-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--models-dir", default=str(ROOT.parent / "shared" / "models" / "bvlc_mnist"))
    ap.add_argument("--jpegs", type=int, default=500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    ap.add_argument("--steps", type=int, default=50, help="LeNet SGD steps to time")
    ap.add_argument("--out", default=None,
                    help="JSON file (default benchmarks/results/data-<date>-<host>.json)")
    args = ap.parse_args()
    caffe.set_mode_cpu()
    caffe.set_random_seed(1701)
    mnist = pathlib.Path(args.mnist_dir)
    results = {"machine": {"python": platform.python_version(), "numpy": np.__version__,
                           "cpus": os.cpu_count(), "processor": platform.processor()},
               "batch": args.batch}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        train_db = tmp / "mnist_train_lmdb"
        convert_mnist(mnist / "train5k-images-idx3-ubyte.gz",
                      mnist / "train5k-labels-idx1-ubyte.gz", train_db)
        fwd, work, shape = time_layer(train_db, args.batch, "scale: 0.00390625", args.seconds)
        results["mnist_lmdb"] = {"images_per_s_forward": fwd, "images_per_s_loading": work,
                                 "top_shape": shape, "transform": "scale 1/256"}
        rows.append(("MNIST LMDB, scale", shape, fwd, work))

        jpeg_db = tmp / "jpeg_lmdb"
        avg = make_jpeg_lmdb(jpeg_db, args.jpegs)
        tr = "crop_size: 224 mirror: true mean_value: 104 mean_value: 117 mean_value: 123"
        fwd, work, shape = time_layer(jpeg_db, args.batch, tr, args.seconds)
        results["jpeg_lmdb"] = {"images_per_s_forward": fwd, "images_per_s_loading": work,
                                "top_shape": shape, "images": args.jpegs,
                                "avg_jpeg_bytes": avg, "source_size": [256, 256],
                                "transform": "crop 224 (random) + mirror + mean_value",
                                "decode_workers": min(4, os.cpu_count() or 1)}
        rows.append(("JPEG 256->224 LMDB, crop+mirror+mean", shape, fwd, work))

        step, waited = lenet_step(pathlib.Path(args.models_dir), train_db, args.steps)
        results["lenet_sgd_step"] = {"seconds_per_step": step, "data_layer_seconds": waited,
                                     "batch": 64, "what": "SGDSolver.step on BVLC LeNet "
                                     "(lenet_solver.prototxt), CPU, data from the MNIST LMDB"}

    print(f"\ncaffe-lite data pipeline, CPU ({os.cpu_count()} cores), batch {args.batch}\n")
    print(f"{'pipeline':40s} {'top':>18s} {'forward img/s':>14s} {'loading img/s':>14s}")
    for name, shape, fwd, work in rows:
        print(f"{name:40s} {str(shape):>18s} {fwd:14.0f} {work:14.0f}")
    print(f"\nLeNet SGD step (batch 64, CPU): {step * 1e3:.1f} ms/step = "
          f"{64 / step:.0f} img/s; of which in the data layer: {waited * 1e3:.2f} ms "
          f"({100 * waited / step:.1f}%)")
    jb = results["jpeg_lmdb"]["images_per_s_forward"]
    print(f"JPEG pipeline: {args.batch / jb * 1e3:.1f} ms per batch of {args.batch}")
    if args.out is None:
        args.out = str(ROOT / "benchmarks" / "results" /
                       f"data-{time.strftime('%Y-%m-%d')}-{platform.node() or 'host'}.json")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
