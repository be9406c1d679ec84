"""caffe-lite on the GPU vs PyTorch (+cuDNN), every target of issue 18 in one run.

    python3 benchmarks/gpu/bench_gpu.py [--out bench_gpu.json] [--profile] [--small]

Needs PyCUDA and a CUDA device (see docs/gpu.md for the lent GPU machine); PyTorch is optional
(without it only caffe-lite's numbers are reported).  Prints a table and writes JSON with a
"targets" section (value, bound, met) for:

1. MobileNet-v1 (Caffe form: BatchNorm + Scale + ReLU, depthwise as Convolution with group =
   channels), batch 64, 224x224, one training step (clear diffs, forward, backward, fused SGD
   update with momentum 0.9 and weight decay 4e-5) against the same network in PyTorch
   (Conv2d / BatchNorm2d / ReLU, cudnn.benchmark) in FP32 (TF32 off: the like-for-like number;
   PyTorch's default TF32 is reported beside it).  Target: ratio <= 1.0.
2. The depthwise kernels on every MobileNet-v1 depthwise shape at batch 64: forward,
   backward-data and backward-filter times, the bytes each must move (inputs read once,
   outputs written once), GB/s as a fraction of a measured device-to-device copy (and of the
   theoretical bandwidth), cuDNN's times beside them.  Target: >= 60 % of the copy.
3. Small batches, where host work per layer decides: LeNet batch 64 forward + backward and
   training step, MobileNet-v1 batch 1 and 8 forward + backward, MobileNet-v1 batch 1
   inference (TEST phase, global statistics).  Target: ratio <= 1.0 each.
4. GPU memory: bytes caffe-lite holds on the device for each net (its buffers, counted; they
   only grow, so this is also its peak), beside PyTorch's peak allocated and reserved bytes;
   and the process's device memory in use after the first case, before PyTorch allocates
   (CUDA context, cuBLAS workspace and caffe-lite's buffers).
`--profile` adds device time per layer type (and per fused group) of the batch-64 step, from
CUDA events around each layer.  Times are medians of alternating rounds (caffe-lite, then
PyTorch, then again), each round a median over iterations with a synchronisation after each.

--small runs tiny shapes without the targets (a smoke test, e.g. on the CPU emulator of
tests/gpu_emu)."""
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
TARGET_RATIO = 1.0        # caffe-lite time / PyTorch FP32 time
TARGET_BANDWIDTH = 0.6    # depthwise: fraction of the measured copy bandwidth


# --- the networks ---------------------------------------------------------------------------------
def mobilenet_prototxt(batch, size, classes=1000, width=1.0, deploy=False):
    ch = lambda c: max(8, int(c * width))  # noqa: E731
    out = ['name: "MobileNet-v1"']
    if deploy:
        out.append(f'layer {{ name: "data" type: "Input" top: "data" input_param {{ '
                   f'shape {{ dim: {batch} dim: 3 dim: {size} dim: {size} }} }} }}')
    else:
        out.append(f'layer {{ name: "data" type: "Input" top: "data" top: "label" input_param {{ '
                   f'shape {{ dim: {batch} dim: 3 dim: {size} dim: {size} }} '
                   f'shape {{ dim: {batch} }} }} }}')

    def conv_bn(name, bottom, cout, k, s, group=1):
        pad = (k - 1) // 2
        g = f" group: {group}" if group > 1 else ""
        out.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
                   f'param {{ lr_mult: 1 decay_mult: 1 }} convolution_param {{ num_output: {cout} '
                   f'bias_term: false pad: {pad} kernel_size: {k} stride: {s}{g} '
                   f'weight_filler {{ type: "msra" }} }} }}')
        out.append(f'layer {{ name: "{name}/bn" type: "BatchNorm" bottom: "{name}" top: "{name}" '
                   f'batch_norm_param {{ eps: 1e-5 }} }}')
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
    if not deploy:
        out.append('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc7" bottom: "label" '
                   'top: "loss" }')
    return "\n".join(out)


def lenet_prototxt(batch):
    """BVLC's LeNet (lenet_train_test.prototxt's layers) on an Input layer."""
    return f"""name: "LeNet"
layer {{ name: "data" type: "Input" top: "data" top: "label"
  input_param {{ shape {{ dim: {batch} dim: 1 dim: 28 dim: 28 }} shape {{ dim: {batch} }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param {{ lr_mult: 1 }} param {{ lr_mult: 2 }}
  convolution_param {{ num_output: 20 kernel_size: 5 stride: 1
    weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" }} }} }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  param {{ lr_mult: 1 }} param {{ lr_mult: 2 }}
  convolution_param {{ num_output: 50 kernel_size: 5 stride: 1
    weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" }} }} }}
layer {{ name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
  param {{ lr_mult: 1 }} param {{ lr_mult: 2 }}
  inner_product_param {{ num_output: 500 weight_filler {{ type: "xavier" }}
    bias_filler {{ type: "constant" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  param {{ lr_mult: 1 }} param {{ lr_mult: 2 }}
  inner_product_param {{ num_output: 10 weight_filler {{ type: "xavier" }}
    bias_filler {{ type: "constant" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
"""


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


def torch_lenet(torch):
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5),
                         nn.MaxPool2d(2, 2), nn.Flatten(), nn.Linear(800, 500),
                         nn.ReLU(inplace=True), nn.Linear(500, 10))


# --- timing helpers -------------------------------------------------------------------------------
def _median_time(fn, iters, sync):
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def side_by_side(fns, iters, warmup, rounds=3):
    """{name: median seconds}: each (fn, sync) warmed up, then `rounds` alternating rounds
    of `iters` timed calls each; the result is the median over all rounds' medians."""
    for fn, sync in fns.values():
        for _ in range(warmup):
            fn()
        sync()
    per = {name: [] for name in fns}
    for _ in range(rounds):
        for name, (fn, sync) in fns.items():
            per[name].append(_median_time(fn, iters, sync))
    return {name: statistics.median(v) for name, v in per.items()}


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


def copy_bandwidth(small=False):
    """Measured device-to-device copy throughput (bytes read + written per second)."""
    import pycuda.driver as drv
    n = 1 << (16 if small else 28)  # 1 GiB of float32
    a, b = gpu.empty(n), gpu.empty(n)
    t = event_timed(lambda: drv.memcpy_dtod(b.gpudata, a.gpudata, 4 * n), 10, 3)
    return 2 * 4 * n / t / 1e9


# --- caffe-lite side ------------------------------------------------------------------------------
def caffe_solver(text, batch, classes, seed=0):
    caffe.set_mode_cpu()
    solver = get_solver('type: "SGD" base_lr: 0.01 lr_policy: "fixed" momentum: 0.9 '
                        'weight_decay: 4e-5 display: 0 random_seed: 1 '
                        'snapshot_after_train: false net_param { ' + text + ' }')
    g = np.random.default_rng(seed)
    net = solver.net
    net.blobs["data"].data[...] = g.normal(size=net.blobs["data"].shape)
    net.blobs["label"].data[...] = g.integers(0, classes, batch)
    caffe.set_mode_gpu()
    return solver


def caffe_step_fn(solver):
    net = solver.net

    def step():
        # Solver.step's iteration with the GPU hooks (see solvers/cuda.py)
        ops.zero_diffs(net.learnable_params)
        net.forward_backward()
        solver_cuda.apply_update_gpu(solver, solver.get_learning_rate())
        solver.iter += 1
    return step


def caffe_fwd_bwd_fn(solver):
    net = solver.net

    def fwd_bwd():
        ops.zero_diffs(net.learnable_params)
        net.forward_backward()
    return fwd_bwd


def caffe_inference_fn(text):
    caffe.set_mode_cpu()
    net = caffe.Net(text, caffe.TEST)
    for name, blobs in net.params.items():   # trained-looking statistics
        if name.endswith("/bn"):
            blobs[1].data[...] = 1.0
            blobs[2].data[...] = 1.0
    net.blobs["data"].data[...] = np.random.default_rng(0).normal(size=net.blobs["data"].shape)
    caffe.set_mode_gpu()
    return net, net.forward_from_to


def device_bytes(nets, solvers=()):
    """Bytes of device memory caffe-lite holds for these nets: blob data / diff / mask,
    layer buffers, scratch buffers, solver histories (shared buffers counted once)."""
    seen, total = set(), 0

    def add(arr):
        nonlocal total
        if arr is not None and id(arr) not in seen:
            seen.add(id(arr))
            total += int(arr.nbytes)
    for net in nets:
        for b in list(net._blobs) + list(net._params):
            for v in (b._data, b._diff, b._mask):
                if v is not None:
                    add(v.mem._gpu)
        for layer in net.layers:
            st = getattr(layer, "_cuda_state", None)
            for buf in (st._bufs.values() if st is not None else ()):
                add(buf)
    for buf in ops._scratch.values():
        add(buf)
    for s in solvers:
        for arr in getattr(getattr(s, "_gpu_history", None), "arrays", ()):
            add(arr)
    return total


def process_device_bytes():
    import pycuda.driver as drv
    free, total = drv.mem_get_info()
    return int(total - free)


def layer_profile(net, iters=5):
    """Device milliseconds per layer type (fused groups under their group type) for one
    forward + backward, from CUDA events around each layer or group: median over iters."""
    import pycuda.driver as drv
    groups, by_last = net._groups()
    runs = []
    for _ in range(iters):
        marks = []

        def mark(kind, direction, fn):
            a, b = drv.Event(), drv.Event()
            a.record()
            fn()
            b.record()
            marks.append((kind, direction, a, b))
        i, n = 0, len(net.layers)
        while i < n:
            g = groups.get(i)
            if g is not None and g.active():
                mark(g.type + ("+ReLU" if getattr(g, "relu", False) else ""), 0, g.forward)
                i = g.last + 1
                continue
            layer = net.layers[i]
            mark(layer.type, 0, lambda i=i, layer=layer: layer.forward(net.bottom_vecs[i],
                                                                      net.top_vecs[i]))
            i += 1
        i = n - 1
        while i >= 0:
            g = by_last.get(i)
            if g is not None and g.backward_ok and g.active():
                mark(g.type + ("+ReLU" if getattr(g, "relu", False) else ""), 1, g.backward)
                i = g.first - 1
                continue
            if net.layer_need_backward[i]:
                layer = net.layers[i]
                mark(layer.type, 1, lambda i=i, layer=layer: layer.backward(
                    net.top_vecs[i], net.bottom_need_backward[i], net.bottom_vecs[i]))
            i -= 1
        marks[-1][3].synchronize()
        per = {}
        for kind, d, a, b in marks:
            per.setdefault(kind, [0.0, 0.0])[d] += b.time_since(a)
        runs.append(per)
    kinds = runs[0].keys()
    return {k: {"forward_ms": statistics.median(r[k][0] for r in runs),
                "backward_ms": statistics.median(r[k][1] for r in runs)} for k in kinds}


# --- PyTorch side ---------------------------------------------------------------------------------
def torch_setup(torch, tf32):
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32


def torch_train_fns(torch, model, batch, shape, classes, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    model = model.cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
    x = torch.randn(batch, *shape, device="cuda", generator=g)
    y = torch.randint(0, classes, (batch,), device="cuda", generator=g)
    loss_fn = torch.nn.CrossEntropyLoss()

    def fwd_bwd():
        opt.zero_grad(set_to_none=False)
        loss_fn(model(x), y).backward()

    def step():
        fwd_bwd()
        opt.step()
    return step, fwd_bwd


def torch_inference_fn(torch, model, batch, shape):
    model = model.cuda().eval()
    x = torch.randn(batch, *shape, device="cuda")

    def infer():
        with torch.no_grad():
            model(x)
    return infer


def torch_kernel_table(torch, fn, iters=3, rows=25):
    """PyTorch's profiler table of its CUDA kernels over `iters` calls (text)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    for key in ("self_cuda_time_total", "self_device_time_total", "cuda_time_total"):
        try:
            return prof.key_averages().table(sort_by=key, row_limit=rows)
        except (KeyError, AttributeError, ValueError):
            continue
    return prof.key_averages().table(row_limit=rows)


def torch_peak(torch, fn, iters=3):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return {"allocated": int(torch.cuda.max_memory_allocated()),
            "reserved": int(torch.cuda.max_memory_reserved())}


# --- 2. the depthwise layer -----------------------------------------------------------------------
def depthwise_shapes(args):
    """(N, C, H, W, stride) of every distinct MobileNet-v1 depthwise layer."""
    if args.small:
        return [(2, 8, 12, 12, 1), (2, 8, 12, 12, 2)]
    n, size, out = args.batch, args.size // 2, []
    cin = 32
    for s, cout in BLOCKS:
        shape = (n, cin, size, size, s)
        if shape not in out:
            out.append(shape)
        size = (size + 2 - 3) // s + 1
        cin = cout
    return out


def caffe_depthwise(shape, iters, warmup):
    from caffe_lite.layers.cuda.common import data, mdata, mdiff
    from caffe_lite.layers.cuda.conv import _engine
    n, c, h, w, s = shape
    caffe.set_mode_cpu()
    layer = layer_from_text(f'type: "Convolution" convolution_param {{ num_output: {c} '
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
    tiled = {"forward": eng.fwd is not None, "backward_data": eng.bwd is not None,
             "backward_filter": eng.flt is not None}
    result = y.cpu_data.copy(), layer.blobs[0].cpu_data.copy(), x.cpu_data.copy()
    caffe.set_mode_cpu()
    xb, yb, wb = 4 * x.count, 4 * y.count, 4 * layer.blobs[0].count
    moved = {"forward": xb + yb + wb, "backward_data": yb + xb + wb,
             "backward_filter": xb + yb + wb}
    return times, moved, result, tiled


def torch_depthwise(shape, iters, warmup, torch, reference):
    n, c, h, w, s = shape
    torch_setup(torch, False)
    y_ref, w_np, x_np = reference
    x = torch.from_numpy(x_np).cuda()
    wt = torch.from_numpy(w_np).cuda()
    y = torch.nn.functional.conv2d(x, wt, None, s, 1, 1, c)
    err = float(np.abs(y.cpu().numpy() - y_ref).max())
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


# --- the cases --------------------------------------------------------------------------------------
def run_cases(args, torch, report):
    """Sections 1, 3 and 4: training step, small batches, inference, memory."""
    small = args.small
    size, classes, width = (32, 10, 0.25) if small else (args.size, args.classes, args.width)
    cases = []   # (name, kind, caffe builder, torch builder, batch, input shape)
    mb = lambda b, **kw: mobilenet_prototxt(b, size, classes, width, **kw)  # noqa: E731
    cases.append(("mobilenet_b%d_step" % args.batch, "step", mb, "mobilenet", args.batch))
    for b in ((1,) if small else (1, 8)):
        cases.append((f"mobilenet_b{b}_fwd_bwd", "fwd_bwd", mb, "mobilenet", b))
    cases.append(("mobilenet_b1_inference", "inference", mb, "mobilenet", 1))
    lb = 4 if small else 64
    cases.append((f"lenet_b{lb}_fwd_bwd", "fwd_bwd", lambda b, **kw: lenet_prototxt(b),
                  "lenet", lb))
    cases.append((f"lenet_b{lb}_step", "step", lambda b, **kw: lenet_prototxt(b), "lenet", lb))
    results, held = {}, {}
    for name, kind, builder, tmodel, batch in cases:
        shape = (3, size, size) if tmodel == "mobilenet" else (1, 28, 28)
        ncls = classes if tmodel == "mobilenet" else 10
        fns, row = {}, {"batch": batch, "kind": kind}
        ops._scratch.clear()   # each case's shared scratch buffers are its own (sizes)
        if kind == "inference":
            net, fn = caffe_inference_fn(builder(batch, deploy=True))
            nets, solvers = [net], []
        else:
            solver = caffe_solver(builder(batch), batch, ncls)
            fn = caffe_step_fn(solver) if kind == "step" else caffe_fwd_bwd_fn(solver)
            nets, solvers = [solver.net], [solver]
        fns["caffe_lite"] = (fn, gpu.synchronize)
        if not results:
            # before PyTorch allocates anything: the context, cuBLAS and caffe-lite's buffers
            for _ in range(2):
                fn()
            gpu.synchronize()
            report["process_device_bytes_first_case"] = process_device_bytes()
        if torch is not None:
            torch_setup(torch, False)
            model = (torch_mobilenet(ncls, width, torch) if tmodel == "mobilenet"
                     else torch_lenet(torch))
            if kind == "inference":
                tfn = torch_inference_fn(torch, model, batch, shape)
            else:
                step, fwd_bwd = torch_train_fns(torch, model, batch, shape, ncls)
                tfn = step if kind == "step" else fwd_bwd
            fns["torch_fp32"] = (tfn, torch.cuda.synchronize)
        times = side_by_side(fns, args.iters, args.warmup, rounds=1 if small else args.rounds)
        row["caffe_lite_s"] = times["caffe_lite"]
        row["caffe_lite_device_bytes"] = device_bytes(nets, solvers)
        if kind != "inference":
            row["loss"] = float(nets[0].blobs["loss"].cpu_data)
        if torch is not None:
            row["torch_fp32_s"] = times["torch_fp32"]
            row["ratio_vs_fp32"] = times["caffe_lite"] / times["torch_fp32"]
            row["torch_peak_bytes"] = torch_peak(torch, fns["torch_fp32"][0])
            if name.startswith("mobilenet") and kind == "step":
                torch_setup(torch, True)
                model = torch_mobilenet(ncls, width, torch)
                step, _ = torch_train_fns(torch, model, batch, shape, ncls)
                row["torch_tf32_s"] = side_by_side({"t": (step, torch.cuda.synchronize)},
                                                   args.iters, args.warmup, rounds=1)["t"]
                torch_setup(torch, False)
        if args.profile and kind == "step" and name.startswith("mobilenet"):
            row["caffe_lite_profile_ms"] = layer_profile(nets[0])
        if args.torch_profile and torch is not None and kind == "step" \
                and name.startswith("mobilenet"):
            row["torch_profile"] = torch_kernel_table(torch, fns["torch_fp32"][0])
        held[name] = row["caffe_lite_device_bytes"]
        results[name] = row
        print(f"{name:<26} caffe-lite {row['caffe_lite_s'] * 1e3:8.2f} ms"
              + (f"  PyTorch FP32 {row['torch_fp32_s'] * 1e3:8.2f} ms  ratio "
                 f"{row['ratio_vs_fp32']:.2f}" if torch is not None else "")
              + f"  caffe-lite holds {row['caffe_lite_device_bytes'] / 2**20:.0f} MiB", flush=True)
        caffe.set_mode_cpu()
        del nets, solvers, fns
    report["cases"] = results


def run_depthwise(args, torch, report, copy_gbs, bw):
    rows = []
    for shape in depthwise_shapes(args):
        times, moved, ref, tiled = caffe_depthwise(shape, args.iters, args.warmup)
        row = {"shape": shape, "caffe_lite_s": times, "bytes": moved, "tiled": tiled,
               "gbs": {k: moved[k] / times[k] / 1e9 for k in times}}
        if copy_gbs:
            row["fraction_of_copy"] = {k: row["gbs"][k] / copy_gbs for k in times}
        if bw:
            row["fraction_of_bandwidth"] = {k: row["gbs"][k] / bw for k in times}
        if torch is not None:
            row["torch_s"], row["max_abs_diff_vs_torch"] = torch_depthwise(
                shape, args.iters, args.warmup, torch, ref)
        rows.append(row)
        print(f"depthwise {shape}: " + "  ".join(
            f"{k} {times[k] * 1e6:.0f} us {row['gbs'][k]:.0f} GB/s"
            + (f" ({row['fraction_of_copy'][k] * 100:.0f} % of copy)" if copy_gbs else "")
            + (f" cuDNN {row['torch_s'][k] * 1e6:.0f} us" if torch is not None else "")
            for k in times), flush=True)
    report["depthwise"] = rows


def targets(report):
    """{target: {"value", "bound", "met"}} for every target of the issue present."""
    out = {}
    for name, row in report.get("cases", {}).items():
        if "ratio_vs_fp32" in row:
            out[f"{name}_vs_pytorch_fp32"] = {"value": row["ratio_vs_fp32"],
                                              "bound": f"<= {TARGET_RATIO}",
                                              "met": row["ratio_vs_fp32"] <= TARGET_RATIO}
    for row in report.get("depthwise", []):
        for k, v in row.get("fraction_of_copy", {}).items():
            out[f"depthwise_{'x'.join(map(str, row['shape']))}_{k}_of_copy"] = {
                "value": v, "bound": f">= {TARGET_BANDWIDTH}", "met": v >= TARGET_BANDWIDTH}
    return out


# --- main -----------------------------------------------------------------------------------------
def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per comparison")
    p.add_argument("--small", action="store_true", help="tiny shapes: a smoke test")
    p.add_argument("--profile", action="store_true",
                   help="device time per layer type of the batch-64 step")
    p.add_argument("--torch-profile", action="store_true",
                   help="PyTorch's profiler table of its kernels for the batch-64 step")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--only", choices=["cases", "depthwise"], default=None)
    p.add_argument("--out", default="bench_gpu.json")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.small:
        args.batch, args.iters, args.warmup = 2, 1, 0

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
    copy_gbs = copy_bandwidth(args.small)
    caffe.set_mode_cpu()
    report = {"device": dict(props, measured_copy_gbs=copy_gbs),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(),
              "numpy": np.__version__, "torch": getattr(torch, "__version__", None),
              "cudnn": torch.backends.cudnn.version() if torch is not None else None,
              "pycuda": ".".join(map(str, __import__("pycuda").VERSION)),
              "args": vars(args)}
    bw = props["bandwidth_gbs"] or None
    print(f"device: {props['name']}  theoretical bandwidth {props['bandwidth_gbs']:.0f} GB/s, "
          f"measured copy {copy_gbs:.0f} GB/s", flush=True)
    if args.only in (None, "cases"):
        run_cases(args, torch, report)
    if args.only in (None, "depthwise"):
        run_depthwise(args, torch, report, copy_gbs, bw)
    if not args.small:
        report["targets"] = targets(report)
        met = sum(t["met"] for t in report["targets"].values())
        print(f"targets met: {met} of {len(report['targets'])}")
    pathlib.Path(args.out).write_text(json.dumps(report, indent=1, default=float))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
