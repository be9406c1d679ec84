"""Dynamic Network Surgery: the two-threshold mask update, shadow weights that keep learning,
splicing, freezing, snapshots and an exact resume; the CLI's -prune_method dns."""
import numpy as np
import pytest

import caffe_lite
from caffe_lite.io.caffemodel import load_weights
from caffe_lite.pruning import DnsPruner, PruningError, prune_net
from caffe_lite.pruning.splicing import centre_threshold, splice_mask
from caffe_lite.solvers import get_solver

from pruning_nets import mlp_solver, restore_logging  # noqa: F401

SPEC = 'method: "dns" layer { name: "ip1" sparsity: 0.6 } layer { name: "ip2" sparsity: 0.5 }'


def test_centre_threshold_is_the_target_quantile():
    w = np.array([0.3, -0.1, 0.05, -0.7, 0.2, 0.0, 0.4, -0.25, 0.15, 0.6], np.float32)
    # 10 weights, 40 %: the 4 smallest |w| (0, 0.05, 0.1, 0.15) lie below the 5th, 0.2.
    assert centre_threshold(w, 0.4) == pytest.approx(0.2)
    assert centre_threshold(w, 0.0) == 0.0
    assert np.sum(np.abs(w) < centre_threshold(w, 0.4)) == 4
    assert np.all(np.abs(w) < centre_threshold(w, 1.0))


def test_splice_mask_has_two_thresholds():
    # Margin 0.1.  Triggers (|w| / 0.9 if kept, / 1.1 if pruned): 0.111, 0.556, 0.944,
    # 0.864, 1.111, 1.167, 1.0, 1.818, 3.333; 4 of 9 to prune: the centre is the 5th
    # smallest, 1.0.  Kept weights go below 0.9, pruned ones come back from 1.1.
    shadow = np.array([0.1, 0.5, 0.85, 0.95, 1.0, 1.05, 1.1, 2.0, 3.0], np.float32)
    before = np.array([1, 1, 1, 0, 1, 1, 0, 0, 1], bool)
    mask, c = splice_mask(shadow, before, 4 / 9, 0.1)
    assert c == 1.0
    assert mask.tolist() == [False, False, False, False, True, True, True, True, True]
    #                                          0.95 stays out  1.0, 1.05 stay in; 1.1, 2 back
    # Hysteresis the other way round, on random weights: exactly the target, and no weight
    # crosses unless it is outside the band.
    rng = np.random.default_rng(0)
    w = rng.standard_normal(1000).astype(np.float32)
    prev = rng.random(1000) < 0.5
    mask, c = splice_mask(w, prev, 0.7, 0.2)
    assert np.count_nonzero(~mask) == 700
    a = np.abs(w)
    assert np.all(a[prev & ~mask] < 0.8 * c + 1e-6) and np.all(a[~prev & mask] >= 1.2 * c - 1e-6)
    assert np.any((a > 0.8 * c) & (a < 1.2 * c) & (mask != prev)) == False  # noqa: E712
    # With no previous mask: the plain target quantile.
    mask, c = splice_mask(w, None, 0.7, 0.2)
    assert np.count_nonzero(~mask) == 700 and np.all(a[~mask] < a[mask].min())


def _run(tmp_path, max_iter, spec=SPEC, snapshot=0, dns="dns { frequency: 3 end_iter: 24 }"):
    solver = get_solver(str(mlp_solver(tmp_path, max_iter=max_iter, snapshot=snapshot)))
    pruner = DnsPruner(solver, spec + " " + dns).attach()
    return solver, pruner


def test_shadow_weights_keep_learning_and_pruned_weights_come_back(tmp_path):
    solver, pruner = _run(tmp_path, 24)
    w = solver.net.params["ip1"][0]
    seen_pruned = np.zeros(w.shape, bool)
    revived = np.zeros(w.shape, bool)
    for it in range(23):
        solver.step(1)
        mask = w.mask.copy() != 0
        # Between iterations the net holds W~ * T and the blob's mask is T.
        np.testing.assert_array_equal(w.data, pruner.shadow["ip1"] * mask)
        revived |= seen_pruned & mask
        seen_pruned |= ~mask
        # The shadow of a pruned weight still moves: it is not simply 0.
        assert np.count_nonzero(pruner.shadow["ip1"][~mask]) == np.count_nonzero(~mask)
    assert revived.any(), "no pruned weight was ever spliced back"
    assert pruner.spliced >= revived.sum()
    assert 0.5 < 1 - mask.mean() < 0.7     # about the 0.6 target (the band keeps some)


def test_one_iteration_by_hand(tmp_path):
    """Gradients reach pruned weights, and the solver's step lands on the shadow W~, not on
    the masked W~ * T (SGD: W~ -= h, the momentum history)."""
    solver, pruner = _run(tmp_path, 24)
    solver.step(4)
    w = solver.net.params["ip1"][0]
    i = next(k for k, b in enumerate(solver.net.learnable_params) if b is w)
    old, mask = pruner.shadow["ip1"].copy(), w.mask.copy() != 0
    solver.net.clear_param_diffs()
    pruner.on_start(solver)
    assert not w.has_mask
    solver.net.forward_backward()
    assert np.count_nonzero(w.diff[~mask]) == np.count_nonzero(~mask)
    pruner.on_gradients_ready(solver)
    solver.apply_update()
    solver.iter += 1
    pruner.on_update_done(solver)
    np.testing.assert_array_equal(pruner.shadow["ip1"], old - solver.history[i])
    assert w.has_mask


def test_masks_freeze_at_end_iter_and_then_only_shrink(tmp_path):
    solver, pruner = _run(tmp_path, 30)
    solver.step(24)
    assert pruner.frozen and not pruner.shadow
    ip1 = solver.net.params["ip1"][0]
    frozen = ip1.mask.copy()
    assert not ip1.data[frozen == 0].any()
    # The history of pruned weights is zeroed at the freeze (the usual invariant from now on).
    i = next(k for k, b in enumerate(solver.net.learnable_params) if b is ip1)
    assert not solver.history[i][frozen == 0].any()
    solver.step(6)
    np.testing.assert_array_equal(ip1.mask, frozen)
    assert not ip1.data[frozen == 0].any()
    assert not solver.history[i][frozen == 0].any()


def test_snapshot_holds_masked_weights_and_resume_is_exact(tmp_path):
    full, _ = _run(tmp_path / "a", 30)
    full.solve()
    ref = {n: [b.data.copy() for b in p] for n, p in full.net.params.items()}
    ref_masks = {n: p[0].mask.copy() for n, p in full.net.params.items()}

    half, pruner = _run(tmp_path / "b", 30, snapshot=10)
    half.step(10)   # snapshot at 10, mid-splicing (end_iter 24)
    model = tmp_path / "b" / "snap" / "mlp_iter_10.caffemodel"
    saved = dict(load_weights(str(model)))
    # The caffemodel holds W~ * T: exactly the net's weights, zero where masked.
    np.testing.assert_array_equal(saved["ip1"][0], half.net.params["ip1"][0].data)
    assert not saved["ip1"][0][half.net.params["ip1"][0].mask == 0].any()
    assert np.count_nonzero(pruner.shadow["ip1"][half.net.params["ip1"][0].mask == 0])

    resumed, rp = _run(tmp_path / "b", 30)
    resumed.solve(str(tmp_path / "b" / "snap" / "mlp_iter_10.solverstate"))
    assert rp.frozen
    for n, blobs in resumed.net.params.items():
        for a, b in zip(ref[n], blobs):
            np.testing.assert_array_equal(a, b.data)
        np.testing.assert_array_equal(ref_masks[n], blobs[0].mask)


def test_gradual_ramp_and_bad_settings(tmp_path):
    solver, pruner = _run(tmp_path, 40, dns="dns { frequency: 2 end_iter: 30 } "
                          "gradual { begin_iter: 0 num_steps: 4 frequency: 5 }")
    assert pruner.target_at("ip1", 0) == 0.0
    assert pruner.target_at("ip1", 10) == pytest.approx(0.6 * (1 - 0.5 ** 3))
    assert pruner.target_at("ip1", 20) == pytest.approx(0.6)
    solver.step(2)
    assert 1 - solver.net.params["ip1"][0].mask.mean() < 0.2
    solver.step(28)
    assert 1 - solver.net.params["ip1"][0].mask.mean() > 0.5
    with pytest.raises(PruningError, match="margin"):
        _run(tmp_path / "x", 10, dns="dns { margin: 1.5 }")
    with pytest.raises(PruningError, match="end_iter"):
        _run(tmp_path / "y", 10, dns="dns { begin_iter: 20 }")


def test_prune_method_dns_is_its_first_cut():
    from pruning_nets import FLATNET, build
    net = build(FLATNET)
    w = net.params["ip1"][0].data.copy()
    prune_net(net, method="dns", sparsity=0.75)
    kept = net.params["ip1"][0].mask != 0
    assert kept.sum() == w.size - round(0.75 * w.size)
    assert np.abs(w[kept]).min() >= np.abs(w[~kept]).max()


def test_cli_train_with_dns(tmp_path, restore_logging):  # noqa: F811
    from caffe_lite import cli
    solver = mlp_solver(tmp_path, max_iter=20, snapshot=20)
    spec = tmp_path / "dns.prototxt"
    spec.write_text(SPEC + " dns { frequency: 2 end_iter: 12 }")
    assert cli.main(["train", "-solver", str(solver), "-prune_spec", str(spec)]) == 0
    w = dict(load_weights(str(tmp_path / "snap" / "mlp_iter_20.caffemodel")))
    assert 0.5 < np.mean(w["ip1"][0] == 0) < 0.7
    assert 0.4 <= np.mean(w["ip2"][0] == 0) < 0.6
    caffe_lite.set_mode_cpu()
