"""Fused groups (layers/fusion.py): Convolution / InnerProduct with the in-place BatchNorm + Scale
and ReLU / PReLU after them run as products plus one pass, and give what the layers give one
by one: every blob, every gradient, in TEST and TRAIN nets, with and without the compiled
kernels.  Groups form only where nothing observable is skipped."""
import importlib.util

import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.layers import fusion


def _net(body, phase, shape=(2, 3, 7, 6), force=True):
    dims = " ".join(f"dim: {d}" for d in shape)
    text = (f'name: "f" force_backward: {str(force).lower()}\n'
            f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'
            + body)
    caffe.set_random_seed(11)
    return caffe.Net(text, phase)


def _randomize(net, seed=0):
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        for i, b in enumerate(layer.blobs):
            if layer.type == "BatchNorm":
                b.data[...] = (rng.normal(0, 0.3, b.shape) if i == 0 else
                               rng.uniform(0.5, 2, b.shape) if i == 1 else 1.5)
            elif layer.type == "PReLU":
                b.data[...] = rng.uniform(-0.5, 0.5, b.shape)
            else:
                b.data[...] = rng.normal(0, 0.5, b.shape)


def _run(body, phase, fuse, monkeypatch, jit_on=True, shape=(2, 3, 7, 6), backward=True,
         expect_group=None):
    monkeypatch.setenv("CAFFE_LITE_FUSE", "1" if fuse else "0")
    monkeypatch.setenv("CAFFE_LITE_JIT", "1" if jit_on else "0")
    net = _net(body, phase, shape, force=backward)
    _randomize(net)
    if expect_group is not None and fuse:
        groups = net._plan().by_first
        assert [(net.layers[g.first].name, net.layers[g.last].name, type(g).__name__)
                for g in groups.values()] == expect_group
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape, dtype=np.float32)
    out = []
    for step in range(2):
        net.forward(data=x * (step + 1))
        out += [b.data.copy() for b in net._blobs]
        if backward:
            for name in net.outputs:
                net.blobs[name].diff[...] = rng.standard_normal(net.blobs[name].shape)
            net.backward()
            out += [b.diff.copy() for b in net._blobs]
            out += [p.diff.copy() for p in net.learnable_params]
    return out


def _same(body, phase, monkeypatch, **kw):
    fused = _run(body, phase, True, monkeypatch, **kw)
    kw.pop("expect_group", None)
    plain = _run(body, phase, False, monkeypatch, **kw)
    assert len(fused) == len(plain)
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


CONV = ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
        'convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }\n')
DW = ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
      'convolution_param { num_output: 3 group: 3 kernel_size: 3 pad: 1 stride: 2 } }\n')
IP = ('layer { name: "conv" type: "InnerProduct" bottom: "data" top: "conv" '
      'inner_product_param { num_output: 5 } }\n')
RELU = 'layer { name: "act" type: "ReLU" bottom: "conv" top: "conv" }\n'
LEAKY = 'layer { name: "act" type: "ReLU" bottom: "conv" top: "conv" relu_param { negative_slope: 0.1 } }\n'
PRELU = 'layer { name: "act" type: "PReLU" bottom: "conv" top: "conv" }\n'
PRELU_SHARED = ('layer { name: "act" type: "PReLU" bottom: "conv" top: "conv" '
                'prelu_param { channel_shared: true } }\n')
BN_SCALE = ('layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" '
            'batch_norm_param { use_global_stats: true } }\n'
            'layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" '
            'scale_param { bias_term: true } }\n')
TAIL = 'layer { name: "out" type: "TanH" bottom: "conv" top: "out" }\n'


@pytest.mark.parametrize("jit_on", [True, False])
@pytest.mark.parametrize("layer", [CONV, DW, IP], ids=["conv", "depthwise", "ip"])
@pytest.mark.parametrize("act", [RELU, LEAKY, PRELU, PRELU_SHARED],
                         ids=["relu", "leaky", "prelu", "prelu-shared"])
def test_convolution_and_activation_train_exactly(monkeypatch, jit_on, layer, act):
    """Forward fused, backward layer by layer: every value and gradient as unfused."""
    if jit_on and importlib.util.find_spec("numba") is None:
        pytest.skip("numba not installed")
    _same(layer + act + TAIL, caffe.TRAIN, monkeypatch, jit_on=jit_on,
          expect_group=[("conv", "act", "ConvolutionGroup")])


@pytest.mark.parametrize("jit_on", [True, False])
@pytest.mark.parametrize("layer", [CONV, DW, IP], ids=["conv", "depthwise", "ip"])
@pytest.mark.parametrize("act", ["", RELU, PRELU], ids=["none", "relu", "prelu"])
def test_convolution_batchnorm_scale_fold_in_inference(monkeypatch, jit_on, layer, act):
    if jit_on and importlib.util.find_spec("numba") is None:
        pytest.skip("numba not installed")
    last = "act" if act else "scale"
    _same(layer + BN_SCALE + act + TAIL, caffe.TEST, monkeypatch, jit_on=jit_on,
          backward=False, expect_group=[("conv", last, "ConvolutionGroup")])


@pytest.mark.parametrize("jit_on", [True, False])
def test_batchnorm_is_not_folded_where_its_backward_runs(monkeypatch, jit_on):
    """TRAIN with batch statistics: the convolution alone, BatchNorm + Scale + ReLU as their
    own group (with the compiled kernels; without them, layer by layer)."""
    if jit_on and importlib.util.find_spec("numba") is None:
        pytest.skip("numba not installed")
    groups = [("bn", "act", "BatchNormScaleGroup")] if jit_on else []
    body = CONV + BN_SCALE.replace("use_global_stats: true", "") + RELU + TAIL
    _same(body, caffe.TRAIN, monkeypatch, jit_on=jit_on, expect_group=groups)


def test_dropout_in_inference_sits_inside_a_group(monkeypatch):
    body = (IP + 'layer { name: "drop" type: "Dropout" bottom: "conv" top: "conv" }\n'
            + PRELU + TAIL)
    _same(body, caffe.TEST, monkeypatch, backward=False,
          expect_group=[("conv", "act", "ConvolutionGroup")])


@pytest.mark.parametrize("body", [
    CONV + 'layer { name: "act" type: "ReLU" bottom: "conv" top: "r" }\n',        # not in place
    CONV + 'layer { name: "act" type: "ReLU" bottom: "conv" top: "conv" loss_weight: 1 }\n',
    CONV + 'layer { name: "act" type: "ReLU" bottom: "conv" top: "conv" '
           'relu_param { negative_slope: -0.5 } }\n',                              # needs x
    CONV + BN_SCALE.replace("use_global_stats: true", "use_global_stats: false"),  # batch stats
])
def test_no_group_where_something_observable_would_be_skipped(monkeypatch, body):
    monkeypatch.setenv("CAFFE_LITE_FUSE", "1")
    net = _net(body, caffe.TEST, force=False)
    assert not any(type(g) is fusion.ConvolutionGroup for g in fusion.plan(net).values())


def test_prelu_without_backward_keeps_no_copy_and_refuses_a_gradient(monkeypatch):
    """In a net that never runs PReLU's backward its input is not copied; calling the layer's
    backward by hand then says so instead of computing from the overwritten input."""
    net = _net(CONV + PRELU + TAIL, caffe.TEST, force=False)
    net.forward(data=np.ones((2, 3, 7, 6), np.float32))
    layer = net.layer_dict["act"]
    assert not layer.backward_needed
    with pytest.raises(caffe.CaffeLiteError, match="without keeping its input"):
        layer.backward(net.top_vecs[2], [True], net.bottom_vecs[2])


def test_epilogue_follows_parameter_changes(monkeypatch):
    """The folded per-channel values are recomputed when a parameter changes."""
    net = _net(CONV + BN_SCALE + RELU + TAIL, caffe.TEST, force=False)
    _randomize(net)
    x = np.random.default_rng(3).standard_normal((2, 3, 7, 6), dtype=np.float32)
    net.forward(data=x)
    net.params["bn"][0].data[...] += 1
    net.params["scale"][1].data[...] -= 0.5
    net.params["conv"][1].data[...] *= 2
    fused = net.forward(data=x)["out"].copy()
    monkeypatch.setenv("CAFFE_LITE_FUSE", "0")
    np.testing.assert_allclose(net.forward(data=x)["out"], fused, rtol=1e-5, atol=1e-6)
