"""Sparse inference: the CSR format, the sparse InnerProduct / Convolution forward against hand
values and against the dense path, when the sparse path runs, and that it follows every change
of the weights (caffe_lite/compression/sparse.py, caffe_lite/layers/sparse.py)."""

import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.blob import Blob
from caffe_lite.compression import sparse
from caffe_lite.compression.sparse import CSRMatrix, SparseConfigError
from caffe_lite.errors import CaffeLiteError
from caffe_lite.layers import jit
from caffe_lite.proto import caffe_pb2
from caffe_lite.testing import layer_from_text

TEST, TRAIN = caffe_pb2.TEST, caffe_pb2.TRAIN
needs_jit = pytest.mark.skipif(jit.kernels("sparse") is None,
                               reason="numba not installed (sparse kernels run dense)")


def _sparse_weights(shape, density, seed):
    g = np.random.default_rng(seed)
    w = g.standard_normal(shape).astype(np.float32)
    w[g.random(shape) >= density] = 0
    return w


# --- the format -------------------------------------------------------------------------------
def test_csr_from_dense_by_hand():
    a = np.array([[0, 2, 0, -1], [0, 0, 0, 0], [3, 0, -0.0, 4]], np.float32)
    m = CSRMatrix.from_dense(a)
    assert m.shape == (3, 4) and m.nnz == 4
    np.testing.assert_array_equal(m.indptr, [0, 2, 2, 4])
    np.testing.assert_array_equal(m.indices, [1, 3, 0, 3])
    np.testing.assert_array_equal(m.data, [2, -1, 3, 4])
    assert m.indices.dtype == np.uint16 and m.density == 4 / 12
    np.testing.assert_array_equal(m.to_dense(), a)
    assert m.nbytes == 4 * 8 + 4 * 2 + 4 * 4


def test_csr_index_width_follows_the_column_count():
    a = np.zeros((2, 65537), np.float32)
    a[0, 65536] = 5
    a[1, 3] = 1
    m = CSRMatrix.from_dense(a)
    assert m.indices.dtype == np.uint32
    np.testing.assert_array_equal(m.indices, [65536, 3])
    np.testing.assert_array_equal(m.to_dense(), a)
    assert CSRMatrix.from_dense(a[:, :65536]).indices.dtype == np.uint16


def test_csr_of_a_grouped_weight_is_block_diagonal():
    # Convolution weight (Cout=4, Cin/group=1, 1, 2), group 2: filters 0-1 read input channel
    # 0 (columns 0-1 of the im2col columns), filters 2-3 channel 1 (columns 2-3).
    w = np.array([1, 0, 0, 2, 3, 4, 0, 5], np.float32).reshape(4, 1, 1, 2)
    m = CSRMatrix.from_weight(w, group=2)
    expected = np.array([[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 3, 4], [0, 0, 0, 5]], np.float32)
    assert m.shape == (4, 4)
    np.testing.assert_array_equal(m.to_dense(), expected)
    # InnerProduct with transpose: the weight is stored (K, N)
    wt = np.array([[1, 0], [0, 2], [3, 0]], np.float32)
    np.testing.assert_array_equal(CSRMatrix.from_weight(wt, transpose=True).to_dense(), wt.T)


def test_csr_rejects_inconsistent_arrays():
    with pytest.raises(CaffeLiteError, match="inconsistent CSR arrays"):
        CSRMatrix((2, 3), [0, 1, 3], [0, 1], [1.0, 2.0])
    with pytest.raises(CaffeLiteError, match="2-D"):
        CSRMatrix.from_dense(np.zeros(3, np.float32))


# --- layers against hand values ---------------------------------------------------------------
def _ip(num_output, mode, phase=TEST, extra=""):
    layer = layer_from_text(f'name: "ip" type: "InnerProduct" inner_product_param {{ '
                            f'num_output: {num_output} {extra} }}', phase)
    return layer, mode


def _run(layer, x, weights, mode):
    bottom, top = [Blob.from_array(np.asarray(x, np.float32))], [Blob()]
    layer.setup(bottom, top)
    for b, w in zip(layer.blobs, weights):
        b.data[...] = w
    layer.sparse.mode = mode
    layer.forward(bottom, top)
    return top[0].cpu_data.copy()


@needs_jit
@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_inner_product_by_hand(mode):
    w = np.array([[1, 0, 2], [0, 0, -1]], np.float32)
    layer = layer_from_text('type: "InnerProduct" inner_product_param { num_output: 2 }', TEST)
    y = _run(layer, [[1, 2, 3], [-1, 0, 1]], [w, np.array([0.5, -2], np.float32)], mode)
    # [1+6, -3] and [-1+2, -1], plus the bias
    np.testing.assert_allclose(y, [[7.5, -5], [1.5, -3]], rtol=1e-6)
    assert layer.sparse.active == (mode == "sparse")
    layer1 = layer_from_text('type: "InnerProduct" inner_product_param { num_output: 2 '
                             'bias_term: false }', TEST)
    y1 = _run(layer1, [[1, 2, 3]], [w], mode)
    np.testing.assert_allclose(y1, [[7, -3]], rtol=1e-6)


@needs_jit
@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_convolution_by_hand(mode):
    # One 3x3 input, two 2x2 filters with zeros; stride 1: each output is a 2x2 window product.
    x = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    w = np.array([[[[1, 0], [0, -1]]], [[[0, 2], [0, 0]]]], np.float32)
    layer = layer_from_text('type: "Convolution" convolution_param { num_output: 2 '
                            'kernel_size: 2 }', TEST)
    y = _run(layer, x, [w, np.array([10, 0], np.float32)], mode)
    # filter 0: x[i, j] - x[i+1, j+1] = -4 everywhere; filter 1: 2 * x[i, j+1]
    np.testing.assert_allclose(y[0, 0], [[6, 6], [6, 6]])
    np.testing.assert_allclose(y[0, 1], [[4, 6], [10, 12]])
    # padded by 1, stride 2: windows start at input (-1,-1) (-1,1) (1,-1) (1,1); zeros outside
    layer2 = layer_from_text('type: "Convolution" convolution_param { num_output: 2 '
                             'kernel_size: 2 pad: 1 stride: 2 bias_term: false }', TEST)
    y2 = _run(layer2, x, [w], mode)
    np.testing.assert_allclose(y2[0, 0], [[-1, -3], [-7, 5 - 9]])
    np.testing.assert_allclose(y2[0, 1], [[0, 0], [2 * 4, 2 * 6]])


# --- layers against the dense path ------------------------------------------------------------
def _dense_and_sparse(text, x, density, seed=0, phase=TEST):
    outs, reasons = [], []
    for mode in ("dense", "sparse"):
        layer = layer_from_text(text, phase)
        bottom, top = [Blob.from_array(x)], [Blob()]
        layer.setup(bottom, top)
        g = np.random.default_rng(seed)
        layer.blobs[0].data[...] = _sparse_weights(layer.blobs[0].shape, density, seed)
        for b in layer.blobs[1:]:
            b.data[...] = g.standard_normal(b.shape)
        layer.sparse.mode = mode
        layer.forward(bottom, top)
        outs.append(top[0].cpu_data.copy())
        reasons.append((layer.sparse.active, layer.sparse.reason))
    return outs, reasons, layer


def _close(a, b):
    scale = max(1.0, float(np.abs(a).max()))
    np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-5 * scale)


@needs_jit
@pytest.mark.parametrize("batch,bias,transpose,density", [
    (1, True, False, 0.09), (1, False, True, 0.3), (3, True, False, 0.2), (17, True, True, 0.05),
    (64, False, False, 0.5), (2, True, False, 0.0), (1, True, False, 1.0)])
def test_inner_product_matches_dense(batch, bias, transpose, density):
    x = np.random.default_rng(1).standard_normal((batch, 4, 5, 6)).astype(np.float32)
    text = (f'type: "InnerProduct" inner_product_param {{ num_output: 37 bias_term: '
            f'{str(bias).lower()} transpose: {str(transpose).lower()} }}')
    (d, s), reasons, _ = _dense_and_sparse(text, x, density)
    assert reasons[1][0], reasons[1]
    _close(d, s)


@needs_jit
def test_inner_product_axis_2_matches_dense():
    x = np.random.default_rng(2).standard_normal((2, 3, 7, 4)).astype(np.float32)
    (d, s), reasons, _ = _dense_and_sparse(
        'type: "InnerProduct" inner_product_param { num_output: 5 axis: 2 }', x, 0.3)
    assert d.shape == (2, 3, 5) and reasons[1][0]
    _close(d, s)


CONV_CASES = [
    # kernel, stride, pad, dilation, group, batch, input (H, W), plan
    ("kernel_size: 1", 1, 0, 1, 1, 1, (7, 9), "1x1"),
    ("kernel_size: 1", 1, 0, 1, 2, 3, (4, 4), "1x1"),
    ("kernel_size: 3", 1, 1, 1, 1, 1, (8, 8), "direct"),
    ("kernel_size: 3", 1, 0, 2, 2, 2, (9, 9), "direct"),
    ("kernel_size: 3", 1, 0, 2, 2, 2, (9, 7), "im2col"),    # 5x3 outputs in rows of 7
    ("kernel_h: 1 kernel_w: 3", 1, 2, 1, 1, 3, (5, 6), "direct"),
    ("kernel_size: 5", 1, 0, 1, 1, 1, (12, 12), "direct"),
    ("kernel_size: 3", 2, 1, 1, 1, 2, (9, 9), "im2col"),
    ("kernel_size: 3", 3, 2, 2, 4, 1, (11, 8), "im2col"),
    ("kernel_size: 1", 2, 0, 1, 1, 2, (7, 7), "im2col"),
    ("kernel_size: 5", 1, 2, 1, 1, 1, (3, 3), "direct"),
    ("kernel_size: 7", 1, 3, 1, 1, 1, (2, 2), "im2col"),    # 2x2 outputs in rows of 8
]


@needs_jit
@pytest.mark.parametrize("kernel,stride,pad,dilation,group,batch,hw,plan", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_convolution_matches_dense(kernel, stride, pad, dilation, group, batch, hw, plan, bias):
    x = np.random.default_rng(3).standard_normal((batch, 8) + hw).astype(np.float32)
    text = (f'type: "Convolution" convolution_param {{ num_output: 12 {kernel} stride: {stride} '
            f'pad: {pad} dilation: {dilation} group: {group} bias_term: {str(bias).lower()} }}')
    (d, s), reasons, layer = _dense_and_sparse(text, x, 0.15, seed=batch)
    assert reasons[1][0], reasons[1]
    assert layer.sparse.offsets["table"].kind == plan
    _close(d, s)


@needs_jit
def test_convolution_1d_and_3d_match_dense():
    for shape, kernel in (((2, 3, 11), "kernel_size: 3 pad: 1"),
                          ((1, 2, 4, 5, 6), "kernel_size: 2 stride: 1"),
                          ((2, 2, 5, 5, 5), "kernel_size: 3 stride: 2 pad: 1")):
        x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
        (d, s), reasons, _ = _dense_and_sparse(
            f'type: "Convolution" convolution_param {{ num_output: 4 {kernel} }}', x, 0.3)
        assert reasons[1][0]
        _close(d, s)


@needs_jit
def test_a_second_shape_and_a_second_bottom():
    layer = layer_from_text('type: "Convolution" convolution_param { num_output: 3 '
                            'kernel_size: 3 pad: 1 }', TEST)
    g = np.random.default_rng(5)
    a, b = (Blob.from_array(g.standard_normal((2, 2, 6, 6)).astype(np.float32))
            for _ in range(2))
    tops = [Blob(), Blob()]
    layer.setup([a, b], tops)
    layer.blobs[0].data[...] = _sparse_weights(layer.blobs[0].shape, 0.3, 1)
    results = {}
    for mode in ("dense", "sparse"):
        layer.sparse.mode = mode
        layer.forward([a, b], tops)
        results[mode] = [t.cpu_data.copy() for t in tops]
        # another input size: the plan (padded buffer, offsets) is rebuilt
        saved = [x.cpu_data.copy() for x in (a, b)]
        for i, x in enumerate((a, b)):
            x.reshape(1, 2, 9, 5)
            x.data[...] = i + 1
        layer.forward([a, b], tops)
        results[mode + "2"] = [t.cpu_data.copy() for t in tops]
        for x, s in zip((a, b), saved):
            x.reshape(s.shape)
            x.data[...] = s
    for key in ("dense", "dense2"):
        for x, y in zip(results[key], results[key.replace("dense", "sparse")]):
            _close(x, y)


# --- when the sparse path runs ----------------------------------------------------------------
def _conv_layer(phase=TEST, extra="", density=0.05, mode=None):
    layer = layer_from_text('name: "c" type: "Convolution" ' + extra +
                            ' convolution_param { num_output: 8 kernel_size: 1 }', phase)
    bottom, top = [Blob.from_array(np.ones((1, 16, 4, 4), np.float32))], [Blob()]
    layer.setup(bottom, top)
    layer.blobs[0].data[...] = _sparse_weights(layer.blobs[0].shape, density, 0)
    layer.sparse.mode = mode
    layer.forward(bottom, top)
    return layer


@needs_jit
def test_auto_runs_sparse_only_without_weight_gradients():
    assert _conv_layer(TEST).sparse.active
    train = _conv_layer(TRAIN)
    assert not train.sparse.active and "trained" in train.sparse.reason
    frozen = _conv_layer(TRAIN, 'param { lr_mult: 0 } param { lr_mult: 0 }')
    frozen.param_propagate_down = [False, False]   # as the Net sets it for lr_mult 0
    frozen.forward(*_io(frozen))
    assert frozen.sparse.active
    assert _conv_layer(TRAIN, mode="sparse").sparse.active


def _io(layer):
    bottom = [Blob.from_array(np.ones((1, 16, 4, 4), np.float32))]
    top = [Blob()]
    layer.reshape(bottom, top)
    return bottom, top


@needs_jit
def test_auto_follows_the_break_even_density(monkeypatch):
    from caffe_lite.layers import sparse as layer_sparse
    monkeypatch.setitem(layer_sparse.BREAK_EVEN, "conv", ((10, 0.5), (float("inf"), 0.1)))
    assert layer_sparse.break_even("conv", 10) == 0.5 and layer_sparse.break_even("conv", 11) == 0.1
    # 16 output positions: above 10 columns, break-even 0.1
    dense = _conv_layer(density=0.3)
    assert not dense.sparse.active and "break-even 0.100" in dense.sparse.reason
    assert _conv_layer(density=0.05).sparse.active
    # a dense weight stays dense in auto, runs sparse when forced
    assert not _conv_layer(density=1.0).sparse.active
    assert _conv_layer(density=1.0, mode="sparse").sparse.active


@needs_jit
def test_mode_dense_env_default_and_unsupported_layers(monkeypatch):
    assert not _conv_layer(mode="dense").sparse.active
    monkeypatch.setenv("CAFFE_LITE_SPARSE", "dense")
    layer = _conv_layer()
    assert not layer.sparse.active and layer.sparse.reason == "mode dense"
    monkeypatch.setenv("CAFFE_LITE_SPARSE", "Sparse")
    assert _conv_layer(TRAIN).sparse.active
    monkeypatch.setenv("CAFFE_LITE_SPARSE", "fast")
    with pytest.raises(SparseConfigError, match="CAFFE_LITE_SPARSE: unknown mode 'fast'"):
        _conv_layer()
    monkeypatch.delenv("CAFFE_LITE_SPARSE")
    for text in ('type: "Convolution" convolution_param { num_output: 16 group: 16 '
                 'kernel_size: 3 }', 'type: "Deconvolution" convolution_param { '
                 'num_output: 4 kernel_size: 3 }'):
        layer = layer_from_text(text, TEST)
        bottom, top = [Blob.from_array(np.ones((1, 16, 5, 5), np.float32))], [Blob()]
        layer.setup(bottom, top)
        layer.sparse.mode = "sparse"
        layer.forward(bottom, top)
        assert not layer.sparse.active and "runs dense" in layer.sparse.reason


def test_without_compiled_kernels_everything_runs_dense(monkeypatch):
    monkeypatch.setenv("CAFFE_LITE_JIT", "0")
    layer = _conv_layer(mode="sparse")
    assert not layer.sparse.active and "numba" in layer.sparse.reason


# --- the sparse copy follows the weights ------------------------------------------------------
LENET = "../shared/models/bvlc_mnist/lenet.prototxt"
HAN = {"conv1": 0.66, "conv2": 0.12, "ip1": 0.08, "ip2": 0.19}


def _lenet(seed=0, batch=2):
    net = caffe.Net(LENET, caffe.TEST)
    for i, (name, params) in enumerate(net.params.items()):
        params[0].data[...] = _sparse_weights(params[0].shape, HAN[name], seed + i)
        params[1].data[...] = np.random.default_rng(seed + 10 + i).standard_normal(
            params[1].shape)
    net.blobs["data"].reshape(batch, 1, 28, 28)
    net.blobs["data"].data[...] = np.random.default_rng(seed).random((batch, 1, 28, 28))
    return net


def _outputs(net, mode):
    sparse.configure(net, mode)
    net.forward()
    return {n: net.blobs[n].cpu_data.copy() for n in ("conv1", "conv2", "ip1", "ip2")}


@needs_jit
@pytest.mark.parametrize("batch", [1, 8])
def test_lenet_at_hans_profile_matches_dense(batch):
    net = _lenet(batch=batch)
    d, s = _outputs(net, "dense"), _outputs(net, "sparse")
    assert all(r["ran"] == "sparse" for r in sparse.report(net))
    for name in d:
        _close(d[name], s[name])


@needs_jit
def test_sparse_copy_is_rebuilt_when_the_weights_change(tmp_path):
    net = _lenet()
    sparse.configure(net, "sparse")
    net.forward()
    ip1 = net.layer_dict["ip1"]
    first = ip1.sparse.matrix()
    net.forward()
    assert ip1.sparse.matrix() is first        # unchanged weights: the same copy
    # 1. a write through .data
    w = net.params["ip1"][0]
    w.data[:, :50] = 0
    net.forward()
    assert ip1.sparse.matrix() is not first
    _close(_outputs(net, "dense")["ip1"], _outputs(net, "sparse")["ip1"])
    # 2. copy_from another caffemodel
    other = _lenet(seed=7)
    path = str(tmp_path / "other.caffemodel")
    other.save(path)
    net.copy_from(path)
    other.blobs["data"].data[...] = net.blobs["data"].cpu_data
    expected = _outputs(other, "dense")
    got = _outputs(net, "sparse")
    for name in expected:
        _close(expected[name], got[name])
    # 3. pruning
    from caffe_lite.pruning.methods import prune_net
    prune_net(net, method="magnitude", sparsity=0.97)
    d, s = _outputs(net, "dense"), _outputs(net, "sparse")
    assert net.layer_dict["ip1"].sparse.density == pytest.approx(0.03, abs=0.005)
    for name in d:
        _close(d[name], s[name])


@needs_jit
def test_test_net_follows_the_solver(tmp_path):
    text = """type: "SGD" base_lr: 0.5 lr_policy: "fixed" display: 0 test_iter: 1
    test_interval: 1000 snapshot_after_train: false
    net_param {
      name: "m"
      layer { name: "in" type: "Input" top: "x" top: "y"
              input_param { shape { dim: 4 dim: 30 } shape { dim: 4 } } }
      layer { name: "ip" type: "InnerProduct" bottom: "x" top: "z"
              inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
      layer { name: "loss" type: "SoftmaxWithLoss" bottom: "z" bottom: "y" top: "loss" }
    }"""
    solver = caffe.get_solver(text)
    test_net = solver.test_nets[0]
    w = solver.net.params["ip"][0]
    w.data[...] = _sparse_weights(w.shape, 0.2, 0)
    w.mask_from_data()
    g = np.random.default_rng(0)
    for n in (solver.net, test_net):
        n.blobs["x"].data[...] = g.normal(size=(4, 30))
        n.blobs["y"].data[...] = [0, 1, 2, 1]
    sparse.configure(test_net, "sparse")
    before = test_net.forward()["loss"].copy()
    assert test_net.layer_dict["ip"].sparse.active
    assert not solver.net.layer_dict["ip"].sparse.active   # TRAIN, auto: dense
    solver.step(2)
    solver.test()
    after_sparse = test_net.forward()["loss"].copy()
    sparse.configure(test_net, "dense")
    after_dense = test_net.forward()["loss"].copy()
    assert after_sparse != pytest.approx(before)
    assert after_sparse == pytest.approx(after_dense, rel=1e-5)


@needs_jit
def test_backward_of_a_sparse_forward_is_the_dense_backward():
    results = {}
    for mode in ("dense", "sparse"):
        net = caffe.Net("""name: "b" force_backward: true
            layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3
                    dim: 6 dim: 6 } } }
            layer { name: "c" type: "Convolution" bottom: "x" top: "c"
                    convolution_param { num_output: 4 kernel_size: 3 } }
            layer { name: "ip" type: "InnerProduct" bottom: "c" top: "y"
                    inner_product_param { num_output: 5 } }""", caffe.TEST)
        for i, params in enumerate(net.params.values()):
            params[0].data[...] = _sparse_weights(params[0].shape, 0.3, i)
        net.blobs["x"].data[...] = np.random.default_rng(1).standard_normal((2, 3, 6, 6))
        sparse.configure(net, mode)
        net.forward()
        net.blobs["y"].diff[...] = 1
        net.backward()
        results[mode] = (net.blobs["x"].diff.copy(), net.params["c"][0].diff.copy())
        assert net.layer_dict["c"].sparse.active == (mode == "sparse")
    for a, b in zip(*results.values()):
        _close(a, b)


# --- configuration ----------------------------------------------------------------------------
def test_configure_modes_dicts_and_spec_files(tmp_path):
    net = _lenet()
    sparse.configure(net, "DENSE")
    assert {layer.sparse.mode for layer in sparse.sparse_layers(net).values()} == {"dense"}
    sparse.configure(net, {"ip1": "sparse", "conv1": "auto"})
    modes = {n: layer.sparse.mode for n, layer in sparse.sparse_layers(net).items()}
    assert modes == {"conv1": "auto", "conv2": "dense", "ip1": "sparse", "ip2": "dense"}
    spec = tmp_path / "sparse.prototxt"
    spec.write_text('mode: SPARSE\nlayer { name: "ip2" mode: DENSE }\n')
    sparse.configure(net, str(spec))
    modes = {n: layer.sparse.mode for n, layer in sparse.sparse_layers(net).items()}
    assert modes == {"conv1": "sparse", "conv2": "sparse", "ip1": "sparse", "ip2": "dense"}
    # without a top-level mode only the named layers change
    sparse.configure(net, 'layer { name: "conv1" mode: AUTO }')
    assert net.layer_dict["conv1"].sparse.mode == "auto"
    assert net.layer_dict["conv2"].sparse.mode == "sparse"


def test_configure_errors_change_nothing(tmp_path):
    net = _lenet()
    sparse.configure(net, "dense")
    with pytest.raises(SparseConfigError, match="no InnerProduct or Convolution layer named "
                                                "'relu1'.*conv1, conv2, ip1, ip2"):
        sparse.configure(net, {"ip1": "sparse", "relu1": "sparse"})
    with pytest.raises(SparseConfigError, match="layer 'ip1': unknown mode 'fast'"):
        sparse.configure(net, {"ip1": "fast"})
    with pytest.raises(SparseConfigError, match="'fast' is neither a mode"):
        sparse.configure(net, "fast")
    with pytest.raises(SparseConfigError, match="layer named 'ip9'"):
        sparse.configure(net, 'mode: SPARSE layer { name: "ip9" mode: DENSE }')
    bad = tmp_path / "bad.prototxt"
    bad.write_text('mode: SPARSE\nlayer { name: "ip1" mode: FAST }\n')
    with pytest.raises(CaffeLiteError, match="bad.prototxt:2"):
        sparse.configure(net, str(bad))
    assert {layer.sparse.mode for layer in sparse.sparse_layers(net).values()} == {"dense"}


@needs_jit
def test_report_and_time_forward():
    net = _lenet(batch=1)
    sparse.configure(net, {"ip1": "sparse"})
    rows = {r["layer"]: r for r in sparse.report(net)}
    assert rows["ip1"]["ran"] == "-"
    net.forward()
    rows = {r["layer"]: r for r in sparse.report(net)}
    ip1 = rows["ip1"]
    assert ip1["ran"] == "sparse" and ip1["shape"] == (500, 800)
    assert ip1["nnz"] == np.count_nonzero(net.params["ip1"][0].data)
    assert ip1["csr_bytes"] == net.layer_dict["ip1"].sparse.matrix().nbytes
    assert ip1["dense_bytes"] == 4 * 500 * 800
    assert "ip1" in sparse.format_report(sparse.report(net))
    t = sparse.time_forward(net, repeats=3, warmup=1)
    assert t["dense_ms"] > 0 and t["sparse_ms"] > 0
    assert t["speedup"] == pytest.approx(t["dense_ms"] / t["sparse_ms"])
    assert {n: v["ran"] for n, v in t["layers"].items()} == dict.fromkeys(HAN, "sparse")
    assert net.layer_dict["ip1"].sparse.mode == "sparse"       # restored
    assert net.layer_dict["ip2"].sparse.mode is None


# --- the command line -------------------------------------------------------------------------
@needs_jit
def test_cli_sparse_report_and_flags(tmp_path, capsys):
    from caffe_lite.cli import main
    weights = str(tmp_path / "lenet.caffemodel")
    _lenet().save(weights)
    assert main(["sparse", "-model", LENET, "-weights", weights, "-batch", "1",
                 "-iterations", "2", "-format", "json"]) == 0
    import json
    out = json.loads(capsys.readouterr().out)
    ran = {r["layer"]: r["ran"] for r in out["layers"]}
    assert ran["ip1"] == "sparse" and ran["conv2"] == "sparse"
    assert out["timing"]["dense_ms"] > 0
    spec = tmp_path / "spec.prototxt"
    spec.write_text('mode: DENSE layer { name: "ip1" mode: SPARSE }')
    assert main(["sparse", "-model", LENET, "-weights", weights, "-mode", str(spec),
                 "-iterations", "0"]) == 0
    table = capsys.readouterr().out
    lines = {line.split()[0]: line for line in table.splitlines()[1:] if line.strip()}
    assert "sparse: density" in lines["ip1"] and "mode dense" in lines["conv2"]
    assert main(["test", "-model", LENET, "-weights", weights, "-iterations", "1",
                 "-sparse", "sparse"]) == 0
    assert main(["time", "-model", LENET, "-weights", weights, "-iterations", "1",
                 "-sparse", str(spec)]) == 0
    capsys.readouterr()
    assert main(["test", "-model", LENET, "-weights", weights, "-iterations", "1",
                 "-sparse", "fastest"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "'fastest' is neither a mode" in err[-1] and "Traceback" not in "".join(err)


@needs_jit
def test_time_model_for_the_mnist_example(tmp_path):
    weights = str(tmp_path / "lenet.caffemodel")
    _lenet().save(weights)
    images = np.random.default_rng(0).random((3, 1, 28, 28)).astype(np.float32)
    net = sparse.inference_net(LENET, weights, data=images)
    assert net.blobs["data"].shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(net.blobs["data"].data, images)
    assert sparse.inference_net(LENET, weights, batch=1).blobs["data"].shape == (1, 1, 28, 28)
    t = sparse.time_model(LENET, weights, batch=1, repeats=2)
    assert set(t) == {"dense_ms", "sparse_ms", "speedup", "layers"}
    assert all(v["ran"] == "sparse" for v in t["layers"].values())
    with pytest.raises(CaffeLiteError, match="batch must be at least 1"):
        sparse.inference_net(LENET, weights, batch=0)
