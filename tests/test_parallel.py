"""Data-parallel training over MPI (caffe_lite.parallel), run with `mpirun -n 2` (oversubscribed
on a small machine): where MPI is installed these run in the default suite; elsewhere they skip
with the reason.  One launch of tests/mpi_worker.py runs the many-rank side of most checks;
each test compares it with one process here:

* the six solvers, with masks, L1 / L2 weight decay and gradient clipping (and iter_size 2,
  and gradual pruning): 2 ranks x batch B give the weights, history and masks of one process x
  batch 2B over the same records, within float32 summation tolerance;
* every sharded data layer (LMDB with rand_skip, HDF5 and ImageData shuffled, MemoryData): rank
  r's batch t is records r, r + 2, ... of the one-process batch t of 2B, across epoch ends;
* masks that differ at the start are an error; a pruning decision only one rank made gives way
  to rank 0's.

Launched through the CLI: a 2-rank snapshot resumes with 2 ranks bit-exactly (and with one
process as documented), an error on one rank ends the job with one line, and a rank killed
mid-run ends the job and leaves every snapshot set whole."""
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import caffe_lite
from caffe_lite.io import array_to_datum
from caffe_lite.proto import caffe_lite_pb2
from caffe_lite.solvers import get_solver

from data_util import write_lmdb
from mpi_worker import set_masks  # noqa: F401  (tests/ is on sys.path, as for data_util)

ROOT = pathlib.Path(__file__).resolve().parents[1]
RANKS, B, ITERS = 2, 3, 6


# --- launching ---------------------------------------------------------------------------------
def _mpirun():
    """(mpirun path, is Open MPI) or skip: the tests need mpi4py and an mpirun."""
    import importlib.util
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("MPI is not installed (pip install 'caffe-lite[mpi]' brings mpi4py and Open "
                    "MPI): the data-parallel tests need it")
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    mpirun = shutil.which("mpirun", path=path) or shutil.which("mpiexec", path=path)
    if mpirun is None:
        pytest.skip("mpi4py is installed but there is no mpirun (pip install 'caffe-lite[mpi]' "
                    "brings Open MPI's)")
    version = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=60)
    return mpirun, "Open MPI" in version.stdout + version.stderr


def mpirun(args, n=RANKS, timeout=300, wait=True, paths=()):
    """Run `python ARGS` on n ranks (`paths` first on PYTHONPATH); returns the CompletedProcess
    (or the Popen with wait=False)."""
    launcher, openmpi = _mpirun()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in paths] + [str(ROOT)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(CAFFE_LITE_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = [launcher, "-n", str(n)] + (["--oversubscribe"] if openmpi else []) + \
        [sys.executable] + [str(a) for a in args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def cli_args(*args):
    return ["-m", "caffe_lite", *args]


# --- data: record i has label i (id) and label i % 3 (class) ------------------------------------
N_RECORDS, N_MEMORY = 37, 36

DATA = {
    "lmdb": 'layer {{ name: "d" type: "Data" top: "x" top: "{y}" transform_param {{ scale: '
            '0.00390625 }} data_param {{ source: "{d}/db_{y}" batch_size: {b} backend: LMDB '
            '{extra} }} }}',
    "hdf5": 'layer {{ name: "d" type: "HDF5Data" top: "x" top: "{y}" hdf5_data_param {{ '
            'source: "{d}/h5.txt" batch_size: {b} shuffle: true }} }}',
    "image": 'layer {{ name: "d" type: "ImageData" top: "x" top: "{y}" transform_param {{ '
             'scale: 0.00390625 {extra} }} image_data_param {{ source: "{d}/img_{y}.txt" '
             'root_folder: "{d}/img/" batch_size: {b} shuffle: true is_color: false }} }}',
    "memory": 'layer {{ name: "d" type: "MemoryData" top: "x" top: "{y}" memory_data_param {{ '
              'batch_size: {b} channels: 1 height: 6 width: 6 }} }}',
}

BODY = """
layer { name: "conv" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 4
  kernel_size: 3 weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "c" top: "c" }
layer { name: "ip1" type: "InnerProduct" bottom: "c" top: "h" inner_product_param {
  num_output: 8 weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu2" type: "ReLU" bottom: "h" top: "h" }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "o" inner_product_param {
  num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "o" bottom: "y" top: "loss" }
"""

# (solver type, its settings, data source, regularization, iter_size, gradual pruning)
SOLVERS = [
    ("SGD", "momentum: 0.9 base_lr: 0.05", "lmdb", "L2", 1, None),
    ("Nesterov", "momentum: 0.9 base_lr: 0.05", "hdf5", "L1", 1, None),
    ("AdaGrad", "base_lr: 0.05", "image", "L2", 1, None),
    ("RMSProp", "rms_decay: 0.98 base_lr: 0.01", "memory", "L1", 1, None),
    ("AdaDelta", "momentum: 0.95 delta: 1e-6 base_lr: 1.0", "lmdb", "L2", 1,
     'method: "magnitude" layer { name: "ip1" sparsity: 0.7 } layer { name: "ip2" exclude: true }'
     ' gradual { begin_iter: 1 num_steps: 2 frequency: 2 }'),
    ("Adam", "momentum: 0.9 momentum2: 0.999 base_lr: 0.01", "hdf5", "L2", 2, None),
]


# clip_gradients: between the gradient norms of the iterations, so that some are clipped and
# some not (clipping in every iteration would hide a wrong gradient scale)
CLIP = {"SGD": 0.18, "Nesterov": 0.5, "AdaGrad": 0.65, "RMSProp": 0.3, "AdaDelta": 0.25,
        "Adam": 0.75}


# the masks' live fraction: at most 1/2 (buckets.SPARSE_DENSITY), only live entries are sent
LIVE = {"SGD": 0.4, "Nesterov": 0.6, "AdaGrad": 0.6, "RMSProp": 0.3, "AdaDelta": 0.6,
        "Adam": 0.6}


def make_data(d):
    from PIL import Image
    d.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(5)
    images = g.integers(0, 256, (N_RECORDS, 1, 6, 6), np.uint8)
    for y, labels in (("id", range(N_RECORDS)), ("y", [i % 3 for i in range(N_RECORDS)])):
        write_lmdb(d / f"db_{y}", [(b"%08d" % i, array_to_datum(a, lab).SerializeToString())
                                   for i, (a, lab) in enumerate(zip(images, labels))])
    files, start = [], 0
    for k, n in enumerate((20, 17)):  # two files: the shuffle permutes files and rows
        with h5py.File(d / f"h{k}.h5", "w") as h:
            h["x"] = images[start:start + n].astype(np.float32) / 256
            h["id"] = np.arange(start, start + n, dtype=np.float32)
            h["y"] = np.arange(start, start + n, dtype=np.float32) % 3
        files.append(str(d / f"h{k}.h5"))
        start += n
    (d / "h5.txt").write_text("\n".join(files) + "\n")
    (d / "img").mkdir(exist_ok=True)
    for i, a in enumerate(images):
        Image.fromarray(a[0]).save(d / "img" / f"{i}.png")
    for y in ("id", "y"):
        (d / f"img_{y}.txt").write_text("".join(f"{i}.png {i if y == 'id' else i % 3}\n"
                                                for i in range(N_RECORDS)))
    x = g.standard_normal((N_MEMORY, 1, 6, 6)).astype(np.float32)
    np.savez(d / "memory_id.npz", x=x, y=np.arange(N_MEMORY, dtype=np.float32))
    np.savez(d / "memory_y.npz", x=x, y=np.arange(N_MEMORY, dtype=np.float32) % 3)


def data_layer(d, source, b, top, extra=""):
    return DATA[source].format(d=d, b=b, y=top, extra=extra)


def solver_text(d, case, b, iter_size=None, clip=None):
    kind, settings, source, reg, case_iter_size, _ = case
    net = d / f"net_{kind}_{b}.prototxt"
    net.write_text(f'name: "dp"\n{data_layer(d, source, b, "y")}\n{BODY}')
    return (f'net: "{net}" type: "{kind}" {settings} lr_policy: "fixed" max_iter: 100 '
            f'random_seed: 11 display: 0 weight_decay: 0.004 regularization_type: "{reg}" '
            f'clip_gradients: {CLIP[kind] if clip is None else clip} '
            f'iter_size: {iter_size or case_iter_size}')


SHARD_CASES = [("lmdb", "rand_skip: 5"), ("hdf5", ""), ("image", "mirror: true crop_size: 4"),
               ("memory", "")]
SHARD_BATCHES = 8  # 8 x 6 records: past the end of the 37 (36) records


def shard_net(d, source, b, extra):
    return f'name: "shards"\n{data_layer(d, source, b, "id", extra)}'


def cases(d):
    out = []
    for i, case in enumerate(SOLVERS):
        # buckets: one per parameter (allreduces started layer by layer during backward),
        # the default (one for these small nets), or all after backward (layer_wise false)
        out.append({"kind": "train", "name": case[0], "solver": solver_text(d, case, B),
                    "iters": ITERS, "ranks": RANKS, "pruner": case[5],
                    "memory": str(d / "memory_y.npz") if case[2] == "memory" else None,
                    "bucket_bytes": 64 if i % 3 == 0 else None,
                    "layer_wise": False if i % 3 == 2 else None, "live": LIVE[case[0]]})
    for source, extra in SHARD_CASES:
        out.append({"kind": "shards", "name": f"shard_{source}", "top": "id", "seed": 3,
                    "net": shard_net(d, source, B, extra), "batches": SHARD_BATCHES,
                    "memory": str(d / "memory_id.npz") if source == "memory" else None})
    adam = SOLVERS[5]
    out.append({"kind": "train", "name": "Adam_noclip", "iters": ITERS, "ranks": RANKS,
                "solver": solver_text(d, adam, B, clip=-1)})
    sgd = solver_text(d, SOLVERS[0], B)
    out.append({"kind": "mask_mismatch", "name": "mismatch", "solver": sgd, "iters": 2,
                "ranks": RANKS})
    out.append({"kind": "diverge", "name": "diverge", "solver": sgd, "iters": 5,
                "ranks": RANKS})
    out.append({"kind": "nccl", "name": "nccl", "solver": sgd, "iters": ITERS, "ranks": RANKS,
                "live": LIVE["SGD"]})
    (d / "drift").mkdir(exist_ok=True)
    out.append({"kind": "drift", "name": "drift", "iters": 3, "ranks": RANKS,
                "solver": sgd + f' snapshot_prefix: "{d / "drift" / "run"}"'})
    return out


@pytest.fixture(scope="module")
def worker_run(tmp_path_factory):
    """One mpirun of tests/mpi_worker.py over every case; (data dir, output dir, log)."""
    _mpirun()
    d = tmp_path_factory.mktemp("dp_data")
    make_data(d)
    out = tmp_path_factory.mktemp("dp_out")
    (d / "cases.json").write_text(json.dumps(cases(d)))
    res = mpirun([ROOT / "tests" / "mpi_worker.py", d / "cases.json", out])
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    return d, out, res.stdout + res.stderr


def rank_arrays(out, name, rank):
    with np.load(out / f"{name}_rank{rank}.npz") as z:
        return {k: z[k] for k in z.files}


def one_process(d, case, batch, iter_size=None, clip=None):
    """The reference: one process, batch `batch`, the same seed, masks and pruning."""
    text = solver_text(d, case, batch, iter_size, clip)
    caffe_lite.set_random_seed(1)
    solver = get_solver(text)
    if case[2] == "memory":
        z = np.load(d / "memory_y.npz")
        solver.net.set_input_arrays(z["x"], z["y"])
    set_masks(solver, 7, LIVE[case[0]])
    if case[5]:
        from caffe_lite.pruning import GradualPruner
        GradualPruner(solver, case[5]).attach()
    return solver


# --- N ranks x B == one process x N*B ------------------------------------------------------------
@pytest.mark.parametrize("case", SOLVERS, ids=[c[0] for c in SOLVERS])
def test_two_ranks_train_as_one_process_with_twice_the_batch(worker_run, case, caplog):
    d, out, _ = worker_run
    ranks = [rank_arrays(out, case[0], r) for r in range(RANKS)]
    for k in ranks[0]:  # every rank holds the same weights, history and masks, bit for bit
        assert ranks[0][k].tobytes() == ranks[1][k].tobytes(), k
    caplog.set_level("INFO", logger="caffe_lite")
    solver = one_process(d, case, RANKS * B)
    solver.step(ITERS)
    clipped = caplog.text.count("Gradient clipping: scaling down gradients")
    assert 0 < clipped < ITERS  # clipping acted in some iterations, not all
    got = ranks[0]
    # what each rank sent per step: pruned weights at most half alive, only their live entries
    sent = sum(int(b.cpu_mask.sum()) if b.has_mask and b.cpu_mask.mean() <= 0.5 else b.count
               for b in solver.net.learnable_params)
    assert got["sent_bytes"] == 4 * sent
    if case[0] in ("SGD", "RMSProp", "AdaDelta"):  # masks at 40 %, 30 %; pruned to 70 %
        assert sent < 0.7 * sum(b.count for b in solver.net.learnable_params)
    for i, blob in enumerate(solver.net.learnable_params):
        np.testing.assert_allclose(got[f"w{i}"], blob.cpu_data, rtol=1e-5, atol=2e-6,
                                   err_msg=f"{case[0]}: weights of param {i}")
        if blob.has_mask:
            np.testing.assert_array_equal(got[f"m{i}"], blob.cpu_mask)
            assert not got[f"w{i}"][got[f"m{i}"] == 0].any()  # pruned stays exactly 0
    for i, h in enumerate(solver.history):
        np.testing.assert_allclose(got[f"h{i}"], h, rtol=1e-5, atol=2e-6,
                                   err_msg=f"{case[0]}: history {i}")
    if case[5]:  # gradual pruning ran: ip1 reached its target
        live = got[f"m{[n for n, _ in _param_names(solver)].index('ip1/0')}"]
        assert abs(1 - live.mean() - 0.7) < 0.05
    solver.net.close()


def _param_names(solver):
    net = solver.net
    return [(f"{net._layer_names[lid]}/{pid}", None) for lid, pid in
            (net._param_layer_indices[i] for i, o in enumerate(net.param_owners) if o < 0)]


def test_iter_size_accumulates_per_rank_before_one_allreduce(worker_run):
    """Adam with iter_size 2 on 2 ranks x B = one process x 2B x iter_size 2 (checked above,
    with clipping) = one process x 4B x iter_size 1 over the same records, within float32
    tolerance -- without clipping, which Caffe applies to the gradient summed over iter_size
    before dividing by it (so clip_gradients acts iter_size times more strongly)."""
    d, out, _ = worker_run
    case = SOLVERS[5]
    assert case[4] == 2
    got = rank_arrays(out, "Adam_noclip", 0)
    for iter_size, batch in ((2, RANKS * B), (1, 2 * RANKS * B)):
        solver = one_process(d, case, batch, iter_size=iter_size, clip=-1)
        solver.step(ITERS)
        for i, blob in enumerate(solver.net.learnable_params):
            np.testing.assert_allclose(got[f"w{i}"], blob.cpu_data, rtol=1e-5, atol=2e-6)
        solver.net.close()


# --- shards --------------------------------------------------------------------------------------
@pytest.mark.parametrize("source,extra", SHARD_CASES, ids=[c[0] for c in SHARD_CASES])
def test_each_rank_reads_its_stride_of_the_one_process_stream(worker_run, source, extra):
    d, out, _ = worker_run
    caffe_lite.set_random_seed(3)
    net = caffe_lite.Net(shard_net(d, source, RANKS * B, extra), caffe_lite.TRAIN)
    if source == "memory":
        z = np.load(d / "memory_id.npz")
        net.set_input_arrays(z["x"], z["y"])
    whole = []
    for _ in range(SHARD_BATCHES):
        net.forward()
        whole.append(net.blobs["id"].data.copy())
    net.close()
    ranks = [rank_arrays(out, f"shard_{source}", r)["labels"] for r in range(RANKS)]
    n = N_MEMORY if source == "memory" else N_RECORDS
    for t in range(SHARD_BATCHES):
        for r in range(RANKS):
            np.testing.assert_array_equal(ranks[r][t], whole[t][r::RANKS], err_msg=f"batch {t}")
        assert not set(ranks[0][t]) & set(ranks[1][t])
    seen = np.concatenate([w for w in whole])[:n]  # the first epoch: every record once
    if source != "lmdb":  # (rand_skip starts the LMDB stream mid-way; it wraps in key order)
        assert sorted(seen) == list(range(n))
    if source in ("hdf5", "image"):  # shuffled: not in record order, a new order per epoch
        assert list(seen) != list(range(n))


def test_pycaffe_nccl_shape_trains_the_same(worker_run):
    """caffe.NCCL(solver, uid) + bcast + add_callback + after_backward, as pycaffe's train.py
    does, gives the DataParallel run's weights bit for bit (other buckets, same sums)."""
    _, out, _ = worker_run
    a, b = rank_arrays(out, "nccl", 0), rank_arrays(out, "SGD", 0)
    for k in b:
        if k != "sent_bytes":
            assert a[k].tobytes() == b[k].tobytes(), k


def test_weights_that_drift_apart_are_mended_at_the_snapshot(worker_run):
    """Should ranks ever hold different weights (an MPI returning different sums), the check
    at each snapshot finds it and copies rank 0's weights to every rank, with a warning."""
    d, out, log = worker_run
    a, b = rank_arrays(out, "drift", 0), rank_arrays(out, "drift", 1)
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    assert "the weights differ between ranks [1]; copying rank 0's to every rank" in log
    assert (d / "drift" / "run_iter_6.caffemodel").exists()  # rank 0 wrote the snapshot


# --- masks ---------------------------------------------------------------------------------------
def test_masks_that_differ_between_ranks_are_an_error(worker_run):
    _, out, _ = worker_run
    for r in range(RANKS):
        text = (out / f"mismatch_rank{r}.txt").read_text()
        assert "the masks differ between ranks" in text
        assert "rank 1's 'ip1' param 0" in text and "every rank must load the same" in text


def test_a_pruning_decision_of_one_rank_gives_way_to_rank_0s(worker_run):
    _, out, log = worker_run
    a, b = rank_arrays(out, "diverge", 0), rank_arrays(out, "diverge", 1)
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    assert "the ranks pruned differently; every rank now uses rank 0's" in log


# --- the CLI: snapshots, resume, failures --------------------------------------------------------
def _resume_net(tmp_path):
    from test_resume_exact import make_data as resume_data
    return resume_data(tmp_path / "data")


def _write_solver(path, net, prefix, max_iter, snapshot):
    from test_resume_exact import write_solver
    prefix.parent.mkdir(parents=True, exist_ok=True)
    return write_solver(path, net, prefix, max_iter=max_iter, snapshot=snapshot)


def _rank_states(path):
    ex = caffe_lite_pb2.SolverExtras.FromString(pathlib.Path(path).read_bytes())
    cb = {c.key: json.loads(c.json) for c in ex.callback}
    return cb["DataParallel"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`mpirun -n 2 caffe-lite train` of test_resume_exact's net (crops, mirrors, shuffles,
    Dropout, DummyData, iter_size 2, a test net), 8 iterations, snapshots every 4."""
    _mpirun()
    tmp_path = tmp_path_factory.mktemp("dp_cli")
    net = _resume_net(tmp_path)
    full = tmp_path / "full" / "run"
    res = mpirun(cli_args("train", "-solver", _write_solver(tmp_path / "full.prototxt", net,
                                                            full, 8, 4)))
    assert res.returncode == 0, res.stderr[-6000:]
    return tmp_path, net, full, res.stderr


def test_cli_snapshot_of_two_ranks_resumes_bit_exactly(cli_run):
    """Resumed from iteration 4 with 2 ranks, iteration 8 equals the uninterrupted run's byte
    for byte (and every logged loss, lr and test output); resumed with one process,
    training continues from the same place in the data."""
    from test_resume_exact import check_same_run, metric_lines
    tmp_path, net, full, full_log = cli_run
    assert full_log.count("Data-parallel training over MPI") == 1  # rank 0 logs
    assert "batch 5 per rank x 2 ranks x iter_size 2 = effective batch 20" in full_log
    assert full_log.count("Iteration 8, Testing net") == 1
    states = _rank_states(f"{full}_iter_4.masks")
    assert states["ranks"] == 2 and states["rank_states"][0] != states["rank_states"][1]
    resumed = tmp_path / "resumed" / "run"
    res = mpirun(cli_args("train", "-solver", _write_solver(tmp_path / "r.prototxt", net,
                                                            resumed, 8, 4),
                          "-snapshot", f"{full}_iter_4.solverstate"))
    assert res.returncode == 0, res.stderr[-6000:]
    check_same_run(full, resumed, 8)
    assert _rank_states(f"{full}_iter_8.masks") == _rank_states(f"{resumed}_iter_8.masks")
    assert metric_lines(res.stderr, 4) == metric_lines(full_log, 4)
    # one process from the 2-rank snapshot: the same global read position, one rank's batch
    one = tmp_path / "one" / "run"
    solver = _write_solver(tmp_path / "one.prototxt", net, one, 6, 6)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "caffe_lite", "train", "-solver", solver,
                          "-snapshot", f"{full}_iter_4.solverstate"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "holds the state of solver callback 'DataParallel', which this run does not use" \
        in res.stderr
    from test_resume_exact import sidecar
    _, at4, _ = sidecar(f"{full}_iter_4.masks")
    _, at6, _ = sidecar(f"{one}_iter_6.masks")
    pos4, pos6 = at4["train/lmdb"]["position"], at6["train/lmdb"]["position"]
    assert (pos6["epoch"] * 37 + pos6["index"]) - (pos4["epoch"] * 37 + pos4["index"]) == \
        2 * 2 * 5  # 2 iterations x iter_size 2 x batch 5, from where the 2 ranks stopped
    # three ranks from the 2-rank snapshot: the same read position, split three ways
    three = tmp_path / "three" / "run"
    res = mpirun(cli_args("train", "-solver", _write_solver(tmp_path / "three.prototxt", net,
                                                            three, 6, 6),
                          "-snapshot", f"{full}_iter_4.solverstate"), n=3)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "The snapshot was taken by 2 data-parallel rank(s), this run has 3" in res.stderr
    assert "effective batch 30" in res.stderr
    _, at6, _ = sidecar(f"{three}_iter_6.masks")
    pos6 = at6["train/lmdb"]["position"]
    assert (pos6["epoch"] * 37 + pos6["index"]) - (pos4["epoch"] * 37 + pos4["index"]) == \
        2 * 2 * 5 * 3
    states = _rank_states(f"{three}_iter_6.masks")
    assert states["ranks"] == 3 and len({json.dumps(r) for r in states["rank_states"]}) == 3


def test_gpu_path_emulated_trains_as_the_cpu_path(cli_run):
    """The same 2-rank run in GPU mode (each rank on its device, gradients through host
    memory), on the CPU emulator of the kernels: the CPU run's weights within 1e-6."""
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no C++ compiler (g++) to build the CPU emulator of the CUDA kernels")
    from caffe_lite.proto import caffe_pb2
    tmp_path, net, full, _ = cli_run
    prefix = tmp_path / "gpu" / "run"
    solver = _write_solver(tmp_path / "gpu.prototxt", net, prefix, 4, 4)
    emu = ROOT / "tests" / "gpu_emu"
    res = mpirun([emu / "run_cli.py", "train", "-solver", solver, "-gpu", "0"], paths=[emu])
    assert res.returncode == 0, res.stderr[-6000:]
    assert "Using GPU 0" in res.stderr
    a, b = (caffe_pb2.NetParameter.FromString(pathlib.Path(f"{p}_iter_4.caffemodel")
                                              .read_bytes()) for p in (full, prefix))
    for la, lb in zip(a.layer, b.layer):
        for x, y in zip(la.blobs, lb.blobs):
            np.testing.assert_allclose(np.array(y.data), np.array(x.data), atol=1e-6,
                                       err_msg=la.name)


def _descendants(pid):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def _rank_pid(launcher_pid, rank):
    for pid in _descendants(launcher_pid):
        try:
            env = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"caffe_lite" in cmd and f"OMPI_COMM_WORLD_RANK={rank}".encode() in env:
            return pid
    return None


def _wait_for(path, proc, seconds=240):
    deadline = time.time() + seconds
    while not pathlib.Path(path).exists():
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        assert time.time() < deadline, f"{path} did not appear in time"
        time.sleep(0.05)


def test_sigusr1_stops_all_ranks_and_a_rank_that_dies_ends_the_job(tmp_path):
    """SIGUSR1 to mpirun (which passes it on): every rank finishes the same iteration, rank 0
    snapshots, all exit 0.  Resumed from there, rank 1 killed with SIGKILL mid-run: the job
    ends, every snapshot set on disk is whole, and training resumes from the newest."""
    launcher, openmpi = _mpirun()
    if not openmpi:
        pytest.skip("finding a rank's process uses Open MPI's environment variables")
    net = _resume_net(tmp_path)
    prefix = tmp_path / "snap" / "run"
    solver = _write_solver(tmp_path / "s.prototxt", net, prefix, 100000, 2)
    proc = mpirun(cli_args("train", "-solver", solver), wait=False)
    try:
        _wait_for(f"{prefix}_iter_2.solverstate", proc)
        proc.send_signal(signal.SIGUSR1)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-4000:]
    assert "Received SIGUSR1: snapshotting and stopping" in err
    stop = re.search(r"Stopped at iteration (\d+); resume with -snapshot (\S+)", err)
    stopped, state = int(stop.group(1)), stop.group(2)
    assert pathlib.Path(state).exists() and stopped >= 2
    proc = mpirun(cli_args("train", "-solver", solver, "-snapshot", state), wait=False)
    try:
        _wait_for(f"{prefix}_iter_{stopped + 4 - stopped % 2}.solverstate", proc)
        pid = _rank_pid(proc.pid, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)  # the job ends: nobody waits for rank 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    states = sorted(prefix.parent.glob("run_iter_*.solverstate"))
    assert len(states) >= 3
    for s in states:  # every solverstate has its set
        assert s.with_suffix(".caffemodel").exists() and s.with_suffix(".masks").exists()
    last = max(int(re.search(r"_iter_(\d+)", s.name).group(1)) for s in states)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "caffe_lite", "train", "-solver", solver,
                          "-snapshot", f"{prefix}_iter_{last}.solverstate",
                          "-max_iter", str(last + 1)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    leftovers = [p.name for p in prefix.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the resume cleared what the killed write left


def test_an_error_on_one_rank_ends_the_job_with_one_line(tmp_path):
    """Rank 1 alone reads a damaged image: it names itself and the file, and MPI_Abort ends
    rank 0 too, instead of leaving it waiting in the allreduce."""
    d = tmp_path / "data"
    make_data(d)
    (d / "img" / "3.png").write_bytes(b"not a png")  # stream offset 3: rank 1's, B = 3
    case = ("SGD", "momentum: 0.9 base_lr: 0.05", "image", "L2", 1, None)
    text = solver_text(d, case, B).replace("shuffle: true", "shuffle: false")
    (d / "s.prototxt").write_text(text)
    res = mpirun(cli_args("train", "-solver", d / "s.prototxt"), timeout=180)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if "caffe-lite train: error:" in ln]
    assert len(lines) == 1, res.stderr[-4000:]
    assert "[rank 1 of 2]" in lines[0] and "3.png" in lines[0]


def test_an_uncaught_exception_in_python_ends_the_job(tmp_path):
    """After parallel.init(), an exception nothing catches on one rank aborts every rank."""
    code = ("from caffe_lite import parallel; w = parallel.init()\n"
            "if w.rank == 1: raise RuntimeError('rank 1 gives up')\n"
            "w.comm.Barrier()\n")
    res = mpirun(["-c", code], timeout=120)
    assert res.returncode != 0
    assert "RuntimeError: rank 1 gives up" in res.stderr
    assert "[rank 1 of 2] ending the MPI job" in res.stderr


def test_a_launcher_of_another_mpi_is_named(tmp_path):
    """The launcher says 2 processes, MPI (started alone) says 1: a one-line error, not two
    single-process runs writing the same snapshots."""
    _mpirun()
    d = tmp_path / "data"
    make_data(d)
    (d / "s.prototxt").write_text(solver_text(d, SOLVERS[0], B))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMPI_COMM_WORLD_SIZE="2")
    res = subprocess.run([sys.executable, "-m", "caffe_lite", "train", "-solver",
                          d / "s.prototxt"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 1
    assert "(OMPI_COMM_WORLD_SIZE=2), but MPI reports 1 process(es): mpi4py uses another MPI" \
        in res.stderr.strip().splitlines()[-1]


# --- without MPI ---------------------------------------------------------------------------------
def test_without_mpi_one_process_trains_unchanged_and_an_mpi_launch_fails_clearly(tmp_path):
    d = tmp_path / "data"
    make_data(d)
    (d / "s.prototxt").write_text(solver_text(d, SOLVERS[0], B).replace(
        "max_iter: 100", "max_iter: 2 snapshot_after_train: false"))
    fake = tmp_path / "nompi" / "mpi4py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named mpi4py')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), str(ROOT)]))
    for k in [k for k in env if k.startswith(("OMPI_", "PMI_", "PMIX_", "MV2_"))]:
        del env[k]
    probe = ("import sys; from caffe_lite.cli import main; rc = main(['train', '-solver', "
             f"{str(d / 's.prototxt')!r}]); assert 'mpi4py' not in sys.modules; sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Data-parallel" not in res.stderr
    env["OMPI_COMM_WORLD_SIZE"] = "2"
    res = subprocess.run([sys.executable, "-m", "caffe_lite", "train", "-solver",
                          d / "s.prototxt"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "caffe-lite train: error: launched by an MPI launcher as one of 2 processes "
        "(OMPI_COMM_WORLD_SIZE=2), but data-parallel training needs MPI for Python, which is "
        "not available (No module named mpi4py); pip install 'caffe-lite[mpi]' (mpi4py and "
        "Open MPI)"]


# --- buckets and the backward hook (no MPI: a stand-in communicator) -----------------------------
class _FakeMPI:
    IN_PLACE, SUM = object(), "sum"


class _FakeComm:
    """Two ranks holding the same gradients: each allreduce doubles its buffer."""

    def __init__(self):
        self.started = []  # (layer index backward had reached, elements)

    def Allreduce(self, sendbuf, recvbuf, op):
        assert sendbuf is _FakeMPI.IN_PLACE and op == _FakeMPI.SUM
        self.started.append((self.layer, recvbuf.size))
        recvbuf *= 2


HOOK_NET = """name: "hooks"
input: "x" input_shape { dim: 4 dim: 2 dim: 5 dim: 5 }
input: "y" input_shape { dim: 4 }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 3
  kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }
layer { name: "scale" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }
layer { name: "ip1" type: "InnerProduct" bottom: "c" top: "h" param { name: "shared" }
  inner_product_param { num_output: 12 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "o" inner_product_param {
  num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "o" bottom: "y" top: "loss" }
"""


def test_buckets_start_as_backward_completes_their_gradients():
    """With one bucket per parameter, each allreduce starts (on the communication thread)
    right after the backward of the layer that completes its gradient (the last layer going
    backward that uses it), before the layers below run; a fused BatchNorm-Scale-ReLU group
    calls the hook for each of its layers.  finish() writes scale * sum back: gradients of
    identical ranks come back as they were.  Without overlap, everything waits for finish()."""
    from caffe_lite.parallel.buckets import GradientBuckets, ready_layers
    caffe_lite.set_random_seed(2)
    net = caffe_lite.Net(HOOK_NET, caffe_lite.TRAIN)
    g = np.random.default_rng(0)
    net.blobs["x"].data[...] = g.standard_normal((4, 2, 5, 5))
    net.blobs["y"].data[...] = [0, 1, 2, 1]
    names = net._layer_names
    comm = _FakeComm()
    buckets = GradientBuckets(comm, _FakeMPI, net, bucket_bytes=1)
    visited = []

    def hook(i):
        visited.append(i)
        comm.layer = i
        buckets.layer_done(i)
        deadline = time.time() + 30
        while len(comm.started) < buckets.next:  # the thread has taken what the layer completed
            assert time.time() < deadline
            time.sleep(0.001)
    net.after_backward(hook)
    net.clear_param_diffs()
    net.forward_backward()
    grads = [b.diff.copy() for b in net.learnable_params]
    assert visited == list(range(len(net.layers) - 1, -1, -1))
    ready = ready_layers(net)
    expect = sorted(((ready[k], net.learnable_params[k].count)
                     for k in range(len(ready)) if net.learnable_params[k].count),
                    key=lambda t: -t[0])
    assert [layer for layer, _ in comm.started] == [r for r, _ in expect]
    assert sorted(n for _, n in comm.started) == sorted(n for _, n in expect)
    assert ready[0] == names.index("conv") and max(ready) == names.index("ip2")
    buckets.finish(0.5)
    for b, before in zip(net.learnable_params, grads):
        np.testing.assert_array_equal(b.diff, before)
    comm.started, comm.layer = [], "finish"
    quiet = GradientBuckets(comm, _FakeMPI, net, bucket_bytes=1, overlap=False)
    for i in visited:
        quiet.layer_done(i)
    assert comm.started == []
    quiet.finish(0.5)
    assert [layer for layer, _ in comm.started] == ["finish"] * len(expect)
    for b, before in zip(net.learnable_params, grads):
        np.testing.assert_array_equal(b.diff, before)
    net.close()


def test_the_fused_group_hook_path_gives_the_layer_by_layer_gradients():
    from caffe_lite.layers import jit
    if jit.kernels("batchnorm") is None:
        pytest.skip("numba is not installed: BatchNorm-Scale groups are not fused")

    def grads(hook):
        caffe_lite.set_random_seed(2)
        net = caffe_lite.Net(HOOK_NET, caffe_lite.TRAIN)
        net.blobs["x"].data[...] = np.random.default_rng(0).standard_normal((4, 2, 5, 5))
        net.blobs["y"].data[...] = [0, 1, 2, 1]
        if hook == "after":
            net.after_backward(lambda i: None)
        elif hook == "before":
            net.before_backward(lambda i: None)  # layer by layer, no groups
        net.clear_param_diffs()
        net.forward_backward()
        out = [b.diff.copy() for b in net.learnable_params]
        assert net._plan().by_first  # the net has a fused group
        net.close()
        return out
    plain, after, before = grads(None), grads("after"), grads("before")
    for a, b, c in zip(plain, after, before):
        np.testing.assert_array_equal(a, b)  # the after-hook keeps the fused path
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6)


# --- docs/distributed.md's cost model ------------------------------------------------------------
def test_the_cost_model_tables_are_the_documented_ones(models_dir):
    """The doc's tables are what benchmarks/parallel_model.py computes, from the parameter and
    bucket counts of the real prototxts (LeNet and MobileNet-v1 built here)."""
    from benchmarks import nets, parallel_model as pm
    from caffe_lite.parallel.buckets import GradientBuckets
    doc = (ROOT / "docs" / "distributed.md").read_text()
    for table in pm.tables():
        assert table in doc
    for model, key in (("LeNet", "lenet"), ("MobileNet-v1", "mobilenet_v1")):
        net = caffe_lite.Net(nets.training_net(nets.model_path(key), 1), caffe_lite.TRAIN)
        params = net.learnable_params
        assert sum(b.count for b in params) == pm.PARAMS[model]
        assert len(GradientBuckets(None, None, net).buckets) == pm.BUCKETS[model]
        if model in pm.PRUNABLE:
            assert sum(b.count for b in params if b.has_mask) == pm.PRUNABLE[model]
        net.close()
    # the worked example in the text
    assert f"{pm.allreduce_s('MobileNet-v1', 64, 25) * 1e3:.2f} ms" == "10.96 ms"
    assert "2 log₂64 = 12 messages × 5 µs = 0.24 ms: 10.96 ms" in doc


def test_each_rank_takes_its_own_gpu(monkeypatch):
    """GPU mode: the local rank picks from -gpu's list (cycling), -gpu all gives each rank its
    local rank, solver_mode GPU offsets device_id by it; one process keeps the first id."""
    from caffe_lite import backend
    from caffe_lite.commands.caffe_tools import select_mode
    chosen = []
    monkeypatch.setattr(backend, "set_device", chosen.append)
    monkeypatch.setattr(backend, "set_mode_gpu", lambda: None)
    monkeypatch.setattr(backend, "gpu_available", lambda: (True, ""))
    try:
        assert select_mode("2,5", local_rank=1) == "GPU 5"
        assert select_mode("2,5", local_rank=2) == "GPU 2"
        assert select_mode("all", local_rank=3) == "GPU 3"
        assert select_mode(None, True, 2, local_rank=1) == "GPU 3"
        assert select_mode("2,5") == "GPU 2"
        assert select_mode(None, True, 2) == "GPU 2"
    finally:
        backend.set_mode_cpu()
    assert chosen == [5, 2, 3, 3, 2, 2]
