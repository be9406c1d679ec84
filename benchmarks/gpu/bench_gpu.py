"""caffe-lite on the GPU vs PyTorch (+cuDNN): a MobileNet-v1 training step and the depthwise
convolution layer.

    python3 benchmarks/gpu/bench_gpu.py [--out bench_gpu.json] [--batch 64] [--iters 20]

Needs PyCUDA and a CUDA device (see docs/gpu.md for the lent GPU machine); PyTorch is optional
(without it only caffe-lite's numbers are reported).  Prints a table and writes JSON:

1. MobileNet-v1 (Caffe form: BatchNorm + Scale, depthwise as Convolution with group = channels),
   batch 64, 224x224, SGD momentum 0.9, weight decay 4e-5: median wall time of a whole training
   step (clear diffs, forward, backward, fused SGD update), against the same network in PyTorch
   (Conv2d/BatchNorm2d/ReLU, cudnn.benchmark) in FP32 (TF32 off), and with PyTorch's default
   TF32 convolutions for reference.  Target: caffe-lite <= 1.2x PyTorch FP32.
2. The depthwise kernels on MobileNet's depthwise shapes: forward, backward-data and
   backward-filter times, the bytes each must move (inputs read once, outputs written once),
   GB/s as a fraction of the device's theoretical bandwidth (and of a measured device-to-device
   copy), against cuDNN's grouped convolution.  Target: >= 60 % of the bandwidth.

--small runs tiny shapes (a smoke test, e.g. on the CPU emulator of tests/gpu_emu)."""
import argparse
import json
import pathlib
import platform
import statistics
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import caffe_lite as caffe  # noqa: E402
from caffe_lite.backend import gpu, ops  # noqa: E402
from caffe_lite.blob import Blob  # noqa: E402
from caffe_lite.solvers import cuda as solver_cuda  # noqa: E402
from caffe_lite.solvers import get_solver  # noqa: E402
from caffe_lite.testing import layer_from_text  # noqa: E402

# (stride, output channels) of MobileNet-v1's 13 depthwise-separable blocks
BLOCKS = [(1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512), (1, 512), (1, 512),
          (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024)]


# --- the network --------------------------------------------------------------------------------
def mobilenet_prototxt(batch, size, classes=1000, width=1.0):
    ch = lambda c: max(8, int(c * width))  # noqa: E731
    out = ['name: "MobileNet-v1"',
           f'layer {{ name: "data" type: "Input" top: "data" top: "label" input_param {{ '
           f'shape {{ dim: {batch} dim: 3 dim: {size} dim: {size} }} shape {{ dim: {batch} }} }} }}']

    def conv_bn(name, bottom, cout, k, s, group=1):
        pad = (k - 1) // 2
        g = f" group: {group}" if group > 1 else ""
        out.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
                   f'param {{ lr_mult: 1 decay_mult: 1 }} convolution_param {{ num_output: {cout} '
                   f'bias_term: false pad: {pad} kernel_size: {k} stride: {s}{g} '
                   f'weight_filler {{ type: "msra" }} }} }}')
        out.append(f'layer {{ name: "{name}/bn" type: "BatchNorm" bottom: "{name}" top: "{name}" '
                   f'batch_norm_param {{ use_global_stats: false eps: 1e-5 }} }}')
        out.append(f'layer {{ name: "{name}/scale" type: "Scale" bottom: "{name}" top: "{name}" '
                   f'param {{ lr_mult: 1 decay_mult: 0 }} param {{ lr_mult: 1 decay_mult: 0 }} '
                   f'scale_param {{ bias_term: true }} }}')
        out.append(f'layer {{ name: "{name}/relu" type: "ReLU" bottom: "{name}" top: "{name}" }}')
        return name

    x = conv_bn("conv1", "data", ch(32), 3, 2)
    cin = ch(32)
    for i, (s, cout) in enumerate(BLOCKS, 2):
        x = conv_bn(f"conv{i}/dw", x, cin, 3, s, group=cin)
        x = conv_bn(f"conv{i}/sep", x, ch(cout), 1, 1)
        cin = ch(cout)
    out.append(f'layer {{ name: "pool6" type: "Pooling" bottom: "{x}" top: "pool6" '
               f'pooling_param {{ pool: AVE global_pooling: true }} }}')
    out.append(f'layer {{ name: "fc7" type: "Convolution" bottom: "pool6" top: "fc7" '
               f'param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }} '
               f'convolution_param {{ num_output: {classes} kernel_size: 1 '
               f'weight_filler {{ type: "msra" }} bias_filler {{ type: "constant" value: 0 }} }} }}')
    out.append('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc7" bottom: "label" '
               'top: "loss" }')
    return "\n".join(out)


def torch_mobilenet(classes, width, torch):
    nn = torch.nn
    ch = lambda c: max(8, int(c * width))  # noqa: E731

    def conv_bn(cin, cout, k, s, groups=1):
        return [nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False),
                nn.BatchNorm2d(cout, eps=1e-5, momentum=0.001), nn.ReLU(inplace=True)]
    layers = conv_bn(3, ch(32), 3, 2)
    cin = ch(32)
    for s, cout in BLOCKS:
        layers += conv_bn(cin, cin, 3, s, groups=cin) + conv_bn(cin, ch(cout), 1, 1)
        cin = ch(cout)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, classes, 1), nn.Flatten()]
    return nn.Sequential(*layers)


# --- timing helpers -------------------------------------------------------------------------------
def timed(fn, iters, warmup, sync):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def event_timed(fn, iters, warmup):
    """Median device time of fn (CUDA events around each call)."""
    import pycuda.driver as drv
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        a, b = drv.Event(), drv.Event()
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(b.time_since(a) * 1e-3)
    return statistics.median(times)


def copy_bandwidth():
    """Measured device-to-device copy throughput (bytes read + written per second)."""
    import pycuda.driver as drv
    n = 1 << 28  # 1 GiB of float32
    a, b = gpu.empty(n), gpu.empty(n)
    t = event_timed(lambda: drv.memcpy_dtod(b.gpudata, a.gpudata, 4 * n), 10, 3)
    return 2 * 4 * n / t / 1e9


# --- 1. the training step -------------------------------------------------------------------------
def caffe_step_time(args):
    text = ('type: "SGD" base_lr: 0.01 lr_policy: "fixed" momentum: 0.9 weight_decay: 4e-5 '
            'display: 0 random_seed: 1 snapshot_after_train: false net_param { '
            + mobilenet_prototxt(args.batch, args.size, args.classes, args.width) + ' }')
    caffe.set_mode_cpu()
    solver = get_solver(text)
    g = np.random.default_rng(0)
    net = solver.net
    net.blobs["data"].data[...] = g.normal(size=net.blobs["data"].shape)
    net.blobs["label"].data[...] = g.integers(0, args.classes, args.batch)
    caffe.set_mode_gpu()

    def step():
        # Solver.step's iteration with the GPU hooks (see solvers/cuda.py)
        ops.zero_diffs(net.learnable_params)
        net.forward_backward()
        solver_cuda.apply_update_gpu(solver, solver.get_learning_rate())
        solver.iter += 1
    t = timed(step, args.iters, args.warmup, gpu.synchronize)
    profile = layer_profile(net) if args.profile else None
    loss = float(net.blobs["loss"].cpu_data)
    caffe.set_mode_cpu()
    return t, loss, profile


def layer_profile(net):
    """Seconds per layer type for one forward + backward (synchronising after each layer)."""
    per = {}
    for i, layer in enumerate(net.layers):
        t0 = time.perf_counter()
        layer.forward(net.bottom_vecs[i], net.top_vecs[i])
        gpu.synchronize()
        per.setdefault(layer.type, [0.0, 0.0])[0] += time.perf_counter() - t0
    for i in range(len(net.layers) - 1, -1, -1):
        if net.layer_need_backward[i]:
            t0 = time.perf_counter()
            net.layers[i].backward(net.top_vecs[i], net.bottom_need_backward[i],
                                   net.bottom_vecs[i])
            gpu.synchronize()
            per[net.layers[i].type][1] += time.perf_counter() - t0
    return {k: {"forward_ms": v[0] * 1e3, "backward_ms": v[1] * 1e3} for k, v in per.items()}


def torch_step_time(args, torch, tf32):
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    model = torch_mobilenet(args.classes, args.width, torch).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
    x = torch.randn(args.batch, 3, args.size, args.size, device="cuda")
    y = torch.randint(0, args.classes, (args.batch,), device="cuda")
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    return timed(step, args.iters, args.warmup, torch.cuda.synchronize)


# --- 2. the depthwise layer -----------------------------------------------------------------------
def depthwise_shapes(args):
    if args.small:
        return [(2, 8, 12, 12, 1), (2, 8, 12, 12, 2)]
    n = args.batch
    return [(n, 32, 112, 112, 1), (n, 64, 112, 112, 2), (n, 128, 56, 56, 1), (n, 256, 28, 28, 1),
            (n, 512, 14, 14, 1), (n, 512, 14, 14, 2), (n, 1024, 7, 7, 1)]


def caffe_depthwise(shape, iters, warmup):
    from caffe_lite.layers.cuda.common import data, mdata, mdiff
    from caffe_lite.layers.cuda.conv import _engine
    n, c, h, w, s = shape
    caffe.set_mode_cpu()
    layer = layer_from_text(f'type: "DepthwiseConvolution" convolution_param {{ num_output: {c} '
                            f'group: {c} kernel_size: 3 pad: 1 stride: {s} bias_term: false '
                            f'weight_filler {{ type: "gaussian" std: 0.1 }} }}')
    g = np.random.default_rng(0)
    x, y = Blob.from_array(g.normal(size=(n, c, h, w)).astype(np.float32)), Blob()
    layer.setup([x], [y])
    y.diff[...] = g.normal(size=y.shape)
    caffe.set_mode_gpu()
    layer.forward([x], [y])
    eng = _engine(layer)
    wp, xp, yp = data(layer.blobs[0]), data(x), mdata(y)
    dyp, dxp, dwp = mdiff(y), mdiff(x), mdiff(layer.blobs[0])
    times = {
        "forward": event_timed(lambda: eng.forward(xp, wp, 0, yp), iters, warmup),
        "backward_data": event_timed(lambda: eng.backward_data(dyp, wp, dxp), iters, warmup),
        "backward_filter": event_timed(lambda: eng.backward_weight(xp, dyp, dwp), iters, warmup),
    }
    result = y.cpu_data.copy(), layer.blobs[0].cpu_data.copy(), x.cpu_data.copy()
    caffe.set_mode_cpu()
    xb, yb, wb = 4 * x.count, 4 * y.count, 4 * layer.blobs[0].count
    moved = {"forward": xb + yb + wb, "backward_data": yb + xb + wb,
             "backward_filter": xb + yb + wb}
    return times, moved, result


def torch_depthwise(shape, iters, warmup, torch, reference):
    n, c, h, w, s = shape
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    y_ref, w_np, x_np = reference
    x = torch.from_numpy(x_np).cuda()
    wt = torch.from_numpy(w_np).cuda()
    y = torch.nn.functional.conv2d(x, wt, None, s, 1, 1, c)
    err = float((y.cpu().numpy() - y_ref).__abs__().max())
    dy = torch.randn_like(y)
    cb = torch.ops.aten.convolution_backward

    def bwd(mask):
        return lambda: cb(dy, x, wt, None, [s, s], [1, 1], [1, 1], False, [0, 0], c, mask)

    def cuda_time(fn):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) * 1e-3)
        return statistics.median(times)
    return {"forward": cuda_time(lambda: torch.nn.functional.conv2d(x, wt, None, s, 1, 1, c)),
            "backward_data": cuda_time(bwd([True, False, False])),
            "backward_filter": cuda_time(bwd([False, True, False]))}, err


# --- main -----------------------------------------------------------------------------------------
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--small", action="store_true", help="tiny shapes: a smoke test")
    p.add_argument("--profile", action="store_true", help="per-layer-type times for caffe-lite")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--skip-step", action="store_true")
    p.add_argument("--out", default="bench_gpu.json")
    args = p.parse_args(argv)
    if args.small:
        args.batch, args.size, args.classes, args.width = 2, 32, 10, 0.25
        args.iters, args.warmup = 1, 0

    ok, reason = gpu.available()
    if not ok:
        sys.exit(f"bench_gpu: no GPU: {reason}")
    torch = None
    if not args.no_torch:
        try:
            import torch  # noqa: F811
            if not torch.cuda.is_available():
                torch = None
        except ImportError:
            torch = None
    caffe.set_mode_gpu()
    props = gpu.device_properties()
    caffe.set_mode_cpu()
    report = {"device": props, "python": platform.python_version(),
              "torch": getattr(torch, "__version__", None), "batch": args.batch,
              "size": args.size}
    if not args.small:
        caffe.set_mode_gpu()
        report["device"]["measured_copy_gbs"] = copy_bandwidth()
        caffe.set_mode_cpu()
    bw = props["bandwidth_gbs"] or None
    print(f"device: {props['name']}  theoretical bandwidth {props['bandwidth_gbs']:.0f} GB/s"
          + (f", measured copy {report['device']['measured_copy_gbs']:.0f} GB/s"
             if "measured_copy_gbs" in report["device"] else ""))

    if not args.skip_step:
        t, loss, profile = caffe_step_time(args)
        step = {"caffe_lite_s": t, "loss": loss}
        if profile:
            step["caffe_lite_profile"] = profile
        if torch is not None:
            step["torch_fp32_s"] = torch_step_time(args, torch, tf32=False)
            step["torch_tf32_s"] = torch_step_time(args, torch, tf32=True)
            step["ratio_vs_fp32"] = t / step["torch_fp32_s"]
            step["target_met"] = step["ratio_vs_fp32"] <= 1.2
        report["mobilenet_step"] = step
        print(f"MobileNet-v1 batch {args.batch} train step: caffe-lite {t * 1e3:.1f} ms"
              + (f", PyTorch FP32 {step['torch_fp32_s'] * 1e3:.1f} ms (x{step['ratio_vs_fp32']:.2f}),"
                 f" PyTorch TF32 {step['torch_tf32_s'] * 1e3:.1f} ms" if torch else ""))

    rows = []
    for shape in depthwise_shapes(args):
        times, moved, ref = caffe_depthwise(shape, args.iters, args.warmup)
        row = {"shape": shape, "caffe_lite_s": times, "bytes": moved,
               "gbs": {k: moved[k] / times[k] / 1e9 for k in times}}
        if bw:
            row["fraction_of_bandwidth"] = {k: row["gbs"][k] / bw for k in times}
        if torch is not None:
            row["torch_s"], row["max_abs_diff_vs_torch"] = torch_depthwise(
                shape, args.iters, args.warmup, torch, ref)
        rows.append(row)
        print(f"depthwise {shape}: " + "  ".join(
            f"{k} {times[k] * 1e6:.0f} us {row['gbs'][k]:.0f} GB/s"
            + (f" ({row['fraction_of_bandwidth'][k] * 100:.0f} %)" if bw else "")
            + (f" torch {row['torch_s'][k] * 1e6:.0f} us" if torch else "") for k in times))
    report["depthwise"] = rows
    if bw:
        report["depthwise_forward_target_met"] = all(
            r["fraction_of_bandwidth"]["forward"] >= 0.6 for r in rows)
    pathlib.Path(args.out).write_text(json.dumps(report, indent=1, default=float))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
