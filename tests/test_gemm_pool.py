"""The spinning product pool (layers/gemm_pool.py): split products equal np.matmul whatever the
operands' layouts, pieces really run on the workers, and nothing hangs when workers stop
spinning, are held off the cores, or the process forks."""
import multiprocessing
import os
import time

import numpy as np
import pytest

from caffe_lite.layers import gemm_pool, jit, parallel
from spin_util import hold_until_blocked, spinning

pytestmark = pytest.mark.skipif(
    not (jit.available() and gemm_pool.available(parallel._blas_libraries())),
    reason="the spinning pool needs numba, x86-64 and an OpenBLAS cblas_sgemm")


@pytest.fixture
def spin_only(monkeypatch):
    """Every product of 2 or more threads splits onto the spinning workers as BLAS calls
    (products of few rows included: test_dense_rows.py has their kernel)."""
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", "2")
    monkeypatch.setattr(parallel, "MIN_SPIN_MACS", 0)
    monkeypatch.setattr(parallel, "FEW_ROWS", 0)
    monkeypatch.setattr(parallel, "MIN_PARALLEL_MACS", 1 << 40)


def _spinning(threads):
    spinning(threads)


def _cases(rng):
    f = np.float32
    a = rng.standard_normal((37, 19), dtype=f)
    b = rng.standard_normal((19, 45), dtype=f)
    big = rng.standard_normal((60, 50), dtype=f)
    yield a, b                                          # rows split (a larger)
    yield b.T, a.T                                      # transposed operands (column order)
    yield big[::2, :19], b                              # row-strided a (lda > K)
    yield a, big[:19, 3:48]                             # column slice of b (ldb > N)
    yield rng.standard_normal((3, 1, 40, 7), dtype=f), rng.standard_normal((3, 2, 7, 9),
                                                                           dtype=f)
    yield rng.standard_normal((2, 6, 7), dtype=f), rng.standard_normal((5, 2, 7, 11), dtype=f)
    yield rng.standard_normal((1, 300), dtype=f), rng.standard_normal((300, 64), dtype=f)
    yield rng.standard_normal((64, 1), dtype=f), rng.standard_normal((1, 8), dtype=f)
    yield from _rows(rng)


def _rows(rng):
    """Single-row products (an InnerProduct at batch 1), which the workers run as sgemv: the
    weight stored (N, K) as InnerProduct keeps it, or (K, N) (transpose: true), with padded
    rows; the row contiguous or strided (a column of a larger array)."""
    f = np.float32
    w = rng.standard_normal((700, 900), dtype=f)        # (large enough for the worker to
    x = rng.standard_normal((1, 900), dtype=f)          # start its piece before the caller
    yield x, w.T                                        # is done with its own);
    #                                                     (N, K) storage: sgemv NoTrans
    yield x[:, :600], w[:600, :640]                     # (K, N) storage, ldb > N: Trans
    yield x[:, :800], w[:, :800].T                      # (N, K) storage, ldb > K
    yield w[:300, 5:6].T, w[400:, :500]                 # a strided row (lda 900)


def test_layouts_of_views():
    x = np.zeros((6, 8), np.float32)
    assert gemm_pool._layout(x) == (gemm_pool._NOTRANS, 8)
    assert gemm_pool._layout(x.T) == (gemm_pool._TRANS, 8)
    assert gemm_pool._layout(x[:, 2:5]) == (gemm_pool._NOTRANS, 8)
    assert gemm_pool._layout(x[::2]) == (gemm_pool._NOTRANS, 16)
    assert gemm_pool._layout(x[:, ::2]) is None             # no unit stride either way
    assert gemm_pool._layout(x[:1, ::2]) == (gemm_pool._TRANS, 2)  # one row, strided
    assert gemm_pool._layout(x[:, :1]) == (gemm_pool._NOTRANS, 8)


@pytest.mark.parametrize("threads", ["2", "3"])
def test_split_products_equal_numpy_and_run_on_the_workers(spin_only, monkeypatch, threads):
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", threads)
    rng = np.random.default_rng(7)
    _spinning(int(threads))
    with parallel.cpu_pass():
        for a, b in _cases(rng):
            expect = np.matmul(a, b)
            for _ in range(20):
                out = np.full(expect.shape, np.nan, np.float32)
                parallel.prepare_matmul(a, b, out)()
                np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)
        # (pieces this small are often claimed back by the caller; every layout also runs
        # whole on each worker)
        for w in gemm_pool._workers[:int(threads) - 1]:
            for a, b in _cases(rng):
                expect = np.matmul(a, b)
                out = np.full(expect.shape, np.nan, np.float32)
                assert _on_worker(w, a, b, out), "the worker did not run the product"
                np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)
    assert len(gemm_pool._workers) >= int(threads) - 1


def _on_worker(w, a, b, out):
    """np.matmul(a, b, out=out) posted whole to worker w, which must claim it (the caller
    never does here); True when the worker ran it."""
    return gemm_pool.run_on(w, gemm_pool._jobs(a, b, out))


def test_single_rows_run_on_the_workers_as_matrix_vector_products(spin_only):
    rng = np.random.default_rng(11)
    _spinning(2)
    w = gemm_pool._workers[0]
    with parallel.cpu_pass():
        for a, b in _rows(rng):
            expect = np.matmul(a, b)
            out = np.full(expect.shape, np.nan, np.float32)
            assert _on_worker(w, a, b, out)
            np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)
            # split by prepare_matmul: each piece on the worker or claimed back by the caller
            out[...] = np.nan
            parallel.prepare_matmul(a, b, out)()
            np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)


def test_single_rows_split_from_their_weight_count(monkeypatch):
    """A batch-1 InnerProduct is bound by reading its weights, so it splits by their number
    (MIN_SPIN_ROW_WEIGHTS), far below MIN_SPIN_MACS; a few rows do not.  (As BLAS calls:
    numba's kernel for few rows, test_dense_rows.py, is kept out.)"""
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", "2")
    monkeypatch.setattr(parallel, "FEW_ROWS", 0)
    monkeypatch.setattr(parallel, "MIN_SPIN_MACS", 1 << 22)  # (4 rows stay below it)
    posted = []
    monkeypatch.setattr(gemm_pool, "prepare", lambda pieces, **kw: posted.append(len(pieces)))
    n = parallel.MIN_SPIN_ROW_WEIGHTS // 256 + 1
    assert 256 * n < parallel.MIN_SPIN_MACS
    w = np.zeros((n, 256), np.float32)
    with parallel.cpu_pass():
        parallel.prepare_matmul(np.zeros((1, 256), np.float32), w.T, np.zeros((1, n), np.float32))
        assert posted == [2]
        parallel.prepare_matmul(np.zeros((4, 256), np.float32), w.T, np.zeros((4, n), np.float32))
        parallel.prepare_matmul(np.zeros((1, 256), np.float32), w[:n // 2].T,
                                np.zeros((1, n // 2), np.float32))
    assert posted == [2]


def test_an_output_not_in_row_order_falls_back(spin_only):
    a = np.ones((30, 20), np.float32)
    b = np.ones((20, 40), np.float32)
    out = np.zeros((40, 30), np.float32).T              # column-order output
    assert gemm_pool._jobs(a, b, out) is None
    with parallel.cpu_pass():
        parallel.prepare_matmul(a, b, out)()
    assert (out == 20).all()


def test_workers_that_stop_spinning_leave_the_products_to_the_caller(spin_only, monkeypatch):
    """Workers told to block as soon as they are idle: every product still completes,
    correctly, whether the piece found its worker spinning, blocked or waking."""
    rng = np.random.default_rng(8)
    a = rng.standard_normal((64, 33), dtype=np.float32)
    b = rng.standard_normal((33, 50), dtype=np.float32)
    expect = a @ b
    run_out = np.empty_like(expect)
    run = parallel.prepare_matmul(a, b, run_out)
    for w in gemm_pool._workers:
        w.ctl[w.k.SPIN] = 0
    try:
        for i in range(300):
            run_out[...] = np.nan
            if i % 3 == 0:
                with parallel.cpu_pass():
                    run()
            else:
                run()
            np.testing.assert_allclose(run_out, expect, rtol=1e-5, atol=1e-5)
    finally:
        for w in gemm_pool._workers:
            w.ctl[w.k.SPIN] = gemm_pool.SPIN_POLLS


def test_kernel_sections_hold_the_workers_and_let_them_go(spin_only):
    """Split kernels (parallel.run_tasks) hold the spinning workers off the cores; a product
    right after a section still runs correctly, on a worker woken from its hold."""
    rng = np.random.default_rng(9)
    a = rng.standard_normal((64, 40), dtype=np.float32)
    b = rng.standard_normal((40, 70), dtype=np.float32)
    expect = a @ b
    out = np.empty_like(expect)
    hits = np.zeros(1000, np.int64)
    with parallel.cpu_pass():
        run = parallel.prepare_matmul(a, b, out)
        for _ in range(200):
            parallel.run_tasks([lambda: np.add(hits[:500], 1, out=hits[:500]),
                                lambda: np.add(hits[500:], 1, out=hits[500:])])
            out[...] = np.nan
            run()
            np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)
        assert all(w.ctl[w.k.HOLD] == 0 for w in gemm_pool._workers)
    assert (hits == 200).all()


def _child(conn):
    a = np.arange(64 * 30, dtype=np.float32).reshape(64, 30) / 100
    b = np.ones((30, 50), np.float32)
    out = np.empty((64, 50), np.float32)
    with parallel.cpu_pass():
        parallel.prepare_matmul(a, b, out)()
    conn.send((out, os.getpid() == gemm_pool._workers_pid, len(gemm_pool._workers)))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_workers(spin_only):
    a = np.arange(64 * 30, dtype=np.float32).reshape(64, 30) / 100
    b = np.ones((30, 50), np.float32)
    out = np.empty((64, 50), np.float32)
    with parallel.cpu_pass():
        parallel.prepare_matmul(a, b, out)()          # the parent's workers exist
    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe()
    p = ctx.Process(target=_child, args=(there,))
    p.start()
    assert here.poll(60), "the forked child hung"
    child_out, own, count = here.recv()
    p.join(10)
    np.testing.assert_allclose(child_out, out, rtol=1e-6)
    assert own and count >= 1


def test_spin_off_keeps_products_on_the_python_workers(monkeypatch):
    monkeypatch.setenv("CAFFE_LITE_SPIN", "0")
    assert not gemm_pool.available(parallel._blas_libraries())
    from caffe_lite import plan
    key = plan.current_key()
    monkeypatch.setenv("CAFFE_LITE_SPIN", "1")
    assert plan.current_key() != key    # (a plan made with the pool off is not used with it on)


def test_a_product_inside_a_kernel_section_runs_on_the_caller(spin_only):
    """A task of parallel.run_tasks that itself splits a product (the workers are held then):
    the product runs on the task's thread instead of waiting on a held worker."""
    import threading
    _spinning(2)
    rng = np.random.default_rng(10)
    a = rng.standard_normal((64, 40), dtype=np.float32)
    b = rng.standard_normal((40, 70), dtype=np.float32)
    outs = [np.full((64, 70), np.nan, np.float32) for _ in range(2)]
    runs = [parallel.prepare_matmul(a, b, o) for o in outs]
    finished = []

    def body():
        with parallel.cpu_pass():
            for _ in range(20):
                parallel.run_tasks([runs[0], runs[1]])
        finished.append(True)
    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(60)
    assert finished, "a product inside a kernel section waited on a held worker"
    for o in outs:
        np.testing.assert_allclose(o, a @ b, rtol=1e-5, atol=1e-5)


def test_idle_workers_nap_then_sleep_and_use_little_cpu(spin_only):
    """After a pass and its 100 us tail a worker naps (about 13 % of a core), then blocks
    in its pipe read (none); the next pass gets it spinning again from either."""
    _spinning(2)
    time.sleep(0.05)
    assert all(w.ctl[w.k.MODE] == 0 for w in gemm_pool._workers)
    before = time.process_time()
    time.sleep(0.25)
    used = time.process_time() - before          # spinning workers would use 0.25 s each
    assert used < 0.1 * len(gemm_pool._workers)
    _spinning(2)                                  # from a nap
    for w in gemm_pool._workers:
        w.ctl[w.k.NAPS] = 10
    try:
        time.sleep(0.1)
        assert all(w.ctl[w.k.MODE] == 3 for w in gemm_pool._workers)
        before = time.process_time()
        time.sleep(0.3)
        assert time.process_time() - before < 0.02
        _spinning(2)                              # woken from its read
    finally:
        for w in gemm_pool._workers:
            w.ctl[w.k.NAPS] = gemm_pool.NAPS


def _child_runs_the_parents_product(conn, run, out):
    run()
    conn.send(out.copy())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_product_prepared_before_a_fork_runs_in_the_child(spin_only):
    """The child has none of the parent's threads: a product prepared (and run, its worker
    spinning) in the parent runs on the child's own thread instead of waiting for a worker
    that is not there."""
    _spinning(2)
    a = np.arange(64 * 30, dtype=np.float32).reshape(64, 30) / 100
    b = np.ones((30, 50), np.float32)
    out = np.full((64, 50), np.nan, np.float32)
    with parallel.cpu_pass():
        run = parallel.prepare_matmul(a, b, out)
        run()
        ctx = multiprocessing.get_context("fork")
        here, there = ctx.Pipe()
        p = ctx.Process(target=_child_runs_the_parents_product, args=(there, run, out))
        p.start()
    assert here.poll(60), "the forked child waited for the parent's worker"
    np.testing.assert_allclose(here.recv(), a @ b, rtol=1e-6)
    p.join(10)


def test_a_worker_started_inside_a_pass_spins_through_it(monkeypatch):
    """(A first pass starts the workers while preparing its products: they must know the pass
    is on, or they nap through it and its products run on one thread.)"""
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", "2")
    n = len(gemm_pool._workers) if gemm_pool._workers_pid == os.getpid() else 0
    with parallel.cpu_pass():
        new = gemm_pool.workers(n + 1)[-1]
        assert new.ctl[new.k.WANTED] == 1
    assert new.ctl[new.k.WANTED] == 0


def test_a_piece_its_worker_has_not_started_runs_on_the_caller(spin_only):
    """Work stealing: a worker kept off its core (here blocked in its pipe read while the
    caller takes it for spinning) delays nothing: once its own piece is done the caller claims
    the posted piece and runs it; the worker, when it gets to the batch, skips it."""
    _spinning(2)
    w = gemm_pool._workers[0]
    k = w.k
    rng = np.random.default_rng(5)
    a = rng.standard_normal((48, 30), dtype=np.float32)
    b = rng.standard_normal((30, 40), dtype=np.float32)
    with parallel.cpu_pass():
        run = parallel.prepare_matmul(a, b, np.empty((48, 40), np.float32))
        out = np.full((48, 40), np.nan, np.float32)
        run = parallel.prepare_matmul(a, b, out)
        hold_until_blocked(w)
        deadline = time.monotonic() + 20
        w.ctl[k.HOLD] = 0                       # (released, but not woken: it stays blocked)
        run()
        np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)
        assert w.ctl[k.DONE] != w.ctl[k.POSTED], "the caller waited for the blocked worker"
        w.poke()
        while w.ctl[k.DONE] != w.ctl[k.POSTED]:
            assert time.monotonic() < deadline, "the worker never caught up"
            time.sleep(0.001)
        for _ in range(5):                      # and the pool works on as before
            out[...] = np.nan
            run()
            np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)


def test_warm_up_compiles_the_native_loops():
    """caffe_lite.warm_up compiles (or loads) every native function the pool calls."""
    from caffe_lite.warmup import warm_up
    assert warm_up() is True
    k = jit.kernels("spin")
    for fn in (k.serve, k.run_jobs, k.post, k.finish, k.wait, k.taken):
        assert fn.signatures, f"{fn.__name__} was not compiled"
    compiled = set(gemm_pool._callbacks)
    for family in ("depthwise", "im2col", "neuron", "pooling", "winograd", "grouped",
                   "softmax", "dense", "batchnorm"):
        tasks = gemm_pool.tasks(jit.kernels(family))
        assert tasks and set(tasks) <= compiled, family
