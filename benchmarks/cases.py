"""The benchmark cases: each times one workload in caffe-lite and the same workload in PyTorch.

A case returns a dict with the two medians (ms), their ratio, and the work done (FLOPs of the
convolution / inner-product products, or the minimum bytes a memory-bound layer must move), so
the runner can report achieved rates against the machine's measured limits.  caffe-lite and
PyTorch runs are interleaved (one of each per repetition), so that anything else happening on
the machine affects both alike."""
import time

import numpy as np

import caffe_lite as caffe
from caffe_lite.proto import caffe_pb2

from . import nets

CONV_TYPES = ("Convolution", "DepthwiseConvolution", "ConvolutionDepthwise", "Deconvolution")


# --- work ---------------------------------------------------------------------------------

def layer_flops(layer):
    """Floating-point operations of one forward pass of a convolution or inner product."""
    if layer.type in CONV_TYPES:
        g = layer.geom
        out = int(np.prod(layer.top_shape[2:])) if not layer.reverse_dimensions \
            else int(np.prod(layer.bottom_shape[2:]))
        return 2 * layer.num * layer.conv_out * (layer.conv_in // layer.group) \
            * g.kernel_count * out
    if layer.type == "InnerProduct":
        return 2 * layer.M * layer.K * layer.num_output
    return 0


def net_flops(net, backward):
    """FLOPs of the products of a forward (and backward: weight and input gradients where the
    net computes them) pass."""
    total = 0
    for i, layer in enumerate(net.layers):
        f = layer_flops(layer)
        total += f
        if backward and net.layer_need_backward[i]:
            if layer.blobs and layer.param_propagate_down[0]:
                total += f
            if any(net.bottom_need_backward[i]):
                total += f
    return total


# --- timing -------------------------------------------------------------------------------

def scaled_repeats(cfg, fn):
    """More runs for quick workloads (under 60 ms), whose medians move most with other
    activity on the machine: 3 x --repeats."""
    fn()  # the first call allocates
    t0 = time.perf_counter()
    fn()
    return cfg.repeats * 3 if time.perf_counter() - t0 < 0.06 else cfg.repeats


def interleaved(fns, repeats, warmup, rounds=None):
    """Median and min seconds of each callable over `repeats` timed runs.

    The runs come in blocks: per round, each callable runs `warmup` untimed times and then
    its share of the timed runs back to back (2 by default), before the next callable's
    block.  Back to back
    is how a training loop runs, and it keeps one library's idle threads from disturbing the
    other: PyTorch's OpenMP workers spin for a while after each call and take a core from
    whatever runs next (a 4.5 ms caffe-lite layer took 7 ms right after a PyTorch call),
    while a pause between calls lets idle virtual CPUs halt and wake up slowly (the same
    layer took 6 ms after a 20 ms sleep).  Several rounds spread slow drifts of other load on
    the machine over both sides."""
    rounds = max(1, min(rounds or (repeats + 1) // 2, repeats))
    per_round = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    times = [[] for _ in fns]
    for r, n in enumerate(per_round):
        for f, t in zip(fns, times):
            for _ in range(max(1, warmup) if r == 0 else 1):  # then one untimed run per block
                f()
            for _ in range(n):
                t0 = time.perf_counter()
                f()
                t.append(time.perf_counter() - t0)
    return [(float(np.median(t)), float(np.min(t))) for t in times]


def _result(name, ours, theirs, work=None, unit=None, extra=None):
    r = {"name": name,
         "caffe_lite_ms": 1e3 * ours[0], "torch_ms": None if theirs is None else 1e3 * theirs[0],
         "caffe_lite_min_ms": 1e3 * ours[1],
         "torch_min_ms": None if theirs is None else 1e3 * theirs[1]}
    r["ratio"] = None if theirs is None else ours[0] / theirs[0]
    if work is not None:
        r["work"] = work
        r["work_unit"] = unit
        r["caffe_lite_rate"] = work / ours[0] / 1e9
        r["torch_rate"] = None if theirs is None else work / theirs[0] / 1e9
    if extra:
        r.update(extra)
    return r


def _inputs(net, seed=0):
    rng = np.random.default_rng(seed)
    data = net.blobs["data"]
    out = {"data": rng.standard_normal(data.shape, dtype=np.float32)}
    if "label" in net.blobs:
        classes = next(l.channels for l in reversed(net.layers) if l.type == "SoftmaxWithLoss")
        out["label"] = rng.integers(0, classes, net.blobs["label"].shape).astype(np.float32)
    return out


def _feed(net, inputs):
    for k, v in inputs.items():
        net.blobs[k].data[...] = v


class TorchSide:
    """The PyTorch translation of a net and its inputs, or None when torch is missing."""

    def __init__(self, net, inputs, threads):
        try:
            import torch
        except ImportError:
            self.torch = None
            return
        from . import torch_net
        self.torch = torch
        torch.set_num_threads(threads)
        self.model = torch_net.translate(net)
        self.model.train()
        self.x = {k: torch.from_numpy(v.copy()) for k, v in inputs.items()}
        self.data = self.x[self.model.inputs[0]]

    def forward(self):
        with self.torch.no_grad():
            self.model.loss(**self.x)

    def forward_backward(self):
        self.model.zero_grad(set_to_none=True)
        self.data.requires_grad_(True)
        self.data.grad = None
        self.model.loss(**self.x).backward()


def parity(net_param):
    """Check once that the net and its PyTorch translation agree numerically (loss, input
    gradient, every weight gradient; torch_net.check_parity).  Returns {"ok", "max_error",
    "torch_float32_error"} (None without torch); a mismatch is reported, not raised, so that
    the run still shows the timings."""
    try:
        from . import torch_net
    except ImportError:
        return None
    net = caffe.Net(net_param)
    torch_net.randomize_affine(net)
    inputs = _inputs(net, seed=1)
    tnet = torch_net.translate(net)
    try:
        errors = torch_net.check_parity(net, tnet, inputs)
    except AssertionError as exc:
        print(f"  PARITY CHECK FAILED: {exc}", flush=True)
        return {"ok": False, "message": str(exc)}
    return {"ok": True, "max_error": max(e for e, _ in errors.values()),
            "torch_float32_error": max(e for _, e in errors.values())}


# --- cases --------------------------------------------------------------------------------

def net_case(name, net_param, backward, cfg):
    """Forward (or forward + backward) of a whole TRAIN net, input gradient included."""
    net = caffe.Net(net_param)
    inputs = _inputs(net)
    _feed(net, inputs)
    side = TorchSide(net, inputs, cfg.threads)

    def ours():
        net.forward_from_to()
        if backward:
            net.backward_from_to()
    fns = [ours]
    if side.torch is not None:
        fns.append(side.forward_backward if backward else side.forward)
    times = interleaved(fns, scaled_repeats(cfg, ours), cfg.warmup)
    return _result(name, times[0], times[1] if len(times) > 1 else None,
                   net_flops(net, backward), "FLOP")


def _solver_param(net_param):
    sp = caffe_pb2.SolverParameter()
    text = (nets.MODELS / "bvlc_mnist" / "lenet_solver.prototxt").read_text()
    from google.protobuf import text_format
    text_format.Parse(text, sp)
    sp.ClearField("net")
    sp.ClearField("test_iter")
    sp.ClearField("test_interval")
    sp.net_param.CopyFrom(net_param)
    sp.display = 0
    sp.snapshot = 0
    sp.snapshot_after_train = False
    sp.max_iter = 10 ** 9
    return sp


def _torch_optimizer(side, net):
    """SGD with the solver's momentum and decay, each parameter's lr_mult / decay_mult."""
    import torch
    sp = _solver_param(caffe_pb2.NetParameter())
    from .torch_net import param_groups
    groups = param_groups(net, side.model, sp.base_lr, sp.weight_decay)
    return torch.optim.SGD(groups, lr=sp.base_lr, momentum=sp.momentum)


def _step_variants(net_param, cfg, masked):
    """(caffe-lite step, PyTorch step or None) for a LeNet-solver training step.

    masked: None -> as built (every prunable weight has a mask of ones); "none" -> masks
    removed; a float p -> a fraction p of each prunable weight pruned (masks in caffe-lite,
    torch.nn.utils.prune masks in PyTorch)."""
    solver = caffe.SGDSolver(_solver_param(net_param))
    net = solver.net
    inputs = _inputs(net)
    _feed(net, inputs)
    rng = np.random.default_rng(2)
    pruned = []
    for layer in net.layers:
        if layer.prunable and layer.blobs:
            w = layer.blobs[0]
            if masked == "none":
                w.mask = None
            elif masked is not None:
                keep = rng.random(w.shape) >= masked
                w.data[...] *= keep
                w.mask = keep
                pruned.append((layer.name, keep))
    side = TorchSide(net, inputs, cfg.threads)
    if side.torch is None:
        return (lambda: solver.step(1)), None, net
    opt = _torch_optimizer(side, net)
    if pruned:
        import torch
        from torch.nn.utils import prune
        from .torch_net import module_for
        for lname, keep in pruned:
            prune.custom_from_mask(module_for(side.model, lname), "weight",
                                   torch.from_numpy(keep.astype(np.float32)))

    def theirs():
        opt.zero_grad(set_to_none=True)
        side.model.loss(**side.x).backward()
        opt.step()
    return (lambda: solver.step(1)), theirs, net


def train_step_case(name, net_param, cfg, masked=None):
    """One solver iteration (LeNet's SGD solver: forward, backward, update) in caffe-lite;
    zero_grad / forward / backward / optimizer.step in PyTorch."""
    ours, theirs, net = _step_variants(net_param, cfg, masked)
    fns = [ours] + ([theirs] if theirs else [])
    times = interleaved(fns, scaled_repeats(cfg, ours), cfg.warmup)
    # The products of a step: forward, weight gradients, and input gradients below layer 1.
    return _result(name, times[0], times[1] if len(times) > 1 else None,
                   net_flops(net, True), "FLOP")


def masked_step_case(net_param, cfg, label):
    """Training steps without masks and with 50% pruned masks, all four variants (two per
    library) measured in one interleaved run so that they see the same machine."""
    plain = _step_variants(net_param, cfg, "none")
    half = _step_variants(net_param, cfg, 0.5)
    fns = [plain[0], half[0]] + ([plain[1], half[1]] if plain[1] else [])
    times = interleaved(fns, scaled_repeats(cfg, plain[0]), cfg.warmup)
    flops = net_flops(plain[2], True)
    t_plain = times[2] if len(times) > 2 else None
    t_half = times[3] if len(times) > 2 else None
    a = _result(f"{label} step, no masks", times[0], t_plain, flops, "FLOP")
    b = _result(f"{label} step, 50% pruned masks", times[1], t_half, flops, "FLOP")
    b["overhead_vs_unmasked"] = times[1][0] / times[0][0] - 1
    if t_plain:
        b["torch_overhead_vs_unmasked"] = t_half[0] / t_plain[0] - 1
    return [a, b]


def update_only_case(net_param, cfg, label):
    """solver.apply_update() alone (clip / normalise / decay / momentum / data -= diff),
    without masks and with 50% pruned masks, interleaved."""
    def make(masked):
        solver = caffe.SGDSolver(_solver_param(net_param))
        rng = np.random.default_rng(3)
        for layer in solver.net.layers:
            if layer.prunable and layer.blobs:
                w = layer.blobs[0]
                if masked:
                    keep = rng.random(w.shape) >= 0.5
                    w.data[...] *= keep
                    w.mask = keep
                else:
                    w.mask = None
        for p in solver.net.learnable_params:
            p.diff[...] = rng.standard_normal(p.shape, dtype=np.float32) * np.float32(1e-3)
        return solver
    plain, masked = make(False), make(True)
    times = interleaved([plain.apply_update, masked.apply_update], cfg.repeats * 3, cfg.warmup)
    nbytes = sum(p.count for p in plain.net.learnable_params) * 4
    a = _result(f"{label} apply_update, no masks", times[0], None,
                extra={"param_bytes": nbytes})
    b = _result(f"{label} apply_update, 50% pruned masks", times[1], None,
                extra={"param_bytes": nbytes})
    b["overhead_vs_unmasked"] = times[1][0] / times[0][0] - 1
    return [a, b]


def depthwise_case(cfg, batch=8):
    """The 13 depthwise 3x3 layers of MobileNet-v1 (224x224), forward + backward (input and
    weight gradients), each alone; work = the bytes a pass must move at least (read x, write
    y; read x and dy, write dx)."""
    import_torch = True
    try:
        import torch
        import torch.nn.functional as F
        torch.set_num_threads(cfg.threads)
    except ImportError:
        import_torch = False
    layers, total = [], [0.0, 0.0, 0.0, 0.0]
    shapes = nets.MOBILENET_V1_DEPTHWISE if not cfg.quick else nets.MOBILENET_V1_DEPTHWISE[::4]
    for c, size, stride in shapes:
        net = caffe.Net(nets.depthwise_layer(batch, c, size, stride))
        rng = np.random.default_rng(0)
        x = rng.standard_normal(net.blobs["data"].shape, dtype=np.float32)
        net.blobs["data"].data[...] = x
        top = net.blobs["dw"]
        net.forward_from_to()
        dy = rng.standard_normal(top.shape, dtype=np.float32)
        top.diff[...] = dy
        w = net.params["dw"][0]

        def ours():
            net.forward_from_to()
            net.backward_from_to()
        fns = [ours]
        if import_torch:
            tx = torch.from_numpy(x.copy())
            tw = torch.from_numpy(w.data.copy()).requires_grad_(True)
            tdy = torch.from_numpy(dy)

            def theirs():
                tx.requires_grad_(True)
                tx.grad = None
                tw.grad = None
                F.conv2d(tx, tw, None, stride, 1, 1, c).backward(tdy)
            fns.append(theirs)
        times = interleaved(fns, scaled_repeats(cfg, ours), cfg.warmup)
        nbytes = 4 * (3 * x.size + 2 * dy.size)
        r = _result(f"dw {c}x{size}x{size} s{stride}", times[0],
                    times[1] if len(times) > 1 else None, nbytes, "B")
        layers.append(r)
        total[0] += times[0][0]
        total[1] += times[1][0] if len(times) > 1 else 0
        total[2] += nbytes
    theirs = (total[1], total[1]) if import_torch else None
    res = _result(f"depthwise 3x3 x{len(shapes)}, batch {batch}, fwd+bwd", (total[0], total[0]),
                  theirs, total[2], "B", extra={"layers": layers})
    res.pop("caffe_lite_min_ms")
    res.pop("torch_min_ms")
    return res


CASES = {}


def case(name, quick=True):
    def deco(fn):
        CASES[name] = (fn, quick)
        return fn
    return deco


@case("lenet_train_step")
def _lenet_step(cfg):
    r = train_step_case("LeNet b64 train step (fwd+bwd+SGD)", nets.lenet(64), cfg)
    r["parity"] = parity(nets.lenet(64))
    return [r]


@case("mobilenet_v1")
def _mobilenet_v1(cfg):
    out = []
    for batch in ((1,) if cfg.quick else (1, 8)):
        p = nets.mobilenet_v1(batch)
        err = parity(nets.mobilenet_v1(batch if batch > 1 else 2))
        for backward in (False, True):
            what = "fwd+bwd" if backward else "fwd"
            r = net_case(f"MobileNet-v1 b{batch} {what}", p, backward, cfg)
            r["parity"] = err
            out.append(r)
    return out


@case("mobilenet_v2", quick=False)
def _mobilenet_v2(cfg):
    p = nets.mobilenet_v2(8)
    err = parity(nets.mobilenet_v2(2))
    out = []
    for backward in (False, True):
        r = net_case(f"MobileNet-v2 b8 {'fwd+bwd' if backward else 'fwd'}", p, backward, cfg)
        r["parity"] = err
        out.append(r)
    return out


@case("resnext_block")
def _resnext(cfg):
    p = nets.resnext_block(8)
    r = net_case("ResNeXt block (3x3 group 32) b8 fwd+bwd", p, True, cfg)
    r["parity"] = parity(nets.resnext_block(2))
    return [r]


@case("depthwise")
def _depthwise(cfg):
    return [depthwise_case(cfg)]


@case("masked_update")
def _masked(cfg):
    p = nets.lenet(64)
    rows = masked_step_case(p, cfg, "LeNet b64")
    upd = update_only_case(p, cfg, "LeNet")
    upd[1]["overhead_of_step"] = (upd[1]["caffe_lite_ms"] - upd[0]["caffe_lite_ms"]) \
        / rows[0]["caffe_lite_ms"]
    if not cfg.quick:
        rows += masked_step_case(nets.mobilenet_v1(8), cfg, "MobileNet-v1 b8")
    return rows + upd
