"""What a Python layer costs beyond its own code: a Net running a Python layer whose forward
is `top = 2 * bottom` (numpy) vs the same forward called directly on the same blobs, and vs
Caffe's Power layer (scale 2) doing the same work, side by side (alternating, medians).

    python benchmarks/bench_python_layer.py [--runs 11] [--calls 2000] [--out FILE.json]

Prints microseconds per forward for a tiny blob (where fixed costs show) and a LeNet-sized
activation (64 x 20 x 24 x 24), and writes the numbers as JSON."""
import argparse
import json
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import caffe_lite as caffe  # noqa: E402


class Double(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        np.multiply(bottom[0].data, 2, out=top[0].data)


def net_text(shape, python):
    dims = " ".join(f"dim: {d}" for d in shape)
    layer = ("type: 'Python' python_param { module: '__main__' layer: 'Double' }" if python
             else "type: 'Power' power_param { scale: 2 }")
    return f"input: 'x' input_shape {{ {dims} }} layer {{ name: 'l' bottom: 'x' top: 'y' {layer} }}"


def per_call_us(fn, calls):
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def measure(shape, runs, calls):
    py_net = caffe.Net(net_text(shape, True), caffe.TEST)
    power_net = caffe.Net(net_text(shape, False), caffe.TEST)
    for n in (py_net, power_net):
        n.blobs["x"].data[...] = np.random.default_rng(0).normal(size=shape)
    layer = py_net.layers[1]
    bottom, top = py_net.bottom_vecs[1], py_net.top_vecs[1]
    cases = {"python layer in a net": lambda: py_net.forward_from_to(1, 1),
             "the same forward called directly": lambda: layer.python.forward(bottom, top),
             "Power layer (built in) in a net": lambda: power_net.forward_from_to(1, 1)}
    for fn in cases.values():
        per_call_us(fn, max(calls // 10, 1))  # warm up
    samples = {k: [] for k in cases}
    for _ in range(runs):
        for k, fn in cases.items():  # alternating
            samples[k].append(per_call_us(fn, calls))
    np.testing.assert_array_equal(py_net.blobs["y"].data, power_net.blobs["y"].data)
    return {k: float(np.median(v)) for k, v in samples.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    from benchmarks.machine import describe
    result = {"machine": describe(), "cases": {}}
    for shape in ((1, 16), (64, 20, 24, 24)):
        calls = args.calls if shape == (1, 16) else max(args.calls // 20, 10)
        r = measure(shape, args.runs, calls)
        result["cases"]["x".join(map(str, shape))] = r
        base = r["the same forward called directly"]
        print(f"blob {shape}: median of {args.runs} runs x {calls} calls")
        for k, v in r.items():
            print(f"  {k:34s} {v:9.2f} us   ({v - base:+.2f} us vs the direct call)")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
