"""Solvers: Caffe's update rules by hand, lr policies, snapshots, masks, errors, logs."""
import logging
import math

import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.errors import CaffeLiteError, NumericalError, SolverError
from caffe_lite.solvers import SOLVERS, get_solver
from caffe_lite.solvers.lr_policy import learning_rate
from caffe_lite.proto import caffe_pb2

TINY_NET = """
net_param {
  name: "tiny"
  layer { name: "in" type: "Input" top: "x" top: "y"
          input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 1 } } }
  layer { name: "ip" type: "InnerProduct" bottom: "x" top: "z"
          inner_product_param { num_output: 1 weight_filler { type: "constant" value: 1 } } }
  layer { name: "loss" type: "EuclideanLoss" bottom: "z" bottom: "y" top: "loss" }
}
"""


def _solver(kind, extra="", net=TINY_NET):
    text = f'type: "{kind}" base_lr: 0.1 lr_policy: "fixed" display: 0 snapshot_after_train: false\n' \
           + extra + net
    return get_solver(text)


GRADS = [np.array([[0.5, -1.0, 2.0]], np.float32), np.array([[0.25, 0.5, -1.0]], np.float32),
         np.array([[1.0, 0.0, -0.5]], np.float32)]


def _run_updates(solver, grads=GRADS):
    w = solver.net.params["ip"][0]
    out = []
    for g in grads:
        solver.net.clear_param_diffs()
        w.diff[...] = g
        solver.apply_update()
        solver.iter += 1
        out.append(w.data.copy())
    return out


def test_sgd_by_hand():
    s = _solver("SGD", "momentum: 0.9")
    ws = _run_updates(s)
    # h1 = 0.1 g1 = [0.05, -0.1, 0.2]; w1 = 1 - h1
    np.testing.assert_allclose(ws[0], [[0.95, 1.1, 0.8]], rtol=1e-6)
    # h2 = 0.9 h1 + 0.1 g2 = [0.07, -0.04, 0.08]
    np.testing.assert_allclose(ws[1], [[0.88, 1.14, 0.72]], rtol=1e-6)


def test_nesterov_by_hand():
    s = _solver("Nesterov", "momentum: 0.9")
    ws = _run_updates(s)
    # h1 = 0.1 g1; step1 = 1.9 h1 - 0.9 * 0 = [0.095, -0.19, 0.38]
    np.testing.assert_allclose(ws[0], [[0.905, 1.19, 0.62]], rtol=1e-6)
    h1 = 0.1 * GRADS[0]
    h2 = 0.9 * h1 + 0.1 * GRADS[1]
    step2 = 1.9 * h2 - 0.9 * h1
    np.testing.assert_allclose(ws[1], ws[0] - step2, rtol=1e-6)


def test_adagrad_by_hand():
    s = _solver("AdaGrad", "delta: 1e-8")
    ws = _run_updates(s)
    # first step: 0.1 * g / (|g| + 1e-8) = 0.1 * sign(g)
    np.testing.assert_allclose(ws[0], [[0.9, 1.1, 0.9]], rtol=1e-6)
    h = GRADS[0].astype(np.float64) ** 2 + GRADS[1] ** 2
    step2 = 0.1 * GRADS[1] / (np.sqrt(h) + 1e-8)
    np.testing.assert_allclose(ws[1], ws[0] - step2, rtol=1e-6)


def test_rmsprop_by_hand():
    s = _solver("RMSProp", "rms_decay: 0.98 delta: 1e-8")
    ws = _run_updates(s)
    h1 = 0.02 * GRADS[0].astype(np.float64) ** 2
    w1 = 1 - 0.1 * GRADS[0] / (np.sqrt(h1) + 1e-8)
    np.testing.assert_allclose(ws[0], w1, rtol=1e-5)
    # |g| / sqrt(0.02 g^2) = 1/sqrt(0.02) = 7.0711 -> w = 1 -+ 0.70711
    np.testing.assert_allclose(ws[0], [[1 - 0.707107, 1 + 0.707107, 1 - 0.707107]], rtol=1e-5)
    h2 = 0.98 * h1 + 0.02 * GRADS[1] ** 2
    np.testing.assert_allclose(ws[1], ws[0] - 0.1 * GRADS[1] / (np.sqrt(h2) + 1e-8), rtol=1e-5)


def test_adadelta_by_hand():
    s = _solver("AdaDelta", "momentum: 0.95 delta: 1e-6", ).__class__
    s = _solver("AdaDelta", "momentum: 0.95 delta: 1e-6")
    s.param.base_lr = 1.0
    ws = _run_updates(s)
    rho, eps = 0.95, 1e-6
    hg = np.zeros(3)
    hu = np.zeros(3)
    w = np.ones(3)
    for k, g in enumerate(GRADS):
        g = g.ravel().astype(np.float64)
        hg = rho * hg + (1 - rho) * g * g
        u = g * np.sqrt((hu + eps) / (hg + eps))
        hu = rho * hu + (1 - rho) * u * u
        w = w - u
        np.testing.assert_allclose(ws[k].ravel(), w, rtol=1e-5)
    # first step by hand: u1 = g * sqrt(1e-6 / (0.05 g^2 + 1e-6)); for g = 0.5: 0.5*sqrt(1e-6/0.0125)
    assert ws[0][0, 0] == pytest.approx(1 - 0.5 * math.sqrt(1e-6 / (0.0125 + 1e-6)), rel=1e-5)


def test_adam_by_hand():
    s = _solver("Adam", "momentum: 0.9 momentum2: 0.999 delta: 1e-8")
    ws = _run_updates(s)
    # t=1: m = 0.1 g, v = 0.001 g^2, correction = sqrt(0.001)/0.1 -> step = 0.1 * sign(g)
    np.testing.assert_allclose(ws[0], [[0.9, 1.1, 0.9]], rtol=1e-5)
    m = 0.1 * GRADS[0].astype(np.float64)
    v = 0.001 * GRADS[0].astype(np.float64) ** 2
    m = 0.9 * m + 0.1 * GRADS[1]
    v = 0.999 * v + 0.001 * GRADS[1] ** 2.0
    corr = math.sqrt(1 - 0.999 ** 2) / (1 - 0.9 ** 2)
    np.testing.assert_allclose(ws[1], ws[0] - 0.1 * corr * m / (np.sqrt(v) + 1e-8), rtol=1e-5)


def test_weight_decay_l2_l1_lr_mult_and_clipping():
    s = _solver("SGD", "weight_decay: 0.5")
    w = s.net.params["ip"][0]
    w.data[...] = [[2.0, -1.0, 0.0]]
    _run_updates(s, [np.zeros((1, 3), np.float32)])
    np.testing.assert_allclose(w.data, [[2 - 0.1, -1 + 0.05, 0]], rtol=1e-6)  # g += 0.5 w
    s = _solver("SGD", 'weight_decay: 0.5 regularization_type: "L1"')
    w = s.net.params["ip"][0]
    w.data[...] = [[2.0, -1.0, 0.0]]
    _run_updates(s, [np.zeros((1, 3), np.float32)])
    np.testing.assert_allclose(w.data, [[2 - 0.05, -1 + 0.05, 0]], rtol=1e-6)  # g += 0.5 sign
    s = _solver("SGD", "clip_gradients: 1.0")
    w = s.net.params["ip"][0]
    _run_updates(s, [np.array([[3.0, 4.0, 0.0]], np.float32)])  # norm 5 -> scaled to 1
    np.testing.assert_allclose(w.data, [[1 - 0.06, 1 - 0.08, 1]], rtol=1e-6)
    s = _solver("SGD", "", TINY_NET.replace('top: "z"', 'top: "z" param { lr_mult: 3 }'))
    w = s.net.params["ip"][0]
    _run_updates(s, [np.ones((1, 3), np.float32)])
    np.testing.assert_allclose(w.data, [[0.7, 0.7, 0.7]], rtol=1e-6)


def test_iter_size_averages_gradients():
    s1 = _solver("SGD", "random_seed: 1")
    s2 = _solver("SGD", "random_seed: 1 iter_size: 3")
    for s in (s1, s2):
        s.net.blobs["x"].data[...] = [[1, 2, 3], [4, 5, 6]]
        s.net.blobs["y"].data[...] = [[1], [2]]
        s.step(1)
    np.testing.assert_allclose(s1.net.params["ip"][0].data, s2.net.params["ip"][0].data,
                               rtol=1e-6)


@pytest.mark.parametrize("policy,extra,expect", [
    ("fixed", "", {0: 0.1, 1000: 0.1}),
    ("step", "gamma: 0.5 stepsize: 10", {0: 0.1, 9: 0.1, 10: 0.05, 25: 0.025}),
    ("exp", "gamma: 0.9", {0: 0.1, 1: 0.09, 3: 0.0729}),
    ("inv", "gamma: 0.0001 power: 0.75", {0: 0.1, 100: 0.1 * 1.01 ** -0.75,
                                         10000: 0.1 * 2 ** -0.75}),
    ("poly", "power: 2 max_iter: 100", {0: 0.1, 50: 0.025, 100: 0.0}),
    ("sigmoid", "gamma: -0.1 stepsize: 50", {50: 0.05, 0: 0.1 / (1 + math.exp(-5))}),
])
def test_lr_policies(policy, extra, expect):
    p = caffe_pb2.SolverParameter()
    from caffe_lite.io import parse_text
    parse_text(f'base_lr: 0.1 lr_policy: "{policy}" {extra}', p)
    for it, rate in expect.items():
        got, _ = learning_rate(p, it, 0)
        assert got == pytest.approx(rate, rel=1e-6), (policy, it)


def test_multistep_advances_one_step_per_call():
    p = caffe_pb2.SolverParameter(base_lr=1.0, lr_policy="multistep", gamma=0.1,
                                  stepvalue=[3, 5])
    step, rates = 0, []
    for it in range(7):
        r, step = learning_rate(p, it, step)
        rates.append(r)
    np.testing.assert_allclose(rates, [1, 1, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


# --- a small conv net with BatchNorm, for masks and snapshots --------------------------------
CONV_NET = """
net_param {
  name: "convnet"
  layer { name: "in" type: "Input" top: "data" top: "label"
          input_param { shape { dim: 8 dim: 1 dim: 6 dim: 6 } shape { dim: 8 } } }
  layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
          convolution_param { num_output: 4 kernel_size: 3
                              weight_filler { type: "gaussian" std: 0.3 } } }
  layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
  layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
  layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
  layer { name: "drop" type: "Dropout" bottom: "conv" top: "conv" dropout_param { dropout_ratio: 0.2 } }
  layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
          inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
  layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
}
"""


def _feed(solver, seed=5):
    g = np.random.default_rng(seed)
    solver.net.blobs["data"].data[...] = g.normal(size=(8, 1, 6, 6))
    solver.net.blobs["label"].data[...] = g.integers(0, 3, 8)


def _pruned_model(tmp_path, sparsity=0.8):
    caffe.set_random_seed(3)
    s = get_solver('type: "SGD" base_lr: 0.1 lr_policy: "fixed"' + CONV_NET)
    g = np.random.default_rng(4)
    for name in ("conv", "ip"):
        w = s.net.params[name][0]
        keep = np.ones(w.count, bool)
        keep[g.permutation(w.count)[:int(round(sparsity * w.count))]] = False
        w.data[...] *= keep.reshape(w.shape)
        w.mask = keep.reshape(w.shape)  # the sidecar saved with the model keeps these masks
    s.net.params["ip"][1].data[...] = 0  # zero biases must still learn
    path = tmp_path / "pruned.caffemodel"
    s.net.save(str(path))
    return path


@pytest.mark.parametrize("kind", sorted(SOLVERS))
def test_pruned_weights_stay_zero_through_every_solver(tmp_path, kind):
    model = _pruned_model(tmp_path)
    momentum = "momentum: 0.9" if kind in ("SGD", "Nesterov", "Adam", "AdaDelta") else ""
    lr = 0.01 if kind in ("SGD", "Nesterov") else 0.001
    if kind == "AdaDelta":
        lr = 1.0
    for reg in ("L2", "L1"):
        text = (f'type: "{kind}" base_lr: {lr} lr_policy: "fixed" {momentum} weight_decay: 0.01 '
                f'regularization_type: "{reg}" iter_size: 2 clip_gradients: 0.5 '
                f'random_seed: 7 display: 0' + CONV_NET)
        s = get_solver(text, weights=str(model))
        _feed(s)
        w0 = {n: s.net.params[n][0].data.copy() for n in ("conv", "ip")}
        b0 = s.net.params["ip"][1].data.copy()
        pruned = {n: w0[n] == 0 for n in w0}
        assert 0.75 < np.mean(pruned["conv"]) < 0.85 and 0.75 < np.mean(pruned["ip"]) < 0.85
        s.step(50)
        for n in ("conv", "ip"):
            w = s.net.params[n][0].data
            assert np.all(w[pruned[n]] == 0.0), f"{kind}/{reg}: pruned {n} weights regrew"
            assert np.any(w[~pruned[n]] != w0[n][~pruned[n]]), f"{kind}/{reg}: {n} frozen"
        for h in s.history:  # history of pruned entries stays exactly 0
            for n, mask in pruned.items():
                if h.shape == mask.shape and np.abs(h[~mask]).sum() > 0:
                    assert np.all(h[mask] == 0.0), f"{kind}/{reg}: history of pruned {n}"
        assert np.any(s.net.params["ip"][1].data != b0), "a zero bias must not be frozen"
        bn = s.net.layer_dict["bn"].blobs
        assert bn[0].mask is None and np.abs(bn[0].data).sum() > 0  # statistics accumulate


def test_snapshot_restore_resumes_bit_exact(tmp_path):
    model = _pruned_model(tmp_path)
    base = (f'type: "Adam" base_lr: 0.01 lr_policy: "step" gamma: 0.5 stepsize: 4 '
            f'momentum: 0.9 weight_decay: 0.001 random_seed: 11 display: 0 '
            f'snapshot_prefix: "{tmp_path}/snap/run"' + CONV_NET)
    a = get_solver(base, weights=str(model))
    _feed(a)
    a.step(5)
    # an unpruned weight that happens to be exactly 0 at the snapshot must stay unpruned
    w = a.net.params["ip"][0]
    live = np.flatnonzero(w.mask.ravel())
    w.data.ravel()[live[0]] = 0.0
    model5 = a.snapshot()
    assert model5 == f"{tmp_path}/snap/run_iter_5.caffemodel"
    a.step(5)  # the uninterrupted run (the random generator is process-wide, so finish it first)
    b = get_solver(base)
    _feed(b)
    b.restore(f"{tmp_path}/snap/run_iter_5.solverstate")
    assert b.iter == 5
    mask5 = b.net.params["ip"][0].mask.copy()
    np.testing.assert_array_equal(mask5, w.mask)
    assert mask5.ravel()[live[0]] == 1  # not re-derived from the zero weight
    b.step(5)
    for n in ("conv", "ip", "scale"):
        for pa, pb in zip(a.net.params[n], b.net.params[n]):
            np.testing.assert_array_equal(pa.data, pb.data)
    for ha, hb in zip(a.history, b.history):
        np.testing.assert_array_equal(ha, hb)


def test_restore_without_sidecar_and_hdf5_format(tmp_path):
    pytest.importorskip("h5py")
    base = (f'type: "SGD" base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" random_seed: 1 '
            f'display: 0 snapshot_format: HDF5 snapshot_prefix: "{tmp_path}/h"' + CONV_NET)
    a = get_solver(base)
    _feed(a)
    a.step(3)
    model = a.snapshot()
    assert model.endswith("h_iter_3.caffemodel.h5")
    b = get_solver(base)
    b.restore(f"{tmp_path}/h_iter_3.solverstate.h5")
    assert b.iter == 3
    for pa, pb in zip(a.net.learnable_params, b.net.learnable_params):
        np.testing.assert_array_equal(pa.data, pb.data)
    for ha, hb in zip(a.history, b.history):
        np.testing.assert_array_equal(ha, hb)


def test_solve_snapshots_on_schedule_and_after_train(tmp_path):
    text = (f'type: "SGD" base_lr: 0.01 lr_policy: "fixed" max_iter: 7 snapshot: 3 display: 0 '
            f'snapshot_prefix: "{tmp_path}/s"' + CONV_NET)
    s = get_solver(text)
    _feed(s)
    s.solve()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["s_iter_3.caffemodel", "s_iter_3.masks", "s_iter_3.solverstate",
                     "s_iter_6.caffemodel", "s_iter_6.masks", "s_iter_6.solverstate",
                     "s_iter_7.caffemodel", "s_iter_7.masks", "s_iter_7.solverstate"]
    state = caffe_pb2.SolverState.FromString((tmp_path / "s_iter_6.solverstate").read_bytes())
    assert state.iter == 6 and state.learned_net.endswith("s_iter_6.caffemodel")
    assert len(state.history) == len(s.net.learnable_params)


def test_test_nets_share_weights_and_log_like_caffe(caplog):
    text = """type: "SGD" base_lr: 0.01 lr_policy: "fixed" display: 1 test_iter: 2
    test_interval: 2 snapshot_after_train: false
    net_param {
      name: "m"
      layer { name: "in" type: "Input" top: "x" top: "y"
              input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
      layer { name: "ip" type: "InnerProduct" bottom: "x" top: "z"
              inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
      layer { name: "loss" type: "SoftmaxWithLoss" bottom: "z" bottom: "y" top: "loss" }
      layer { name: "acc" type: "Accuracy" bottom: "z" bottom: "y" top: "accuracy"
              include { phase: TEST } }
    }"""
    s = get_solver(text)
    assert len(s.test_nets) == 1
    t = s.test_nets[0]
    g = np.random.default_rng(0)
    for n in (s.net, t):
        n.blobs["x"].data[...] = g.normal(size=(4, 3))
        n.blobs["y"].data[...] = [0, 1, 2, 1]
    with caplog.at_level(logging.INFO, logger="caffe_lite"):
        s.step(3)
    assert t.params["ip"][0].data is not None
    np.testing.assert_array_equal(t.params["ip"][0].data, s.net.params["ip"][0].data)
    text_log = caplog.text
    assert "Iteration 0, Testing net (#0)" in text_log
    assert "    Test net output #0: accuracy = " in text_log
    assert "    Test net output #1: loss = " in text_log and "(* 1 = " in text_log
    assert "Iteration 0, loss = " in text_log and "Iteration 0, lr = 0.01" in text_log
    assert "    Train net output #0: loss = " in text_log
    assert [r[0] for r in s.test_results] == [0, 2]


def test_nan_loss_names_the_layer():
    net = TINY_NET.replace('layer { name: "ip"', 'layer { name: "log" type: "Log" bottom: "x" '
                           'top: "lx" }\n  layer { name: "ip"').replace('bottom: "x" top: "z"',
                                                                     'bottom: "lx" top: "z"')
    s = _solver("SGD", "", net)
    s.net.blobs["x"].data[...] = [[1, 2, -3], [1, 1, 1]]
    with pytest.raises(NumericalError, match=r"iteration 0: loss is nan; layer 'log' produced "
                                             r"the first non-finite output \(last finite: 'in'\)"):
        s.step(1)
    s.net.blobs["x"].data[...] = [[1, 2, np.inf], [1, 1, 1]]
    with pytest.raises(NumericalError, match=r"input blob 'x' holds non-finite values"):
        s.step(1)


def test_bad_solver_configurations(tmp_path):
    with pytest.raises(SolverError, match="unknown solver type 'Foo'"):
        get_solver('type: "Foo" base_lr: 0.1 lr_policy: "fixed"' + TINY_NET)
    with pytest.raises(SolverError, match="AdaGrad does not use momentum"):
        get_solver('type: "AdaGrad" momentum: 0.9 base_lr: 0.1 lr_policy: "fixed"' + TINY_NET)
    with pytest.raises(SolverError, match="net 'nowhere.prototxt' not found"):
        get_solver('net: "nowhere.prototxt" base_lr: 0.1 lr_policy: "fixed"')
    sp = tmp_path / "solver.prototxt"
    sp.write_text('train_net: "t.prototxt" test_iter: 10 test_interval: 5 base_lr: 0.1 '
                  'lr_policy: "fixed"')
    (tmp_path / "t.prototxt").write_text("name: 't'")
    with pytest.raises(SolverError, match="test_iter is given .* but there is no test net"):
        get_solver(str(sp))
    with pytest.raises(SolverError, match="unknown lr_policy 'weird'"):
        get_solver('base_lr: 0.1 lr_policy: "weird"' + TINY_NET)
    with pytest.raises(SolverError, match="both set"):
        get_solver('solver_type: NESTEROV type: "SGD" base_lr: 0.1 lr_policy: "fixed"' + TINY_NET)
    assert isinstance(get_solver('solver_type: NESTEROV base_lr: 0.1 lr_policy: "fixed"'
                                 + TINY_NET), caffe.NesterovSolver)


def test_solver_resolves_net_beside_the_solver_file(models_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from caffe_lite.solvers import load_solver_param
    p = load_solver_param(str(models_dir / "bvlc_mnist" / "lenet_solver_adam.prototxt"))
    assert p.net.endswith("bvlc_mnist/lenet_train_test.prototxt") and p.type == "Adam"
    for name in ("lenet_solver.prototxt", "lenet_solver_rmsprop.prototxt",
                 "lenet_adadelta_solver.prototxt", "mnist_autoencoder_solver_nesterov.prototxt",
                 "lenet_multistep_solver.prototxt", "mnist_autoencoder_solver_adagrad.prototxt"):
        load_solver_param(str(models_dir / "bvlc_mnist" / name))
