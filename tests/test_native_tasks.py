"""Compiled kernels as native tasks of the spinning pool (layers/numba/_native.py,
gemm_pool.prepare_tasks): every family's task, run by a worker from its packed arguments,
computes exactly what the kernel computes when Python calls it; split kernels equal whole ones
and really run on the workers; arguments that cannot be packed fall back to the Python
workers; a worker kept off its core delays nothing; whole nets give the same numbers with and
without the tasks."""
import contextlib
import time

import numpy as np
import pytest

from caffe_lite.layers import gemm_pool, jit, parallel
from spin_util import hold_until_blocked, spinning

pytestmark = pytest.mark.skipif(
    not (jit.available() and gemm_pool.available(parallel._blas_libraries())),
    reason="native tasks need numba, x86-64 and the spinning pool's OpenBLAS")

F = np.float32


def _spinning():
    return spinning(2)


def _task_on_worker(w, task, arguments, r0, r1, slot=1):
    """Rows r0..r1-1 of `task` posted to worker w, which must run them (the caller never
    claims them here); True when the worker ran them."""
    packed = gemm_pool.pack(arguments)
    assert packed is not None
    return gemm_pool.run_on(w, np.array([[w.k.TASK, gemm_pool.callback(task),
                                          packed.ctypes.data, r0, r1, slot, 0, 0, 0, 0, 0]]))


def _depthwise(rng):
    k = jit.kernels("depthwise")
    c, m = 6, 2
    x = rng.standard_normal((c, 13, 10), dtype=F)
    w = rng.standard_normal((c * m, 9), dtype=F)
    bias = rng.standard_normal(c * m, dtype=F)
    geo = np.array((c, m, 3, 3, 2, 2, 1, 1, 1, 1), np.int64)
    y = np.zeros((c, m, 7, 5), F)
    yield k.depthwise_forward, k.depthwise_forward_task, (x, w, bias, y, geo), c, [3]
    dy = rng.standard_normal((c, m, 7, 5), dtype=F)
    dx = np.zeros_like(x)
    gw = np.zeros((c, m, 9), F)
    yield (k.depthwise_backward, k.depthwise_backward_task,
           (x, dy, w, dx, gw, True, True, geo), c, [3, 4])


def _im2col(rng):
    k = jit.kernels("im2col")
    x = rng.standard_normal((5, 9, 11), dtype=F)
    geo = np.array((3, 2, 2, 1, 1, 0, 1, 2), np.int64)     # kernel, stride, pad, dilation
    col = np.zeros((5, 6, 5, 9), F)
    yield k.im2col, k.im2col_task, (x, col, geo), 5, [1]
    dx = np.zeros_like(x)
    yield k.col2im, k.col2im_task, (rng.standard_normal(col.shape, dtype=F), dx, geo), 5, [1]


def _neuron(rng):
    k = jit.kernels("neuron")
    scale, shift, slope = (rng.standard_normal(4, dtype=F) for _ in range(3))
    for kind in (0, 1, 2):
        y = rng.standard_normal((3, 4, 17), dtype=F)
        keep = np.zeros_like(y)
        yield (k.affine_act, k.affine_act_task, (y, scale, shift, kind, slope, keep, True), 12,
               [0, 5])
        y2 = rng.standard_normal((5, 4), dtype=F)
        keep2 = np.zeros_like(y2)
        yield (k.affine_act_rows, k.affine_act_rows_task,
               (y2, scale, shift, kind, slope, keep2, kind == 2), 5, [0, 5])
    x = rng.standard_normal(37, dtype=F)
    x[3] = np.nan
    yield k.relu_forward, k.relu_forward_task, (x, np.zeros(37, F)), 37, [1]
    yield (k.add_forward, k.add_forward_task,
           (x, rng.standard_normal(37, dtype=F), np.zeros(37, F)), 37, [2])


def _pooling(rng):
    k = jit.kernels("pooling")
    x = rng.standard_normal((6, 11, 9), dtype=F)
    geo = np.array((3, 3, 2, 2, 1, 0), np.int64)
    y = np.zeros((6, 6, 4), F)
    yield k.max_pool_values, k.max_pool_values_task, (x, y, geo), 6, [1]
    size = rng.uniform(1, 9, (6, 4)).astype(F)
    yield k.ave_pool_forward, k.ave_pool_forward_task, (x, np.zeros_like(y), size, geo), 6, [1]
    dy = rng.standard_normal(y.shape, dtype=F)
    yield (k.ave_pool_backward, k.ave_pool_backward_task,
           (dy, np.zeros_like(x), size, geo), 6, [1])
    planes = rng.standard_normal((19, 49), dtype=F)     # (global AVE: 8 planes at a time)
    yield k.plane_means, k.plane_means_task, (planes, np.zeros(19, F)), 19, [1]
    choice = np.zeros(y.shape, np.int16)      # (the taps the windows chose; 9: none)
    k.max_pool_forward(x, np.zeros_like(y), choice, geo, 9, 0, 6)
    yield (k.max_pool_backward, k.max_pool_backward_task,
           (dy, choice, np.zeros_like(x), geo, 9), 6, [2])
    x4 = rng.standard_normal((3, 5, 6, 6), dtype=F)
    geo2 = np.array((2, 2, 2, 2, 0, 0), np.int64)
    y4 = np.zeros((3, 5, 3, 3), F)
    bufs = (np.zeros((6, 6, 8), F), np.zeros((3, 3, 8), F))
    yield (k.max_pool_values_channels_last, k.max_pool_values_channels_last_task,
           (x4, y4, geo2) + bufs, 3, [1])


def _winograd(rng):
    k = jit.kernels("winograd")
    n, c, o = 2, 3, 4
    x = rng.standard_normal((n, c, 9, 10), dtype=F)       # pad 1: 9 x 10 outputs, 3 x 3 tiles
    v = np.zeros((36, c, n * 9), F)
    bufs = (np.zeros((4, 4 * 12 + 2), F), np.zeros((24, 12), F))
    yield k.input_transform, k.input_transform_task, (x, v, 1, 1, 3, 3) + bufs, n * c, [1]
    m = rng.standard_normal((36, o, n * 9), dtype=F)
    y = np.zeros((n, o, 9, 10), F)
    outs = (np.zeros((24, 18), F), np.zeros((4, 72), F))     # two images a pass
    yield k.output_transform, k.output_transform_task, (m, y, 3, 3) + outs, n * o, [1]


def _grouped(rng):
    k = jit.kernels("grouped")
    rows, cg, og = 6, 3, 2                      # (image, group) rows; 3 -> 2 channels a group
    geo = np.array((3, 3, 1, 1, 1, 1, 1, 1), np.int64)
    x = rng.standard_normal((rows, cg, 9, 11), dtype=F)
    w = rng.standard_normal((3, og, cg, 9), dtype=F)       # 3 groups, 2 images
    yield k.grouped_forward, k.grouped_forward_task, (x, w, np.zeros((rows, og, 9, 11), F),
                                                      geo), rows, [2]
    dy = rng.standard_normal((rows, og, 9, 11), dtype=F)
    yield (k.grouped_weight, k.grouped_weight_task, (x, dy, np.zeros((rows, og, cg, 9), F), geo),
           rows, [2])
    yield (k.grouped_backward_data, k.grouped_backward_data_task,
           (dy, w, np.zeros_like(x), geo), rows, [2])


def _softmax(rng):
    k = jit.kernels("softmax")
    for shape in ((7, 5, 1), (3, 4, 6)):
        yield (k.softmax_forward, k.softmax_forward_task,
               (rng.standard_normal(shape, dtype=F), np.zeros(shape, F)), shape[0], [1])


def _dense(rng):
    k = jit.kernels("dense")
    for m, n, kind in ((1, 11, 1), (3, 9, 2)):
        x = rng.standard_normal((m, 37), dtype=F)
        w = rng.standard_normal((n, 37), dtype=F)
        scale, shift, slope = (rng.standard_normal(n, dtype=F) for _ in range(3))
        yield (k.rows_by_transposed, k.rows_by_transposed_task,
               (x, w, np.zeros((m, n), F), scale, shift, kind, slope, np.zeros((m, n), F), True,
                True), n, [2, 7])
    x = rng.standard_normal((2, 3, 5, 4), dtype=F)
    w = rng.standard_normal((9, 3 * 6), dtype=F)
    g = np.array((3, 2, 2, 1, 1, 0, 1, 2, 2), np.int64)    # kernel, stride, pad, dilation, OW
    scale, shift, slope = (rng.standard_normal(9, dtype=F) for _ in range(3))
    yield (k.positions, k.positions_task,
           (x, w, np.zeros((2, 9, 6), F), g, np.zeros((2, 6, 18), F), scale, shift, 2, slope,
            np.zeros((2, 9, 6), F), True, True), 9, [2, 9])


def _concat(rng):
    k = jit.kernels("concat")
    yield (k.copy_rows, k.copy_rows_task,
           (rng.standard_normal((5, 7), dtype=F), np.zeros((5, 12), F), 3), 5, [1])


FAMILIES = [_depthwise, _im2col, _neuron, _pooling, _winograd, _grouped, _softmax, _dense,
            _concat]


def _fresh(arguments, written):
    return tuple(a.copy() if i in written else a for i, a in enumerate(arguments))


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__[1:])
def test_a_task_run_by_a_worker_computes_what_the_kernel_computes(family):
    """Whole, and in two row blocks on the worker and the caller; the outputs are compared
    bit for bit (the same code, in the same order, from the packed arguments)."""
    w = _spinning()
    rng = np.random.default_rng(3)
    with parallel.cpu_pass():
        for kernel, task, arguments, rows, written in family(rng):
            expect = _fresh(arguments, written)
            kernel(*expect, 0, rows)
            got = _fresh(arguments, written)
            assert _task_on_worker(w, task, got, 0, rows), "the worker did not run the task"
            for i in written:
                np.testing.assert_array_equal(got[i], expect[i])
            # rows split between the worker (slot 1) and the caller (slot 0)
            got = _fresh(arguments, written)
            half = rows // 2
            assert _task_on_worker(w, task, got, half, rows)
            kernel(*got, 0, half)
            for i in written:
                np.testing.assert_array_equal(got[i], expect[i])


def test_pack_takes_c_order_arrays_and_integers_only():
    a = np.arange(12, dtype=F).reshape(3, 4)
    empty = np.zeros(0, F)
    p = gemm_pool.pack((a, 7, True, empty, np.int64(-3)))
    assert list(p[:9]) == [a.ctypes.data, 3, 4, 7, 1, empty.ctypes.data, 0, -3, 0]
    assert p.dtype == np.int64 and p.size == gemm_pool._native_words()
    assert gemm_pool.pack((a[:, ::2],)) is None
    assert gemm_pool.pack((a.astype(np.float64),)) is None   # no reader reads float64
    assert gemm_pool.pack((a.T,)) is None
    assert gemm_pool.pack((np.zeros((1,) * 40, F),) * 2) is None     # too many words
    with pytest.raises(TypeError, match="float"):
        gemm_pool.pack((a, 0.5))


def _depthwise_split(rng, rows=40):
    k = jit.kernels("depthwise")
    x = rng.standard_normal((rows, 30, 40), dtype=F)
    w = rng.standard_normal((rows, 9), dtype=F)
    geo = np.array((rows, 1, 3, 3, 1, 1, 1, 1, 1, 1), np.int64)
    bias = np.zeros(0, F)
    expect = np.zeros((rows, 1, 30, 40), F)
    k.depthwise_forward(x, w, bias, expect, geo, 0, rows)
    return k, x, w, bias, geo, expect


def test_prepare_blocks_splits_a_kernel_over_the_workers(monkeypatch):
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", "2")
    w = _spinning()
    k, x, wt, bias, geo, expect = _depthwise_split(np.random.default_rng(4))
    y = np.full_like(expect, np.nan)
    ran = int(w.ctl[w.k.RAN])
    with parallel.cpu_pass(), parallel.planned():
        run = parallel.prepare_blocks(
            40, 1200, lambda a, b, slot: k.depthwise_forward(x, wt, bias, y, geo, a, b),
            native=(k.depthwise_forward_task, (x, wt, bias, y, geo)), spin_elements=1)
        assert run.packed                   # (a prepared split, not the Python workers')
        deadline = time.monotonic() + 20
        # (a worker that another process keeps off its core leaves its block to the caller:
        # runs go on until one block ran on the worker)
        while int(w.ctl[w.k.RAN]) == ran:
            assert time.monotonic() < deadline, "no block ran on the worker"
            y[...] = np.nan
            run()
            np.testing.assert_array_equal(y, expect)


def test_small_kernels_and_unpackable_arguments_stay_off_the_workers(monkeypatch):
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", "2")
    prepared = []
    monkeypatch.setattr(gemm_pool, "prepare_tasks",
                        lambda *a, **kw: prepared.append(a) or (lambda: None))
    k, x, wt, bias, geo, expect = _depthwise_split(np.random.default_rng(5))
    y = np.zeros_like(expect)

    def fn(a, b, slot):
        k.depthwise_forward(x, wt, bias, y, geo, a, b)
    with parallel.cpu_pass():
        with parallel.planned():
            parallel.prepare_blocks(40, 1200, fn, native=(k.depthwise_forward_task, ()),
                                    spin_elements=40 * 1200 + 1)
            assert not prepared
            parallel.prepare_blocks(40, 1200, fn, native=(k.depthwise_forward_task, ()),
                                    spin_elements=40 * 1200)
            assert len(prepared) == 1
        # worked out for one call (run_blocks, or prepared outside a plan), a split pays for
        # packing and posting each time: it takes the tasks from MIN_SPIN_CALL_ELEMENTS only
        rows = parallel.MIN_SPIN_CALL_ELEMENTS // 1200
        assert rows * 1200 >= 2 * parallel.MIN_SPIN_KERNEL_ELEMENTS
        parallel.prepare_blocks(rows, 1200, fn, native=(k.depthwise_forward_task, ()))
        parallel.run_blocks(rows, 1200, lambda a, b, slot: None, block_elements=None,
                            native=(k.depthwise_forward_task, ()))
        assert len(prepared) == 1
        parallel.prepare_blocks(rows + 1, 1200, fn, native=(k.depthwise_forward_task, ()))
        parallel.run_blocks(rows + 1, 1200, lambda a, b, slot: None, block_elements=None,
                            native=(k.depthwise_forward_task, ()))
        assert len(prepared) == 3
    monkeypatch.undo()
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", "2")
    column_order = np.asfortranarray(wt)
    y = np.zeros_like(expect)
    with parallel.cpu_pass(), parallel.planned():
        run = parallel.prepare_blocks(40, 1200, lambda a, b, slot: k.depthwise_forward(
            x, column_order, bias, y, geo, a, b),
            native=(k.depthwise_forward_task, (x, column_order, bias, y, geo)),
            spin_elements=1)
        assert not hasattr(run, "packed")   # the Python workers' split instead
        run()
    np.testing.assert_array_equal(y, expect)


def test_a_task_its_worker_has_not_started_runs_on_the_caller(monkeypatch):
    """Work stealing as for products: the caller claims the posted block and runs the task
    natively; the worker, when it gets to the batch, skips it."""
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", "2")
    w = _spinning()
    kk = w.k
    k, x, wt, bias, geo, expect = _depthwise_split(np.random.default_rng(6))
    y = np.full_like(expect, np.nan)
    with parallel.cpu_pass():
        with parallel.planned():
            run = parallel.prepare_blocks(
                40, 1200, lambda a, b, slot: k.depthwise_forward(x, wt, bias, y, geo, a, b),
                native=(k.depthwise_forward_task, (x, wt, bias, y, geo)), spin_elements=1)
        hold_until_blocked(w)
        deadline = time.monotonic() + 20
        w.ctl[kk.HOLD] = 0                      # (released, but not woken: it stays blocked)
        run()
        np.testing.assert_array_equal(y, expect)
        assert w.ctl[kk.DONE] != w.ctl[kk.POSTED], "the caller waited for the blocked worker"
        w.poke()
        while w.ctl[kk.DONE] != w.ctl[kk.POSTED]:
            assert time.monotonic() < deadline, "the worker never caught up"
            time.sleep(0.001)


NET = """
name: "tasks"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 8 dim: 40 dim: 48 } } }
layer { name: "dw" type: "Convolution" bottom: "data" top: "dw"
        convolution_param { num_output: 8 group: 8 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "bn" type: "BatchNorm" bottom: "dw" top: "dw" }
layer { name: "sc" type: "Scale" bottom: "dw" top: "dw" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "dw" top: "dw" }
layer { name: "conv" type: "Convolution" bottom: "dw" top: "conv"
        convolution_param { num_output: 16 kernel_size: 3 stride: 2 } }
layer { name: "prelu" type: "PReLU" bottom: "conv" top: "conv" }
layer { name: "max" type: "Pooling" bottom: "conv" top: "max"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "ave" type: "Pooling" bottom: "conv" top: "ave"
        pooling_param { pool: AVE kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "wino" type: "Convolution" bottom: "ave" top: "wino"
        convolution_param { num_output: 32 kernel_size: 3 pad: 1 } }
layer { name: "grp" type: "Convolution" bottom: "ave" top: "grp"
        convolution_param { num_output: 16 group: 4 kernel_size: 3 pad: 1 } }
layer { name: "prob" type: "Softmax" bottom: "grp" top: "prob" }
layer { name: "bn2" type: "BatchNorm" bottom: "conv" top: "bn2" }
layer { name: "sc2" type: "Scale" bottom: "bn2" top: "bn2" scale_param { bias_term: true } }
layer { name: "relu2" type: "ReLU" bottom: "bn2" top: "bn2" }
layer { name: "sum" type: "Eltwise" bottom: "ave" bottom: "grp" bottom: "ave" top: "sum" }
layer { name: "gap" type: "Pooling" bottom: "wino" top: "gap"
        pooling_param { pool: AVE global_pooling: true } }
"""


@contextlib.contextmanager
def _recording(monkeypatch):
    """The names of the tasks prepared inside, in a list."""
    calls = []
    real = gemm_pool.prepare_tasks
    monkeypatch.setattr(gemm_pool, "prepare_tasks",
                        lambda fn, blocks, task, args, **kw: calls.append(task.__name__)
                        or real(fn, blocks, task, args, **kw))
    try:
        yield calls
    finally:
        monkeypatch.setattr(gemm_pool, "prepare_tasks", real)


def _net(monkeypatch, text, phase, on, seed):
    """A net of `text` with random parameters and input, every native task on (all
    thresholds 1) or off."""
    import caffe_lite as caffe
    for name in ("MIN_SPIN_KERNEL_ELEMENTS", "MIN_SPIN_STREAM_ELEMENTS",
                 "MIN_SPIN_CALL_ELEMENTS"):
        monkeypatch.setattr(parallel, name, 1 if on else 1 << 62)
    net = caffe.Net(text, phase)
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        for b in layer.blobs:
            b.data[...] = rng.uniform(0.5, 1.5, b.shape) if layer.type == "BatchNorm" \
                else rng.standard_normal(b.shape)
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    return net, rng


def _net_outputs(monkeypatch, on):
    import caffe_lite as caffe
    net, _ = _net(monkeypatch, NET, caffe.TEST, on, 8)
    with _recording(monkeypatch) as calls:
        net.forward()
        net.forward()
    return {k: net.blobs[k].data.copy() for k in ("dw", "conv", "max", "ave", "wino", "grp",
                                                  "prob", "bn2", "sum", "gap")}, calls


def test_whole_nets_give_the_same_numbers_with_and_without_tasks(monkeypatch):
    from caffe_lite.layers import winograd
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", "2")
    monkeypatch.setattr(winograd, "MIN_CHANNEL_RATIO", 1)
    monkeypatch.setattr(winograd, "MIN_TILES", 1)
    _spinning()
    with_tasks, calls = _net_outputs(monkeypatch, True)
    without, none = _net_outputs(monkeypatch, False)
    assert not none
    assert {"depthwise_forward_task", "affine_act_task", "im2col_task",
            "ave_pool_forward_task", "input_transform_task", "output_transform_task",
            "grouped_forward_task", "softmax_forward_task",
            "bn_scale_global_forward_task", "add_forward_task", "plane_means_task"} <= set(calls)
    assert {"max_pool_values_task", "max_pool_values_channels_last_task"} & set(calls)
    for name, a in with_tasks.items():
        np.testing.assert_array_equal(a, without[name], err_msg=name)


def test_cached_tasks_are_dropped_when_the_shared_helpers_change():
    """A task inlines _native.py's readers and _planes.py's helpers: its cached callback goes
    with the family's kernels when those files change (layers.jit)."""
    import pathlib
    k = jit.kernels("neuron")
    caches = jit._task_caches(k)
    assert {c._py_func.__name__ for c in caches} == {"affine_act_task", "affine_act_rows_task",
                                                     "relu_forward_task", "add_forward_task"}
    gemm_pool.callback(k.affine_act_task)          # compiled (or loaded), in the index
    cache = next(c for c in caches if c._py_func is k.affine_act_task)
    assert cache._cache_file._load_index()
    stamp = pathlib.Path(cache._cache_path) / "neuron.planes-sha256"
    stamp.write_text("an older _native.py")
    jit._check_shared_cache(k)
    assert stamp.read_text() == jit.shared_digest()
    assert cache._cache_file._load_index() == {}
    gemm_pool._callbacks.pop(k.affine_act_task, None)
    gemm_pool.callback(k.affine_act_task)          # compiled again and cached
    assert cache._cache_file._load_index()


TRAIN_NET = """
name: "tasks_train" force_backward: true
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 8 dim: 40 dim: 48 } } }
layer { name: "dw" type: "Convolution" bottom: "data" top: "dw"
        convolution_param { num_output: 8 group: 8 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "conv" type: "Convolution" bottom: "dw" top: "conv"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1 } }
layer { name: "max" type: "Pooling" bottom: "conv" top: "max"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "ave" type: "Pooling" bottom: "max" top: "ave"
        pooling_param { pool: AVE kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "grp" type: "Convolution" bottom: "ave" top: "grp"
        convolution_param { num_output: 16 group: 4 kernel_size: 3 pad: 1 } }
"""


def _gradients(monkeypatch, on):
    import caffe_lite as caffe
    net, rng = _net(monkeypatch, TRAIN_NET, caffe.TRAIN, on, 9)
    with _recording(monkeypatch) as calls:
        net.forward()
        net.blobs["grp"].diff[...] = rng.standard_normal(net.blobs["grp"].shape)
        net.backward()
    grads = {k: b.diff.copy() for k, b in net.blobs.items()}
    grads.update({f"{n}/{i}": b.diff.copy() for n, layer in zip(net.layer_names, net.layers)
                  for i, b in enumerate(layer.blobs)})
    return grads, calls


def test_backward_passes_give_the_same_gradients_with_and_without_tasks(monkeypatch):
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", "2")
    _spinning()
    with_tasks, calls = _gradients(monkeypatch, True)
    without, none = _gradients(monkeypatch, False)
    assert not none
    assert {"depthwise_backward_task", "col2im_task", "max_pool_backward_task",
            "ave_pool_backward_task", "grouped_weight_task",
            "grouped_backward_data_task"} <= set(calls)
    for name, a in with_tasks.items():
        np.testing.assert_array_equal(a, without[name], err_msg=name)


def test_a_prepared_batchnorm_pass_follows_its_statistics(monkeypatch):
    """BatchNorm -> Scale -> ReLU on global statistics, prepared once by the plan: a write to
    BatchNorm's blobs between passes is seen by the next pass, as a net built with those
    values computes it."""
    import caffe_lite as caffe
    monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", "2")
    _spinning()
    net, _ = _net(monkeypatch, NET, caffe.TEST, True, 8)
    net.forward()
    before = net.blobs["bn2"].data.copy()
    bn = net.params["bn2"]
    bn[0].data[...] += 0.5                       # the mean (times the scale factor)
    bn[1].data[...] *= 2                         # the variance
    net.forward()
    assert not np.array_equal(net.blobs["bn2"].data, before)
    fresh, _ = _net(monkeypatch, NET, caffe.TEST, True, 8)
    for name in net.params:
        for a, b in zip(net.params[name], fresh.params[name]):
            b.data[...] = a.data
    fresh.forward()
    np.testing.assert_array_equal(net.blobs["bn2"].data, fresh.blobs["bn2"].data)
