"""Sparse inference against the dense path, side by side in one run (issue 12's speed targets).

    python -m benchmarks.sparse                 table on stdout, JSON in
                                                benchmarks/results/sparse-<date>.json
    python -m benchmarks.sparse --quick         fewer repetitions and batches (a smoke run)

Cases (random weights pruned at random to the stated density; TEST phase):
  alexnet_fc6_fc7    AlexNet's fc6 (9216 -> 4096) and fc7 (4096 -> 4096) at 9 % density;
                     target at batch 1: sparse >= 3x faster than dense
  lenet_han          LeNet-5 at Han et al.'s profile (conv1 66 %, conv2 12 %, ip1 8 %,
                     ip2 19 % of the weights left): the whole net's forward and its four pruned
                     layers; target at batch 1: >= 2x
  mobilenet_1x1      the 13 pointwise (1x1) convolutions of MobileNet-v1 at 224x224, 90 %
                     sparse (10 % density), timed inside the real net; target at batch 1: >= 1.5x
  where_it_loses     the same layers with dense weights, forced onto the sparse path

Every case times dense and sparse alternately within each repetition (so that load from other
processes falls on both alike) and reports medians and dense / sparse ratios, at batch 1 and
larger batches.  "sparse" is mode sparse (forced); the "auto" column says which path mode auto
picks for that shape (the break-even densities of caffe_lite/layers/sparse.py)."""
import argparse
import json
import pathlib
import time

import numpy as np

import caffe_lite as caffe
from caffe_lite.blob import Blob
from caffe_lite.compression import sparse
from caffe_lite.layers import jit
from caffe_lite.proto import caffe_pb2
from caffe_lite.testing import layer_from_text

from . import machine
from .nets import model_path

HAN_LENET = {"conv1": 0.66, "conv2": 0.12, "ip1": 0.08, "ip2": 0.19}


def prune_at_random(blob, density, seed):
    """Gaussian weights, pruned at random to `density`, scaled as He et al.'s filler for the
    weights that remain (activations keep their size through the net: no denormals, no
    overflow)."""
    g = np.random.default_rng(seed)
    fan_in = blob.count // max(1, blob.shape[0])
    w = g.standard_normal(blob.shape).astype(np.float32) * np.float32(
        np.sqrt(2.0 / max(1.0, fan_in * density)))
    if density < 1:
        w[g.random(blob.shape) >= density] = 0
    blob.data[...] = w
    blob.mask_from_data()


def _alternate(fns, repeats, warmup):
    """{name: median ms} of callables run one after another in each repetition."""
    times = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


def _auto_choice(layer, run):
    layer.sparse.mode = "auto"
    run()
    return "sparse" if layer.sparse.active else "dense"


def _layer_case(text, in_shape, density, batch, repeats, warmup, seed=0):
    layer = layer_from_text(text, caffe_pb2.TEST)
    g = np.random.default_rng(seed + 1)
    bottom = [Blob.from_array(g.standard_normal((batch,) + in_shape).astype(np.float32))]
    top = [Blob()]
    layer.setup(bottom, top)
    prune_at_random(layer.blobs[0], density, seed)

    def run():
        layer.forward(bottom, top)

    def mode(m):
        def fn():
            layer.sparse.mode = m
            run()
        return fn
    auto = _auto_choice(layer, run)
    t = _alternate({"dense": mode("dense"), "sparse": mode("sparse")}, repeats, warmup)
    assert layer.sparse.active, layer.sparse.reason
    return {"dense_ms": t["dense"], "sparse_ms": t["sparse"],
            "speedup": t["dense"] / t["sparse"], "auto": auto}


def alexnet_fc(cfg):
    out = []
    for name, k in (("fc6", 9216), ("fc7", 4096)):
        for batch in cfg.batches:
            r = _layer_case(f'name: "{name}" type: "InnerProduct" '
                            'inner_product_param { num_output: 4096 }', (k,), 0.09, batch,
                            cfg.repeats, cfg.warmup)
            out.append(dict(case=f"AlexNet {name} 9 % density", batch=batch, **r,
                            target=3.0 if batch == 1 else None))
    return out


def _net_case(net, batch, cfg, layer_names, label, target):
    shape = net.blobs[net.inputs[0]].shape
    net.blobs[net.inputs[0]].reshape((batch,) + tuple(shape[1:]))
    net.blobs[net.inputs[0]].data[...] = np.random.default_rng(batch).random(
        net.blobs[net.inputs[0]].shape)
    net.reshape()
    sparse.configure(net, "auto")
    net.forward()
    auto = {n: ("sparse" if net.layer_dict[n].sparse.active else "dense") for n in layer_names}
    t = sparse.time_forward(net, "sparse", repeats=cfg.repeats, warmup=cfg.warmup)
    ta = sparse.time_forward(net, "auto", repeats=cfg.repeats, warmup=cfg.warmup,
                             per_layer=False)
    layers = {n: t["layers"][n] for n in layer_names}
    d = sum(v["dense_ms"] for v in layers.values())
    s = sum(v["sparse_ms"] for v in layers.values())
    return [dict(case=f"{label}: whole net", batch=batch, dense_ms=t["dense_ms"],
                 sparse_ms=t["sparse_ms"], speedup=t["speedup"],
                 auto=f"{sum(a == 'sparse' for a in auto.values())}/{len(auto)} sparse",
                 target=target if batch == 1 else None),
            dict(case=f"{label}: whole net, mode auto", batch=batch, dense_ms=ta["dense_ms"],
                 sparse_ms=ta["sparse_ms"], speedup=ta["speedup"],
                 auto=f"{sum(a == 'sparse' for a in auto.values())}/{len(auto)} sparse"),
            dict(case=f"{label}: the pruned layers", batch=batch, dense_ms=d, sparse_ms=s,
                 speedup=d / s, auto=f"{sum(a == 'sparse' for a in auto.values())}/"
                                     f"{len(auto)} sparse",
                 layers={n: dict(v, auto=auto[n]) for n, v in layers.items()})]


def lenet_han(cfg):
    net = caffe.Net(str(model_path("lenet")), caffe.TEST)
    for i, (name, density) in enumerate(HAN_LENET.items()):
        prune_at_random(net.params[name][0], density, i)
    out = []
    for batch in cfg.batches:
        out += _net_case(net, batch, cfg, list(HAN_LENET), "LeNet-5, Han's profile", 2.0)
    return out


def mobilenet_1x1(cfg):
    net = caffe.Net(str(model_path("mobilenet_v1")), caffe.TEST)
    for layer in net.layers:   # BatchNorm: mean 0, variance 1 (the deploy file has no stats)
        if layer.type == "BatchNorm":
            layer.blobs[0].data[...] = 0
            layer.blobs[1].data[...] = 1
            layer.blobs[2].data[...] = 1
    for i, name in enumerate(n for n, layer in net.layer_dict.items()
                             if layer.type == "Convolution" and not n.endswith("/sep")):
        prune_at_random(net.params[name][0], 1.0, 100 + i)
    pointwise = [n for n in net.layer_names
                 if n.endswith("/sep") and net.layer_dict[n].type == "Convolution"]
    for i, name in enumerate(pointwise):
        prune_at_random(net.params[name][0], 0.10, i)
    out = []
    for batch in cfg.batches[:2]:
        rows = _net_case(net, batch, cfg, pointwise,
                         "MobileNet-v1, 13 1x1 convs at 10 % density", None)
        rows[2]["target"] = 1.5 if batch == 1 else None
        # (the whole net in mode sparse would also force the dense 3x3 convolution: left out)
        out += [rows[2], rows[1]]
    return out


def where_it_loses(cfg):
    out = []
    for label, text, shape in (
            ("AlexNet fc7, dense weights", 'type: "InnerProduct" inner_product_param '
             '{ num_output: 4096 }', (4096,)),
            ("1x1 conv 512->512 14x14, dense weights", 'type: "Convolution" '
             'convolution_param { num_output: 512 kernel_size: 1 }', (512, 14, 14))):
        for batch in cfg.batches:
            r = _layer_case(text, shape, 1.0, batch, cfg.repeats, cfg.warmup)
            out.append(dict(case=label, batch=batch, **r))
    return out


CASES = {"alexnet_fc6_fc7": alexnet_fc, "lenet_han": lenet_han,
         "mobilenet_1x1": mobilenet_1x1, "where_it_loses": where_it_loses}


def table(results):
    lines = [f"{'case':<50} {'batch':>5} {'dense ms':>10} {'sparse ms':>10} {'dense/sparse':>12}"
             f" {'target':>7}  auto"]
    for r in results:
        target = r.get("target")
        mark = "" if target is None else (f">={target:g} " + ("ok" if r["speedup"] >= target
                                                              else "MISSED"))
        lines.append(f"{r['case']:<50} {r['batch']:>5} {r['dense_ms']:10.3f} "
                     f"{r['sparse_ms']:10.3f} {r['speedup']:12.2f} {mark:>7}  {r['auto']}")
        for name, v in r.get("layers", {}).items():
            lines.append(f"    {name:<46} {'':>5} {v['dense_ms']:10.3f} {v['sparse_ms']:10.3f} "
                         f"{v['speedup']:12.2f} {'':>7}  {v['auto']}")
    return "\n".join(lines)


class Config:
    def __init__(self, args):
        self.repeats = args.repeats or (5 if args.quick else 21)
        self.warmup = 1 if args.quick else 3
        self.batches = (1, 8) if args.quick else (1, 8, 64)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--only", default=None, help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if jit.kernels("sparse") is None:
        print("sparse inference needs numba (pip install -e .[fast]); nothing to compare")
        return 1
    cfg = Config(args)
    names = args.only.split(",") if args.only else list(CASES)
    info = machine.describe()
    results = []
    for name in names:
        rows = CASES[name](cfg)
        results += rows
        print(table(rows), flush=True)
    print()
    print(table(results))
    out = pathlib.Path(args.out) if args.out else (
        pathlib.Path(__file__).parent / "results" /
        f"sparse-{info['date']}{'-quick' if args.quick else ''}.json")
    out.write_text(json.dumps({"machine": info, "results": results}, indent=1))
    print("wrote", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
