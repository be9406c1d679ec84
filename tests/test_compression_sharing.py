"""Weight sharing: k-means with linear initialisation, quantisation plans, and fine-tuning with
shared values through every solver (members stay bit-identical, Han's centroid update, masks
hold, snapshots resume exactly)."""
import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.compression import quantize as Q
from caffe_lite.compression.sharing import WeightSharing
from caffe_lite.errors import ModelFileError
from caffe_lite.solvers import SOLVERS, get_solver

from test_solvers import CONV_NET, _feed, _pruned_model


# --- k-means -----------------------------------------------------------------------------------
def test_kmeans_1d_linear_init_by_hand():
    x = np.array([0.0, 0.1, 0.2, 0.9, 1.0, 5.0])
    # k = 3, linear init 0, 2.5, 5: midpoints 1.25, 3.75 -> {0, .1, .2, .9, 1}, {}, {5}.
    c, labels, it = Q.kmeans_1d(x, 3)
    np.testing.assert_allclose(c, [0.44, 2.5, 5.0])   # the empty cluster keeps its value
    np.testing.assert_array_equal(labels, [0, 0, 0, 0, 0, 2])
    # Two clusters: init 0, 5 -> {..1.0}, {5}; stable after the first move.
    c, labels, _ = Q.kmeans_1d(x, 2)
    np.testing.assert_allclose(c, [0.44, 5.0])
    # init -1, 0, 1: {-1}, {0.2}, {0.6, 0.7, 1}; the cuts do not move after the first step.
    y = np.array([-1.0, 0.2, 0.6, 0.7, 1.0])
    c, labels, it = Q.kmeans_1d(y, 3)
    np.testing.assert_allclose(c, [-1.0, 0.2, 2.3 / 3])
    np.testing.assert_array_equal(labels, [0, 1, 2, 2, 2])
    assert it == 2
    # A point changes cluster: init 0, 1.5, 3 -> {0, .7}, {.8}, {2.9, 3}; centroids .35, .8,
    # 2.95 -> cut at .575 moves .7 to the middle -> 0, .75, 2.95, stable.
    z = np.array([0.7, 0.0, 0.8, 2.9, 3.0])
    c, labels, it = Q.kmeans_1d(z, 3)
    np.testing.assert_allclose(c, [0.0, 0.75, 2.95])
    np.testing.assert_array_equal(labels, [1, 0, 1, 2, 2])
    assert it == 3


def test_kmeans_matches_a_direct_lloyd_loop(rng):
    x = rng.standard_normal(2000)
    c, labels, _ = Q.kmeans_1d(x, 8, max_iter=500)
    ref = np.linspace(x.min(), x.max(), 8)
    for _ in range(500):
        lab = np.argmin(np.abs(x[:, None] - ref[None]), axis=1)
        new = np.array([x[lab == j].mean() if (lab == j).any() else ref[j] for j in range(8)])
        if np.array_equal(new, ref):
            break
        ref = new
    np.testing.assert_allclose(c, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(labels, lab)


def test_codebook_adopts_an_already_quantised_weight(rng):
    w = rng.choice(np.float32([-0.5, 0.25, 0.75]), size=(4, 5))
    w[0, :2] = 0
    mask = w != 0
    book = Q.build_codebook(w, mask, 2)
    assert book.iterations == 0 and book.size == 3
    np.testing.assert_array_equal(book.weights(w.shape), w)
    assert (book.labels.reshape(w.shape)[~mask] == -1).all()
    again = Q.build_codebook(book.weights(w.shape), mask, 2)
    np.testing.assert_array_equal(again.labels, book.labels)


# --- plans -------------------------------------------------------------------------------------
def _net():
    from caffe_lite.io import parse_text
    from caffe_lite.proto import caffe_pb2
    sp = parse_text(CONV_NET.strip()[len("net_param {"):-1], caffe_pb2.NetParameter())
    return caffe.Net(sp, caffe.TEST)


def test_bits_parsing_and_plans():
    net = _net()
    assert Q.parse_bits("conv=8,fc=5") == {"conv": 8, "fc": 5}
    assert Q.parse_bits("6") == {None: 6}
    assert Q.make_plan(net, "conv=8,fc=5") == {"conv": 8, "ip": 5}
    assert Q.make_plan(net, "ip=3,fc=5,4") == {"conv": 4, "ip": 3}   # layer beats kind
    assert Q.make_plan(net, "4,conv=0") == {"ip": 4}                  # 0: not quantised
    spec = 'quantize { conv_bits: 6 fc_bits: 5 } layer { name: "ip" bits: 2 }'
    assert Q.make_plan(net, spec=spec) == {"conv": 6, "ip": 2}
    assert Q.make_plan(net, "conv=3", spec=spec) == {"conv": 3, "ip": 2}
    with pytest.raises(Q.QuantizationError, match="no layer named 'fc7'.*conv, ip"):
        Q.make_plan(net, "fc7=4")
    with pytest.raises(Q.QuantizationError, match="'bn' .*BatchNorm.* no weight"):
        Q.make_plan(net, "bn=4")
    with pytest.raises(Q.QuantizationError, match="0..16"):
        Q.make_plan(net, "conv=17")
    with pytest.raises(Q.QuantizationError, match="KIND=BITS"):
        Q.parse_bits("conv:8")
    with pytest.raises(Q.QuantizationError, match="nothing to quantise"):
        Q.make_plan(net, "conv=0,fc=0")


def test_quantize_net_keeps_masks_and_limits_values(rng):
    net = _net()
    for name in ("conv", "ip"):
        w = net.params[name][0]
        w.data[...] = rng.standard_normal(w.shape) * (rng.random(w.shape) < 0.3)
        w.mask_from_data()
    books = Q.quantize_net(net, "conv=3,fc=2")
    for name, bits in (("conv", 3), ("ip", 2)):
        w = net.params[name][0]
        live = w.mask.astype(bool)
        assert np.all(w.data[~live].view(np.uint32) == 0)        # +0.0, not -0.0
        assert len(np.unique(w.data[live])) == books[name].size <= 2 ** bits
        assert np.all(np.diff(books[name].values) > 0)
        assert np.all(w.data[live] != 0)
        np.testing.assert_array_equal(books[name].weights(w.shape), w.data)


# --- fine-tuning through every solver ---------------------------------------------------------
def _solver_text(kind, reg, extra=""):
    momentum = "momentum: 0.9" if kind in ("SGD", "Nesterov", "Adam", "AdaDelta") else ""
    lr = {"SGD": 0.001, "Nesterov": 0.001, "AdaDelta": 1.0}.get(kind, 0.001)
    return (f'type: "{kind}" base_lr: {lr} lr_policy: "fixed" {momentum} weight_decay: 0.01 '
            f'regularization_type: "{reg}" iter_size: 2 clip_gradients: 5 random_seed: 7 '
            f'display: 0 {extra}' + CONV_NET)


@pytest.mark.parametrize("jit", ["1", "0"])
@pytest.mark.parametrize("kind", sorted(SOLVERS))
def test_members_stay_identical_through_every_solver(tmp_path, kind, jit, monkeypatch):
    if jit == "0" and kind != "SGD":
        pytest.skip("only SGD has a compiled (fused) update")
    monkeypatch.setenv("CAFFE_LITE_JIT", jit)
    model = _pruned_model(tmp_path, sparsity=0.5)
    for reg in ("L2", "L1"):
        s = get_solver(_solver_text(kind, reg), weights=str(model))
        _feed(s)
        ws = WeightSharing(s, "conv=3,fc=2").attach()
        before = ws.codebooks()
        masks = {n: s.net.params[n][0].mask.copy() for n in ("conv", "ip")}
        s.step(12)
        assert ws.untied() == {"conv": 0, "ip": 0}, f"{kind}/{reg}: a cluster came apart"
        after = ws.codebooks()
        for n, bits in (("conv", 3), ("ip", 2)):
            w = s.net.params[n][0].data
            assert np.all(w[masks[n] == 0] == 0), f"{kind}/{reg}: pruned {n} weights regrew"
            np.testing.assert_array_equal(s.net.params[n][0].mask, masks[n])
            assert len(np.unique(w[masks[n] != 0])) <= 2 ** bits
            assert np.any(after[n].values != before[n].values), f"{kind}/{reg}: {n} frozen"
            np.testing.assert_array_equal(after[n].labels, before[n].labels)


def test_the_tie_check_catches_a_broken_tie(tmp_path):
    """Without the summed gradients the clusters come apart, and untied() says so."""
    model = _pruned_model(tmp_path, sparsity=0.5)
    s = get_solver(_solver_text("Adam", "L2"), weights=str(model))
    _feed(s)
    ws = WeightSharing(s, "conv=3,fc=2").attach()
    ws.on_gradients_ready = lambda solver: None
    s.step(3)
    broken = ws.untied()
    assert broken["conv"] > 0 and broken["ip"] > 0


@pytest.mark.parametrize("gradient", ["sum", "mean"])
def test_shared_value_moves_by_the_summed_gradient(tmp_path, gradient):
    """Plain SGD: c' = c - lr * sum (or mean) of the members' gradients (Han et al., eq. 3)."""
    model = _pruned_model(tmp_path, sparsity=0.5)
    s = get_solver('type: "SGD" base_lr: 0.01 lr_policy: "fixed" display: 0' + CONV_NET,
                   weights=str(model))
    _feed(s)
    ws = WeightSharing(s, "conv=3,fc=2", gradient=gradient).attach()
    c0 = ws.codebooks()
    s.net.clear_param_diffs()
    s.net.forward_backward()
    raw = {n: s.net.params[n][0].diff.copy().ravel() for n in ("conv", "ip")}
    ws.on_gradients_ready(s)
    s.apply_update()
    c1 = ws.codebooks()
    for n in ("conv", "ip"):
        lab = c0[n].labels
        live = lab >= 0
        g = np.bincount(lab[live], weights=raw[n][live], minlength=c0[n].size)
        if gradient == "mean":
            g /= np.bincount(lab[live], minlength=c0[n].size)
        np.testing.assert_allclose(c1[n].values, c0[n].values - 0.01 * g, rtol=1e-5, atol=1e-7)
        assert np.abs(g).max() > 0


def test_snapshot_resume_keeps_clusters_bit_exact(tmp_path):
    model = _pruned_model(tmp_path, sparsity=0.5)
    text = _solver_text("Adam", "L2", f'snapshot_prefix: "{tmp_path}/q"')
    a = get_solver(text, weights=str(model))
    _feed(a)
    wa = WeightSharing(a, "conv=3,fc=2").attach()
    a.step(4)
    a.snapshot()
    a.step(4)
    b = get_solver(text)
    _feed(b)
    wb = WeightSharing(b, "conv=3,fc=2").attach()   # quantises b's random weights ...
    b.restore(f"{tmp_path}/q_iter_4.solverstate")   # ... then the snapshot's clusters return
    for la, lb in zip(wa.layers, wb.layers):
        np.testing.assert_array_equal(la.labels, lb.labels)
    b.step(4)
    for pa, pb in zip(a.net.learnable_params, b.net.learnable_params):
        np.testing.assert_array_equal(pa.data, pb.data)
    for ha, hb in zip(a.history, b.history):
        np.testing.assert_array_equal(ha, hb)
    assert wb.untied() == {"conv": 0, "ip": 0}
    # A run sharing other layers refuses the snapshot.
    c = get_solver(text)
    WeightSharing(c, "conv=3").attach()
    with pytest.raises(ModelFileError, match="shares the weights of layers"):
        c.restore(f"{tmp_path}/q_iter_4.solverstate")


def test_resuming_a_snapshot_taken_without_sharing_quantises_it(tmp_path):
    model = _pruned_model(tmp_path, sparsity=0.5)
    text = _solver_text("SGD", "L2", f'snapshot_prefix: "{tmp_path}/plain"')
    a = get_solver(text, weights=str(model))
    _feed(a)
    a.step(3)
    a.snapshot()                                    # no weight sharing in this run
    b = get_solver(text)
    _feed(b)
    ws = WeightSharing(b, "conv=3,fc=2").attach()
    b.restore(f"{tmp_path}/plain_iter_3.solverstate")
    assert ws.untied()["ip"] > 0                    # the snapshot's own weights, untied
    b.step(2)
    assert ws.untied() == {"conv": 0, "ip": 0}
    assert len(np.unique(b.net.params["ip"][0].data[b.net.params["ip"][0].mask != 0])) <= 4


def test_history_is_tied_when_sharing_starts_mid_run(tmp_path):
    model = _pruned_model(tmp_path, sparsity=0.5)
    s = get_solver(_solver_text("RMSProp", "L2"), weights=str(model))
    _feed(s)
    s.step(3)                                       # per-weight history, all different
    ws = WeightSharing(s, "conv=3,fc=2").attach()
    s.step(5)
    assert ws.untied() == {"conv": 0, "ip": 0}


def test_pruning_while_sharing_removes_weights_from_their_clusters(tmp_path):
    model = _pruned_model(tmp_path, sparsity=0.5)
    s = get_solver(_solver_text("SGD", "L2"), weights=str(model))
    _feed(s)
    ws = WeightSharing(s, "conv=3,fc=2").attach()
    w = s.net.params["ip"][0]
    live = np.flatnonzero(w.mask.ravel())
    w.mask.ravel()[live[:5]] = 0
    w.apply_mask()
    s.step(3)
    assert (ws.layers[1].labels[live[:5]] == -1).all()
    assert np.all(w.data.ravel()[live[:5]] == 0)
    assert ws.untied() == {"conv": 0, "ip": 0}


@pytest.mark.gpu
@pytest.mark.parametrize("kind", sorted(SOLVERS))
def test_members_stay_identical_with_the_gpu_updates(tmp_path, kind):
    from caffe_lite.backend import gpu as gpu_backend
    ok, reason = gpu_backend.available()
    if not ok:
        pytest.skip(f"needs PyCUDA and a CUDA device: {reason}")
    model = _pruned_model(tmp_path, sparsity=0.5)
    s = get_solver(_solver_text(kind, "L1"), weights=str(model))
    _feed(s)
    ws = WeightSharing(s, "conv=3,fc=2").attach()
    before = ws.codebooks()
    caffe.set_mode_gpu()
    try:
        s.step(6)
        assert getattr(s, "_gpu_history", None) is not None    # the fused GPU update ran
    finally:
        caffe.set_mode_cpu()
    assert ws.untied() == {"conv": 0, "ip": 0}
    after = ws.codebooks()
    assert any(np.any(after[n].values != before[n].values) for n in ("conv", "ip"))
