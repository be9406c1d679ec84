"""Products of few rows (layers/numba/dense.py through parallel.prepare_matmul): an InnerProduct
on a batch of 1 to 8 runs as the compiled kernel, equal to the float64 product to float32
rounding for every row count and column remainder, split over the spinning workers in a plan;
other products (more rows, a weight stored (K, N), strided operands) keep to BLAS."""
import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.layers import gemm_pool, im2col, jit, parallel

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


def _spy(monkeypatch, kernel="rows_by_transposed", record=lambda args: args[-2:]):
    """The calls of a dense kernel from Python (record(args) of each), in a list."""
    calls = []
    k = jit.kernels("dense")
    real = getattr(k, kernel)

    class Spy:
        def __getattr__(self, name):
            if name == kernel:
                return lambda *args: (calls.append(record(args)), real(*args))[1]
            return getattr(k, name)
    monkeypatch.setattr(jit, "kernels",
                        lambda family, _k=jit.kernels: Spy() if family == "dense"
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
        monkeypatch.setattr(gemm_pool, "prepare_tasks", lambda *a, **kw: posted.append(a))
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


# --- convolutions with few output positions (layers/numba/dense.py `positions`) ----------------

def _conv_reference(x, w, stride, pad, dilation):
    """float64 convolution of x (N, C, H, W) by w (O, C, kh, kw), group 1."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (wd + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    y = np.zeros((n, o, oh, ow))
    for i in range(kh):
        for j in range(kw):
            win = xp[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                     j * dw:j * dw + sw * (ow - 1) + 1:sw]
            y += np.einsum("nchw,oc->nohw", win, w[:, :, i, j].astype(np.float64))
    return y, np.einsum("nchw,oc->nohw", np.abs(xp[:, :, :oh, :ow]) * 0 + 1, np.abs(w).sum(
        axis=(2, 3)).astype(np.float64)) * np.abs(xp).max()


GEOMETRIES = [  # (C, H, W, O, kernel, stride, pad, dilation)
    (48, 4, 4, 64, (2, 2), (1, 1), (0, 0), (1, 1)),      # MTCNN R-Net conv3
    (5, 5, 6, 7, (3, 3), (2, 2), (1, 1), (1, 1)),        # padding, a remainder of 3 channels
    (3, 7, 7, 9, (3, 2), (2, 3), (1, 0), (2, 1)),        # rectangular, dilated, strided
    (6, 3, 3, 4, (1, 1), (1, 1), (0, 0), (1, 1)),        # 1x1
    (2, 4, 4, 1, (3, 3), (1, 1), (2, 2), (1, 1)),        # a pad larger than the kernel's reach
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("num", [1, 2])
def test_the_convolution_kernel_equals_the_convolution(geometry, num):
    k = jit.kernels("dense")
    c, h, wd, o, kernel, stride, pad, dilation = geometry
    rng = np.random.default_rng(sum(geometry[:4]) + num)
    x = rng.standard_normal((num, c, h, wd), dtype=F)
    w = rng.standard_normal((o, c) + kernel, dtype=F)
    expect, scale = _conv_reference(x, w, stride, pad, dilation)
    oh, ow = expect.shape[2:]
    g = np.array(kernel + stride + pad + dilation + (ow,), np.int64)
    y = np.full((num, o, oh * ow), np.nan, F)
    patches = np.full((2, oh * ow, c * kernel[0] * kernel[1]), np.nan, F)
    z = np.zeros(0, F)
    k.positions(x, w.reshape(o, -1), y, g, patches, z, z, 0, z, np.zeros((0, 0, 0), F), False,
                False, 0, o)
    bound = c * kernel[0] * kernel[1] * np.finfo(F).eps * scale
    assert np.all(np.abs(y.reshape(expect.shape) - expect) <= bound + 1e-30)
    # output channels [1, o) from slot 1: those channels only, the same values
    y2 = np.full_like(y, np.nan)
    k.positions(x, w.reshape(o, -1), y2, g, patches, z, z, 0, z, np.zeros((0, 0, 0), F), False,
                False, 1, o, 1)
    assert np.isnan(y2[:, 0]).all()
    np.testing.assert_array_equal(y2[:, 1:], y[:, 1:])


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_the_convolution_kernels_tail_is_the_epilogue(kind):
    k = jit.kernels("dense")
    rng = np.random.default_rng(10 + kind)
    x = rng.standard_normal((2, 5, 5, 6), dtype=F)
    w = rng.standard_normal((7, 5 * 9), dtype=F)
    g = np.array((3, 3, 2, 2, 1, 1, 1, 1, 3), np.int64)
    scale, shift, slope = (rng.standard_normal(7, dtype=F) for _ in range(3))
    patches = np.zeros((1, 9, 45), F)
    z = np.zeros(0, F)
    raw = np.zeros((2, 7, 9), F)
    k.positions(x, w, raw, g, patches, z, z, 0, z, np.zeros((0, 0, 0), F), False, False, 0, 7)
    y, keep = np.zeros((2, 7, 9), F), np.zeros((2, 7, 9), F)
    k.positions(x, w, y, g, patches, scale, shift, kind, slope, keep, True, True, 2, 7)
    v = raw * scale[:, None] + shift[:, None]
    act = {0: v, 1: np.maximum(v, 0), 2: np.where(v < 0, v * slope[:, None], v)}[kind]
    np.testing.assert_allclose(keep[:, 2:], v[:, 2:], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y[:, 2:], act[:, 2:], rtol=1e-6, atol=1e-6)
    assert not y[:, :2].any() and not keep[:, :2].any()


CONV = """
force_backward: true
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: %(n)d dim: %(c)d dim: %(h)d dim: %(h)d } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 10 kernel_size: %(k)d pad: %(pad)d group: %(group)d
                            weight_filler { type: "gaussian" std: 1 }
                            bias_filler { type: "gaussian" std: 1 } } }
layer { name: "prelu" type: "PReLU" bottom: "conv" top: "conv"
        prelu_param { filler { type: "constant" value: 0.3 } } }
layer { name: "conv2" type: "Convolution" bottom: "data" top: "conv2"
        convolution_param { num_output: 6 kernel_size: %(k)d pad: %(pad)d bias_term: false
                            weight_filler { type: "gaussian" std: 1 } } }
layer { name: "conv3" type: "Convolution" bottom: "conv" top: "conv3"
        convolution_param { num_output: 5 kernel_size: 1
                            weight_filler { type: "gaussian" std: 1 }
                            bias_filler { type: "gaussian" std: 1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv3" top: "conv3" }
"""


def _conv_net(tmp_path, params, phase=None):
    p = tmp_path / "conv.prototxt"
    p.write_text(CONV % params)
    net = caffe.Net(str(p), caffe.TRAIN if phase is None else phase)
    rng = np.random.default_rng(7)
    for name in net.params:
        for b in net.params[name]:
            b.data[...] = rng.standard_normal(b.shape)
    return net, rng.standard_normal(net.blobs["data"].shape, dtype=F)


def _conv_pass(tmp_path, params):
    """Outputs, kept PReLU input, input and parameter gradients after two passes."""
    net, x = _conv_net(tmp_path, params)
    for _ in range(2):
        net.forward(data=x)
        for name in net.params:
            for b in net.params[name]:
                b.diff[...] = 0
        for name in ("conv", "conv2", "conv3"):
            net.blobs[name].diff[...] = np.cos(np.arange(net.blobs[name].count)).reshape(
                net.blobs[name].shape)
        net.backward()
    return ({n: net.blobs[n].data.copy() for n in ("conv", "conv2", "conv3")},
            net.blobs["data"].diff.copy(),
            {n: [b.diff.copy() for b in net.params[n]] for n in net.params})


def _positions_spy(monkeypatch):
    return _spy(monkeypatch, "positions", lambda args: args[2])     # (the output)


@pytest.mark.parametrize("params", [dict(n=1, c=6, h=4, k=2, pad=0, group=1),
                                    dict(n=2, c=3, h=2, k=3, pad=1, group=1)])
def test_convolutions_on_few_positions_equal_the_im2col_path(tmp_path, monkeypatch, params):
    """Fused with PReLU (backward reads the kept values) and with ReLU, with a bias alone,
    without one; outputs and every gradient as with im2col + BLAS and separate passes."""
    calls = _positions_spy(monkeypatch)
    got = _conv_pass(tmp_path, params)
    assert len(calls) >= 3      # the three convolutions (the second pass may run natively)
    monkeypatch.undo()
    monkeypatch.setattr(im2col, "FEW_POSITIONS", 0)
    monkeypatch.setenv("CAFFE_LITE_FUSE", "0")
    calls = _positions_spy(monkeypatch)
    expect = _conv_pass(tmp_path, params)
    assert not calls
    for name in expect[0]:
        np.testing.assert_allclose(got[0][name], expect[0][name], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got[1], expect[1], rtol=1e-4, atol=1e-3)
    for name in expect[2]:
        for g, e in zip(got[2][name], expect[2][name]):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("params", [dict(n=1, c=6, h=6, k=2, pad=0, group=1),    # 25 positions
                                    dict(n=4, c=3, h=3, k=2, pad=0, group=1),    # 4 x 4
                                    dict(n=1, c=6, h=4, k=2, pad=0, group=2)])   # grouped
def test_which_convolutions_take_the_positions_kernel(tmp_path, monkeypatch, params):
    calls = _positions_spy(monkeypatch)
    net, x = _conv_net(tmp_path, params, caffe.TEST)
    net.forward(data=x)
    positions = net.blobs["conv"].count // (params["n"] * 10)
    takes = params["group"] == 1 and params["n"] * positions <= im2col.FEW_POSITIONS
    assert any(np.shares_memory(y, net.blobs["conv"].data) for y in calls) == takes


@pytest.mark.skipif(not gemm_pool.available(parallel._blas_libraries()),
                    reason="the split needs the spinning pool")
def test_a_plan_splits_the_output_channels_over_the_workers(tmp_path, monkeypatch):
    from spin_util import spinning
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", "2")
    monkeypatch.setattr(parallel, "MIN_SPIN_FEW_ROWS_MACS", 1)
    monkeypatch.setattr(im2col, "MIN_SPIN_FEW_ROWS_MACS", 1)
    w0 = spinning(2)
    net, x = _conv_net(tmp_path, dict(n=1, c=6, h=4, k=2, pad=0, group=1), caffe.TEST)
    net.forward(data=x)
    expect = {n: net.blobs[n].data.copy() for n in ("conv", "conv2", "conv3")}
    ran = int(w0.ctl[w0.k.RAN])
    for _ in range(20):
        out = net.forward(data=x, blobs=["conv", "conv2"])
        for n in expect:
            np.testing.assert_array_equal(out[n], expect[n])
    assert int(w0.ctl[w0.k.RAN]) > ran
