"""Automatic per-layer ratios for a global parameter / FLOP target: the cost model against
thinning, the global ranking, the sensitivity solver; network slimming's gamma penalty."""
import numpy as np
import pytest

import caffe_lite
from caffe_lite.pruning import (BNScalePenalty, PruningError, filter_prune, make_plan, ratios,
                                sparsity_report, thin_net)
from caffe_lite.pruning.slimming import bn_scale_layers
from caffe_lite.solvers import get_solver

from pruning_nets import FLATNET, GROUPED, RESNET, build, net_param


def _solve_prune_thin(text, **targets):
    net = build(text)
    plan = make_plan(net, method="l1-filter", **targets)
    sol = ratios.solve(net, plan)
    filter_prune(net, sol.plan, "l1-filter", graph=sol.graph, scores=sol.scores)
    thin = thin_net(net, net_param(text))
    small = caffe_lite.Net(_with_blobs(thin), caffe_lite.TEST)
    return sol, thin, small


def _with_blobs(thin):
    from caffe_lite.pruning.netutil import with_blobs
    return with_blobs(thin.net_param, thin.weights)


@pytest.mark.parametrize("text", [RESNET, GROUPED], ids=["resnet", "grouped"])
def test_target_params_counts_what_thin_leaves(text):
    sol, thin, small = _solve_prune_thin(text, target_params=0.5)
    assert sol.base[0] == thin.params_before
    assert sol.after[0] == thin.params_after          # the cost model is thin's count
    assert sol.after[0] <= 0.5 * sol.base[0]
    # FLOPs: those of the thinned net's layers, as `sparsity` reports them.
    assert sol.after[1] == sparsity_report(small)["total"]["flops"]
    assert sol.base[1] == sparsity_report(build(text))["total"]["flops"]
    # thinned_cost: the same count for whatever the net holds.
    pruned = build(text)
    filter_prune(pruned, sol.plan, "l1-filter")
    assert ratios.thinned_cost(pruned) == (sol.base, sol.after)


def test_target_flops_and_the_spec_it_writes():
    sol, thin, small = _solve_prune_thin(RESNET, target_flops=0.4)
    assert sol.after[1] <= 0.4 * sol.base[1]
    assert sol.after[1] == sparsity_report(small)["total"]["flops"]
    spec = sol.spec
    assert spec.method == "l1-filter"
    targets = {e.name: e.sparsity for e in spec.layer}
    # Coupled layers share one ratio; the classifier (a net output) is not a candidate.
    assert targets["conv1"] == targets["conv2b"] == targets["conv3a"] == targets["conv3b"]
    assert "fc" not in targets or targets["fc"] == 0
    # The spec reproduces the pruning.
    net = build(RESNET)
    from caffe_lite.pruning import prune_net
    prune_net(net, spec)
    again = thin_net(net, net_param(RESNET))
    assert again.params_after == thin.params_after


def test_global_ranking_respects_max_sparsity_and_reports_the_impossible():
    net = build(FLATNET)
    plan = make_plan(net, 'method: "l1-filter" max_sparsity: 0.5', target_params=0.6)
    sol = ratios.solve(net, plan)
    assert all(r <= 0.5 for r in sol.ratios.values())
    with pytest.raises(PruningError, match="target_params 0.1 is out of reach.*max_sparsity 0.5"):
        ratios.solve(net, make_plan(net, 'method: "l1-filter" max_sparsity: 0.5',
                                    target_params=0.1))
    with pytest.raises(PruningError, match="need a structured method"):
        make_plan(net, method="magnitude", target_params=0.5)
    with pytest.raises(PruningError, match="not both"):
        make_plan(net, method="fpgm", target_params=0.5, target_flops=0.5)
    with pytest.raises(PruningError, match=r"must be in \(0, 1\]"):
        make_plan(net, method="fpgm", target_flops=0)


def test_sensitivity_solver_takes_the_cheapest_drop_per_parameter():
    net = build(FLATNET)
    # Parameters 531: conv1 108 + 6, ip1 378 + 7, ip2 28 + 4.  A conv1 channel takes 18 + 1
    # and ip1's 9-column block for it (63): 82; an ip1 neuron 54 + 1 and ip2's column: 59.
    rows = [("conv1", 0.5, 0.05), ("conv1", 0.9, 0.5), ("ip1", 0.5, 0.01), ("ip1", 0.9, 0.3)]
    plan = make_plan(net, method="l1-filter", target_params=0.6)
    sol = ratios.solve(net, plan, rows=rows)
    # Either layer at 0.5 meets 60 % (conv1: 531 - 3 x 82 = 285; ip1: 531 - 4 x 59 = 295);
    # ip1 costs 0.01 / 236 per parameter, conv1 0.05 / 246: ip1.
    assert sol.ratios == {"conv1": 0.0, "ip1": pytest.approx(4 / 7)}
    assert sol.after[0] == 295 and sol.base[0] == 531
    # 50 % needs both: ip1 0.5 then conv1 0.5 (ip1 at 0.9 costs 0.29 more for 2 neurons).
    sol = ratios.solve(net, make_plan(net, method="l1-filter", target_params=0.5), rows=rows)
    assert sol.ratios == {"conv1": 0.5, "ip1": pytest.approx(4 / 7)}
    # conv1 3 x 18 + 3, ip1 3 x 27 + 3, ip2 4 x 3 + 4
    assert sol.after[0] == 57 + 84 + 16
    with pytest.raises(PruningError, match="out of reach with the scanned sparsities"):
        ratios.solve(net, make_plan(net, method="l1-filter", target_params=0.1), rows=rows)


# --- network slimming -------------------------------------------------------------------------
SLIM = """name: "slim"
layer { name: "data" type: "DummyData" top: "data" top: "target"
  dummy_data_param { shape { dim: 4 dim: 2 dim: 3 dim: 3 } shape { dim: 4 dim: 3 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv"
  scale_param { bias_term: true filler { type: "gaussian" std: 1 } } }
layer { name: "sc2" type: "Scale" bottom: "conv" top: "conv2" scale_param { bias_term: false } }
layer { name: "flat" type: "Flatten" bottom: "conv2" top: "flat" }
layer { name: "loss" type: "EuclideanLoss" bottom: "flat" bottom: "target" top: "loss" }
"""


def test_bn_scale_penalty_adds_rate_times_sign_gamma(tmp_path):
    net_file = tmp_path / "slim.prototxt"
    net_file.write_text(SLIM)
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(f'net: "{net_file}" base_lr: 0.1 lr_policy: "fixed" max_iter: 2 '
                           'iter_size: 2 random_seed: 3 solver_mode: CPU')
    solver = get_solver(str(solver_file))
    assert bn_scale_layers(solver.net) == ["sc"]        # sc2 follows a Scale, not a BatchNorm
    gamma = solver.net.params["sc"][0]
    gamma.data[...] = [0.5, -2.0, 0.0]
    penalty = BNScalePenalty(solver, 0.01)
    solver.net.clear_param_diffs()
    solver.net.forward_backward()
    before = gamma.diff.copy()
    penalty.on_gradients_ready(solver)
    # The diff holds the sum of iter_size (2) passes, which the solver halves next.
    np.testing.assert_allclose(gamma.diff - before, [0.02, -0.02, 0.0], rtol=1e-6)
    with pytest.raises(PruningError, match="'sc2' is not a Scale layer after a BatchNorm"):
        BNScalePenalty(solver, 0.01, layers=["sc2"])
    with pytest.raises(PruningError, match="finite number >= 0"):
        BNScalePenalty(solver, -1)


def test_recalibrate_batchnorm_averages_fresh_batch_statistics():
    from caffe_lite.pruning.netutil import recalibrate_batchnorm
    net = caffe_lite.Net(net_param(SLIM), caffe_lite.TRAIN)
    bn = net.params["bn"]
    for b in bn:
        b.data[...] = 123.0                      # stale statistics
    assert recalibrate_batchnorm(net, 1) == ["bn"]
    # BatchNorm runs in place, so recompute its input: the 3x3 convolution of the 3x3 data
    # (bias 0), one position per image.
    x, w = net.blobs["data"].data, net.params["conv"][0].data
    y = np.einsum("nchw,ochw->no", x, w)
    m = y.shape[0]
    np.testing.assert_allclose(bn[0].data / bn[2].data, y.mean(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn[1].data / bn[2].data, y.var(axis=0) * m / (m - 1),
                               rtol=1e-3, atol=1e-6)
    assert bn[2].data[0] == 1.0
    with pytest.raises(caffe_lite.CaffeLiteError, match="batch statistics"):
        recalibrate_batchnorm(caffe_lite.Net(net_param(SLIM), caffe_lite.TEST), 1)


def test_bn_scale_penalty_shrinks_gamma_while_training(tmp_path):
    net_file = tmp_path / "slim.prototxt"
    net_file.write_text(SLIM)
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(f'net: "{net_file}" base_lr: 0.05 lr_policy: "fixed" max_iter: 40 '
                           'random_seed: 3 solver_mode: CPU snapshot_after_train: false')
    norms = []
    for rate in (0.0, 0.5):
        caffe_lite.set_random_seed(3)
        solver = get_solver(str(solver_file))
        if rate:
            BNScalePenalty(solver, rate).attach()
        solver.solve()
        norms.append(float(np.abs(solver.net.params["sc"][0].data).sum()))
    assert norms[1] < norms[0] - 0.5
