"""Products of few rows (layers/numba/dense.py through parallel.prepare_matmul): an InnerProduct
on a batch of 1 to 8 runs as the compiled kernel, equal to the float64 product to float32
rounding for every row count and column remainder, split over the spinning workers in a plan;
other products (more rows, a weight stored (K, N), strided operands) keep to BLAS."""
import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.layers import gemm_pool, jit, parallel

pytestmark = pytest.mark.skipif(not jit.available(), reason="the kernel needs numba")

F = np.float32


def _reference(x, w):
    return x.astype(np.float64) @ w.astype(np.float64).T


def _plain(x, w, y, n0, n1):
    """The kernel without a tail."""
    z = np.zeros(0, F)
    jit.kernels("dense").rows_by_transposed(x, w, y, z, z, 0, z, np.zeros((0, 0), F), False,
                                            False, n0, n1)


def _close(got, x, w):
    """float32 rounding of a K-term sum: |error| <= K * eps * sum |x_k w_k|."""
    bound = x.shape[1] * np.finfo(F).eps * (np.abs(x).astype(np.float64) @ np.abs(w).T)
    assert np.all(np.abs(got - _reference(x, w)) <= bound + 1e-30)


@pytest.mark.parametrize("m", [1, 2, 3, 8])
@pytest.mark.parametrize("n", [1, 3, 4, 9, 30])
def test_the_kernel_equals_the_product(m, n):
    rng = np.random.default_rng(m * 100 + n)
    x = rng.standard_normal((m, 53), dtype=F)
    w = rng.standard_normal((n, 53), dtype=F)
    y = np.full((m, n), np.nan, F)
    _plain(x, w, y, 0, n)
    _close(y, x, w)
    # a column range writes those columns only (the split's pieces)
    y2 = np.full((m, n), np.nan, F)
    _plain(x, w, y2, 1, n)
    assert np.isnan(y2[:, 0]).all()
    np.testing.assert_array_equal(y2[:, 1:], y[:, 1:])


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_the_tail_is_the_epilogue(kind):
    """With a tail the columns get v = y * scale + shift (kept before the activation), then
    ReLU or the negative slope: what fusion.Epilogue's pass computes."""
    k = jit.kernels("dense")
    rng = np.random.default_rng(kind)
    x = rng.standard_normal((3, 20), dtype=F)
    w = rng.standard_normal((10, 20), dtype=F)
    scale, shift, slope = (rng.standard_normal(10, dtype=F) for _ in range(3))
    y, keep = np.zeros((3, 10), F), np.zeros((3, 10), F)
    k.rows_by_transposed(x, w, y, scale, shift, kind, slope, keep, True, True, 2, 10)
    raw = np.zeros((3, 10), F)
    _plain(x, w, raw, 0, 10)
    v = raw * scale + shift
    act = {0: v, 1: np.maximum(v, 0), 2: np.where(v < 0, v * slope, v)}[kind]
    np.testing.assert_allclose(keep[:, 2:], v[:, 2:], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y[:, 2:], act[:, 2:], rtol=1e-6, atol=1e-6)
    assert not y[:, :2].any() and not keep[:, :2].any()    # other columns untouched


def _spy(monkeypatch):
    calls = []
    k = jit.kernels("dense")
    real = k.rows_by_transposed

    class Spy:
        def __getattr__(self, name):
            return getattr(k, name)

        @staticmethod
        def rows_by_transposed(*args):
            calls.append(args[-2:])
            return real(*args)
    monkeypatch.setattr(parallel.jit, "kernels",
                        lambda family, _k=parallel.jit.kernels: Spy() if family == "dense"
                        else _k(family))
    return calls


def test_which_products_take_the_kernel(monkeypatch):
    calls = _spy(monkeypatch)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((20, 16), dtype=F)
    for m, takes in ((1, True), (8, True), (9, False)):
        x = rng.standard_normal((m, 16), dtype=F)
        out = np.zeros((m, 20), F)
        calls.clear()
        parallel.prepare_matmul(x, w.T, out)()
        assert bool(calls) == takes, m
        _close(out, x, w)
    x = rng.standard_normal((2, 16), dtype=F)
    for a, b in ((x, np.ascontiguousarray(w.T)),      # stored (K, N): BLAS
                 (x[:, ::2], w[:, ::2].T),             # strided row
                 (x.astype(np.float64), w.T)):         # not float32
        calls.clear()
        out = np.zeros((2, 20), F)
        parallel.prepare_matmul(a, b, out)()
        assert not calls
        np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not gemm_pool.available(parallel._blas_libraries()),
                    reason="the split needs the spinning pool")
def test_a_plan_splits_the_columns_over_the_workers(monkeypatch):
    from spin_util import spinning
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", "2")
    w0 = spinning(2)
    rng = np.random.default_rng(5)
    w = rng.standard_normal((300, 784), dtype=F)
    x = rng.standard_normal((1, 784), dtype=F)
    out = np.full((1, 300), np.nan, F)
    assert w.size >= parallel.MIN_SPIN_FEW_ROWS_MACS
    with parallel.cpu_pass(), parallel.planned():
        run = parallel.prepare_matmul(x, w.T, out)
        assert run.packed            # posted as the kernel's native task
        ran = int(w0.ctl[w0.k.RAN])
        for _ in range(50):
            out[...] = np.nan
            run()
            _close(out, x, w)
        assert int(w0.ctl[w0.k.RAN]) > ran
        # below the threshold: one call on the caller's thread
        # below the threshold: the kernel on the caller's thread alone, not posted
        k = parallel.MIN_SPIN_FEW_ROWS_MACS // 300 - 1
        small, xs = np.ascontiguousarray(w[:, :k]), np.ascontiguousarray(x[:, :k])
        posted = []
        monkeypatch.setattr(gemm_pool, "prepare_tasks", lambda *a: posted.append(a))
        run = parallel.prepare_matmul(xs, small.T, out)
        run()
        assert not posted
        _close(out, xs, small)
        monkeypatch.undo()


PROTO = """
force_backward: true
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: %d dim: 3 dim: 5 dim: 7 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 13 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "gaussian" std: 1 } } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
layer { name: "ip2" type: "InnerProduct" bottom: "data" top: "ip2"
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "gaussian" std: 1 } } }
layer { name: "ip3" type: "InnerProduct" bottom: "ip" top: "ip3"
        inner_product_param { num_output: 9 bias_term: false
                              weight_filler { type: "gaussian" std: 1 } } }
layer { name: "prelu" type: "PReLU" bottom: "ip3" top: "ip3"
        prelu_param { filler { type: "constant" value: 0.3 } } }
layer { name: "loss2" type: "EuclideanLoss" bottom: "ip2" bottom: "target2" top: "loss2" }
layer { name: "loss3" type: "EuclideanLoss" bottom: "ip3" bottom: "target3" top: "loss3" }
layer { name: "target2" type: "Input" top: "target2"
        input_param { shape { dim: %d dim: 6 } } }
layer { name: "target3" type: "Input" top: "target3"
        input_param { shape { dim: %d dim: 9 } } }
"""


def _run(tmp_path, batch, phase):
    """Outputs, input gradient and parameter gradients after two forward / backward passes
    (the second runs the prepared plan)."""
    p = tmp_path / f"ip-{batch}.prototxt"
    text = PROTO % (batch, batch, batch)
    # (the targets are declared after the losses that read them: move them to the front)
    head, targets = text.split('layer { name: "target2"')
    p.write_text(head.replace('layer { name: "ip"', 'layer { name: "target2"' +
                              targets.strip() + '\nlayer { name: "ip"', 1))
    net = caffe.Net(str(p), phase)
    rng = np.random.default_rng(batch)
    for name in net.params:
        for b in net.params[name]:
            b.data[...] = rng.standard_normal(b.shape)
    inputs = {n: rng.standard_normal(net.blobs[n].shape, dtype=F)
              for n in ("data", "target2", "target3")}
    for _ in range(2):
        out = {k: v.copy() for k, v in net.forward(**inputs).items()}
        for name in net.params:
            for b in net.params[name]:
                b.diff[...] = 0
        net.backward()
    grads = {name: [b.diff.copy() for b in net.params[name]] for name in net.params}
    return out, net.blobs["ip"].data.copy(), net.blobs["data"].diff.copy(), grads


@pytest.mark.parametrize("batch", [1, 4, 8])
def test_inner_products_at_small_batch_equal_the_blas_path(tmp_path, monkeypatch, batch):
    """Fused with ReLU, with PReLU (whose backward reads the kept values), with a bias alone
    and without one: outputs and gradients as with BLAS and separate passes."""
    got = _run(tmp_path, batch, caffe.TRAIN)
    monkeypatch.setattr(parallel, "FEW_ROWS", 0)
    monkeypatch.setenv("CAFFE_LITE_FUSE", "0")
    expect = _run(tmp_path, batch, caffe.TRAIN)
    for name in expect[0]:
        np.testing.assert_allclose(got[0][name], expect[0][name], rtol=1e-5)
    np.testing.assert_allclose(got[1], expect[1], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got[2], expect[2], rtol=1e-4, atol=1e-3)
    for name in expect[3]:
        for g, e in zip(got[3][name], expect[3][name]):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-3)
