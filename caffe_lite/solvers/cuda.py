"""Fused GPU updates for the six solvers (kernels in solvers/kernels/solvers.cu).

`apply_update_gpu(solver, rate)` is the GPU form of Solver.apply_update after the learning
rate is known: gradient clipping (global L2 norm summed on the device), iter_size
normalisation, L1/L2 weight decay, the mask, the solver's history update and step, and
`data = (data - step) * mask` -- one kernel per parameter blob, so Net.update() is not called
(diff is left holding the step, as Caffe leaves it).  Pruned entries keep data 0 and history 0.

The history lives on the device while training runs there (GPUArrays beside the host arrays
`solver.history`).  `sync_history_to_host(solver)` copies it back when the device copy is the
newer one and makes the host arrays authoritative again (the next GPU update re-uploads
them): call it before anything reads or writes `solver.history` on the host (snapshot,
restore, the CPU update path, pruning).

Imports PyCUDA only when a GPU update runs."""
import logging
import math

import numpy as np

log = logging.getLogger("caffe_lite")

# solver type -> (kernel, names of the solver parameters it takes after `rate`)
KERNELS = {
    "SGD": ("sgd_update", ("momentum",)),
    "Nesterov": ("nesterov_update", ("momentum",)),
    "AdaGrad": ("adagrad_update", ("delta",)),
    "RMSProp": ("rmsprop_update", ("rms_decay", "delta")),
    "AdaDelta": ("adadelta_update", ("momentum", "delta")),
    "Adam": ("adam_update", ("momentum", "momentum2", "delta")),
}


def has_fused_update(solver):
    return solver.type in KERNELS


class _DeviceHistory:
    def __init__(self, solver):
        from ..backend import gpu
        self.arrays = [gpu.empty(max(h.size, 1)) for h in solver.history]
        self.shapes = [h.shape for h in solver.history]
        self.device_newer = False
        self.upload(solver)

    def upload(self, solver):
        for arr, h in zip(self.arrays, solver.history):
            if h.size:
                arr[:h.size].set(np.ascontiguousarray(h, np.float32).ravel())
        self.host_newer = False

    def matches(self, solver):
        return self.shapes == [h.shape for h in solver.history]


def _device_history(solver):
    dh = getattr(solver, "_gpu_history", None)
    if dh is None or not dh.matches(solver):
        dh = solver._gpu_history = _DeviceHistory(solver)
    elif dh.host_newer:
        dh.upload(solver)
    return dh


def sync_history_to_host(solver):
    """Make `solver.history` (host) current and authoritative; a no-op when no GPU update
    has run.  Never imports PyCUDA unless a device history exists."""
    dh = getattr(solver, "_gpu_history", None)
    if dh is None:
        return
    if dh.device_newer:
        for arr, h in zip(dh.arrays, solver.history):
            if h.size:
                h[...] = arr[:h.size].get().reshape(h.shape)
        dh.device_newer = False
    dh.host_newer = True


def _fmt(x):
    return f"{float(x):.6g}"


def clip_scale(solver):
    """Caffe's ClipGradients on the device: the factor to multiply every diff by (1.0 when
    clipping is off or not needed).  Synchronises (the norm is read back)."""
    clip = solver.param.clip_gradients
    if clip < 0:
        return 1.0
    from ..backend import gpu, ops
    from ..layers.cuda.common import diff
    params = solver.net.learnable_params
    norms = gpu.zeros(max(len(params), 1), np.float64)
    base = gpu.ptr(norms)
    for i, p in enumerate(params):
        d = diff(p)
        ops.sum_to(p.count, d, out_d=base + 8 * i, b=d)
    norm = math.sqrt(float(norms.get()[:len(params)].sum()))
    if norm > clip:
        factor = clip / norm
        log.info("Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale "
                 "factor %s", _fmt(norm), _fmt(clip), _fmt(factor))
        return factor
    return 1.0


def update_args(solver, i, rate):
    """(kernel name, scalar arguments after the pointers data/diff/mask, history count) for
    parameter i: the numbers the CPU path would use, as float32 / int32."""
    p = solver.param
    name, fields = KERNELS[solver.type]
    decay = p.weight_decay * solver.net.params_weight_decay[i]
    reg = 0 if not decay else (1 if p.regularization_type == "L2" else 2)
    local = solver.local_rate(i, rate)
    if solver.type == "Adam":
        step = solver.iter + 1
        b1, b2 = np.float32(p.momentum), np.float32(p.momentum2)
        correction = math.sqrt(1.0 - float(b2) ** step) / (1.0 - float(b1) ** step)
        local = np.float32(local * correction)
    extra = tuple(np.float32(getattr(p, f)) for f in fields)
    norm = np.float32(1.0 / p.iter_size) if p.iter_size != 1 else np.float32(1)
    return name, (norm, np.float32(decay), np.int32(reg), np.float32(local)) + extra


def apply_update_gpu(solver, rate):
    """The whole parameter update on the device (see the module docstring)."""
    from ..backend.kernels import function, launch_1d
    from ..backend import gpu
    from ..layers.cuda.common import mask, mdata, mdiff
    if not has_fused_update(solver):
        raise ValueError(f"no fused GPU update for solver type {solver.type!r}")
    dh = _device_history(solver)
    factor = np.float32(clip_scale(solver))
    params = solver.net.learnable_params
    n_params = len(params)
    per = len(solver.history) // max(n_params, 1)
    for i, blob in enumerate(params):
        name, scalars = update_args(solver, i, rate)
        hist = tuple(gpu.ptr(dh.arrays[i + k * n_params]) for k in range(per))
        sig = "iPPPfffif" + "f" * (len(scalars) - 4) + "P" * per
        fn = function("solvers", name, sig)
        norm, decay, reg, local = scalars[:4]
        launch_1d(fn, blob.count, np.int32(blob.count), mdata(blob), mdiff(blob), mask(blob),
                  factor, norm, decay, reg, local, *scalars[4:], *hist)
    dh.device_newer = True


def try_apply_update_gpu(solver, rate):
    """The hook for Solver.apply_update, called once the learning rate is known: in GPU mode
    (with a fused kernel for this solver type) run the whole update on the device and return
    True -- the caller then skips its numpy update and Net.update().  Otherwise make the host
    history authoritative (a no-op unless the device has run updates) and return False."""
    from ..backend import state
    if state.mode() == state.GPU and has_fused_update(solver):
        apply_update_gpu(solver, rate)
        return True
    sync_history_to_host(solver)
    return False
