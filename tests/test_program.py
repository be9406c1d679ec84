"""Prepared steps run as native programs (layers/program.py, numba/spin.py run_program, plan.py):
a deploy net's consecutive native steps run as one program, bit for bit what the steps compute
one by one; the worker takes its pieces, or the caller does; a changed weight, sparse path or
fused parameter is followed; other shapes, a busy pool and nets with a loss keep to the steps."""
import contextlib
import re
import time
import threading

import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.layers import gemm_pool, im2col, jit, parallel, program
from caffe_lite.plan import Program
from spin_util import hold_until_blocked, spinning

pytestmark = pytest.mark.skipif(
    not (jit.available() and gemm_pool.available(parallel._blas_libraries())),
    reason="programs need numba, x86-64 and the spinning pool's OpenBLAS")

F = np.float32

NET = """
name: "programs"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: %d dim: 4 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 } }
layer { name: "prelu1" type: "PReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 12 kernel_size: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "conv3" type: "Convolution" bottom: "pool1" top: "conv3"
        convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "pool3" type: "Pooling" bottom: "conv3" top: "pool3"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "conv2" top: "ip1"
        inner_product_param { num_output: 20 } }
layer { name: "relu3" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "pool3" top: "ip2"
        inner_product_param { num_output: 7 bias_term: false } }
layer { name: "cat" type: "Concat" bottom: "ip1" bottom: "ip2" top: "cat" }
layer { name: "pow" type: "Power" bottom: "cat" top: "pow" power_param { shift: 1 } }
layer { name: "drop" type: "Dropout" bottom: "pow" top: "pow" }
layer { name: "ip3" type: "InnerProduct" bottom: "pow" top: "ip3"
        inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "ip3" top: "prob" }
"""


def _net(tmp_path, batch=1, seed=0, text=None):
    """NET (or `text`) with random parameters, and an input for it."""
    p = tmp_path / (f"programs-{batch}.prototxt" if text is None else "text.prototxt")
    p.write_text(NET % batch if text is None else text)
    net = caffe.Net(str(p), caffe.TEST)
    rng = np.random.default_rng(seed)
    for name in net.params:
        for b in net.params[name]:
            b.data[...] = rng.standard_normal(b.shape) * 0.5
    return net, rng.standard_normal(net.blobs["data"].shape, dtype=F)


def _blobs(net):
    return {k: b.data.copy() for k, b in net.blobs.items()}


def _units(net):
    (gen, units), = net._plan_._programs.values()
    return ["p" if isinstance(u, Program) else net.layer_names[u.index] for u in units]


@pytest.fixture
def plain(monkeypatch):
    """Makes every Program decline, so that the plan runs the steps one by one."""
    def decline():
        monkeypatch.setattr(Program, "run", lambda self: False)
        monkeypatch.setattr(Program, "run_pass", lambda self: False)
    return decline


def _counting(monkeypatch):
    """What each pass's programs did: True where one ran, False where it declined (a pass
    that is one program tries it as a whole first, then as the plain loop does)."""
    ran = []
    real, real_pass = Program.run, Program.run_pass

    def run(self):
        done = real(self)
        ran.append(done)
        return done

    def run_pass(self):
        done = real_pass(self)
        if done:
            ran.append(done)
        return done
    monkeypatch.setattr(Program, "run", run)
    monkeypatch.setattr(Program, "run_pass", run_pass)
    return ran


@pytest.mark.parametrize("batch", [1, 3])
def test_a_deploy_net_runs_as_programs_bit_for_bit(tmp_path, monkeypatch, plain, batch):
    ran = _counting(monkeypatch)
    net, x = _net(tmp_path, batch)
    for _ in range(3):
        net.forward(data=x)
    got = _blobs(net)
    # the steps before the Power layer (a step of its own) are one program, those after it
    # (an in-place Dropout in TEST does nothing) another
    assert _units(net) == ["p", "pow", "p"]
    assert ran and all(ran)
    plain()
    net.forward(data=x)
    for name, value in got.items():
        np.testing.assert_array_equal(value, net.blobs[name].data, err_msg=name)
    # and what the numpy layers compute, to float32 rounding
    monkeypatch.setenv("CAFFE_LITE_JIT", "0")
    numpy_net, _ = _net(tmp_path, batch)
    numpy_net.forward(data=x)
    for name, value in got.items():
        np.testing.assert_allclose(value, numpy_net.blobs[name].data, rtol=1e-4, atol=1e-5,
                                   err_msg=name)


def test_the_worker_takes_its_pieces_inside_a_program(tmp_path, monkeypatch, plain):
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", "2")
    for name in ("MIN_SPIN_KERNEL_ELEMENTS", "MIN_SPIN_FEW_ROWS_MACS", "MIN_SPIN_MACS",
                 "MIN_SPIN_STREAM_ELEMENTS"):
        monkeypatch.setattr(parallel, name, 1)
    monkeypatch.setattr(im2col, "MIN_SPIN_FEW_ROWS_MACS", 1)
    w = spinning(2)
    net, x = _net(tmp_path, 2)
    net.forward(data=x)
    net.forward(data=x)     # (a range's programs are made on its second pass)
    program_ = next(u for u in net._plan_._programs[(0, len(net.layers) - 1)][1]
                    if isinstance(u, Program))
    assert program_.table.shape[0] == 1 and (program_.phases[:, 3] > program_.phases[:, 2]).any()
    ran = int(w.ctl[w.k.RAN])
    for _ in range(20):
        net.forward(data=x)
    assert int(w.ctl[w.k.RAN]) > ran, "the worker ran none of the program's pieces"
    got = _blobs(net)
    plain()
    net.forward(data=x)
    for name, value in got.items():
        np.testing.assert_array_equal(value, net.blobs[name].data, err_msg=name)


def test_pieces_a_worker_does_not_take_run_on_the_caller(tmp_path, monkeypatch):
    """A worker blocked in its pipe read leaves its pieces to the caller (work stealing);
    one still running a piece after the wait's polls is poked and waited for."""
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", "2")
    for name in ("MIN_SPIN_KERNEL_ELEMENTS", "MIN_SPIN_FEW_ROWS_MACS", "MIN_SPIN_MACS"):
        monkeypatch.setattr(parallel, name, 1)
    monkeypatch.setattr(im2col, "MIN_SPIN_FEW_ROWS_MACS", 1)
    w = spinning(2)
    net, x = _net(tmp_path, 2)
    net.forward(data=x)
    expect = _blobs(net)
    with parallel.cpu_pass():
        hold_until_blocked(w)
        w.ctl[w.k.HOLD] = 0                      # (released, but not woken: it stays blocked)
        net.forward(data=x)
        w.poke()
    for name, value in expect.items():
        np.testing.assert_array_equal(value, net.blobs[name].data, err_msg=name)
    # a caller that claims the pieces at once (the worker skips those it finds claimed), and
    # one that pokes and waits as soon as its own pieces are done
    for setting in ("CLAIM_POLLS", "WAIT_POLLS"):
        with monkeypatch.context() as m:
            m.setattr(gemm_pool, setting, 0)
            for _ in range(30):
                _poisoned_forward(net, x)
                for name, value in expect.items():
                    np.testing.assert_array_equal(value, net.blobs[name].data, err_msg=name)


def _poisoned_forward(net, x):
    """A forward whose every blob but the input starts as NaN: what a step leaves out shows."""
    for name, b in net.blobs.items():
        if name != "data":
            b.data[...] = np.nan
    net.forward(data=x)


def test_changed_parameters_and_a_sparse_weight_are_followed(tmp_path, monkeypatch, plain):
    ran = _counting(monkeypatch)
    net, x = _net(tmp_path, 1)
    for _ in range(2):
        net.forward(data=x)
    # a fused PReLU's slope (the epilogue is refreshed by the step, then programs go on)
    net.params["prelu1"][0].data[...] = 0.7
    # a pruned InnerProduct forced onto the sparse path
    w = net.params["ip1"][0].data
    w[:, ::3] = 0
    net.layers[list(net.layer_names).index("ip1")].sparse.mode = "sparse"
    ran.clear()
    net.forward(data=x)
    assert ran[0] is False          # (the first program declines: its steps run instead)
    net.forward(data=x)
    got = _blobs(net)
    fresh, _ = _net(tmp_path, 1)
    for name in net.params:
        for a, b in zip(net.params[name], fresh.params[name]):
            b.data[...] = a.data
    fresh.layers[list(fresh.layer_names).index("ip1")].sparse.mode = "sparse"
    plain()
    fresh.forward(data=x)
    for name, value in got.items():
        np.testing.assert_array_equal(value, fresh.blobs[name].data, err_msg=name)
    assert not np.array_equal(got["conv1"], _blobs(_net(tmp_path, 1)[0])["conv1"])


def test_another_input_shape_and_a_busy_pool(tmp_path, monkeypatch):
    ran = _counting(monkeypatch)
    net, x = _net(tmp_path, 1)
    other, x3 = _net(tmp_path, 3)
    for _ in range(2):
        net.forward(data=x)
        other.forward(data=x3)
    expect1, expect3 = _blobs(net), _blobs(other)
    net.forward(data=x3)                  # reshaped: the steps again, then programs
    net.forward(data=x3)
    for name, value in expect3.items():
        np.testing.assert_array_equal(value, net.blobs[name].data, err_msg=name)
    for _ in range(3):      # (programs again from the pass after a range's second)
        net.forward(data=x)
    # another thread holds the pool: the program declines, the steps compute the same
    ran.clear()
    with gemm_pool._busy:
        out = []
        t = threading.Thread(target=lambda: (net.forward(data=x), out.append(_blobs(net))))
        t.start()
        t.join(30)
    assert ran and not any(ran)
    for name, value in expect1.items():
        np.testing.assert_array_equal(value, out[0][name], err_msg=name)


def test_a_net_with_a_loss_keeps_to_the_steps(tmp_path):
    p = tmp_path / "loss.prototxt"
    p.write_text("""
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 5 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
""")
    net = caffe.Net(str(p), caffe.TRAIN)
    net.blobs["data"].data[...] = np.arange(10).reshape(2, 5)
    net.blobs["label"].data[...] = [0, 2]
    losses = [float(net.forward()["loss"]) for _ in range(3)]
    assert losses[0] == losses[2] > 0
    (gen, units), = net._plan_._programs.values()
    assert units is None


def test_in_order_joins_phases_only_where_every_part_has_them():
    a = gemm_pool.attach(lambda: None, [(gemm_pool.rows((1, 2)), [])])
    b = gemm_pool.attach(lambda: None, [(gemm_pool.rows((3,)), [])], ready=lambda: True)
    joined = program.in_order(a, None, b)
    assert [p[0][0, 0] for p in joined.native] == [1, 3] and joined.ready()
    assert program.in_order(a, lambda: None).native is None
    assert program.in_order(a) is a


def test_programs_are_made_on_a_ranges_second_pass(tmp_path, monkeypatch):
    """Passes over ever new ranges (forward(end=...) layer by layer) or shapes make none."""
    made = []
    real = Program.__init__
    monkeypatch.setattr(Program, "__init__", lambda self, runs: (made.append(1),
                                                                 real(self, runs))[1])
    net, x = _net(tmp_path, 1)
    for name in net.layer_names[1:]:
        net.forward(data=x, end=name)
    assert not made
    net.forward(data=x)
    net.forward(data=x)
    assert made


def test_a_program_of_no_phases_runs_nothing():
    assert Program([program.nothing]).run()


def test_a_program_waits_for_a_worker_still_running_its_piece(monkeypatch):
    """A piece that outlasts the wait's polls: run_program returns after that phase with the
    batch's number, and the program pokes and waits for it before going on."""
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", "2")
    w = spinning(2)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((512, 512), dtype=F)
    b = rng.standard_normal((512, 512), dtype=F)
    out = np.full((512, 512), np.nan, F)
    with parallel.cpu_pass():
        # the caller's piece 8 rows, the worker's 504: the worker is still at it
        run = gemm_pool.prepare([(a[:8], b, out[:8]), (a[8:], b, out[8:])])
        prog = Program([run])
        assert prog.table.shape[0] == 1
        monkeypatch.setattr(gemm_pool, "WAIT_POLLS", 0)
        returned = []
        real = prog.k

        class Spy:
            def __getattr__(self, name):
                return getattr(real, name)

            @staticmethod
            def run_program(*args):
                at = real.run_program(*args)
                returned.append((at, int(args[3][0])))
                assert (at < 0) == (args[3][0] != 0)   # (stuck: the next phase, negated)
                return at
        prog.k = Spy()
        stuck = []
        for _ in range(5):
            out[...] = np.nan
            returned.clear()
            assert prog.run()
            seqs = [seq for _, seq in returned if seq]
            if seqs:    # (reported still running: waited for)
                assert w.ctl[w.k.DONE] >= max(seqs)
                stuck += seqs
            np.testing.assert_allclose(out, a @ b, rtol=1e-4, atol=1e-3)
    assert stuck, "no piece outlasted the polls"


def test_a_winograd_convolution_runs_natively_while_its_filters_are_current(tmp_path,
                                                                            monkeypatch,
                                                                            plain):
    """Its transformed filters are made again when the weight changes: the program declines
    that pass (the step transforms them), then runs again."""
    from caffe_lite.layers import winograd
    monkeypatch.setattr(winograd, "MIN_CHANNEL_RATIO", 0)
    monkeypatch.setattr(winograd, "MIN_TILES", 0)
    p = tmp_path / "wino.prototxt"
    p.write_text("""
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 6 dim: 10 dim: 9 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 5 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
""")
    ran = _counting(monkeypatch)
    net = caffe.Net(str(p), caffe.TEST)
    assert net.layers[1].engine.winograd_ok
    x = np.random.default_rng(4).standard_normal((1, 6, 10, 9), dtype=F)
    for _ in range(3):
        net.forward(data=x)
    assert ran == [True]
    first = net.blobs["conv"].data.copy()
    net.params["conv"][0].data[...] *= -1
    ran.clear()
    net.forward(data=x)
    net.forward(data=x)
    assert ran == [False, True]
    second = net.blobs["conv"].data.copy()
    plain()
    net.params["conv"][0].data[...] *= -1
    net.forward(data=x)
    np.testing.assert_array_equal(net.blobs["conv"].data, first)
    assert not np.allclose(first, second)


def test_only_a_plans_preparation_makes_rows(monkeypatch):
    """A product or kernel prepared for one call (a backward pass's) does not pay for the job
    rows of a program it never runs: a LeNet training step ran 8 % slower when it did."""
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", "2")
    spinning(2)
    rng = np.random.default_rng(8)
    a = rng.standard_normal((64, 64), dtype=F)
    b = rng.standard_normal((64, 64), dtype=F)
    small = rng.standard_normal((4, 4), dtype=F)
    with parallel.cpu_pass():
        for m in (1, parallel.MIN_SPIN_MACS):        # whole, and split over the pool
            monkeypatch.setattr(parallel, "MIN_SPIN_MACS", m)
            out = np.zeros((64, 64), F)
            assert gemm_pool.phases_of(parallel.prepare_matmul(a, b, out)) is None
            with parallel.planned():
                assert gemm_pool.phases_of(parallel.prepare_matmul(a, b, out)) is not None
        y = small.copy()
        for planned in (False, True):
            with parallel.planned() if planned else contextlib.nullcontext():
                run = parallel.prepare_bias(y.reshape(1, 4, 4), np.ones(4, F))
            assert (gemm_pool.phases_of(run) is not None) == planned


DEPLOY = {  # benchmarks/deploy_nets.py's nets written out here, smaller where they allow
    "lenet_300_100": lambda d, b: d.lenet_300_100(b),
    "cifar10_quick": lambda d, b: d.cifar10_quick(b),
    "mtcnn_pnet": lambda d, b: d.mtcnn_pnet(b, 24, 30),
    "mtcnn_rnet": lambda d, b: d.mtcnn_rnet(b),
    "mtcnn_onet": lambda d, b: d.mtcnn_onet(b),
    "face_detector_slim": lambda d, b: d.face_detector_slim(b, 64, 80),
    "squeezenet_v1.1": lambda d, b: d.squeezenet_v11(b).replace("dim: 227 dim: 227",
                                                               "dim: 67 dim: 67"),
    # (its Eltwise SUMs and global pooling native since the seventh session: one program)
    "mobilenet_v2": lambda d, b: re.sub(r"dim: 224(\s+)dim: 224", r"dim: 64\1dim: 64",
                                        d.mobilenet_v2(b)),
}


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", list(DEPLOY))
def test_the_deploy_nets_run_as_programs_bit_for_bit(tmp_path, monkeypatch, plain, name,
                                                     batch):
    import pathlib
    import sys
    root = str(pathlib.Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks import deploy_nets
    proto = tmp_path / "net.prototxt"
    proto.write_text(DEPLOY[name](deploy_nets, batch))
    net = caffe.Net(str(proto), caffe.TEST)
    deploy_nets.randomize(net, seed=batch)
    x = np.random.default_rng(batch).standard_normal(net.blobs["data"].shape, dtype=F)
    ran = _counting(monkeypatch)
    for _ in range(3):
        net.forward(data=x)
    assert ran and all(ran)
    got = _blobs(net)
    plain()
    _poisoned_forward(net, x)
    for blob, value in got.items():
        np.testing.assert_array_equal(value, net.blobs[blob].data, err_msg=blob)


WHOLE = """
name: "whole"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
        inner_product_param { num_output: 16 } }
layer { name: "relu2" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }
"""


def _whole_net(tmp_path):
    return _net(tmp_path, text=WHOLE)


class _PassSpy:
    """Stands in for a whole-pass program's kernels module: counts its compiled calls."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def run_pass(self, *args):
        at = self.real.run_pass(*args)
        self.calls.append(("run_pass", at))
        return at

    def run_program(self, *args):
        self.calls.append(("run_program", None))
        return self.real.run_program(*args)


def _whole_program(net, x, monkeypatch):
    from caffe_lite.backend import memory
    monkeypatch.setattr(memory, "on_gpu", False)    # (a GPU test before this one: all CPU here)
    for _ in range(2):
        net.forward(data=x)     # (programs are made on a range's second pass)
    whole = net._plan_._whole
    assert whole is not None and whole[:2] == (0, len(net.layers) - 1)
    prog = whole[3]
    prog.k = _PassSpy(prog.k)
    return prog


def _same_as_plain(tmp_path, net, plain):
    fresh, x = _whole_net(tmp_path)
    for name in net.params:
        for a, b in zip(net.params[name], fresh.params[name]):
            b.data[...] = a.data
    plain()
    fresh.forward(data=x)
    for name, b in fresh.blobs.items():
        np.testing.assert_array_equal(net.blobs[name].data, b.data, err_msg=name)


def test_a_pass_that_is_one_program_runs_as_one_compiled_call(tmp_path, monkeypatch, plain):
    """Its edges (the workers' flags, BLAS at one thread) and its phases in one call: no
    cpu_pass opened in Python, no other compiled call; the blobs as the steps make them."""
    net, x = _whole_net(tmp_path)
    prog = _whole_program(net, x, monkeypatch)
    changes = parallel.changes
    for _ in range(3):
        net.forward(data=x)
    n = len(prog.phases)
    assert prog.k.calls == [("run_pass", n)] * 3
    assert parallel.changes == changes
    _same_as_plain(tmp_path, net, plain)


def test_a_whole_pass_inside_another_pass_or_on_the_gpu_keeps_to_the_plan(tmp_path,
                                                                          monkeypatch, plain):
    """Inside another pass (a net in a Python layer) the outer pass's edges hold: the program
    runs as a part; after a GPU side was used, the plan's check of the host copies runs."""
    from caffe_lite.backend import memory
    net, x = _whole_net(tmp_path)
    prog = _whole_program(net, x, monkeypatch)
    with parallel.cpu_pass():
        net.forward(data=x)
    assert [c for c, _ in prog.k.calls] == ["run_program"]
    prog.k.calls.clear()
    monkeypatch.setattr(memory, "on_gpu", True)
    net.forward(data=x)
    assert [c for c, _ in prog.k.calls] == ["run_program"]
    _same_as_plain(tmp_path, net, plain)


def test_ready_checks_run_again_only_when_what_they_read_changed(tmp_path, monkeypatch, plain):
    net, x = _whole_net(tmp_path)
    prog = _whole_program(net, x, monkeypatch)
    counts = [0] * len(prog.readies)

    def counted(i, ready):
        def check():
            counts[i] += 1
            return ready()
        return program.ready_while(check, ready.watch)
    assert prog.watch is not None and len(prog.readies) >= 3
    prog.readies = [counted(i, r) for i, r in enumerate(prog.readies)]
    for _ in range(3):
        net.forward(data=x)
    assert counts == [1] * len(counts)          # (checked once, then skipped)
    net.params["ip2"][0].data[...] *= -1        # a weight's new version
    net.forward(data=x)
    net.forward(data=x)
    assert min(counts) >= 2 and prog.k.calls[-1] == ("run_pass", len(prog.phases))
    before = list(counts)
    ip1 = net.layers[list(net.layer_names).index("ip1")]
    ip1.sparse.mode = "dense"                   # a sparse path's mode
    net.forward(data=x)
    assert counts > before
    before = list(counts)
    relu = list(net.layer_names).index("relu1")
    net.layers[relu].forward(net.bottom_vecs[relu], net.top_vecs[relu])  # layer code in Python
    net.forward(data=x)
    assert counts > before
    _same_as_plain(tmp_path, net, plain)


def test_a_whole_pass_whose_worker_is_asleep_wakes_it_and_runs_as_usual(tmp_path,
                                                                        monkeypatch, plain):
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", "2")
    for name in ("MIN_SPIN_KERNEL_ELEMENTS", "MIN_SPIN_FEW_ROWS_MACS", "MIN_SPIN_MACS",
                 "MIN_SPIN_STREAM_ELEMENTS"):
        monkeypatch.setattr(parallel, name, 1)
    monkeypatch.setattr(im2col, "MIN_SPIN_FEW_ROWS_MACS", 1)
    w = spinning(2)
    net, x = _whole_net(tmp_path)
    prog = _whole_program(net, x, monkeypatch)
    assert prog.table.shape[0] == 1
    n = len(prog.phases)
    spin, naps = int(w.ctl[w.k.SPIN]), int(w.ctl[w.k.NAPS])
    calls = prog.k.calls
    try:
        w.ctl[w.k.SPIN], w.ctl[w.k.NAPS] = 1, 1     # (asleep soon after a pass)
        deadline = time.monotonic() + 20
        for _ in range(50):     # (a wake-up still pending in its pipe wakes it at once)
            while w.ctl[w.k.MODE] != 3:
                assert time.monotonic() < deadline, "the worker never fell asleep"
                time.sleep(0.001)
            calls.clear()
            net.forward(data=x)
            if calls[0][1] > n:
                break
    finally:
        w.ctl[w.k.SPIN], w.ctl[w.k.NAPS] = spin, naps
    # declined having done nothing, then the usual pass (its edge wakes the worker, once) ran
    # the program as a part of it
    assert calls[0] == ("run_pass", n + 1 + 1) and [c for c, _ in calls[1:]] == ["run_program"]
    _same_as_plain(tmp_path, net, plain)


def test_a_pooling_at_batch_1_splits_over_its_planes(tmp_path, monkeypatch):
    """Channels-last pooling splits over images: at batch 1 R-Net's 3x3 stride-2 pooling of 28
    planes of 22x22 takes the flat form, split over the planes (its work counted with the
    windows' taps), so that the worker has a share."""
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", "2")
    spinning(2)
    p = tmp_path / "pool.prototxt"
    p.write_text("""
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 28 dim: 22 dim: 22 } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
""")
    net = caffe.Net(str(p), caffe.TEST)
    x = np.random.default_rng(5).standard_normal((1, 28, 22, 22), dtype=F)
    prog = _whole_program(net, x, monkeypatch)
    assert (prog.phases[:, 3] > prog.phases[:, 2]).any(), "the worker has no planes"
    net.forward(data=x)
    expect = np.full((1, 28, 11, 11), -np.inf, F)
    for i in range(3):
        for j in range(3):
            win = x[:, :, i:i + 21:2, j:j + 21:2]
            expect[:, :, :win.shape[2], :win.shape[3]] = np.maximum(
                expect[:, :, :win.shape[2], :win.shape[3]], win)
    np.testing.assert_array_equal(net.blobs["pool"].data, expect)
