"""BatchNorm -> Scale (-> ReLU) run as one step on the GPU (layers/fusion.py's groups,
layers/cuda/fusion.py): against the CPU path layer by layer, bit-deterministic, numerically
safe statistics, and the layers' own state left for them.

Tolerance: the fused GPU step is not bit-identical to the layers one by one (the statistics
are summed in another order, Welford / Chan instead of two passes, and y = xnorm * scale +
bias is one fused multiply-add); every result agrees with the CPU path within rtol 1e-4 and
atol 2e-5 (documented in docs/gpu.md).  Marked `gpu`: on machines without a GPU,
test_gpu_emulated.py runs them on the CPU emulator of the kernels."""
import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.backend import gpu as gpu_backend
from caffe_lite.layers.cuda import fusion as cuda_fusion

pytestmark = pytest.mark.gpu

NET = """
name: "fuse" force_backward: {force}
layer {{ name: "data" type: "Input" top: "data"
  input_param {{ shape {{ dim: {n} dim: 2 dim: {h} dim: {w} }} }} }}
layer {{ name: "target" type: "Input" top: "target" input_param {{ shape {{ dim: {n} dim: 3 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv" {frozen} {frozen}
  convolution_param {{ num_output: {c} kernel_size: 3 pad: 1
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


@pytest.fixture(autouse=True)
def _need_gpu():
    ok, reason = gpu_backend.available()
    if not ok:
        pytest.skip(f"needs PyCUDA and a CUDA device: {reason}")
    yield
    caffe.set_mode_cpu()


def _net(shape, c, bn_top, bias, relu, global_stats):
    n, h, w = shape
    text = NET.format(
        n=n, h=h, w=w, c=c, bn_top=bn_top, bias=bias, force="false" if global_stats else "true",
        frozen="param { lr_mult: 0 }" if global_stats else "",
        bn_param="batch_norm_param { use_global_stats: true }" if global_stats else "",
        relu=f'layer {{ name: "relu" type: "ReLU" bottom: "{bn_top}" top: "{bn_top}" }}'
        if relu else "")
    caffe.set_mode_cpu()
    caffe.set_random_seed(7)
    return caffe.Net(text, caffe.TRAIN)


def _run(monkeypatch, device, fuse, shape=(3, 5, 4), c=4, bn_top="conv", bias="true",
         relu=True, global_stats=False, offset=0.0, passes=2):
    monkeypatch.setenv("CAFFE_LITE_FUSE", "1" if fuse else "0")
    net = _net(shape, c, bn_top, bias, relu, global_stats)
    if global_stats:
        bn = net.layer_dict["bn"]
        bn.blobs[0].data[...] = np.linspace(-1, 2, c)
        bn.blobs[1].data[...] = np.linspace(1, 4, c)
        bn.blobs[2].data[...] = 2
    rng = np.random.default_rng(8)
    n, h, w = shape
    if device == "gpu":
        caffe.set_mode_gpu()
    out = []
    for k in range(passes):  # running statistics and parameter gradients accumulate
        net.blobs["data"].data[...] = rng.standard_normal((n, 2, h, w)).astype(np.float32)
        net.blobs["target"].data[...] = rng.standard_normal((n, 3)).astype(np.float32)
        if offset:
            net.params["conv"][1].data[...] = offset
        out.append(np.float32(net.forward_backward()))
    out += [b.data.copy() for b in net._blobs] + [b.diff.copy() for b in net._blobs]
    out += [p.data.copy() for p in net._params] + [p.diff.copy() for p in net._params]
    if not global_stats:
        # a backward that starts inside the group runs its layers one by one, on the state the
        # fused forward left them (after a forward: the CPU's in-place Scale, as Caffe's,
        # overwrites its saved input during backward)
        net.forward_from_to()
        net.backward(start="scale")
        out += [net.blobs["data"].diff.copy(), net.params["scale"][0].diff.copy()]
    caffe.set_mode_cpu()
    return net, out


def _compare(a, b, rtol=1e-4, atol=2e-5):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=f"result {i}")


CASES = [
    # shape (n, h, w), channels, BatchNorm's top, bias, relu, global statistics
    ((3, 5, 4), 4, "conv", "true", True, False),     # S = 20: float4 paths
    ((3, 5, 3), 4, "conv", "true", True, False),     # S = 15: scalar paths
    ((3, 5, 4), 4, "bn", "true", True, False),       # BatchNorm not in place
    ((3, 5, 3), 3, "bn", "false", False, False),
    ((3, 5, 4), 4, "conv", "false", True, False),
    ((3, 5, 4), 4, "conv", "true", True, True),      # global statistics: forward only
    ((3, 3, 3), 4, "bn", "true", False, True),
    ((4, 20, 20), 2, "conv", "true", True, False),   # several reduction blocks per channel
]


@pytest.mark.parametrize("shape,c,bn_top,bias,relu,global_stats", CASES,
                         ids=[str(c) for c in CASES])
def test_fused_gpu_group_matches_the_cpu_layers(monkeypatch, shape, c, bn_top, bias, relu,
                                                global_stats):
    calls = []
    for name in ("forward", "backward"):
        orig = getattr(cuda_fusion.BatchNormScale, name)
        monkeypatch.setattr(cuda_fusion.BatchNormScale, name, staticmethod(
            lambda g, orig=orig, name=name: (calls.append(name), orig(g))[1]))
    kw = dict(shape=shape, c=c, bn_top=bn_top, bias=bias, relu=relu, global_stats=global_stats)
    _, gpu = _run(monkeypatch, "gpu", True, **kw)
    assert calls.count("forward") == (2 if global_stats else 3)   # + the partial run's
    # (backward(start="scale") runs the group again when Scale is its last layer)
    assert calls.count("backward") == (0 if global_stats else 2 + (not relu))
    _, cpu = _run(monkeypatch, "cpu", False, **kw)
    _compare(gpu, cpu)


def test_fused_gpu_group_is_bit_deterministic(monkeypatch):
    _, a = _run(monkeypatch, "gpu", True, shape=(4, 20, 20), c=2)
    _, b = _run(monkeypatch, "gpu", True, shape=(4, 20, 20), c=2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_statistics_are_safe_far_from_zero(monkeypatch):
    """Activations around 3000 with unit spread: a one-pass sum of squares in float32 loses
    the variance to cancellation (3000^2 * 2^-24 ~ 0.5); Welford / Chan keeps it."""
    net, gpu = _run(monkeypatch, "gpu", True, shape=(4, 20, 20), c=2, offset=3000.0, passes=1)
    x = net.blobs["data"].data
    caffe.set_mode_cpu()
    net.forward_from_to(0, 2)   # data, target, conv on the CPU: BatchNorm's input in float64
    conv = net.blobs["conv"].data.astype(np.float64)
    var = conv.var(axis=(0, 2, 3))
    m = conv.shape[0] * conv.shape[2] * conv.shape[3]
    bn = net.layer_dict["bn"]
    # one pass: running var sum = m / (m - 1) * var, factor 1 (the GPU pass left them)
    got = bn.blobs[1].data / bn.blobs[2].data
    np.testing.assert_allclose(got, var * m / (m - 1), rtol=2e-4)
    assert x.shape == (4, 2, 20, 20)


def test_fusion_can_be_switched_off_on_the_gpu(monkeypatch):
    called = []
    monkeypatch.setattr(cuda_fusion.BatchNormScale, "forward",
                        staticmethod(lambda g: called.append(g)))
    _run(monkeypatch, "gpu", False, passes=1)
    assert not called
