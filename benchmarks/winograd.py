"""Winograd F(4x4, 3x3) against im2col + GEMM on 3x3 stride-1 layers, side by side in one run.

    python -m benchmarks.winograd            table on stdout, JSON in
                                             benchmarks/results/winograd-<date>-<host>.json
    python -m benchmarks.winograd --quick    fewer repetitions (a smoke run)

Each case is one layer's prepared forward (layers/im2col.py GemmEngine.prepare_forward, as a
deploy net's plan runs it) on random data, timed with both engines alternately in blocks on the
threads of CAFFE_LITE_NUM_THREADS (2 by default), medians; `winograd_ms / im2col_ms` below 1
is where Winograd pays, and `worth` says whether layers/winograd.py picks it for that shape.
The shapes are the deploy nets' (benchmarks/deploy_nets.py): MTCNN P-Net's and O-Net's
convolutions at batch 1, SqueezeNet's expand3x3 layers at batch 8, a GoogLeNet 3x3."""
import argparse
import json
import os
import pathlib
import types

import numpy as np

CASES = [  # (name, batch, input channels, output channels, input size, pad)
    ("pnet_conv2", 1, 10, 16, (35, 47), 0),
    ("pnet_conv3", 1, 16, 32, (33, 45), 0),
    ("onet_conv2", 1, 32, 64, (23, 23), 0),
    ("squeezenet_fire2_expand3x3", 8, 16, 64, (56, 56), 1),
    ("squeezenet_fire4_expand3x3", 8, 32, 128, (28, 28), 1),
    ("squeezenet_fire8_expand3x3", 8, 64, 256, (13, 13), 1),
    ("googlenet_3a_3x3", 1, 96, 128, (28, 28), 1),
]


def case(name, batch, c, o, size, pad, repeats, warmup):
    from caffe_lite.layers import parallel, winograd
    from caffe_lite.layers.im2col import ConvGeometry, GemmEngine
    from .cases import interleaved
    g = ConvGeometry((3, 3), (1, 1), (pad, pad), (1, 1))
    out = g.conv_output(size)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, c) + size, dtype=np.float32)
    w = rng.standard_normal((o, c, 3, 3), dtype=np.float32)
    runs, ys = [], []
    saved = winograd.MIN_CHANNEL_RATIO, winograd.MIN_TILES
    winograd.MIN_CHANNEL_RATIO = winograd.MIN_TILES = 0    # (both engines for every shape)
    try:
        with parallel.cpu_pass():
            for exact in (True, False):
                engine = GemmEngine(g, c, o, 1)
                engine.reshape(batch, size, out)
                y = np.empty((batch, o) + out, np.float32)
                with parallel.planned():
                    runs.append(engine.prepare_forward(
                        x, w, None, y, exact=exact, w_memory=types.SimpleNamespace(version=1)))
                ys.append(y)
    finally:
        winograd.MIN_CHANNEL_RATIO, winograd.MIN_TILES = saved

    def timed(run):
        def go():
            with parallel.cpu_pass():
                run()
        return go
    (im2col, _), (wino, _) = interleaved([timed(r) for r in runs], repeats, warmup)
    error = float(np.abs(ys[1] - ys[0]).max() / np.abs(ys[0]).max())
    return {"name": name, "batch": batch, "channels": [c, o], "size": list(size),
            "im2col_ms": 1e3 * im2col, "winograd_ms": 1e3 * wino, "ratio": wino / im2col,
            "worth": bool(winograd.worth(c, o, batch, out)), "max_rel_error": error}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.winograd",
                                description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=41)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    os.environ["CAFFE_LITE_NUM_THREADS"] = str(args.threads)
    from caffe_lite.layers import jit
    from caffe_lite.warmup import warm_up
    from . import machine
    if jit.kernels("winograd") is None:
        raise SystemExit("benchmarks.winograd: the Winograd path needs numba")
    info = machine.describe()
    info["jit_kernels"] = warm_up()
    repeats = 5 if args.quick else args.repeats
    results = []
    for spec in CASES:
        r = case(*spec, repeats, args.warmup)
        results.append(r)
        print(f"  {r['name']:28s} b{r['batch']}: im2col {r['im2col_ms']:.3f} ms, Winograd "
              f"{r['winograd_ms']:.3f} ms ({r['ratio']:.2f}; picked: {r['worth']}; "
              f"diff {r['max_rel_error']:.1e})", flush=True)
    out = pathlib.Path(args.out) if args.out else (
        pathlib.Path(__file__).parent / "results" / f"winograd-{info['date']}-{info['host']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"machine": info, "config": vars(args), "results": results},
                              indent=1))
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
