"""On paper: the SGEMMs of MobileNet-v1's GEMM convolutions' weight gradients on the GPU
(batch 64) in both of caffe-lite's forms, against cuBLAS's expected efficiency.

    python3 benchmarks/gpu/conv_shapes.py [--batch 64]

No GPU needed: everything comes from the shapes and the planner's model in
layers/cuda/conv.py (weight_gradient_options / weight_gradient_plan: an H200-class GPU of
132 SMs, SGEMM at 50 TFLOPS = 75 % of the FP32 peak when its 128 x 128 output tiles fill the
SMs, 4.2 TB/s of device memory).  For each layer: the whole product dW = dY . X^T (M x N x
K), then for each form the products it launches, their thread blocks, the expected GEMM time
and the time of its extra traffic (transposed copies of x and dy, or partial gradients).
These are expectations to check against the profile of benchmarks/gpu/bench_gpu.py, not
measurements."""
import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from caffe_lite.layers.cuda.conv import (COPY_BYTES, weight_gradient_options,  # noqa: E402
                                         weight_gradient_plan)

BLOCKS = [(1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512), (1, 512), (1, 512),
          (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024)]


def mobilenet_gemm_convs(batch):
    """(name, images, C_in, H*W in, C_out, P out, rows = C_in*K*K, 1x1) of the GEMM convs."""
    out = [("conv1", batch, 3, 224 * 224, 32, 112 * 112, 27, False)]
    size, cin = 112, 32
    for i, (s, cout) in enumerate(BLOCKS, 2):
        size = (size + 2 - 3) // s + 1
        out.append((f"conv{i}/sep", batch, cin, size * size, cout, size * size, cin, True))
        cin = cout
    out.append(("fc7", batch, 1024, 1, 1000, 1, 1024, True))
    return out


def rows(batch):
    table = []
    for name, n, cin, hw, cout, p, kc, one in mobilenet_gemm_convs(batch):
        opts = weight_gradient_options(n, cin, hw, cout, p, kc, 1, one)
        form, parts = weight_gradient_plan(n, cin, hw, cout, p, kc, 1, one)
        table.append({"layer": name, "gemm": (cout, kc, n * p),
                      "gflop": 2.0 * cout * kc * n * p / 1e9, "options": opts,
                      "chosen": (form, parts)})
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args(argv)
    t = rows(args.batch)
    print("| layer | dW = dY . X^T: M x N x K | GFLOP | transposed: products x K, blocks, "
          "GEMM ms + copies ms | per image: products x K, blocks, GEMM ms + partials ms | "
          "chosen |")
    print("| --- | --- | ---: | --- | --- | --- |")
    total = dict.fromkeys(("transposed", "per_image", "chosen"), 0.0)
    for r in t:
        cells = []
        for form in ("transposed", "per_image"):
            parts, count, k, blocks, sec, extra = r["options"][form]
            ms, ems = sec * 1e3, extra / COPY_BYTES * 1e3
            total[form] += ms + ems
            if form == r["chosen"][0]:
                total["chosen"] += ms + ems
            cells.append(f"{count} x {k}, {blocks}, {ms:.3f} + {ems:.3f}")
        m, n, k = r["gemm"]
        form, parts = r["chosen"]
        print(f"| {r['layer']} | {m} x {n} x {k} | {r['gflop']:.2f} | {cells[0]} | {cells[1]} | "
              f"{form}" + (f", {parts} parts |" if parts > 1 else " |"))
    print(f"\nexpected weight-gradient time of these layers at batch {args.batch}: transposed "
          f"everywhere {total['transposed']:.2f} ms, per image everywhere "
          f"{total['per_image']:.2f} ms, as planned {total['chosen']:.2f} ms")
    return t


if __name__ == "__main__":
    main()
