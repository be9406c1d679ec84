"""A snapshot continues the same run bit for bit: training that reads an LMDB (random crop and
mirror), two HDF5 sources (shuffled and not), an image list (shuffled, crop and mirror), a
DummyData noise source and Dropout -- every batch size not dividing its data set, iter_size 2,
with a test net -- is snapshotted, resumed in a fresh process, and compared with the run
that was never interrupted: the caffemodels byte for byte, the solver history, the random
and read state in the sidecar, and every loss, learning-rate and test-output line logged
after the resume point.  The same on the GPU path (the kernel emulator, or a real GPU)."""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

import caffe_lite
from caffe_lite.io import array_to_datum
from caffe_lite.proto import caffe_lite_pb2, caffe_pb2
from caffe_lite.solvers import get_solver

from data_util import write_lmdb

ROOT = pathlib.Path(__file__).resolve().parents[1]
EMU = ROOT / "tests" / "gpu_emu"
BATCH = 5

NET = """name: "resume"
layer {{ name: "lmdb" type: "Data" top: "a" top: "label"
  transform_param {{ crop_size: 5 mirror: true scale: 0.00390625 }}
  data_param {{ source: "{db}" batch_size: {b} backend: LMDB prefetch: 3 }} }}
layer {{ name: "h5s" type: "HDF5Data" top: "hx" top: "hy"
  hdf5_data_param {{ source: "{h5s}" batch_size: {b} shuffle: true }} }}
layer {{ name: "h5p" type: "HDF5Data" top: "px" top: "py"
  hdf5_data_param {{ source: "{h5p}" batch_size: {b} }} }}
layer {{ name: "img" type: "ImageData" top: "im" top: "iml"
  transform_param {{ crop_size: 4 mirror: true scale: 0.00390625 }}
  image_data_param {{ source: "{imgs}" root_folder: "{root}/" batch_size: {b} shuffle: true
    is_color: false }} }}
layer {{ name: "noise" type: "DummyData" top: "noise"
  dummy_data_param {{ shape {{ dim: {b} dim: 3 }} data_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "silence" type: "Silence" bottom: "hy" bottom: "py" bottom: "iml" }}
layer {{ name: "fa" type: "Flatten" bottom: "a" top: "fa" }}
layer {{ name: "fi" type: "Flatten" bottom: "im" top: "fi" }}
layer {{ name: "cat" type: "Concat" bottom: "fa" bottom: "hx" bottom: "px" bottom: "fi"
  bottom: "noise" top: "cat" }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "cat" top: "ip1"
  inner_product_param {{ num_output: 16 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "drop" type: "Dropout" bottom: "ip1" top: "ip1"
  dropout_param {{ dropout_ratio: 0.3 }} }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
layer {{ name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc"
  include {{ phase: TEST }} }}
"""

SOLVER = """net: "{net}"
test_iter: 2 test_interval: 4 test_initialization: false
base_lr: 0.05 momentum: 0.9 weight_decay: 0.0005 lr_policy: "step" gamma: 0.5 stepsize: 5
iter_size: {iter_size} max_iter: {max_iter} snapshot: {snapshot} display: 1 random_seed: 5
snapshot_prefix: "{prefix}" snapshot_after_train: false
"""


def make_data(d):
    """Data sets whose sizes no batch (5, or 10 with iter_size 2) divides: LMDB 37 records,
    HDF5 11 + 8 rows (shuffled) and 9 + 14 rows (in order), 17 images."""
    d.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(42)
    write_lmdb(d / "db", [(b"%08d" % i, array_to_datum(g.integers(0, 256, (1, 6, 6), np.uint8),
                                                        int(g.integers(0, 3)))
                           .SerializeToString()) for i in range(37)])
    for name, sizes, (x, y) in (("h5s", (11, 8), ("hx", "hy")), ("h5p", (9, 14), ("px", "py"))):
        files = []
        for k, n in enumerate(sizes):
            f = d / f"{name}{k}.h5"
            with h5py.File(f, "w") as h:
                h[x] = g.normal(size=(n, 4)).astype(np.float32)
                h[y] = g.integers(0, 3, n).astype(np.float32)
            files.append(str(f))
        (d / f"{name}.txt").write_text("\n".join(files) + "\n")
    from PIL import Image
    (d / "img").mkdir(exist_ok=True)
    lines = []
    for i in range(17):
        Image.fromarray(g.integers(0, 256, (6, 6), np.uint8)).save(d / "img" / f"{i}.png")
        lines.append(f"{i}.png {i % 3}")
    (d / "img.txt").write_text("\n".join(lines) + "\n")
    net = d / "net.prototxt"
    net.write_text(NET.format(db=d / "db", h5s=d / "h5s.txt", h5p=d / "h5p.txt",
                              imgs=d / "img.txt", root=d / "img", b=BATCH))
    return net


def write_solver(path, net, prefix, max_iter=12, snapshot=4, iter_size=2, mode="CPU"):
    path.write_text(SOLVER.format(net=net, prefix=prefix, max_iter=max_iter, snapshot=snapshot,
                                  iter_size=iter_size) + f"solver_mode: {mode}\n")
    pathlib.Path(prefix).parent.mkdir(parents=True, exist_ok=True)  # `train` creates none
    return path


def cli(args, device="cpu", cwd=None):
    """`caffe-lite ARGS` in a fresh process; returns its log (stderr)."""
    env = dict(os.environ)
    paths = [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    if device == "emulator":
        paths.insert(0, str(EMU))
        cmd = [sys.executable, str(EMU / "run_cli.py")]
    else:
        cmd = [sys.executable, "-m", "caffe_lite"]
    if device != "cpu":
        args = list(args) + ["-gpu", "0"]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    res = subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, cwd=cwd,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return res.stderr


_METRIC = re.compile(r"\] (Iteration \d+, (loss|lr|Testing).*|    (Train|Test) net output.*)$")


def metric_lines(log, start_iter):
    """The loss / lr / test lines logged from iteration `start_iter` on."""
    lines = [m.group(1) for m in map(_METRIC.search, log.splitlines()) if m]
    first = next(i for i, line in enumerate(lines) if line.startswith(f"Iteration {start_iter},"))
    return lines[first:]


def sidecar(path):
    ex = caffe_lite_pb2.SolverExtras.FromString(pathlib.Path(path).read_bytes())
    return json.loads(ex.rng_state), json.loads(ex.layer_state), ex.weights_sha256


def history(path):
    s = caffe_pb2.SolverState.FromString(pathlib.Path(path).read_bytes())
    return s.iter, [np.asarray(h.data, np.float32) for h in s.history]


def check_same_run(full_prefix, resumed_prefix, it):
    a, b = pathlib.Path(f"{full_prefix}_iter_{it}"), pathlib.Path(f"{resumed_prefix}_iter_{it}")
    assert a.with_suffix(".caffemodel").read_bytes() == b.with_suffix(".caffemodel").read_bytes()
    ia, ha = history(a.with_suffix(".solverstate"))
    ib, hb = history(b.with_suffix(".solverstate"))
    assert ia == ib == it and len(ha) == len(hb) == 4
    for x, y in zip(ha, hb):
        assert x.tobytes() == y.tobytes()
    assert sidecar(a.with_suffix(".masks")) == sidecar(b.with_suffix(".masks"))


def resume_matches(tmp_path, device):
    net = make_data(tmp_path / "data")
    mode = "CPU" if device == "cpu" else "GPU"
    full = tmp_path / "full" / "run"
    full_log = cli(["train", "-solver", str(write_solver(tmp_path / "full.prototxt", net, full,
                                                         mode=mode))], device)
    _, layer_state, _ = sidecar(f"{full}_iter_8.masks")
    # the snapshot describes the batches the net consumed, mid-epoch: 8 iterations x 2 x 5
    assert layer_state["train/lmdb"]["position"] == {"epoch": 2, "index": 6, "size": 37,
                                                     "seed": None}
    assert layer_state["train/img"]["position"]["epoch"] == 4
    assert layer_state["train/img"]["position"]["index"] == 80 % 17
    assert layer_state["train/h5p"]["position"]["files"]["epoch"] == 3
    assert layer_state["train/h5p"]["position"]["row"] == (80 - 3 * 23) - 9
    assert layer_state["train/h5p"]["position"]["files"]["index"] == 1
    assert layer_state["test0/lmdb"]["position"]["index"] == 2 * BATCH  # tested once, at 4
    for start in (4, 8):
        prefix = tmp_path / f"from{start}" / "run"
        solver = write_solver(tmp_path / f"from{start}.prototxt", net, prefix, mode=mode)
        log = cli(["train", "-solver", str(solver), "-snapshot",
                   f"{full}_iter_{start}.solverstate"], device)
        assert f"Resuming from {full}_iter_{start}.solverstate at iteration {start}" in log
        check_same_run(full, prefix, 12)
        if start == 4:
            check_same_run(full, prefix, 8)
        assert metric_lines(log, start) == metric_lines(full_log, start)
        assert len(metric_lines(log, start)) >= 19


def test_resume_in_a_fresh_process_is_bit_exact(tmp_path):
    resume_matches(tmp_path, "cpu")


def test_resume_on_the_gpu_path_emulated_is_bit_exact(tmp_path):
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no C++ compiler (g++) to build the CPU emulator of the CUDA kernels")
    resume_matches(tmp_path, "emulator")


@pytest.mark.gpu
def test_resume_on_a_gpu_is_bit_exact(tmp_path):
    from caffe_lite.backend import gpu
    ok, reason = gpu.available()
    if not ok:
        pytest.skip(f"needs PyCUDA and a CUDA device: {reason}")
    resume_matches(tmp_path, "gpu")


def test_resume_in_the_same_process_off_the_snapshot_schedule(tmp_path):
    """Snapshot at an odd iteration (mid-epoch everywhere), resume in this process."""
    net = make_data(tmp_path / "data")
    text = write_solver(tmp_path / "s.prototxt", net, tmp_path / "snap" / "run", max_iter=9,
                        snapshot=0, iter_size=1).read_text()
    a = get_solver(text)
    a.step(3)
    a.snapshot()
    a.step(6)
    full = {n: [b.data.copy() for b in p] for n, p in a.net.params.items()}
    results = a.test_all()
    b = get_solver(text)
    b.restore(str(tmp_path / "snap" / "run_iter_3.solverstate"))
    b.step(6)
    for n, blobs in full.items():
        for x, y in zip(blobs, b.net.params[n]):
            assert x.tobytes() == y.data.tobytes()
    assert [r["acc"] for r in b.test_all()] == [r["acc"] for r in results]
    for s in (a, b):
        s.net.close()
        for t in s.test_nets:
            t.close()


def test_data_layer_state_is_what_the_net_consumed_not_what_was_prefetched(tmp_path):
    """The prefetch thread runs ahead; the state and a restart follow the consumer."""
    import time
    net = make_data(tmp_path / "data")
    from caffe_lite.net import Net
    param = caffe_pb2.NetParameter()
    from google.protobuf import text_format
    text_format.Parse(net.read_text(), param)
    caffe_lite.set_random_seed(3)
    a = Net(param, caffe_lite.TRAIN)
    layer = a.layer_dict["lmdb"]
    start = layer.state_dict()
    assert start["position"] == {"epoch": 0, "index": 0, "size": 37, "seed": None}
    for _ in range(3):
        a.forward()
    time.sleep(0.3)  # let the thread fill its queue (3 batches ahead)
    state = layer.state_dict()
    assert state["position"]["index"] == 3 * BATCH

    def batches(n):
        out = []
        for _ in range(n):
            a.forward()
            out.append(a.blobs["a"].data.copy())
        return out
    expect = batches(9)
    layer.load_state_dict(state)
    got = batches(9)
    for x, y in zip(expect, got):
        np.testing.assert_array_equal(x, y)
    # back to the start: the first batches again (crops and flips included)
    layer.load_state_dict(start)
    caffe_lite.set_random_seed(3)
    b = Net(param, caffe_lite.TRAIN)
    for _ in range(4):
        a.forward()
        b.forward()
        np.testing.assert_array_equal(a.blobs["a"].data, b.blobs["a"].data)
    a.close()
    b.close()


MEMORY_NET = """name: "mem"
layer { name: "data" type: "MemoryData" top: "data" top: "label"
  memory_data_param { batch_size: 4 channels: 3 height: 1 width: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "drop" type: "Dropout" bottom: "ip" top: "ip" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


@pytest.mark.parametrize("arrays_first", [True, False])
def test_memory_data_resumes_at_its_item(tmp_path, arrays_first):
    g = np.random.default_rng(1)
    x = g.normal(size=(12, 3, 1, 1)).astype(np.float32)
    y = g.integers(0, 2, 12).astype(np.float32)
    net = tmp_path / "net.prototxt"
    net.write_text(MEMORY_NET)
    text = (f'net: "{net}" base_lr: 0.1 lr_policy: "fixed" random_seed: 2 display: 0 '
            f'snapshot_prefix: "{tmp_path}/m"')
    a = get_solver(text)
    a.net.set_input_arrays(x, y)
    a.step(4)  # 16 items read: mid-way through the second pass
    a.snapshot()
    a.step(5)
    b = get_solver(text)
    if arrays_first:
        b.net.set_input_arrays(x, y)
    b.restore(str(tmp_path / "m_iter_4.solverstate"))
    if not arrays_first:
        b.net.set_input_arrays(x, y)
    assert b.net.layer_dict["data"].pos == 4
    b.step(5)
    for pa, pb in zip(a.net.learnable_params, b.net.learnable_params):
        assert pa.data.tobytes() == pb.data.tobytes()
