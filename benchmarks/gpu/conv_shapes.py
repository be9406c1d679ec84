"""On paper: MobileNet-v1's convolutions on the GPU (batch 64) -- the SGEMMs of the GEMM
convolutions' weight gradients in both of caffe-lite's forms against cuBLAS's expected
efficiency, and (--depthwise) the bytes each depthwise kernel must move with the tiles the
planner chooses.

    python3 benchmarks/gpu/conv_shapes.py [--batch 64] [--depthwise]

No GPU needed: everything comes from the shapes and the planner's model in
layers/cuda/conv.py (weight_gradient_options / weight_gradient_plan: an H200-class GPU of
132 SMs, SGEMM at 50 TFLOPS = 75 % of the FP32 peak when its 128 x 128 output tiles fill the
SMs, 4.2 TB/s of device memory).  For each layer: the whole product dW = dY . X^T (M x N x
K), then for each form the products it launches, their thread blocks, the expected GEMM time
and the time of its extra traffic (transposed copies of x and dy, or partial gradients).

--depthwise: per MobileNet-v1 depthwise shape and direction, the bytes moved (inputs read
once, outputs written once), the time that takes at the measured copy bandwidth and at 60 %
of it (the issue's target), and the planner's units: thread blocks, thread items per unit,
how many blocks fit on an SM at once (shared memory, threads, registers as ptxas reported
them for sm_90), the waves of blocks that makes, and the source rows read again as the halo
of neighbouring bands (from L2 mostly), as a share of the rows read once.

These are expectations to check against the profile of benchmarks/gpu/bench_gpu.py, not
measurements."""
import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from caffe_lite.layers.cuda.conv import (COPY_BYTES, weight_gradient_options,  # noqa: E402
                                         weight_gradient_plan)

# registers per thread of the tiled depthwise kernels (ptxas -v, sm_90, k3s1 / k3s2)
DW_REGISTERS = {"forward": 40, "backward_data": 54, "backward_filter": 48}
SMEM_PER_SM = 228 * 1024
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


def depthwise_rows(batch):
    from caffe_lite.layers.cuda import depthwise as dw
    from caffe_lite.layers.cuda.conv import SMS
    out, size, cin, seen = [], 112, 32, set()
    for s, cout in BLOCKS:
        if (cin, size, s) not in seen:
            seen.add((cin, size, s))
            o = (size + 2 - 3) // s + 1
            g = dict(N=batch, C=cin, M=1, H=size, W=size, OH=o, OW=o, KH=3, KW=3, SH=s, SW=s,
                     PH=1, PW=1, DH=1, DW=1)
            x, y = batch * cin * size * size * 4, batch * cin * o * o * 4
            for direction, plan in (("forward", dw.plan_forward(g)),
                                    ("backward_data", dw.plan_backward_data(g)),
                                    ("backward_filter", dw.plan_filter(g))):
                moved = x + y + cin * 9 * 4
                if direction == "backward_data":   # stages dy rows for bands of dx rows
                    owlo, tr = plan.extra
                    rows_, src_h = tr, o
                    first = [-(-(b * plan.TH + 1 - 3 + 1) // s) for b in range(plan.bands)]
                    items = plan.PB * plan.TH // dw.DW_R * size
                else:                              # stages x rows for bands of output rows
                    rows_, src_h = (plan.TH - 1) * s + 3, size
                    first = [b * plan.TH * s - 1 for b in range(plan.bands)]
                    items = plan.PB * plan.TH // dw.DW_R * o
                # source rows read from memory per plane, beyond the plane itself (halo)
                read = sum(max(0, min(f + rows_, src_h) - max(f, 0)) for f in first)
                blocks = plan.extra[0] * cin if direction == "backward_filter" else plan.units
                smem = plan.PB * rows_ * plan.RS * 4 + 1024
                resident = min(SMEM_PER_SM // smem, 2048 // plan.threads,
                               65536 // (DW_REGISTERS[direction] * plan.threads), 32)
                out.append({"shape": (batch, cin, size, size, s), "direction": direction,
                            "mb": moved / 1e6, "us_copy": moved / COPY_BYTES * 1e6,
                            "us_60": moved / (0.6 * COPY_BYTES) * 1e6, "blocks": blocks,
                            "threads": plan.threads, "items": items, "resident": resident,
                            "waves": blocks / (SMS * resident), "halo": read / src_h - 1})
        size = (size + 2 - 3) // s + 1
        cin = cout
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--depthwise", action="store_true")
    args = p.parse_args(argv)
    if args.depthwise:
        t = depthwise_rows(args.batch)
        print("| N, C, H, W, stride | direction | MB moved | us at copy | us at 60 % | blocks "
              "x threads | items / unit | blocks / SM | waves | halo rows re-read |")
        print("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
        for r in t:
            print(f"| {', '.join(map(str, r['shape']))} | {r['direction']} | {r['mb']:.1f} | "
                  f"{r['us_copy']:.0f} | {r['us_60']:.0f} | {r['blocks']} x {r['threads']} | "
                  f"{r['items']} | {r['resident']} | {r['waves']:.1f} | "
                  f"{r['halo'] * 100:.0f} % |")
        return t
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
