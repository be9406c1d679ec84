"""Thinning: structurally pruned channels become a smaller dense net with the same outputs."""
import numpy as np
import pytest

import caffe_lite
from caffe_lite.io import load_message, parse_text, to_text, upgrade_net
from caffe_lite.proto import caffe_pb2
from caffe_lite.pruning import PruningError, prune_net, thin_net
from caffe_lite.pruning.netutil import with_blobs

from pruning_nets import FLATNET, RESNET, build, forward, net_param


def _thinned_net(result):
    # Through text, as a user's Caffe would read it.
    param = parse_text(to_text(result.net_param), caffe_pb2.NetParameter())
    return caffe_lite.Net(with_blobs(param, result.weights), caffe_lite.TEST)


def _check_same_outputs(net, small, seeds=(0, 1)):
    for seed in seeds:
        a, b = forward(net, seed), forward(small, seed)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-5)


def test_thin_residual_net_with_eltwise_concat_batchnorm_scale_depthwise():
    net = build(RESNET)
    prune_net(net, method="l1-filter", sparsity=0.5)
    result = thin_net(net, net_param(RESNET))
    # conv3a (1x1) and conv3b (3x3) reach the Eltwise through a Concat: ranked by scores
    # normalised per layer, each branch loses half (raw L1 sums took 3 of the 1x1's 4).
    assert result.channels == {"conv1": (8, 4), "conv2b": (8, 4), "conv3a": (4, 2),
                               "conv3b": (4, 2), "conv2a": (6, 3), "conv4": (5, 2),
                               "fc": (3, 3), "dw": (8, 4)}
    small = _thinned_net(result)
    _check_same_outputs(net, small)
    shapes = {n: [tuple(b.shape) for b in p] for n, p in small.params.items()}
    assert shapes["conv1"] == [(4, 3, 3, 3), (4,)]
    assert shapes["conv1_bn"] == [(4,), (4,), (1,)]
    assert shapes["conv1_sc"] == [(4,), (4,)]
    assert shapes["conv2a"] == [(3, 4, 3, 3), (3,)]
    assert shapes["conv2b"] == [(4, 3, 1, 1)]
    assert shapes["dw"] == [(4, 1, 3, 3), (4,)]
    assert shapes["conv4"] == [(2, 4, 3, 3), (2,)]
    assert shapes["fc"] == [(3, 2), (3,)]
    dw = next(lp for lp in result.net_param.layer if lp.name == "dw")
    assert dw.convolution_param.num_output == 4 and dw.convolution_param.group == 4
    assert result.params_after < result.params_before


def test_thin_flatten_and_inner_products():
    net = build(FLATNET)
    prune_net(net, method="l1-filter", sparsity=0.5)
    result = thin_net(net, net_param(FLATNET))
    assert result.channels == {"conv1": (6, 3), "ip1": (7, 3), "ip2": (4, 4)}
    small = _thinned_net(result)
    _check_same_outputs(net, small)
    assert small.params["ip1"][0].shape == (3, 27)


def test_thin_lenet(models_dir):
    path = models_dir / "bvlc_mnist" / "lenet.prototxt"
    param, _ = load_message(str(path), caffe_pb2.NetParameter)
    upgrade_net(param)
    param.layer[0].input_param.shape[0].dim[0] = 4
    net = caffe_lite.Net(param, caffe_lite.TEST)
    rng = np.random.default_rng(5)
    for p in net.params.values():
        p[1].data[...] = rng.standard_normal(p[1].shape) * 0.1
    prune_net(net, method="l1-filter", sparsity=0.4)
    result = thin_net(net, param)
    assert result.channels == {"conv1": (20, 12), "conv2": (50, 30), "ip1": (500, 300),
                               "ip2": (10, 10)}
    small = _thinned_net(result)
    assert small.params["ip1"][0].shape == (300, 30 * 16)
    _check_same_outputs(net, small)


def test_a_channel_nothing_reads_is_removed_even_with_live_filter():
    net = build(FLATNET)
    net.params["ip1"][0].data[:, 18:27] = 0   # nobody reads conv1's channel 2
    ref = forward(net)
    result = thin_net(net, net_param(FLATNET))
    assert result.channels["conv1"] == (6, 5)
    small = _thinned_net(result)
    b = forward(small)
    np.testing.assert_allclose(b["ip2"], ref["ip2"], rtol=1e-5, atol=1e-6)


def test_unstructured_pruning_leaves_nothing_to_thin():
    net = build(FLATNET)
    prune_net(net, sparsity=0.5)
    result = thin_net(net, net_param(FLATNET))
    assert all(b == a for b, a in result.channels.values())
    assert result.params_after == result.params_before


def test_a_layer_whose_every_channel_is_unused_is_an_error():
    net = build(FLATNET)
    net.params["ip2"][0].data[...] = 0
    with pytest.raises(PruningError, match="every one of the 7 output channels of layer 'ip1'"):
        thin_net(net, net_param(FLATNET))


def test_thin_keeps_other_phases_of_the_prototxt():
    text = RESNET.replace('layer { name: "data" type: "Input"',
                          'layer { name: "data" type: "Input" top: "data" '
                          'include { phase: TRAIN } input_param { shape { dim: 5 dim: 3 '
                          'dim: 8 dim: 8 } } }\n'
                          'layer { name: "data" type: "Input" include { phase: TEST }')
    net = build(text)
    prune_net(net, method="l1-filter", sparsity=0.5)
    result = thin_net(net, net_param(text))
    assert [lp.name for lp in result.net_param.layer].count("data") == 2
    train = caffe_lite.Net(with_blobs(result.net_param, result.weights), caffe_lite.TRAIN)
    assert train.blobs["data"].shape == (5, 3, 8, 8)
    assert train.params["conv1"][0].shape == (4, 3, 3, 3)


DECONV = """name: "deconv"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 weight_filler { type: "gaussian" std: 0.5 }
    bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "prelu" type: "PReLU" bottom: "conv1" top: "conv1"
  prelu_param { filler { type: "gaussian" std: 0.5 } } }
layer { name: "up" type: "Deconvolution" bottom: "conv1" top: "up"
  convolution_param { num_output: 5 kernel_size: 2 stride: 2
    weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "dw" type: "DepthwiseConvolution" bottom: "up" top: "dw"
  convolution_param { num_output: 5 group: 5 kernel_size: 3 pad: 1
    weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "b" type: "Bias" bottom: "dw" top: "dw" bias_param { filler { type: "gaussian" } } }
layer { name: "out" type: "Convolution" bottom: "dw" top: "out"
  convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 } } }
"""


def test_thin_deconvolution_prelu_depthwise_fork_and_bias():
    net = build(DECONV)
    prune_net(net, method="l1-filter", sparsity=0.4)
    result = thin_net(net, net_param(DECONV))
    assert result.channels == {"conv1": (6, 4), "up": (5, 3), "out": (2, 2), "dw": (5, 3)}
    small = _thinned_net(result)
    _check_same_outputs(net, small)
    assert small.params["up"][0].shape == (4, 3, 2, 2)   # Deconvolution: (C_in, C_out, k, k)
    assert small.params["prelu"][0].shape == (4,)
    assert small.params["b"][0].shape == (3,)
    assert small.params["dw"][0].shape == (3, 1, 3, 3)
