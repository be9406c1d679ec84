"""Channel-coupling analysis and l1-filter structured pruning."""
import numpy as np
import pytest

from caffe_lite.pruning import ChannelGraph, PruningError, l1_filter_prune, make_plan, prune_net
from caffe_lite.pruning.structure import BIAS, FILTER, INPUT, PARAM

from pruning_nets import FLATNET, RESNET, build, forward, net_param

import caffe_lite


def _slices(comp):
    return {(s.layer, s.blob, s.axis, s.start, s.stop, s.kind) for s in comp.slices}


def test_eltwise_and_concat_couple_channels():
    g = ChannelGraph(build(RESNET))
    clusters = {tuple(layers): comps for layers, comps in g.clusters()}
    assert set(clusters) == {("conv1", "conv2b", "conv3a", "conv3b"), ("conv2a",), ("conv4",),
                             ("fc",)}
    # res1 = conv1 + conv2b couples channel j of both; res2 = dw(concat(conv3a, conv3b)) + res1
    # couples concat channel j (conv3a j < 4, conv3b j - 4) with res1 channel j.
    c = g.component_of("conv1", 5)
    assert sorted(c.atoms) == [("conv1", 5), ("conv2b", 5), ("conv3b", 1)]
    assert g.component_of("conv3a", 2) is g.component_of("conv2b", 2)
    assert _slices(c) == {
        ("conv1", 0, 0, 5, 6, FILTER), ("conv1", 1, 0, 5, 6, BIAS),
        ("conv1_bn", 0, 0, 5, 6, PARAM), ("conv1_bn", 1, 0, 5, 6, PARAM),
        ("conv1_sc", 0, 0, 5, 6, PARAM), ("conv1_sc", 1, 0, 5, 6, PARAM),
        ("conv2a", 0, 1, 5, 6, INPUT), ("conv2b", 0, 0, 5, 6, FILTER),
        ("conv3a", 0, 1, 5, 6, INPUT), ("conv3b", 0, 1, 5, 6, INPUT),
        ("conv3b", 0, 0, 1, 2, FILTER), ("conv3b", 1, 0, 1, 2, BIAS),
        ("dw", 0, 0, 5, 6, PARAM), ("dw", 1, 0, 5, 6, PARAM),
        ("dw_bn", 0, 0, 5, 6, PARAM), ("dw_bn", 1, 0, 5, 6, PARAM),
        ("dw_sc", 0, 0, 5, 6, PARAM), ("dw_sc", 1, 0, 5, 6, PARAM),
        ("conv4", 0, 1, 5, 6, INPUT)}
    assert c.fixed is None
    assert g.depthwise == {"dw"}
    # The classifier's outputs are the net's output: fixed.
    assert "reaches the net output 'fc'" in g.fixed_reason("fc")
    assert g.fixed_reason("conv4") is None


def test_inner_product_after_flatten_reads_blocks():
    g = ChannelGraph(build(FLATNET))
    # conv1 output (2, 6, 3, 3) -> Flatten (2, 54): channel c is ip1's columns [9c, 9c + 9).
    assert ("ip1", 0, 1, 18, 27, INPUT) in _slices(g.component_of("conv1", 2))
    # ip1 -> TanH -> ip2: an InnerProduct's outputs are channels too.
    assert ("ip2", 0, 1, 4, 5, INPUT) in _slices(g.component_of("ip1", 4))


@pytest.mark.parametrize("layer_text, reason", [
    ('layer { name: "lrn" type: "LRN" bottom: "conv1" top: "lrn" }', "mixes neighbouring"),
    ('layer { name: "c" type: "Crop" bottom: "conv1" bottom: "conv1" top: "c" }',
     "'c' (Crop), a layer type the channel analysis does not know"),
    ('layer { name: "s" type: "Scale" bottom: "conv1" top: "s" scale_param { axis: 2 } }',
     "'s' (Scale), not on the channel axis"),
    ('layer { name: "b" type: "Bias" bottom: "conv1" top: "b" bias_param { axis: -3 '
     'num_axes: 2 } }', "'b' (Bias), whose blob 0 (4, 4) is not per channel"),
    ('layer { name: "sm" type: "Softmax" bottom: "conv1" top: "sm" }', "'sm' (Softmax)"),
    ('layer { name: "r" type: "Reshape" bottom: "conv1" top: "r" '
     'reshape_param { shape { dim: 0 dim: -1 } } }', "'r' (Reshape)"),
])
def test_layers_that_mix_channels_fix_them(layer_text, reason):
    text = ('layer { name: "data" type: "Input" top: "data" '
            'input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }\n'
            'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
            'convolution_param { num_output: 4 kernel_size: 1 } }\n' + layer_text +
            '\nlayer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2" '
            'convolution_param { num_output: 3 kernel_size: 1 } }')
    net = caffe_lite.Net(net_param(text), caffe_lite.TEST)
    g = ChannelGraph(net)
    assert reason in g.fixed_reason("conv1")
    with pytest.raises(PruningError, match="cannot prune layer 'conv1'"):
        prune_net(net, 'method: "l1-filter" layer { name: "conv1" sparsity: 0.5 }')


def _set_filter_norms(net, layer, norms):
    w = net.params[layer][0].data
    for c, v in enumerate(norms):
        w[c] = v / w[c].size  # every |w| equal: the filter's L1 norm is v


def test_l1_filter_removes_smallest_filters_with_everything_they_feed():
    net = build(FLATNET)
    _set_filter_norms(net, "conv1", [5, 1, 6, 0.5, 4, 3])
    ip1_before = net.params["ip1"][0].data.copy()
    results = l1_filter_prune(net, make_plan(net, 'layer { name: "conv1" sparsity: 0.5 }',
                                             "l1-filter"))
    assert [r.name for r in results] == ["conv1"] and results[0].detail == "zero filters 3/6"
    w, b = net.params["conv1"][0].data, net.params["conv1"][1].data
    gone = [1, 3, 5]  # the L1 norms 1, 0.5 and 3
    assert [c for c in range(6) if not w[c].any()] == gone
    assert [c for c in range(6) if b[c] == 0] == gone
    ip1 = net.params["ip1"][0].data
    for c in range(6):
        block = ip1[:, 9 * c:9 * c + 9]
        if c in gone:
            assert not block.any()
        else:
            np.testing.assert_array_equal(block, ip1_before[:, 9 * c:9 * c + 9])
    # Every change is a mask: the bias got one too, so fine-tuning keeps it at 0.
    assert net.params["conv1"][1].mask.tolist() == [1, 0, 1, 0, 1, 0]
    # Pruning again to the same target changes nothing (zero filters rank first).
    before = [p.data.copy() for n in net.params for p in net.params[n]]
    l1_filter_prune(net, make_plan(net, 'layer { name: "conv1" sparsity: 0.5 }', "l1-filter"))
    for a, p in zip(before, [p for n in net.params for p in net.params[n]]):
        np.testing.assert_array_equal(a, p.data)


def test_l1_filter_ranks_coupled_channels_by_their_summed_norm():
    net = build(RESNET)
    for layer in ("conv1", "conv2b", "conv3a", "conv3b"):
        _set_filter_norms(net, layer, [1.0] * net.params[layer][0].shape[0])
    # Channel 2: conv1's filter is the smallest of all, but conv2b's is huge: kept.
    net.params["conv1"][0].data[2] *= 0.01
    net.params["conv2b"][0].data[2] *= 100
    # Channel 6 (conv1 6, conv2b 6, conv3b 2) is small in all three: pruned first.
    for layer, c in (("conv1", 6), ("conv2b", 6), ("conv3b", 2)):
        net.params[layer][0].data[c] *= 0.1
    prune_net(net, method="l1-filter", spec='layer { name: "conv1" sparsity: 0.125 }')
    zero = {n: [c for c in range(p[0].shape[0]) if not p[0].data[c].any()]
            for n, p in net.params.items() if n in ("conv1", "conv2b", "conv3a", "conv3b")}
    assert zero == {"conv1": [6], "conv2b": [6], "conv3a": [], "conv3b": [2]}
    # BatchNorm mean/var, Scale gamma/beta, depthwise filter: channel 6 is exactly 0
    # everywhere the coupled channel goes.
    forward(net)
    for blob in ("conv1", "res1", "cat", "dw", "res2"):
        d = net.blobs[blob].data
        assert not d[:, 6].any(), blob
        assert d[:, 5].any(), blob
    for layer in ("conv1_bn", "conv1_sc", "dw_bn", "dw_sc", "dw"):
        for i in (0, 1):
            assert net.params[layer][i].data[6].size and not net.params[layer][i].data[6].any()
            assert net.params[layer][i].mask is not None


def test_l1_filter_refuses_to_empty_a_layer():
    net = build(FLATNET)
    before = net.params["conv1"][0].data.copy()
    with pytest.raises(PruningError, match="would remove all 6 filters of layer 'conv1'"):
        prune_net(net, method="l1-filter", spec='layer { name: "conv1" sparsity: 0.95 }')
    np.testing.assert_array_equal(net.params["conv1"][0].data, before)


def test_l1_filter_passes_over_channels_that_would_empty_a_coupled_layer():
    net = build(RESNET)
    # conv3a's 4 channels (0..3 of the coupled 8) are the smallest; at 0.5 (4 channels),
    # taking all of them would empty conv3a, so its largest is kept and channel 4 goes.
    for layer in ("conv1", "conv2b", "conv3a", "conv3b"):
        _set_filter_norms(net, layer, [1.0] * net.params[layer][0].shape[0])
    for c, f in enumerate([0.1, 0.2, 0.3, 0.4]):
        for layer in ("conv1", "conv2b", "conv3a"):
            net.params[layer][0].data[c] *= f
    net.params["conv3b"][0].data[0] *= 0.5  # channel 4 is the next smallest
    prune_net(net, method="l1-filter", spec='layer { name: "conv1" sparsity: 0.5 }')
    zero = [c for c in range(8) if not net.params["conv1"][0].data[c].any()]
    assert zero == [0, 1, 2, 4]
    # A simple layer at a target that takes everything is still an error.
    with pytest.raises(PruningError, match="coupled with"):
        prune_net(build(RESNET), method="l1-filter", sparsity=0.95)


def test_output_layer_named_in_spec_cannot_be_pruned_structurally():
    net = build(RESNET)
    with pytest.raises(PruningError, match="'fc'.*reaches the net output 'fc'"):
        prune_net(net, 'method: "l1-filter" layer { name: "fc" sparsity: 0.3 }')
    # Without naming it, a global target skips it.
    results = prune_net(net, method="l1-filter", sparsity=0.25)
    assert "fc" not in [r.name for r in results]
