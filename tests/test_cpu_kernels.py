"""The CPU speed paths compute what the plain numpy paths compute.

The compiled kernels (numba, optional) are checked against the numpy code over many
geometries; the pool-split matrix product against np.matmul.  The numpy paths themselves are
checked against hand-computed values and gradients in the test_layers_*.py files."""
import itertools
import types

import numpy as np
import pytest

from caffe_lite.layers import jit, parallel
from caffe_lite.layers.depthwise import DepthwiseEngine
from caffe_lite.layers.im2col import ConvGeometry, GemmEngine
from caffe_lite.testing import blob, layer_from_text
from caffe_lite.proto import caffe_pb2

needs_jit = pytest.mark.skipif(not jit.available(), reason="numba not installed")


@pytest.fixture
def no_jit(monkeypatch):
    """Within the test: layers built or run see no compiled kernels."""
    def off():
        monkeypatch.setenv("CAFFE_LITE_JIT", "0")

    def on():
        monkeypatch.delenv("CAFFE_LITE_JIT", raising=False)
    return off, on


GEOMETRIES = [g for g in itertools.product(
    [(3, 3), (1, 1), (5, 3), (2, 4)], [(1, 1), (2, 2), (3, 1)],
    [(0, 0), (1, 1), (2, 0), (4, 3)], [(1, 1), (2, 1)], [(7, 7), (5, 9), (2, 3)])
    if min(ConvGeometry(*g[:4]).conv_output(g[4])) > 0]


def _engines(make, toggle, shape_args):
    off, on = toggle
    on()
    fast = make()
    fast.reshape(*shape_args)
    off()
    slow = make()
    slow.reshape(*shape_args)
    on()
    return fast, slow


def _depthwise_results(engine, x, w, b, dy):
    """y, then dx and dw from backward, then each again from backward_data / backward_weight
    (outputs start as NaN, dw at 1 to check that backward overwrites it)."""
    y = np.full(dy.shape, np.nan, np.float32)
    engine.forward(x, w, b, y)
    dx = np.full_like(x, np.nan)
    dw = np.ones_like(w)
    engine.backward(x, dy, w, dx, dw)
    dx2 = np.full_like(x, np.nan)
    engine.backward_data(dy, w, dx2)
    dw2 = np.zeros_like(w)
    engine.backward_weight(x, dy, dw2)
    return y, dx, dw, dx2, dw2


@needs_jit
@pytest.mark.parametrize("multiplier", [1, 3])
def test_depthwise_kernel_matches_numpy(no_jit, multiplier):
    rng = np.random.default_rng(0)
    n, c, m = 2, 3, multiplier
    for kernel, stride, pad, dil, size in GEOMETRIES[::3]:
        g = ConvGeometry(kernel, stride, pad, dil)
        out = g.conv_output(size)
        fast, slow = _engines(lambda: DepthwiseEngine(g, c, m), no_jit, (n, size, out))
        assert fast.jit is not None and slow.jit is None
        x = rng.standard_normal((n, c) + size, dtype=np.float32)
        w = rng.standard_normal((c * m, 1) + kernel, dtype=np.float32)
        b = rng.standard_normal(c * m, dtype=np.float32)
        dy = rng.standard_normal((n, c * m) + out, dtype=np.float32)
        pairs = zip(_depthwise_results(fast, x, w, b, dy), _depthwise_results(slow, x, w, b, dy))
        for a, r in pairs:
            np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4,
                                       err_msg=f"{kernel} {stride} {pad} {dil} {size}")


@needs_jit
@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("stride,pad", [(1, 1), (2, 1), (1, 0), (2, 0)])
@pytest.mark.parametrize("size", [(7, 7), (14, 14), (13, 13), (6, 11), (11, 6), (3, 4),
                                  (4, 150), (3, 131)])
def test_depthwise_small_planes_match_numpy(no_jit, multiplier, stride, pad, size):
    """MobileNet's late layers: 3x3 on small planes, where pad 1 takes the margined form
    (at stride 2 the half grid for even widths, the stride-1 grid for odd ones); wide planes
    take it too, but for odd widths at stride 2 (four times the work there)."""
    from caffe_lite.layers.numba.depthwise import _is_same3
    rng = np.random.default_rng(1)
    n, c, m = 3, 5, multiplier
    g = ConvGeometry((3, 3), (stride, stride), (pad, pad), (1, 1))
    out = g.conv_output(size)
    fast, slow = _engines(lambda: DepthwiseEngine(g, c, m), no_jit, (n, size, out))
    full_grid = stride == 2 and size[1] % 2 == 1
    assert bool(_is_same3(fast.jit_geometry, size[1])) == (
        pad == 1 and not (full_grid and size[1] > 64))
    x = rng.standard_normal((n, c) + size, dtype=np.float32)
    w = rng.standard_normal((c * m, 1, 3, 3), dtype=np.float32)
    b = rng.standard_normal(c * m, dtype=np.float32)
    dy = rng.standard_normal((n, c * m) + out, dtype=np.float32)
    got = _depthwise_results(fast, x, w, b, dy)
    for a, r in zip(got, _depthwise_results(slow, x, w, b, dy)):
        assert np.isfinite(a).all() and np.abs(a).max() > 1
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)
    # one output and one weight gradient by hand: the last row's first output of image 0,
    # channel 0
    xp = np.pad(x[0, 0].astype(np.float64), pad)
    y, _, dw = got[:3]
    i = stride * (out[0] - 1)
    want = (xp[i:i + 3, 0:3] * w[0, 0]).sum() + b[0]
    assert abs(y[0, 0, -1, 0] - want) < 1e-4
    grad = sum((dy[i, 0, :, :, None, None] * np.lib.stride_tricks.sliding_window_view(
        np.pad(x[i, 0].astype(np.float64), pad), (3, 3))[::stride, ::stride]).sum((0, 1))
        for i in range(n))
    np.testing.assert_allclose(dw[0, 0] - 1, grad, rtol=1e-4, atol=1e-4)


@needs_jit
@pytest.mark.parametrize("group", [1, 2])
def test_im2col_kernels_match_numpy(no_jit, group):
    rng = np.random.default_rng(1)
    n, c, o = 3, 4, 6
    for kernel, stride, pad, dil, size in GEOMETRIES[1::3]:
        g = ConvGeometry(kernel, stride, pad, dil)
        out = g.conv_output(size)
        fast, slow = _engines(lambda: GemmEngine(g, c, o, group), no_jit, (n, size, out))
        assert (fast.jit is not None) == (not g.is_1x1) and slow.jit is None
        x = rng.standard_normal((n, c) + size, dtype=np.float32)
        w = rng.standard_normal((o, c // group) + kernel, dtype=np.float32)
        dy = rng.standard_normal((n, o) + out, dtype=np.float32)
        results = []
        for e in (fast, slow):
            y = np.full((n, o) + out, np.nan, np.float32)
            e.forward(x, w, None, y)
            dx = np.full_like(x, np.nan)
            e.backward_data(dy, w, dx)
            dw = np.ones_like(w)
            e.backward_weight(x, dy, dw)
            results.append((y, dx, dw))
        for a, r in zip(*results):
            np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4)


# (num, channels in, channels out, group, kernel, stride, pad, dilation, input size)
GROUPED_CASES = [
    (8, 32, 32, 8, (3, 3), (1, 1), (1, 1), (1, 1), (28, 28)),   # a ResNeXt 3x3, 4 per group
    (1, 32, 32, 8, (3, 3), (1, 1), (1, 1), (1, 1), (13, 11)),   # batch 1
    (3, 12, 6, 3, (3, 3), (2, 2), (1, 1), (1, 1), (10, 11)),    # stride 2: dx on im2col
    (2, 8, 16, 4, (3, 2), (2, 1), (2, 0), (2, 1), (9, 8)),      # Og > Cg, dilation
    (2, 8, 8, 4, (5, 5), (1, 1), (4, 1), (1, 1), (7, 7)),       # pad beyond the kernel
    (2, 6, 4, 2, (3, 3), (1, 1), (0, 2), (2, 2), (9, 12)),      # dilated stride 1
    (2, 64, 64, 16, (1, 3), (1, 1), (0, 1), (1, 1), (5, 6)),
]


@needs_jit
@pytest.mark.parametrize("case", GROUPED_CASES)
def test_grouped_direct_kernels_match_im2col(no_jit, case):
    """The direct kernels of grouped convolutions with few channels per group (forward and
    both gradients) against the numpy im2col products."""
    n, c, o, group, kernel, stride, pad, dil, size = case
    g = ConvGeometry(kernel, stride, pad, dil)
    out = g.conv_output(size)
    fast, slow = _engines(lambda: GemmEngine(g, c, o, group), no_jit, (n, size, out))
    assert fast.direct is not None and slow.direct is None
    assert fast.direct_data == (stride == (1, 1) and all(
        p <= (k - 1) * d for p, k, d in zip(pad, kernel, dil)))
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, c) + size, dtype=np.float32)
    w = rng.standard_normal((o, c // group) + kernel, dtype=np.float32)
    w[rng.random(w.shape) < 0.3] = 0   # a pruned weight reads as 0 through every product
    b = rng.standard_normal(o, dtype=np.float32)
    dy = rng.standard_normal((n, o) + out, dtype=np.float32)
    results = []
    for e in (fast, slow):
        y = np.full((n, o) + out, np.nan, np.float32)
        e.forward(x, w, b, y)
        dx = np.full_like(x, np.nan)
        e.backward_data(dy, w, dx)
        dw = np.ones_like(w)
        e.backward_weight(x, dy, dw)
        results.append((y, dx, dw))
    for a, r in zip(*results):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4)


@needs_jit
def test_grouped_direct_only_for_few_channels_per_group():
    g = ConvGeometry((3, 3), (1, 1), (1, 1), (1, 1))
    for c, group, direct in [(128, 32, True), (112, 16, True), (64, 8, False), (16, 1, False)]:
        e = GemmEngine(g, c, c, group)
        e.reshape(2, (8, 8), (8, 8))
        assert (e.direct is not None) == direct, (c, group)
    e = GemmEngine(ConvGeometry((1, 1), (1, 1), (0, 0), (1, 1)), 64, 64, 32)
    e.reshape(2, (8, 8), (8, 8))
    assert e.direct is None   # 1x1: the products need no columns


def _run_layer(text, x, dy, phase=caffe_pb2.TRAIN, in_place=False, top_count=1):
    layer = layer_from_text(text, phase)
    bottom = [blob(x)]
    top = [bottom[0]] if in_place else [blob(np.zeros(1, np.float32))
                                        for _ in range(top_count)]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    y = [t.data.copy() for t in top]
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    return layer, y, bottom[0].diff.copy()


def _both(no_jit, fn):
    off, on = no_jit
    on()
    fast = fn()
    off()
    slow = fn()
    on()
    return fast, slow


@needs_jit
@pytest.mark.parametrize("pool,params", [
    ("MAX", "kernel_size: 3 stride: 2"), ("MAX", "kernel_size: 2 stride: 2"),
    ("MAX", "kernel_size: 3 stride: 2 pad: 1"), ("MAX", "kernel_h: 3 kernel_w: 2 stride_h: 1 "
                                                  "stride_w: 3 pad_h: 1 pad_w: 1"),
    ("AVE", "kernel_size: 3 stride: 2"), ("AVE", "kernel_size: 3 stride: 1 pad: 1"),
    ("AVE", "kernel_size: 4 stride: 3 pad: 2")])
# window by window; flat form; (8, 12): 2x2 windows at stride 2 tile it exactly
@pytest.mark.parametrize("size", [(9, 8), (30, 37), (8, 12)])
def test_pooling_kernels_match_numpy(no_jit, pool, params, size):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3) + size, dtype=np.float32)
    x[0, 0, :3, :3] = 1.5  # ties: the first maximum wins
    x[1, 1, 4:6, :] = -np.inf  # windows with nothing better than -FLT_MAX
    text = f'type: "Pooling" pooling_param {{ pool: {pool} {params} }}'
    top_count = 2 if pool == "MAX" else 1

    def run():
        layer = layer_from_text(text)
        bottom = [blob(x)]
        top = [blob(np.zeros(1, np.float32)) for _ in range(top_count)]
        layer.setup(bottom, top)
        layer.forward(bottom, top)
        top[0].diff[...] = np.arange(top[0].count, dtype=np.float32).reshape(top[0].shape)
        layer.backward(top, [True], bottom)
        return [t.data.copy() for t in top] + [bottom[0].diff.copy()]
    fast, slow = _both(no_jit, run)
    for a, r in zip(fast, slow):
        np.testing.assert_allclose(a, r, rtol=1e-6, atol=1e-6)


@needs_jit
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("global_stats", [False, True])
def test_batchnorm_and_scale_kernels_match_numpy(no_jit, in_place, global_stats):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 5, 6), dtype=np.float32) * 3 + 1
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    bn = f'type: "BatchNorm" batch_norm_param {{ use_global_stats: {str(global_stats).lower()} }}'

    def run():
        layer = layer_from_text(bn)
        bottom = [blob(x)]
        top = [bottom[0]] if in_place else [blob(np.zeros(1, np.float32))]
        layer.setup(bottom, top)
        layer.blobs[0].data[...] = np.arange(4)
        layer.blobs[1].data[...] = np.arange(4) + 1
        layer.blobs[2].data[...] = 2
        layer.forward(bottom, top)
        y = top[0].data.copy()
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        return [y, bottom[0].diff.copy()] + [b.data.copy() for b in layer.blobs]
    fast, slow = _both(no_jit, run)
    for a, r in zip(fast, slow):
        np.testing.assert_allclose(a, r, rtol=2e-5, atol=2e-5)

    def run_scale(bias, axis_params):
        layer = layer_from_text(f'type: "Scale" scale_param {{ bias_term: {bias} {axis_params} '
                                f'filler {{ type: "uniform" }} '
                                f'bias_filler {{ type: "uniform" }} }}')
        bottom = [blob(x)]
        top = [bottom[0]] if in_place else [blob(np.zeros(1, np.float32))]
        layer.setup(bottom, top)
        for b in layer.blobs:
            b.data[...] = np.linspace(-1, 2, b.count).reshape(b.shape)
        for b in layer.blobs:
            b.diff[...] = 1  # parameter gradients accumulate
        layer.forward(bottom, top)
        y = top[0].data.copy()
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        return [y, bottom[0].diff.copy()] + [b.diff.copy() for b in layer.blobs]
    for bias, axis in [("true", ""), ("false", ""), ("true", "axis: 2 num_axes: 2"),
                       ("false", "axis: 0 num_axes: 0")]:
        fast, slow = _both(no_jit, lambda: run_scale(bias, axis))
        for a, r in zip(fast, slow):
            np.testing.assert_allclose(a, r, rtol=2e-5, atol=2e-5)


@needs_jit
@pytest.mark.parametrize("in_place", [False, True])
def test_relu_kernel_matches_numpy(no_jit, in_place):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 70000), dtype=np.float32)  # above the threaded size
    x[0, :5] = [0, -0.0, np.nan, np.inf, -np.inf]
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    dy[1, :3] = [np.nan, np.inf, -1]
    fast, slow = _both(no_jit, lambda: _run_layer('type: "ReLU"', x, dy, in_place=in_place))
    np.testing.assert_array_equal(fast[1][0], slow[1][0])
    np.testing.assert_array_equal(fast[2], slow[2])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_parallel_matmul_matches_numpy(monkeypatch, threads):
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", str(threads))
    monkeypatch.setattr(parallel, "MIN_PARALLEL_MACS", 0)
    rng = np.random.default_rng(5)
    shapes = [((37, 19), (19, 23)), ((5, 19), (19, 300)), ((3, 1, 40, 7), (3, 2, 7, 9)),
              ((2, 6, 7), (5, 2, 7, 11)), ((64, 8), (8, 4)), ((1, 3), (3, 1))]
    for sa, sb in shapes:
        a = rng.standard_normal(sa, dtype=np.float32)
        b = rng.standard_normal(sb, dtype=np.float32)
        expect = np.matmul(a, b)
        out = np.full(expect.shape, np.nan, np.float32)
        parallel.matmul(a, b, out)
        np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)
        # transposed views and strided outputs, as the engines pass them
        out2 = np.full(expect.shape[:-2] + (expect.shape[-1], expect.shape[-2]), np.nan,
                       np.float32)
        parallel.matmul(b.swapaxes(-1, -2), a.swapaxes(-1, -2), out2)
        np.testing.assert_allclose(out2.swapaxes(-1, -2), expect, rtol=1e-5, atol=1e-5)


def test_run_flat_and_run_blocks_cover_everything_once(monkeypatch):
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", "3")
    hits = np.zeros(100003, np.int64)
    parallel.run_flat(hits.size, lambda a, b: np.add(hits[a:b], 1, out=hits[a:b]))
    assert (hits == 1).all()
    rows = np.zeros(1001, np.int64)
    parallel.run_blocks(rows.size, 10, lambda a, b, slot: np.add(rows[a:b], 1, out=rows[a:b]))
    parallel.run_blocks(rows.size, 10, lambda a, b, slot: np.add(rows[a:b], 1, out=rows[a:b]),
                        block_elements=None)
    assert (rows == 2).all()


def test_single_threaded_blas_restores_the_setting():
    libs = parallel._blas_libraries()
    before = [lib.get_num_threads() for lib in libs]
    with parallel.single_threaded_blas():
        assert all(lib.get_num_threads() == 1 for lib in libs)
    assert [lib.get_num_threads() for lib in libs] == before


def test_jit_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("CAFFE_LITE_JIT", "0")
    from caffe_lite.warmup import warm_up
    assert not jit.available()
    assert all(jit.kernels(f) is None for f in ("depthwise", "im2col", "grouped", "pooling",
                                                "batchnorm", "scale", "neuron", "sparse", "sgd"))
    assert warm_up() is False


FUSION_NET = """
name: "fuse" force_backward: {force}
layer {{ name: "data" type: "Input" top: "data"
  input_param {{ shape {{ dim: 3 dim: 2 dim: 5 dim: 4 }} }} }}
layer {{ name: "target" type: "Input" top: "target" input_param {{ shape {{ dim: 3 dim: 3 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv" {frozen} {frozen}
  convolution_param {{ num_output: 4 kernel_size: 3 pad: 1
                       weight_filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "bn" type: "BatchNorm" bottom: "conv" top: "{bn_top}" {bn_param} }}
layer {{ name: "scale" type: "Scale" bottom: "{bn_top}" top: "{bn_top}" {frozen} {frozen}
  scale_param {{ bias_term: {bias} filler {{ type: "uniform" min: 0.5 max: 1.5 }}
                 bias_filler {{ type: "uniform" min: -1 max: 1 }} }} }}
{relu}
layer {{ name: "ip" type: "InnerProduct" bottom: "{bn_top}" top: "ip"
  inner_product_param {{ num_output: 3 weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }}
"""


def _fusion_net(bn_top, bias, relu, global_stats):
    import caffe_lite as caffe
    # With global statistics the group runs forward only: nothing below the loss's input
    # layer learns, so the chain needs no backward.
    text = FUSION_NET.format(
        bn_top=bn_top, bias=bias, force="false" if global_stats else "true",
        frozen="param { lr_mult: 0 }" if global_stats else "",
        bn_param="batch_norm_param { use_global_stats: true }" if global_stats else "",
        relu=f'layer {{ name: "relu" type: "ReLU" bottom: "{bn_top}" top: "{bn_top}" }}'
        if relu else "")
    caffe.set_random_seed(7)
    return caffe.Net(text, caffe.TRAIN)


@needs_jit
@pytest.mark.parametrize("bn_top,bias,relu,global_stats", [
    ("conv", "true", True, False), ("bn", "true", True, False), ("conv", "false", True, False),
    ("bn", "true", False, False), ("conv", "true", True, True)])
def test_batchnorm_scale_relu_group_matches_layer_by_layer(monkeypatch, bn_top, bias, relu,
                                                           global_stats):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 2, 5, 4), dtype=np.float32)
    target = rng.standard_normal((3, 3), dtype=np.float32)

    def run(fuse):
        monkeypatch.setenv("CAFFE_LITE_FUSE", "1" if fuse else "0")
        net = _fusion_net(bn_top, bias, relu, global_stats)
        if global_stats:
            bn = net.layer_dict["bn"]
            bn.blobs[0].data[...] = [0.5, -1, 2, 0]
            bn.blobs[1].data[...] = [1, 2, 3, 4]
            bn.blobs[2].data[...] = 2
        assert bool(net._plan().by_first) == fuse
        net.blobs["data"].data[...] = x
        net.blobs["target"].data[...] = target
        out = []
        for _ in range(2):  # twice: running stats and parameter gradients accumulate
            out.append(net.forward_backward())
        out += [b.data.copy() for b in net._blobs] + [b.diff.copy() for b in net._blobs]
        out += [p.data.copy() for p in net._params] + [p.diff.copy() for p in net._params]
        if not global_stats:
            # a backward that starts inside the group runs its layers one by one
            net.backward(start="scale")
            out += [net.blobs["data"].diff.copy(), net.params["scale"][0].diff.copy()]
        return out
    fused, plain = run(True), run(False)
    assert len(fused) == len(plain)
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_pool_runs_every_task_and_reraises(monkeypatch):
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", "3")
    done = []
    parallel.run_tasks([lambda i=i: done.append(i) for i in range(3)])
    assert sorted(done) == [0, 1, 2]

    def boom():
        raise ValueError("task failed")
    with pytest.raises(ValueError, match="task failed"):
        parallel.run_tasks([lambda: None, boom, lambda: None])
    # the pool is usable afterwards, and a parallel section inside a task runs in place
    inner = []
    parallel.run_tasks([lambda: parallel.run_tasks([lambda: inner.append(1)] * 2),
                        lambda: inner.append(2)])
    assert sorted(inner) == [1, 1, 2]


@needs_jit
@pytest.mark.parametrize("reg", ["L2", "L1"])
def test_fused_sgd_update_is_bit_identical(monkeypatch, reg):
    import caffe_lite as caffe
    from caffe_lite.io.prototxt import parse_text

    net_text = """
    name: "sgd" force_backward: true
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 6 } } }
    layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 4 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" param { lr_mult: 1 }
            param { lr_mult: 2 decay_mult: 0 }
            inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 }
                                  bias_filler { type: "constant" value: 0.1 } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "t" top: "loss" }
    """
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 6), dtype=np.float32)
    t = rng.standard_normal((4, 3), dtype=np.float32)

    def run(jit_on):
        monkeypatch.setenv("CAFFE_LITE_JIT", "1" if jit_on else "0")
        sp = caffe_pb2.SolverParameter(base_lr=0.1, momentum=0.9, weight_decay=0.01,
                                       lr_policy="fixed", regularization_type=reg,
                                       max_iter=100, random_seed=3)
        sp.net_param.CopyFrom(parse_text(net_text, caffe_pb2.NetParameter()))
        solver = caffe.SGDSolver(sp)
        w = solver.net.params["ip"][0]
        w.mask = np.arange(18).reshape(3, 6) % 4 != 0
        w.data[...] *= w.mask
        assert solver.fused_update_available() == jit_on
        solver.net.blobs["data"].data[...] = x
        solver.net.blobs["t"].data[...] = t
        solver.step(4)
        return [p.data.copy() for p in solver.net.learnable_params] + \
            [h.copy() for h in solver.history]
    fused, plain = run(True), run(False)
    for a, b in zip(fused, plain):
        np.testing.assert_array_equal(a, b)
    assert (fused[0][np.arange(18).reshape(3, 6) % 4 == 0] == 0).all()  # pruned stay 0


@needs_jit
def test_families_drop_their_cache_when_the_shared_helpers_change():
    """numba keys a kernel's cache on its own file: a family whose cached code was built with
    another version of layers/numba/_planes.py or _native.py gets its index emptied (STYLE.md
    A1)."""
    import pathlib
    k = jit.kernels("scale")
    caches = [d._cache for d in jit._dispatchers(k)]
    assert {d.__name__ for d in jit._dispatchers(k)} == {"scale_forward", "scale_backward"}
    stamp = pathlib.Path(caches[0]._cache_path) / "scale.planes-sha256"
    digest = jit.shared_digest()
    x = np.ones((2, 3), np.float32)
    k.scale_forward(x, np.ones(2, np.float32), np.zeros(2, np.float32), x.copy(), x, True,
                    False, 0, 2)   # compiled (or loaded) and in the index
    assert caches[0]._cache_file._load_index()
    stamp.write_text("an older _planes.py")
    jit._check_shared_cache(k)
    assert stamp.read_text() == digest
    assert caches[0]._cache_file._load_index() == {}


def _layer_both_ways(monkeypatch, text, shape, in_place, seed=0):
    """A layer's forward (and backward) with and without the compiled kernels."""
    from caffe_lite.blob import Blob
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32)
    x.flat[:3] = [0, -0.0, 1e-30]
    dy = rng.standard_normal(shape, dtype=np.float32)
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv("CAFFE_LITE_JIT", flag)
        layer = layer_from_text(text)
        bottom = [Blob.from_array(x)]
        top = bottom if in_place else [Blob()]
        layer.setup(bottom, top)
        for b in layer.blobs:
            b.data[...] = rng.uniform(-0.5, 0.5, b.shape) if flag == "1" else saved.pop(0)
        if flag == "1":
            saved = [b.data.copy() for b in layer.blobs]
        layer.forward(bottom, top)
        y = top[0].data.copy()
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        results.append([y, bottom[0].diff.copy()] + [b.diff.copy() for b in layer.blobs])
    return results


@needs_jit
@pytest.mark.parametrize("shape,axis", [((3, 7), 1), ((2, 5, 4, 3), 1), ((2, 5, 4, 3), 2),
                                        ((4, 1000), 1)])
@pytest.mark.parametrize("in_place", [False, True])
def test_softmax_kernel_matches_numpy(monkeypatch, shape, axis, in_place):
    fast, slow = _layer_both_ways(
        monkeypatch, f'type: "Softmax" softmax_param {{ axis: {axis} }}', shape, in_place)
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@needs_jit
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (4, 6)])
def test_prelu_kernel_matches_numpy(monkeypatch, shared, in_place, shape):
    fast, slow = _layer_both_ways(
        monkeypatch, f'type: "PReLU" prelu_param {{ channel_shared: {str(shared).lower()} }}',
        shape, in_place)
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@needs_jit
@pytest.mark.parametrize("kind", [0, 1, 2])
@pytest.mark.parametrize("shape", [(3, 4, 10), (5, 7, 1)])
def test_epilogue_kernel_matches_numpy(monkeypatch, kind, shape):
    """fusion.Epilogue: per-channel affine map and activation, compiled and numpy."""
    from caffe_lite.layers.fusion import Epilogue
    rng = np.random.default_rng(kind)
    y = rng.standard_normal(shape, dtype=np.float32)
    y[0, 0, 0] = np.nan
    y[0, 1, 0] = -np.inf
    out = []
    for flag in ("1", "0"):
        monkeypatch.setenv("CAFFE_LITE_JIT", flag)
        e = Epilogue(shape[1])
        e.scale[...] = rng.uniform(0.5, 2, shape[1]) if flag == "1" else e_scale
        e.shift[...] = rng.normal(0, 1, shape[1]) if flag == "1" else e_shift
        e.slope[...] = rng.uniform(0, 0.5, shape[1]) if flag == "1" else e_slope
        if flag == "1":
            e_scale, e_shift, e_slope = e.scale.copy(), e.shift.copy(), e.slope.copy()
        e.kind = kind
        e.keep = np.empty(shape, np.float32)
        z = y.copy()
        e.apply(z)
        out.append((z, e.keep.copy()))
    (a, ka), (b, kb) = out
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ka, kb, rtol=1e-6, atol=1e-7)
    assert np.isnan(a[0, 0, 0]) and (a[0, 1, 0] == (-np.inf if kind == 2 else
                                                    0 if kind == 1 else -np.inf))


@needs_jit
@pytest.mark.parametrize("n,c,o,size,pad", [(1, 8, 5, (9, 7), 0), (2, 3, 4, (6, 6), 1),
                                            (1, 5, 6, (13, 10), 2), (3, 4, 4, (4, 5), 1),
                                            (1, 2, 3, (3, 3), 0)])
def test_winograd_matches_im2col(monkeypatch, n, c, o, size, pad):
    """F(4x4, 3x3) against the exact im2col products (tiles overhanging every edge)."""
    from caffe_lite.layers import winograd
    monkeypatch.setattr(winograd, "MIN_CHANNEL_RATIO", 0)
    monkeypatch.setattr(winograd, "MIN_TILES", 0)
    rng = np.random.default_rng(n * 7 + c)
    g = ConvGeometry((3, 3), (1, 1), (pad, pad), (1, 1))
    out = g.conv_output(size)
    engine = GemmEngine(g, c, o, 1)
    engine.reshape(n, size, out)
    assert engine.winograd_ok
    x = rng.standard_normal((n, c) + size, dtype=np.float32)
    w = rng.standard_normal((o, c, 3, 3), dtype=np.float32)
    exact, fast = (np.empty((n, o) + out, np.float32) for _ in range(2))
    with parallel.cpu_pass():
        engine.prepare_forward(x, w, None, exact)()
        memory = types.SimpleNamespace(version=1)
        run = engine.prepare_forward(x, w, None, fast, exact=False, w_memory=memory)
        run()
        np.testing.assert_allclose(fast, exact, rtol=1e-4, atol=1e-4 * np.abs(exact).max())
        w *= -1          # new weights (a new data version): the filters are transformed again
        memory.version = 2
        run()
        np.testing.assert_allclose(fast, -exact, rtol=1e-4, atol=1e-4 * np.abs(exact).max())


@needs_jit
def test_winograd_only_where_backward_never_runs():
    """A TRAIN net's convolution keeps im2col (exact products); the same layer in a net that
    needs no backward takes the Winograd path."""
    import caffe_lite as caffe
    text = """
    name: "w" {force}
    layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 64 dim: 28 dim: 28 }} }} }}
    layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param {{ num_output: 96 kernel_size: 3 pad: 1
                                weight_filler {{ type: "gaussian" std: 0.05 }} }} }}
    """
    x = np.random.default_rng(0).standard_normal((2, 64, 28, 28), dtype=np.float32)
    train = caffe.Net(text.format(force="force_backward: true"), caffe.TRAIN)
    test = caffe.Net(text.format(force=""), caffe.TEST)
    test.params["conv"][0].data[...] = train.params["conv"][0].data
    a = train.forward(data=x)["conv"].copy()
    b = test.forward(data=x)["conv"]
    assert train.layer_dict["conv"].engine.winograd is None
    assert test.layer_dict["conv"].engine.winograd is not None
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())


@needs_jit
@pytest.mark.parametrize("size,k,s,pad", [((21, 21), 3, 2, 0), ((9, 11), 3, 2, 1),
                                          ((8, 8), 2, 2, 0), ((13, 7), 5, 3, 2),
                                          ((6, 6), 3, 1, 1)])
def test_channels_last_max_pooling_matches_the_flat_form(size, k, s, pad):
    """Same maxima and the same argmax (the first maximum in row-major order: ties after a
    ReLU), NaN never chosen, padding never chosen."""
    from caffe_lite.layers.pooling import pooled_size
    kp = jit.kernels("pooling")
    rng = np.random.default_rng(k * 10 + s)
    n, c = 2, 9
    x = rng.standard_normal((n, c) + size).astype(np.float32)
    x[x < 0.3] = 0
    x[0, 0, 0, :2] = np.nan
    x[1, 2, 1, 1] = -np.inf
    oh, ow = (pooled_size(v, k, pad, s) for v in size)
    if pad:
        oh -= (oh - 1) * s >= size[0] + pad
        ow -= (ow - 1) * s >= size[1] + pad
    g = np.array((k, k, s, s, pad, pad), np.int64)
    y, y2 = (np.empty((n, c, oh, ow), np.float32) for _ in range(2))
    ch, ch2 = (np.empty((n, c, oh, ow), np.int16) for _ in range(2))
    kp.max_pool_forward(x.reshape(n * c, *size), y.reshape(n * c, oh, ow),
                        ch.reshape(n * c, oh, ow), g, k * k, 0, n * c)
    bufs = (np.empty(size + (c,), np.float32), np.empty((oh, ow, c), np.float32),
            np.empty((oh, ow, c), np.int32))
    kp.max_pool_channels_last(x, y2, ch2, g, k * k, *bufs, 0, n)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(ch2, ch)


@needs_jit
@pytest.mark.parametrize("size,k,s,pad", [((21, 21), 3, 2, 0), ((9, 11), 3, 2, 1),
                                          ((8, 8), 2, 2, 0), ((13, 7), 5, 3, 2),
                                          ((6, 6), 3, 1, 1), ((30, 37), 3, 1, 1),
                                          ((30, 37), 2, 1, 0), ((12, 16), 2, 2, 0),
                                          ((11, 9), 3, 2, 0)])
def test_max_pooling_values_only_kernels_give_the_tracking_kernels_maxima(size, k, s, pad):
    """The maxima-only kernels (a forward whose argmax nobody reads): the same values as the
    argmax-tracking kernel, NaN and -inf never chosen (a window of them gives -FLT_MAX), in
    every branch: 2x2 tiling, separable strided windows of 3 / 2 / other rows (clipped at the
    border), the flat stride-1 form (3x3 and other), channels-last with a padded stride."""
    from caffe_lite.layers.pooling import pooled_size, channels_last_width
    kp = jit.kernels("pooling")
    rng = np.random.default_rng(k * 10 + s + pad)
    n, c = 2, 9
    x = rng.standard_normal((n, c) + size).astype(np.float32)
    x[x < 0.3] = 0
    x[0, 0, 0, :2] = np.nan
    x[1, 2, :4, :4] = -np.inf
    x[1, 3, :, :] = np.nan
    oh, ow = (pooled_size(v, k, pad, s) for v in size)
    if pad:
        oh -= (oh - 1) * s >= size[0] + pad
        ow -= (ow - 1) * s >= size[1] + pad
    g = np.array((k, k, s, s, pad, pad), np.int64)
    ref, flat, last = (np.full((n, c, oh, ow), 7, np.float32) for _ in range(3))
    choice = np.empty((n, c, oh, ow), np.int16)
    kp.max_pool_forward(x.reshape(n * c, *size), ref.reshape(n * c, oh, ow),
                        choice.reshape(n * c, oh, ow), g, k * k, 0, n * c)
    kp.max_pool_values(x.reshape(n * c, *size), flat.reshape(n * c, oh, ow), g, 0, n * c)
    cw = channels_last_width(c)
    kp.max_pool_values_channels_last(x, last, g, np.empty(size + (cw,), np.float32),
                                     np.empty((oh, ow, cw), np.float32), 0, n)
    assert np.isfinite(ref).all() and (ref[1, 3] == -np.finfo(np.float32).max).all()
    np.testing.assert_array_equal(flat, ref)
    np.testing.assert_array_equal(last, ref)


def test_channels_last_width_is_an_odd_number_of_cache_lines():
    from caffe_lite.layers.pooling import channels_last_width
    assert [channels_last_width(c) for c in (1, 16, 17, 32, 480, 512, 528)] == \
        [16, 16, 48, 48, 496, 528, 528]


@pytest.mark.parametrize("jit_on", [True, False])
@pytest.mark.parametrize("shape,pool", [((2, 16, 12, 12), "kernel_size: 3 stride: 2 pad: 1"),
                                        ((1, 4, 28, 29), "kernel_size: 3 stride: 2 pad: 1"),
                                        ((2, 3, 5, 4), "global_pooling: true")])
def test_max_pooling_in_a_net_without_loss_equals_the_training_net(no_jit, jit_on, shape,
                                                                   pool):
    """A deploy net (no loss: backward never reaches its layers) pools maxima only; the
    outputs equal a force_backward net's, and a backward run anyway on the layer (its argmax
    worked out then) routes each gradient to the first maximum of its window."""
    off, on = no_jit
    (on if jit_on else off)()
    text = ('name: "p" input: "data" input_shape {{ dim: {} dim: {} dim: {} dim: {} }} {} '
            'layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" '
            'pooling_param {{ pool: MAX {} }} }}')
    import caffe_lite as caffe
    deploy = caffe.Net(text.format(*shape, "", pool), caffe.TEST)
    train = caffe.Net(text.format(*shape, "force_backward: true", pool), caffe.TEST)
    assert not deploy.layer_dict["pool"].backward_needed
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    x[:, :, 2:5, 2:5] = 1.0  # ties
    x[0, 1] = np.nan         # a plane of NaN: -FLT_MAX, no input chosen
    x[0, 2, 1:3] = np.nan
    a = deploy.forward(data=x)["pool"].copy()
    b = train.forward(data=x)["pool"].copy()
    np.testing.assert_array_equal(a, b)
    assert not deploy.layer_dict["pool"]._choice_fresh
    dy = np.arange(b.size, dtype=np.float32).reshape(b.shape)
    train.blobs["pool"].diff[...] = dy
    train.backward()
    layer = deploy.layer_dict["pool"]
    deploy.blobs["pool"].diff[...] = dy
    layer.backward([deploy.blobs["pool"]], [True], [deploy.blobs["data"]])
    np.testing.assert_array_equal(deploy.blobs["data"].diff, train.blobs["data"].diff)
    assert train.blobs["data"].diff.sum() == dy.sum() - dy[0, 1].sum()
    assert (b[0, 1] == -np.finfo(np.float32).max).all()
    on()
