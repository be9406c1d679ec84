"""caffe-lite next to OpenCV's dnn module on deploy nets, batch 1 and 8 (inference).

    python -m benchmarks.opencv                   every net at batch 1 and 8, the overhead case
    python -m benchmarks.opencv --only mtcnn_rnet,lenet --batches 1 --repeats 41
    python -m benchmarks.opencv --list

Each net (benchmarks/deploy_nets.py) is built in caffe-lite from its prototxt with random
weights (deploy_nets.randomize), saved as a caffemodel, and read by OpenCV with
cv2.dnn.readNetFromCaffe.  Before timing, the outputs of both are compared on the same input
(largest |difference| over the output's largest |value|; float32 rounding gives 1e-7..1e-5,
a wrong layer order 1).  Then both run alternately in blocks (cases.interleaved: each side
a few runs back to back, the other side's block next, several rounds), each call being what a
user writes: `net.forward(data=x)` against `cv_net.setInput(x); cv_net.forward(names)`.
Medians; ratio = caffe-lite / OpenCV (below 1: caffe-lite is faster).  Both on --threads
threads (cv2.setNumThreads, CAFFE_LITE_NUM_THREADS).

For a net that is a chain of InnerProduct / ReLU / Softmax layers (LeNet-300-100) the same
output is also computed by bare numpy calls on preallocated arrays ("numpy_floor_ms"): what
any Python runtime pays at least.

The "overhead" case times an empty forward: a net of layers that do almost no arithmetic
(1-element blobs), giving caffe-lite's fixed cost per layer in microseconds.

JSON goes to benchmarks/results/opencv-<date>-<host>.json."""
import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np


def _setup_threads(threads):
    os.environ["CAFFE_LITE_NUM_THREADS"] = str(threads)


def build(name, batch, folder):
    """(caffe-lite Net, prototxt path, caffemodel path) with random weights."""
    import caffe_lite as caffe
    from . import deploy_nets
    proto = pathlib.Path(folder) / f"{name}-b{batch}.prototxt"
    proto.write_text(deploy_nets.prototxt(name, batch))
    net = caffe.Net(str(proto), caffe.TEST)
    deploy_nets.randomize(net)
    weights = pathlib.Path(folder) / f"{name}.caffemodel"
    if not weights.exists():
        net.save(str(weights))
    else:
        net.copy_from(str(weights))
    return net, proto, weights


def compare(net, cv_net, x):
    """Largest relative difference over the net's outputs (|a - b|max / |b|max)."""
    out = net.forward(data=x)
    cv_net.setInput(x)
    theirs = cv_net.forward(net.outputs)
    worst = 0.0
    for name, b in zip(net.outputs, theirs):
        a = out[name]
        b = np.asarray(b).reshape(a.shape)
        worst = max(worst, float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)))
    return worst


def numpy_floor(net, x):
    """For a net that is a chain of InnerProduct, ReLU and Softmax layers (LeNet-300-100):
    a callable computing its output with bare numpy calls on preallocated arrays, no
    framework at all (the least a Python runtime can spend on it), and that output; else
    None.  BLAS is held at one thread inside, as in caffe-lite's pass; only products of
    single-threaded BLAS calls are compared."""
    steps, h = [], x.reshape(x.shape[0], -1)
    f32 = np.float32
    for layer in net.layers[1:]:
        if layer.type == "InnerProduct" and not layer.transpose:
            w, b = layer.blobs[0].data.T, layer.blobs[1].data
            out = np.empty((h.shape[0], w.shape[1]), f32)
            steps.append(lambda h=h, w=w, b=b, out=out: (np.matmul(h, w, out=out),
                                                         np.add(out, b, out=out)))
            h = out
        elif layer.type == "ReLU" and layer.negative_slope == 0:
            steps.append(lambda h=h: np.maximum(h, f32(0), out=h))
        elif layer.type == "Softmax":
            m = np.empty((h.shape[0], 1), f32)
            steps.append(lambda h=h, m=m: (np.max(h, axis=1, keepdims=True, out=m),
                                           np.subtract(h, m, out=h), np.exp(h, out=h),
                                           np.sum(h, axis=1, keepdims=True, out=m),
                                           np.divide(h, m, out=h)))
        else:
            return None, None

    def run():
        for step in steps:
            step()
    run()
    return run, h


def net_case(name, batch, cfg, folder):
    import cv2
    from .cases import interleaved
    net, proto, weights = build(name, batch, folder)
    cv_net = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv_net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(net.blobs["data"].shape, dtype=np.float32)
    error = compare(net, cv_net, x)
    names = net.outputs

    def ours():
        net.forward(data=x)

    def theirs():
        cv_net.setInput(x)
        cv_net.forward(names)
    ours()
    t0 = time.perf_counter()
    ours()
    quick = time.perf_counter() - t0 < 0.02
    repeats = cfg.repeats * (3 if quick else 1)
    from caffe_lite.layers.parallel import single_threaded_blas
    floor, floor_out = numpy_floor(net, x)
    fns = [ours, theirs]
    if floor is not None:
        ref = net.blobs[net.outputs[0]].data
        assert np.abs(floor_out - ref.reshape(floor_out.shape)).max() <= 1e-5 * np.abs(ref).max()

        def bare():
            with single_threaded_blas():
                floor()
        fns.append(bare)
    times = interleaved(fns, repeats, cfg.warmup)
    (m1, lo1), (m2, lo2) = times[:2]
    r = {"name": name, "batch": batch, "caffe_lite_ms": 1e3 * m1, "opencv_ms": 1e3 * m2,
         "caffe_lite_min_ms": 1e3 * lo1, "opencv_min_ms": 1e3 * lo2, "ratio": m1 / m2,
         "max_rel_error": error, "layers": len(net.layers), "repeats": repeats}
    if floor is not None:
        r["numpy_floor_ms"] = 1e3 * times[2][0]
    return r


EMPTY_TYPES = ("ReLU", "Scale", "Convolution", "Pooling", "InnerProduct", "Eltwise")


def empty_net(layers):
    """A net of `layers` layers on 1-element blobs, cycling through common layer types."""
    lines = ['name: "empty"',
             'layer { name: "data" type: "Input" top: "data" '
             'input_param { shape { dim: 1 dim: 1 dim: 1 dim: 1 } } }']
    prev = "data"
    for i in range(layers - 1):
        t = EMPTY_TYPES[i % len(EMPTY_TYPES)]
        top = f"b{i}"
        params = {"Convolution": "convolution_param { num_output: 1 kernel_size: 1 }",
                  "InnerProduct": "inner_product_param { num_output: 1 axis: 1 }",
                  "Pooling": "pooling_param { pool: MAX kernel_size: 1 }",
                  "Scale": "scale_param { bias_term: true }",
                  "Eltwise": ""}.get(t, "")
        bottoms = f'bottom: "{prev}"' + (f' bottom: "{prev}"' if t == "Eltwise" else "")
        if t == "InnerProduct":
            lines.append(f'layer {{ name: "{top}" type: "{t}" {bottoms} top: "{top}" {params} }}')
            lines.append(f'layer {{ name: "{top}r" type: "Reshape" bottom: "{top}" top: '
                         f'"{top}r" reshape_param {{ shape {{ dim: 1 dim: 1 dim: 1 dim: 1 }} }} }}')
            top += "r"
        else:
            lines.append(f'layer {{ name: "{top}" type: "{t}" {bottoms} top: "{top}" {params} }}')
        prev = top
    return "\n".join(lines) + "\n"


def overhead_case(cfg, layers=200):
    """Microseconds per layer of an empty forward (net.forward_from_to, and net.forward)."""
    import caffe_lite as caffe
    from .cases import interleaved
    net = caffe.Net(empty_net(layers), caffe.TEST)
    n = len(net.layers)
    net.forward()
    (m1, _), (m2, _) = interleaved([lambda: net.forward_from_to(),
                                    lambda: net.forward()], cfg.repeats * 3, cfg.warmup)
    counts = {}
    for layer in net.layers:
        counts[layer.type] = counts.get(layer.type, 0) + 1
    return {"name": "overhead", "layers": n, "types": counts,
            "forward_from_to_us_per_layer": 1e6 * m1 / n,
            "forward_us_per_layer": 1e6 * m2 / n}


class Config:
    def __init__(self, args):
        self.repeats = args.repeats
        self.warmup = args.warmup


def table(results):
    lines = [f"{'net':<20} {'batch':>5} {'caffe-lite ms':>13} {'OpenCV ms':>10} {'ratio':>6} "
             f"{'max rel. diff':>13}"]
    for r in results:
        if r["name"] == "overhead":
            continue
        lines.append(f"{r['name']:<20} {r['batch']:>5} {r['caffe_lite_ms']:13.3f} "
                     f"{r['opencv_ms']:10.3f} {r['ratio']:6.2f} {r['max_rel_error']:13.1e}")
    for r in results:
        if r["name"] == "overhead":
            lines.append(f"empty forward, {r['layers']} layers: "
                         f"{r['forward_from_to_us_per_layer']:.2f} us/layer (forward_from_to), "
                         f"{r['forward_us_per_layer']:.2f} us/layer (forward)")
    return "\n".join(lines)


def main(argv=None):
    from . import deploy_nets
    p = argparse.ArgumentParser(prog="python -m benchmarks.opencv",
                                description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="comma-separated net names (and/or 'overhead')")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=None)
    p.add_argument("--list", action="store_true")
    args = p.parse_args(argv)
    names = list(deploy_nets.NETS) + ["overhead"]
    if args.list:
        print("\n".join(names))
        return 0
    wanted = [s.strip() for s in args.only.split(",") if s.strip()] or names
    unknown = [w for w in wanted if w not in names]
    if unknown:
        p.error(f"unknown net(s) {', '.join(unknown)}; known: {', '.join(names)}")
    _setup_threads(args.threads)
    import cv2
    cv2.setNumThreads(args.threads)
    from . import machine
    from caffe_lite.warmup import warm_up
    info = machine.describe()
    info["opencv"] = cv2.__version__
    info["jit_kernels"] = warm_up()
    print(f"# {info['cpu']}, {info['date']} {info['time']}; numpy {info['numpy']}; numba "
          f"{info['numba']}; OpenCV {cv2.__version__}; threads {args.threads}; load "
          f"{info['load_average'][0]:.2f}", flush=True)
    cfg = Config(args)
    batches = [int(b) for b in args.batches.split(",")]
    results = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as folder:
        for name in wanted:
            if name == "overhead":
                r = overhead_case(cfg)
                results.append(r)
                print(f"  overhead: {r['forward_from_to_us_per_layer']:.2f} us/layer", flush=True)
                continue
            for batch in batches:
                r = net_case(name, batch, cfg, folder)
                results.append(r)
                print(f"  {name} b{batch}: {r['caffe_lite_ms']:.3f} ms vs {r['opencv_ms']:.3f} ms"
                      f" ({r['ratio']:.2f}; diff {r['max_rel_error']:.1e})"
                      + (f"; bare numpy calls {r['numpy_floor_ms']:.3f} ms"
                         if "numpy_floor_ms" in r else ""), flush=True)
    info["load_average_end"] = os.getloadavg()
    print()
    print(table(results))
    report = {"machine": info, "config": vars(args), "results": results,
              "seconds": time.time() - t0}
    out = pathlib.Path(args.out) if args.out else (
        pathlib.Path(__file__).parent / "results" / f"opencv-{info['date']}-{info['host']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
