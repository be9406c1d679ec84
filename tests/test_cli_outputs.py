"""The CLI's outputs and counts, checked before any work with one line each: an existing
directory as -output (even with -overwrite), a missing directory (nothing is created, for
any verb), -iterations below 1, compute-mean's -overwrite; and the MNIST example stopping
on Ctrl-C as `caffe-lite train` does, with progress shown while it trains."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import caffe_lite
from caffe_lite.cli import main

from data_util import datum_lmdb, restore_logging  # noqa: F401  (autouse fixture)
from pruning_nets import mlp_solver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NET = ('name: "n" layer { name: "data" type: "Input" top: "data" '
       'input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } } '
       'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
       'inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }')


@pytest.fixture
def model(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    caffe_lite.set_random_seed(3)
    net = caffe_lite.Net(str(tmp_path / "net.prototxt"), caffe_lite.TEST)
    net.save(str(tmp_path / "w.caffemodel"))
    return str(tmp_path / "net.prototxt"), str(tmp_path / "w.caffemodel")


def _one_line_error(capsys, verb):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"caffe-lite {verb}: error: "), err
    return err[0]


def _prune(model, output, *extra):
    return main(["prune", "-model", model[0], "-weights", model[1], "-output", str(output),
                 "-sparsity", "0.5", *extra])


def test_prune_output_that_is_a_directory(model, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    for extra in ([], ["-overwrite"]):
        assert _prune(model, tmp_path / "out", *extra) == 1
        assert "is a directory; give a file name" in _one_line_error(capsys, "prune")
    assert os.listdir(tmp_path / "out") == []


def test_no_verb_creates_directories(model, tmp_path, capsys):
    missing = tmp_path / "new" / "dir"
    assert _prune(model, missing / "x.caffemodel") == 1
    line = _one_line_error(capsys, "prune")
    assert f"-output {missing / 'x.caffemodel'}: directory {missing} does not exist" in line
    datum_lmdb(tmp_path / "db", [np.zeros((1, 2, 2), np.uint8)] * 3)
    assert main(["compute-mean", str(tmp_path / "db"), str(missing / "m.binaryproto")]) == 1
    assert "does not exist; create it first" in _one_line_error(capsys, "compute-mean")
    assert main(["convert-imageset", str(tmp_path) + "/", str(tmp_path / "list.txt"),
                 str(missing / "db")]) == 1
    assert "does not exist; create it first" in _one_line_error(capsys, "convert-imageset")
    solver = mlp_solver(tmp_path / "run", max_iter=2)
    solver.write_text(solver.read_text().replace("/snap/mlp", "/nosnap/mlp"))
    assert main(["train", "-solver", str(solver)]) == 1
    assert "snapshot_prefix" in _one_line_error(capsys, "train")
    assert not (tmp_path / "new").exists() and not (tmp_path / "run" / "nosnap").exists()
    # with the directory there, prune writes
    missing.mkdir(parents=True)
    assert _prune(model, missing / "x.caffemodel") == 0


@pytest.mark.parametrize("n", ["0", "-5"])
def test_iterations_below_one_are_refused(model, capsys, n):
    assert main(["test", "-model", model[0], "-weights", model[1], "-iterations", n]) == 1
    assert f"-iterations must be >= 1, got {n}" in _one_line_error(capsys, "test")
    assert main(["time", "-model", model[0], "-iterations", n]) == 1
    assert f"-iterations must be >= 1, got {n}" in _one_line_error(capsys, "time")


def test_compute_mean_overwrite(tmp_path, capsys):
    from caffe_lite.data import load_mean_file
    datum_lmdb(tmp_path / "a", [np.full((1, 2, 2), 10, np.uint8)] * 2)
    datum_lmdb(tmp_path / "b", [np.full((1, 2, 2), 30, np.uint8)] * 2)
    out = str(tmp_path / "mean.binaryproto")
    assert main(["compute-mean", str(tmp_path / "a"), out]) == 0
    capsys.readouterr()
    assert main(["compute-mean", str(tmp_path / "b"), out]) == 1
    assert "already exists; refusing to overwrite it" in _one_line_error(capsys, "compute-mean")
    assert load_mean_file(out).ravel().tolist() == [10.0] * 4
    assert main(["compute-mean", str(tmp_path / "b"), out, "-overwrite"]) == 0
    assert load_mean_file(out).ravel().tolist() == [30.0] * 4


def test_bad_gpu_flag_and_out_of_memory_are_one_line(model, capsys, monkeypatch):
    assert main(["test", "-model", model[0], "-gpu", "abc"]) == 1
    assert "-gpu takes device ids" in _one_line_error(capsys, "test")
    from caffe_lite.commands import caffe_tools

    def no_memory(*a, **k):
        raise MemoryError
    monkeypatch.setattr(caffe_tools, "select_mode", no_memory)
    assert main(["test", "-model", model[0]]) == 1
    assert _one_line_error(capsys, "test") == "caffe-lite test: error: out of memory"


# --- the MNIST example ------------------------------------------------------------------------
def _example():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "prune_finetune", os.path.join(ROOT, "examples", "mnist", "prune_finetune.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_example_training_shows_progress_and_stops_on_a_signal(tmp_path, capsys):
    """The example's train(): the solver's own SIGINT handling (the iteration in flight ends,
    a snapshot is written, training stops) and progress lines when not on a terminal."""
    ex = _example()
    solver = caffe_lite.get_solver(str(mlp_solver(tmp_path, max_iter=20)))
    ex.train(solver)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("iteration")]
    assert [ln.split(" (")[0] for ln in lines] == [f"iteration {i}" for i in range(2, 21, 2)]

    solver = caffe_lite.get_solver(str(mlp_solver(tmp_path / "b", max_iter=20)))

    class Interrupt:
        def on_start(self, s):
            if s.iter == 5:
                os.kill(os.getpid(), signal.SIGINT)
    solver.callbacks.append(Interrupt())
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(ex.Stopped, match="stopped at iteration 6; snapshot .*mlp_iter_6"):
        ex.train(solver)
    assert signal.getsignal(signal.SIGINT) is before
    assert (tmp_path / "b" / "snap" / "mlp_iter_6.caffemodel").exists()


def test_example_ctrl_c_is_one_line(mnist_dir, models_dir, tmp_path):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "examples", "mnist",
                                                          "prune_finetune.py"),
                             "--shared", str(models_dir.parent), "--workdir", str(tmp_path),
                             "--train-iters", "100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("training LeNet"):
                break
        time.sleep(2.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("prune_finetune.py: stopped at iteration ")
    assert lines[0].split("snapshot ")[1].endswith(".caffemodel")
    assert os.path.exists(lines[0].split("snapshot ")[1])
