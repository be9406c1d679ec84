"""The fused GPU solver updates against the CPU solvers: every solver type, L2 and L1 decay,
clipping, iter_size, lr_mult / decay_mult, and masks (pruned weights and their history stay
exactly 0).  The whole small net (convolution, depthwise, BatchNorm, Scale, ReLU, Dropout,
InnerProduct, SoftmaxWithLoss) runs forward/backward on the device too.

Marked `gpu`: they skip without PyCUDA and a CUDA device (test_gpu_emulated.py runs them on a
CPU emulator of the kernels).  The non-gpu tests at the end check the pure-Python parts."""
import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.backend import gpu as gpu_backend
from caffe_lite.solvers import SOLVERS, get_solver
from caffe_lite.solvers import cuda as solver_cuda

NET = """
net_param {
  name: "gpunet"
  layer { name: "in" type: "Input" top: "data" top: "label"
          input_param { shape { dim: 4 dim: 2 dim: 6 dim: 6 } shape { dim: 4 } } }
  layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
          param { lr_mult: 1 decay_mult: 1 }
          convolution_param { num_output: 4 kernel_size: 3 pad: 1 bias_term: false
                              weight_filler { type: "gaussian" std: 0.3 } } }
  layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
  layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
  layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
  layer { name: "dw" type: "Convolution" bottom: "conv" top: "dw"
          param { lr_mult: 0.5 }
          convolution_param { num_output: 4 group: 4 kernel_size: 3 stride: 2 bias_term: false
                              weight_filler { type: "gaussian" std: 0.3 } } }
  layer { name: "drop" type: "Dropout" bottom: "dw" top: "dw" dropout_param { dropout_ratio: 0.2 } }
  layer { name: "ip" type: "InnerProduct" bottom: "dw" top: "ip"
          param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
          inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 }
                                bias_filler { type: "constant" value: 0.1 } } }
  layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
}
"""
PRUNABLE = ("conv", "dw", "ip")


def _model(tmp_path):
    caffe.set_mode_cpu()
    caffe.set_random_seed(3)
    s = get_solver('type: "SGD" base_lr: 0.1 lr_policy: "fixed"' + NET)
    g = np.random.default_rng(4)
    for name in PRUNABLE:
        w = s.net.params[name][0]
        w.data[...] *= g.uniform(size=w.shape) > 0.5
        w.mask_from_data()  # the .masks sidecar saved with the model keeps these masks
    path = tmp_path / "pruned.caffemodel"
    s.net.save(str(path))
    return path


def _solver_text(kind, reg, clip, iter_size):
    extra = {"SGD": "momentum: 0.9", "Nesterov": "momentum: 0.9", "AdaGrad": "delta: 1e-6",
             "RMSProp": "rms_decay: 0.9 delta: 1e-6", "AdaDelta": "momentum: 0.95 delta: 1e-6",
             "Adam": "momentum: 0.9 momentum2: 0.999 delta: 1e-8"}[kind]
    lr = {"AdaDelta": 1.0, "SGD": 0.05, "Nesterov": 0.05}.get(kind, 0.01)
    return (f'type: "{kind}" base_lr: {lr} lr_policy: "step" gamma: 0.5 stepsize: 2 {extra} '
            f'weight_decay: 0.01 regularization_type: "{reg}" iter_size: {iter_size} '
            f'clip_gradients: {clip} random_seed: 7 display: 0 snapshot_after_train: false' + NET)


def _train(text, model, device, steps):
    caffe.set_mode_cpu()
    s = get_solver(text, weights=str(model))
    g = np.random.default_rng(5)
    s.net.blobs["data"].data[...] = g.normal(size=(4, 2, 6, 6))
    s.net.blobs["label"].data[...] = g.integers(0, 3, 4)
    if device == "gpu":
        caffe.set_mode_gpu()
    losses = []
    for _ in range(steps):
        s.net.clear_param_diffs()
        loss = 0.0
        for _ in range(s.param.iter_size):
            loss += s.net.forward_backward()
        losses.append(loss)
        if device == "gpu":
            solver_cuda.apply_update_gpu(s, s.get_learning_rate())
        else:
            s.apply_update()
        s.iter += 1
    if device == "gpu":
        solver_cuda.sync_history_to_host(s)
    caffe.set_mode_cpu()
    return s, losses


@pytest.fixture
def need_gpu():
    ok, reason = gpu_backend.available()
    if not ok:
        pytest.skip(f"needs PyCUDA and a CUDA device: {reason}")
    yield
    caffe.set_mode_cpu()


@pytest.mark.gpu
@pytest.mark.parametrize("kind", sorted(SOLVERS))
@pytest.mark.parametrize("reg,clip,iter_size", [("L2", -1, 1), ("L1", 0.5, 2)])
def test_fused_update_matches_cpu(need_gpu, tmp_path, kind, reg, clip, iter_size):
    model = _model(tmp_path)
    text = _solver_text(kind, reg, clip, iter_size)
    cpu, cpu_losses = _train(text, model, "cpu", 4)
    gpu, gpu_losses = _train(text, model, "gpu", 4)
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-4)
    for name, blobs in cpu.net.params.items():
        for i, b in enumerate(blobs):
            other = gpu.net.params[name][i]
            np.testing.assert_allclose(other.cpu_data, b.cpu_data, rtol=1e-4, atol=1e-6,
                                       err_msg=f"{kind} {name}[{i}] data")
            if i < len(cpu.net.layer_dict[name].param_propagate_down) and \
                    cpu.net.layer_dict[name].param_propagate_down[i]:
                np.testing.assert_allclose(other.cpu_diff, b.cpu_diff, rtol=1e-3, atol=1e-6,
                                           err_msg=f"{kind} {name}[{i}] diff (the step)")
    for k, (hc, hg) in enumerate(zip(cpu.history, gpu.history)):
        np.testing.assert_allclose(hg, hc, rtol=1e-3, atol=1e-7, err_msg=f"{kind} history {k}")
    # pruned weights stay exactly 0, and so does their history
    n = len(gpu.net.learnable_params)
    for name in PRUNABLE:
        w = gpu.net.params[name][0]
        pruned = w.cpu_mask == 0
        assert pruned.mean() > 0.3
        assert np.all(w.cpu_data[pruned] == 0)
        i = next(j for j, p in enumerate(gpu.net.learnable_params) if p is w)
        for k in range(len(gpu.history) // n):
            assert np.all(gpu.history[i + k * n][pruned] == 0), f"{kind} history of {name}"


@pytest.mark.gpu
def test_history_round_trip_between_host_and_device(need_gpu, tmp_path):
    model = _model(tmp_path)
    text = _solver_text("Adam", "L2", -1, 1)
    s, _ = _train(text, model, "gpu", 2)
    before = [h.copy() for h in s.history]
    assert any(np.abs(h).sum() > 0 for h in before)
    # the host is authoritative after a sync: a change there reaches the device
    s.history[0][...] = 0
    caffe.set_mode_gpu()
    s.net.clear_param_diffs()
    s.net.forward_backward()
    solver_cuda.apply_update_gpu(s, s.get_learning_rate())
    solver_cuda.sync_history_to_host(s)
    caffe.set_mode_cpu()
    w = s.net.learnable_params[0]
    g = w.cpu_diff  # the step; m restarted from 0 for param 0 only
    assert np.abs(s.history[0]).sum() > 0 and not np.allclose(s.history[0], before[0])
    assert g.shape == w.shape


# --- pure-Python parts (always run) ---------------------------------------------------------------
def test_update_arguments_follow_the_cpu_numbers():
    text = _solver_text("Adam", "L1", -1, 2)
    caffe.set_mode_cpu()
    s = get_solver(text)
    s.iter = 3
    params = s.net.learnable_params
    # conv weight: lr_mult 1, decay_mult 1; ip bias (the last): lr_mult 2, decay_mult 0
    name, scalars = solver_cuda.update_args(s, 0, 0.01)
    assert name == "adam_update"
    norm, decay, reg, rate, b1, b2, eps = scalars
    assert norm == np.float32(0.5) and decay == np.float32(0.01) and reg == 2
    correction = np.sqrt(1 - float(np.float32(0.999)) ** 4) / (1 - float(np.float32(0.9)) ** 4)
    assert rate == pytest.approx(0.01 * correction, rel=1e-6)
    assert (b1, b2, eps) == (np.float32(0.9), np.float32(0.999), np.float32(1e-8))
    _, (_, decay_b, reg_b, rate_b, *_) = solver_cuda.update_args(s, len(params) - 1, 0.01)
    assert decay_b == 0 and reg_b == 0 and rate_b == pytest.approx(0.02 * correction, rel=1e-6)
    assert len(params) == 9 and len(s.history) == 18  # BatchNorm's statistics included (lr 0)


def test_every_solver_has_a_fused_kernel():
    import re
    from caffe_lite.backend.kernels import source_path
    source = source_path("solvers").read_text()
    for kind, (name, fields) in solver_cuda.KERNELS.items():
        assert kind in SOLVERS
        m = re.search(rf"void {name}\(([^)]*)\)", source)
        assert m, name
        params = [p.split()[-1] for p in m.group(1).split(",")]
        # data, diff, mask, clip, norm, decay, reg, rate, the solver's fields, the histories
        assert len(params) == 9 + len(fields) + SOLVERS[kind].history_per_param
    assert set(solver_cuda.KERNELS) == set(SOLVERS)


def test_sync_without_a_device_history_is_a_no_op():
    caffe.set_mode_cpu()
    s = get_solver(_solver_text("SGD", "L2", -1, 1))
    solver_cuda.sync_history_to_host(s)  # must not import PyCUDA or fail
    assert not hasattr(s, "_gpu_history")


# --- the hooks proposed for solver.py and net.py, applied here by monkeypatching ------------------
def _hooked(monkeypatch):
    """Solver / Net with the GPU hooks (the small edits docs/gpu.md lists for solver.py and
    net.py), so Solver.step, snapshot and restore run the device path."""
    from caffe_lite.backend import ops, state
    from caffe_lite.net import Net
    from caffe_lite.solvers.solver import Solver
    orig_apply, orig_snapshot, orig_restore = Solver.apply_update, Solver.snapshot, Solver.restore
    orig_clear = Net.clear_param_diffs

    def apply_update(self):
        if state.mode() != state.GPU:
            solver_cuda.sync_history_to_host(self)
            return orig_apply(self)
        rate = self.get_learning_rate()
        assert solver_cuda.try_apply_update_gpu(self, rate)

    def snapshot(self):
        solver_cuda.sync_history_to_host(self)
        return orig_snapshot(self)

    def restore(self, state_file):
        solver_cuda.sync_history_to_host(self)
        return orig_restore(self, state_file)

    def clear_param_diffs(self):
        if state.mode() == state.GPU:
            ops.zero_diffs(self.learnable_params)
            return
        orig_clear(self)
    monkeypatch.setattr(Solver, "apply_update", apply_update)
    monkeypatch.setattr(Solver, "snapshot", snapshot)
    monkeypatch.setattr(Solver, "restore", restore)
    monkeypatch.setattr(Net, "clear_param_diffs", clear_param_diffs)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["Nesterov", "Adam"])
def test_step_snapshot_restore_through_the_hooks(need_gpu, tmp_path, monkeypatch, kind):
    model = _model(tmp_path)
    text = (_solver_text(kind, "L2", -1, 1).replace('lr_policy: "step"', 'lr_policy: "fixed"')
            + f' snapshot_prefix: "{tmp_path}/snap/run"')

    def fresh():
        caffe.set_mode_cpu()
        s = get_solver(text, weights=str(model))
        g = np.random.default_rng(5)
        s.net.blobs["data"].data[...] = g.normal(size=(4, 2, 6, 6))
        s.net.blobs["label"].data[...] = g.integers(0, 3, 4)
        return s
    cpu = fresh()
    cpu.step(4)
    _hooked(monkeypatch)
    a = fresh()
    caffe.set_mode_gpu()
    a.step(2)
    assert a._gpu_history.device_newer
    a.snapshot()
    b = fresh()
    caffe.set_mode_gpu()
    b.restore(str(tmp_path / "snap" / "run_iter_2.solverstate"))
    b.step(2)
    solver_cuda.sync_history_to_host(b)
    caffe.set_mode_cpu()
    for pc, pg in zip(cpu.net.learnable_params, b.net.learnable_params):
        np.testing.assert_allclose(pg.cpu_data, pc.cpu_data, rtol=2e-4, atol=1e-6)
    for hc, hg in zip(cpu.history, b.history):
        np.testing.assert_allclose(hg, hc, rtol=2e-3, atol=1e-7)
