"""The prune verb's criteria, automatic ratios and their spec file, on real files; train's
-bn_scale_l1."""
import numpy as np
import pytest

from caffe_lite.cli import main
from caffe_lite.io import load_weights
from caffe_lite.pruning import load_spec

from pruning_nets import mlp_solver, restore_logging  # noqa: F401
from test_cli_prune import _mnist_like_lmdb, small  # noqa: F401

pytestmark = pytest.mark.usefixtures("restore_logging")


def _run(*argv):
    return main([str(a) for a in argv])


def _w(path):
    return {n: a[0] for n, a in load_weights(str(path))}


@pytest.mark.parametrize("method", ["l2-filter", "fpgm", "taylor", "apoz"])
def test_prune_by_criterion(small, tmp_path, capsys, method):  # noqa: F811
    model, weights = small
    db = _mnist_like_lmdb(tmp_path, n=60)
    out = tmp_path / "p.caffemodel"
    assert _run("prune", "-model", model, "-weights", weights, "-train_source", db,
                "-test_source", db, "-method", method, "-data_batches", "2",
                "-spec", _spec(tmp_path, 'layer { name: "conv1" sparsity: 0.5 }'),
                "-output", out) == 0
    w = _w(out)["conv1"]
    assert sum(not w[c].any() for c in range(4)) == 2
    assert "zero filters 2/4" in capsys.readouterr().out


def _spec(tmp_path, text, name="spec.prototxt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_taylor_needs_training_data(small, tmp_path, capsys):  # noqa: F811
    model, weights = small
    assert _run("prune", "-model", model, "-weights", weights, "-input_shape", "1,1,28,28",
                "-method", "taylor", "-sparsity", "0.5", "-output", tmp_path / "p.caffemodel") == 1
    err = capsys.readouterr().err
    assert "ranks channels by their activations on the training data" in err
    assert not (tmp_path / "p.caffemodel").exists()


def test_target_params_writes_a_spec_that_reproduces_it(small, tmp_path, capsys):  # noqa: F811
    model, weights = small
    out, spec = tmp_path / "p.caffemodel", tmp_path / "solved.prototxt"
    assert _run("prune", "-model", model, "-weights", weights, "-input_shape", "1,1,28,28",
                "-method", "l1-filter", "-target_params", "0.6", "-output", out,
                "-output_spec", spec) == 0
    text = capsys.readouterr().out
    assert "solved per-layer ratios (global ranking of l1-filter scores): params" in text
    solved = load_spec(str(spec))
    assert solved.method == "l1-filter" and [e.name for e in solved.layer] == ["conv1"]
    assert spec.read_text().startswith("# Per-layer ratios solved by caffe-lite prune for "
                                       "target_params 0.6")
    # conv1 (4 filters of 25 + bias) feeds ip1 (10 x 256 + 10): params 2,674; a channel takes
    # 26 + 640, so 2 go (1,342 = 50.2 % remain, within 60 %).
    assert "params 2,674 -> 1,342" in text
    again = tmp_path / "again.caffemodel"
    assert _run("prune", "-model", model, "-weights", weights, "-input_shape", "1,1,28,28",
                "-spec", spec, "-output", again) == 0
    assert again.read_bytes() == out.read_bytes()
    # ... and `train -prune_spec` prunes to it gradually.
    db = _mnist_like_lmdb(tmp_path, n=60)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{model}" base_lr: 0.01 lr_policy: "fixed" max_iter: 4 '
                      f'random_seed: 3 solver_mode: CPU snapshot_prefix: "{tmp_path}/t"')
    assert _run("train", "-solver", solver, "-weights", weights, "-train_source", db,
                "-test_source", db, "-prune_spec", spec, "-prune_schedule", "0,2,1") == 0
    trained = _w(tmp_path / "t_iter_4.caffemodel")["conv1"]
    assert sum(not trained[c].any() for c in range(4)) == 2


def test_target_from_a_sensitivity_scan(small, tmp_path, capsys):  # noqa: F811
    model, weights = small
    db = _mnist_like_lmdb(tmp_path, n=100)
    scan = tmp_path / "s.csv"
    assert _run("sensitivity", "-model", model, "-weights", weights, "-test_source", db,
                "-iterations", "2", "-sparsities", "0.25,0.5,0.75", "-layers", "conv1",
                "-method", "l1-filter", "-output_csv", scan) == 0
    out = tmp_path / "p.caffemodel"
    assert _run("prune", "-model", model, "-weights", weights, "-input_shape", "1,1,28,28",
                "-method", "l1-filter", "-target_flops", "0.5", "-sensitivity_csv", scan,
                "-output", out) == 0
    assert "sensitivity scan of l1-filter scores" in capsys.readouterr().out
    # FLOPs 17,920 (conv1 2 x 100 x 64 positions, ip1 2 x 2,560); a channel 3,200 + 1,280:
    # 2 channels reach 50 %.
    assert sum(not _w(out)["conv1"][c].any() for c in range(4)) == 2
    bad = _spec(tmp_path, "a,b\n1,2\n", "bad.csv")
    assert _run("prune", "-model", model, "-weights", weights, "-input_shape", "1,1,28,28",
                "-method", "l1-filter", "-target_flops", "0.5", "-sensitivity_csv", bad,
                "-output", tmp_path / "q.caffemodel") == 1
    assert "not a sensitivity CSV" in capsys.readouterr().err


def test_output_spec_needs_a_target(small, tmp_path, capsys):  # noqa: F811
    model, weights = small
    assert _run("prune", "-model", model, "-weights", weights, "-input_shape", "1,1,28,28",
                "-method", "l1-filter", "-sparsity", "0.5", "-output", tmp_path / "p.caffemodel",
                "-output_spec", tmp_path / "s.prototxt") == 1
    assert "go with -target_params or -target_flops" in capsys.readouterr().err


def test_train_bn_scale_l1_without_pruning(tmp_path, capsys):
    from test_pruning_ratios import SLIM
    net = tmp_path / "slim.prototxt"
    net.write_text(SLIM)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{net}" base_lr: 0.05 lr_policy: "fixed" max_iter: 5 '
                      f'random_seed: 3 solver_mode: CPU snapshot_prefix: "{tmp_path}/s"')
    spec = _spec(tmp_path, "bn_scale_l1: 0.5")
    assert _run("train", "-solver", solver, "-prune_spec", spec) == 0
    w = dict(load_weights(str(tmp_path / "s_iter_5.caffemodel")))
    assert all(np.count_nonzero(b) == b.size for b in w["conv"])   # nothing pruned
    assert _run("train", "-solver", mlp_solver(tmp_path / "m", max_iter=2), "-bn_scale_l1",
                "0.1") == 1
    assert "no Scale layer after a BatchNorm" in capsys.readouterr().err
