"""The Net's pass plans (caffe_lite/plan.py): layers reshape only after a blob's shape or memory
changed, prepared CPU steps follow every change, and everything pycaffe users rely on (input
shapes that change, start / end, in-place layers, splits, shared weights, hooks, Python layers,
a layer whose output size depends on its data) gives what reshaping every layer on every
call gives."""
import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite import blob as blob_module
from caffe_lite.layers import parallel
from caffe_lite.layers.conv import Convolution
from caffe_lite.layers.inner_product import InnerProductLayer

NET = """
name: "p" force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "a" type: "Softmax" bottom: "ip" top: "a" }
layer { name: "b" type: "TanH" bottom: "ip" top: "b" }
"""


def _reference(net, x):
    """The outputs of the same net run layer by layer, every layer reshaped (Caffe's way)."""
    for i, layer in enumerate(net.layers):
        if i == 0:
            net.blobs["data"].reshape(x.shape)
            net.blobs["data"].data[...] = x
        layer.forward(net.bottom_vecs[i], net.top_vecs[i])
    return {k: net.blobs[k].data.copy() for k in ("a", "b", "pool")}


def _count_reshapes(monkeypatch, cls):
    calls = []
    original = cls.reshape

    def counting(self, bottom, top):
        calls.append(self.name)
        return original(self, bottom, top)
    monkeypatch.setattr(cls, "reshape", counting)
    return calls


def test_layers_reshape_only_when_a_shape_changed(monkeypatch):
    net = caffe.Net(NET, caffe.TEST)
    calls = _count_reshapes(monkeypatch, InnerProductLayer)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8), dtype=np.float32)
    net.forward(data=x)
    assert calls == ["ip"]            # the first pass shapes every step
    net.forward(data=x)
    net.forward(data=x * 2)
    assert calls == ["ip"]            # same shapes: no reshape
    net.forward(data=x[:1])           # another batch size: everything after reshapes
    assert calls == ["ip", "ip"]
    out = net.forward(data=x[:1])
    assert calls == ["ip", "ip"]
    ref = caffe.Net(NET, caffe.TEST)
    for name in ("conv", "ip"):
        for a, b in zip(net.params[name], ref.params[name]):
            b.data[...] = a.data
    expect = _reference(ref, x[:1])
    np.testing.assert_allclose(out["a"], expect["a"], rtol=1e-6)
    np.testing.assert_allclose(out["b"], expect["b"], rtol=1e-6)


def test_changes_between_passes_are_followed():
    """A user reshaping a blob directly, net.reshape(), new weights, partial passes."""
    net = caffe.Net(NET, caffe.TEST)
    ref = caffe.Net(NET, caffe.TEST)
    for name in ("conv", "ip"):
        for a, b in zip(net.params[name], ref.params[name]):
            b.data[...] = a.data
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 3, 8, 8), dtype=np.float32)
    net.forward(data=x[:2])
    # pycaffe's idiom: reshape the input blob, fill it, forward
    net.blobs["data"].reshape(3, 3, 8, 8)
    net.blobs["data"].data[...] = x
    net.reshape()
    out = net.forward()
    np.testing.assert_allclose(out["a"], _reference(ref, x)["a"], rtol=1e-6)
    # weights changed in place are used at once
    net.params["ip"][0].data[...] *= -1
    ref.params["ip"][0].data[...] *= -1
    np.testing.assert_allclose(net.forward()["b"], _reference(ref, x)["b"], rtol=1e-6)
    # a partial pass after a shape change, then the rest
    net.blobs["data"].reshape(1, 3, 8, 8)
    net.blobs["data"].data[...] = x[:1]
    net.forward(end="pool")
    assert net.blobs["pool"].shape == (1, 4, 4, 4)
    out = net.forward(start="ip")
    np.testing.assert_allclose(out["a"], _reference(ref, x[:1])["a"], rtol=1e-6)


DYNAMIC = """
name: "d"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 6 dim: 2 } } }
layer { name: "keep" type: "Python" bottom: "data" top: "kept"
        python_param { module: "plan_dynamic_layers" layer: "KeepPositive" } }
layer { name: "scale" type: "Power" bottom: "kept" top: "out" power_param { scale: 2 } }
"""


def test_a_layer_whose_output_size_depends_on_its_data(monkeypatch, tmp_path):
    """Its consumers reshape in the same pass (as after DetectionOutput)."""
    (tmp_path / "plan_dynamic_layers.py").write_text(
        "import caffe_lite as caffe\n"
        "import numpy as np\n"
        "class KeepPositive(caffe.Layer):\n"
        "    def reshape(self, bottom, top):\n"
        "        top[0].reshape(*bottom[0].shape)\n"
        "    def forward(self, bottom, top):\n"
        "        x = bottom[0].data\n"
        "        rows = x[x[:, 0] > 0]\n"
        "        top[0].reshape(*rows.shape)\n"
        "        top[0].data[...] = rows\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    net = caffe.Net(DYNAMIC, caffe.TEST)
    rng = np.random.default_rng(2)
    for _ in range(4):
        x = rng.standard_normal((6, 2), dtype=np.float32)
        out = net.forward(data=x)["out"]
        np.testing.assert_array_equal(out, 2 * x[x[:, 0] > 0])


def test_in_place_splits_and_sharing_are_unchanged_by_plans():
    text = """
    name: "s" force_backward: true
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 } } }
    layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "h"
            param { name: "w" } param { name: "b" }
            inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 }
                                  bias_filler { type: "constant" value: 0.2 } } }
    layer { name: "prelu" type: "PReLU" bottom: "h" top: "h" }
    layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "g"
            param { name: "w" } param { name: "b" } inner_product_param { num_output: 4 } }
    layer { name: "sum" type: "Eltwise" bottom: "h" bottom: "g" top: "s" }
    layer { name: "loss" type: "EuclideanLoss" bottom: "s" bottom: "data" top: "loss" }
    """
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4), dtype=np.float32)

    def run(fuse, monkeypatch=None):
        net = caffe.Net(text, caffe.TRAIN)
        net.blobs["data"].data[...] = x
        losses = [net.forward_backward() for _ in range(2)]
        return losses, [p.diff.copy() for p in net.learnable_params], \
            net.blobs["data"].diff.copy(), net.blobs["h"].data.copy()
    caffe.set_random_seed(5)
    planned = run(True)
    # the reference: layer by layer through the hooks' path, every layer reshaped
    caffe.set_random_seed(5)
    net = caffe.Net(text, caffe.TRAIN)
    net.after_forward(lambda i: None)
    net.after_backward(lambda i: None)
    net.blobs["data"].data[...] = x
    losses = [net.forward_backward() for _ in range(2)]
    ref = (losses, [p.diff.copy() for p in net.learnable_params], net.blobs["data"].diff.copy(),
           net.blobs["h"].data.copy())
    np.testing.assert_allclose(planned[0], ref[0], rtol=1e-6)
    for a, b in zip(planned[1] + [planned[2], planned[3]], ref[1] + [ref[2], ref[3]]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_hooks_see_every_layer_and_the_plan_resumes_after():
    net = caffe.Net(NET, caffe.TEST)
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8), dtype=np.float32)
    plain = net.forward(data=x)["a"].copy()
    seen = []
    net.before_forward(seen.append)
    assert np.allclose(net.forward(data=x)["a"], plain)
    assert seen == list(range(len(net.layers)))
    net._hooks["before_forward"].clear()
    np.testing.assert_array_equal(net.forward(data=x)["a"], plain)


def test_switches_rebuild_the_plan(monkeypatch):
    net = caffe.Net(NET, caffe.TEST)
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8), dtype=np.float32)
    fused = net.forward(data=x)["a"].copy()
    first = net._plan()
    assert first.by_first  # conv + relu run as one step
    monkeypatch.setenv("CAFFE_LITE_FUSE", "0")
    plain = net.forward(data=x)["a"].copy()
    assert net._plan() is not first and not net._plan().by_first
    monkeypatch.setenv("CAFFE_LITE_JIT", "0")
    numpy_only = net.forward(data=x)["a"].copy()
    np.testing.assert_allclose(fused, plain, rtol=1e-6)
    np.testing.assert_allclose(numpy_only, plain, rtol=1e-5)


def test_a_replaced_forward_cpu_is_what_runs(monkeypatch):
    """A prepared step stands for the forward_cpu it was written with: a subclass or a patch
    that replaces forward_cpu is run instead (so is its group left alone)."""
    net = caffe.Net(NET, caffe.TEST)
    x = np.ones((2, 3, 8, 8), np.float32)
    net.forward(data=x)
    assert net.layer_dict["conv"].uses_prepared()
    ran = []
    original = Convolution.forward_cpu

    def patched(self, bottom, top, post=None):
        ran.append(self.name)
        return original(self, bottom, top, post)
    monkeypatch.setattr(Convolution, "forward_cpu", patched)
    net = caffe.Net(NET, caffe.TEST)
    assert not net.layer_dict["conv"].uses_prepared()
    net.forward(data=x)
    assert ran == ["conv"] and 0 not in net._plan().by_first


def test_blas_is_set_once_per_pass(monkeypatch):
    libs = parallel._blas_libraries()
    if not libs:
        pytest.skip("threadpoolctl cannot see numpy's BLAS")
    calls = []
    switches = [(get, lambda n, set_=set_: (calls.append(n), set_(n))[1])
                for get, set_ in parallel._blas_switches()]
    monkeypatch.setattr(parallel, "_switches", switches)
    monkeypatch.setattr(parallel, "_native", False)     # (the switches through Python)
    before = [lib.get_num_threads() for lib in libs]
    for lib in libs:
        lib.set_num_threads(2)
    net = caffe.Net(NET, caffe.TEST)
    net.forward(data=np.ones((2, 3, 8, 8), np.float32))
    calls.clear()
    net.forward()
    assert sorted(calls) == [1] * len(libs) + [2] * len(libs)  # to one thread and back
    with parallel.cpu_pass():
        assert [lib.get_num_threads() for lib in libs] == [1] * len(libs)
    assert [lib.get_num_threads() for lib in libs] == [2] * len(libs)
    # the same through the compiled pass edge (spin.py pass_edge), where it can run
    monkeypatch.undo()
    if parallel._native_switches() is not None:
        for lib in libs:
            lib.set_num_threads(2)
        with parallel.cpu_pass():
            assert [lib.get_num_threads() for lib in libs] == [1] * len(libs)
            with parallel.cpu_pass():     # (a nested pass leaves it to the outer one)
                pass
            assert [lib.get_num_threads() for lib in libs] == [1] * len(libs)
        assert [lib.get_num_threads() for lib in libs] == [2] * len(libs)
    for lib, n in zip(libs, before):
        lib.set_num_threads(n)


def test_shape_epoch_moves_only_on_real_changes():
    b = caffe.Blob((2, 3))
    e = blob_module.shape_epoch
    b.reshape(2, 3)
    b.reshape((2, 3))
    assert blob_module.shape_epoch == e
    b.reshape(3, 2)
    assert blob_module.shape_epoch > e
    e = blob_module.shape_epoch
    other = caffe.Blob((3, 2))
    b.share_data(other)
    assert blob_module.shape_epoch > e
    e = blob_module.shape_epoch
    b.share_data(other)
    assert blob_module.shape_epoch == e


@pytest.mark.parametrize("setting", ["CAFFE_LITE_SPIN", "CAFFE_LITE_JIT"])
def test_without_the_pool_a_plan_makes_no_programs(monkeypatch, setting):
    """Programs (layers/program.py) need the spinning pool: with it off, passes keep the step
    loop (a net of layers that do nothing too), and give the same numbers."""
    net = caffe.Net(NET, caffe.TEST)
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    expect = [{k: v.copy() for k, v in net.forward(data=x).items()} for _ in range(3)][-1]
    monkeypatch.setenv(setting, "0")
    for _ in range(3):
        out = net.forward(data=x)
    assert all(units is None for _, units in net._plan_._programs.values())
    for name, value in expect.items():
        np.testing.assert_allclose(out[name], value, rtol=1e-5, atol=1e-6)
    empty = caffe.Net("""
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "flat" type: "Flatten" bottom: "data" top: "flat" }
""", caffe.TEST)
    for _ in range(3):
        empty.forward(data=np.ones((2, 3), np.float32))
    assert all(units is None for _, units in empty._plan_._programs.values())
