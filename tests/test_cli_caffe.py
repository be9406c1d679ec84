"""Caffe's verbs run in-process: train (with SIGINT / SIGTERM snapshots that resume), test and
time."""
import os
import signal

import numpy as np
import pytest

import caffe_lite
from caffe_lite.cli import main
from caffe_lite.solvers.solver import Solver

from pruning_nets import mlp_solver, restore_logging  # noqa: F401

pytestmark = pytest.mark.usefixtures("restore_logging")


@pytest.fixture
def keep_signal_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def _weights(path, net_file):
    net = caffe_lite.Net(str(net_file), caffe_lite.TEST, weights=str(path))
    return {n: [b.data.copy() for b in p] for n, p in net.params.items()}


def test_train_writes_the_snapshots(tmp_path, keep_signal_handlers):
    solver = mlp_solver(tmp_path, max_iter=10, snapshot=5, extra="snapshot_after_train: true")
    assert main(["train", "-solver", str(solver)]) == 0
    snaps = sorted(os.listdir(tmp_path / "snap"))
    assert snaps == ["mlp_iter_10.caffemodel", "mlp_iter_10.masks", "mlp_iter_10.solverstate",
                     "mlp_iter_5.caffemodel", "mlp_iter_5.masks", "mlp_iter_5.solverstate"]
    # A second run would overwrite them: refused without -overwrite.
    assert main(["train", "-solver", str(solver)]) == 1
    assert main(["train", "-solver", str(solver), "-overwrite"]) == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_train_snapshots_and_the_snapshot_resumes(tmp_path, monkeypatch,
                                                                 keep_signal_handlers, signum):
    ref_dir = tmp_path / "ref"
    ref_solver = mlp_solver(ref_dir, max_iter=20, extra="snapshot_after_train: true")
    assert main(["train", "-solver", str(ref_solver)]) == 0

    class Interrupt:
        def on_start(self, solver):
            if solver.iter == 7:
                os.kill(os.getpid(), signum)

    install = Solver.install_signal_handlers

    def install_and_interrupt(self):
        previous = install(self)
        self.callbacks.append(Interrupt())
        return previous
    monkeypatch.setattr(Solver, "install_signal_handlers", install_and_interrupt)
    d = tmp_path / "run"
    solver = mlp_solver(d, max_iter=20, extra="snapshot_after_train: true")
    assert main(["train", "-solver", str(solver)]) == 0
    # The iteration in flight (7) finished, then the snapshot was taken and training stopped.
    assert sorted(os.listdir(d / "snap")) == ["mlp_iter_8.caffemodel", "mlp_iter_8.masks",
                                              "mlp_iter_8.solverstate"]
    monkeypatch.setattr(Solver, "install_signal_handlers", install)
    state = d / "snap" / "mlp_iter_8.solverstate"
    assert main(["train", "-solver", str(solver), "-snapshot", str(state)]) == 0
    got = _weights(d / "snap" / "mlp_iter_20.caffemodel", d / "mlp.prototxt")
    ref = _weights(ref_dir / "snap" / "mlp_iter_20.caffemodel", ref_dir / "mlp.prototxt")
    for n in ref:
        for a, b in zip(ref[n], got[n]):
            np.testing.assert_array_equal(b, a)


CONST_NET = """name: "const"
layer { name: "data" type: "DummyData" top: "data" top: "target"
  dummy_data_param { shape { dim: 4 dim: 6 } shape { dim: 4 dim: 3 }
    data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 0.5 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip2" bottom: "target" top: "loss" }
"""


def test_test_scores_the_weights(tmp_path, capsys):
    model = tmp_path / "const.prototxt"
    model.write_text(CONST_NET)
    net = caffe_lite.Net(str(model), caffe_lite.TEST)
    net.save(str(tmp_path / "w.caffemodel"))
    w1, b1 = (p.data for p in net.params["ip1"])
    w2, b2 = (p.data for p in net.params["ip2"])
    h = np.maximum(np.ones((4, 6)) @ w1.T.astype(np.float64) + b1, 0)
    expected = ((h @ w2.T + b2 - 0.5) ** 2).sum() / (2 * 4)
    assert main(["test", "-model", str(model), "-weights", str(tmp_path / "w.caffemodel"),
                 "-iterations", "3"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    name, value = line.split(" = ")
    assert name == "loss" and float(value) == pytest.approx(expected, rel=1e-5)


def test_time_prints_a_forward_backward_table(tmp_path, capsys):
    model = tmp_path / "const.prototxt"
    model.write_text(CONST_NET)
    assert main(["time", "-model", str(model), "-iterations", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["layer", "type", "forward", "ms", "backward", "ms"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert list(rows) == ["data", "ip1", "relu1", "ip2", "loss", "total"]
    assert rows["ip1"][1] == "InnerProduct"
    fwd, bwd = float(rows["total"][1]), float(rows["total"][2])
    assert fwd > 0 and bwd > 0
    assert fwd == pytest.approx(sum(float(r[2]) for k, r in rows.items() if k != "total"),
                                abs=0.01)


def test_bad_input_is_one_line_and_exit_1(tmp_path, capsys):
    assert main(["test", "-model", str(tmp_path / "nope.prototxt"), "-iterations", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("caffe-lite test: error: ") and "nope.prototxt" in err[-1]
