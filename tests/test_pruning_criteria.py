"""Structured criteria (l1-filter, l2-filter, fpgm, taylor, apoz, bn-scale) against hand-computed
scores; the normalisation that lets coupled branches of different filter sizes compare; the
METHODS table; layers declaring their channel flow."""
import logging

import numpy as np
import pytest

import caffe_lite
from caffe_lite.layers.base import Layer
from caffe_lite.layers.registry import LAYERS, register
from caffe_lite.pruning import (CRITERIA, METHODS, ChannelGraph, PruningError, criteria,
                                make_plan, prune_net)
from caffe_lite.pruning.filters import scores_for

from pruning_nets import CONCAT, FLATNET, RESNET, build, net_param


def _scores(net, criterion, stats=None):
    g = ChannelGraph(net)
    s = criteria.component_scores(net, g, criterion, stats)
    return g, s


def test_methods_table_names_every_method():
    assert list(METHODS) == ["magnitude", "std", "global", "dns", "l1-filter", "l2-filter",
                             "fpgm", "taylor", "apoz", "bn-scale"]
    assert set(CRITERIA) <= set(METHODS)
    assert all(getattr(METHODS[n], "structured", False) for n in CRITERIA)
    with pytest.raises(PruningError, match="unknown pruning method 'l3'.*bn-scale"):
        make_plan(build(FLATNET), method="l3", sparsity=0.5)


def test_l1_and_l2_are_norms_per_weight_normalised_by_the_layer_mean():
    net = build(FLATNET)
    w = net.params["conv1"][0].data       # (6, 2, 3, 3): 18 weights per filter
    w[...] = 0
    w[0] = 1.0                            # mean |w| 1, rms 1
    w[1, 0] = 2.0                         # mean |w| 1, rms sqrt(2)
    w[2] = -0.5                           # 0.5, 0.5
    w[3] = 3.0
    w[4, :, 0, 0] = 9.0                   # 2 of 18 weights: mean 1, rms 3
    w[5] = 0.25
    g, l1 = _scores(net, "l1-filter")
    _, l2 = _scores(net, "l2-filter")
    raw1 = np.array([1, 1, 0.5, 3, 1, 0.25])
    raw2 = np.array([1, np.sqrt(2), 0.5, 3, 3, 0.25])
    comps = [g.component_of("conv1", c).id for c in range(6)]
    np.testing.assert_allclose([l1[i] for i in comps], raw1 / raw1.mean())
    np.testing.assert_allclose([l2[i] for i in comps], raw2 / raw2.mean())
    # L1 ties filters 0, 1 and 4; L2 keeps the peaked ones (1 and 4) over the flat one.
    prune_net(net, method="l2-filter", spec='layer { name: "conv1" sparsity: 0.5 }')
    assert [c for c in range(6) if not net.params["conv1"][0].data[c].any()] == [0, 2, 5]


def test_fpgm_prunes_the_filter_nearest_the_geometric_median():
    text = ('layer { name: "data" type: "Input" top: "data" '
            'input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }\n'
            'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
            'convolution_param { num_output: 4 kernel_size: 1 } }\n'
            'layer { name: "c2" type: "Convolution" bottom: "c" top: "c2" '
            'convolution_param { num_output: 2 kernel_size: 1 } }\n')
    net = caffe_lite.Net(net_param(text), caffe_lite.TEST)
    net.params["c"][0].data[...] = np.array([[1, 0], [0, 1], [0.6, 0.6], [5, 5]],
                                            np.float32).reshape(4, 2, 1, 1)
    g, s = _scores(net, "fpgm")
    # Summed distances: |f0 - f1| = 1.41421, |f0 - f2| = |f1 - f2| = 0.72111,
    # |f0 - f3| = |f1 - f3| = 6.40312, |f2 - f3| = 6.22254.
    raw = np.array([8.53844, 8.53844, 7.66476, 19.02878])
    got = np.array([s[g.component_of("c", c).id] for c in range(4)])
    np.testing.assert_allclose(got, raw / raw.mean(), rtol=1e-5)
    prune_net(net, method="fpgm", sparsity=0.25)
    # f2 goes, although its L1 norm (1.2) is above f0's and f1's (1).
    assert [c for c in range(4) if not net.params["c"][0].data[c].any()] == [2]


def test_bn_scale_ranks_by_gamma_and_needs_a_scale():
    net = build(RESNET)
    gamma = net.params["conv2a_sc"][0].data          # conv2a's 6 channels
    gamma[...] = [0.5, -0.01, 2.0, 0.02, -1.0, 0.3]
    prune_net(net, method="bn-scale", spec='layer { name: "conv2a" sparsity: 0.5 }')
    assert [c for c in range(6) if not net.params["conv2a"][0].data[c].any()] == [1, 3, 5]
    with pytest.raises(PruningError, match="bn-scale cannot prune layer 'conv1'.*needs a Scale"):
        prune_net(build(FLATNET), method="bn-scale",
                  spec='layer { name: "conv1" sparsity: 0.5 }')


def test_zero_filters_rank_first_for_every_criterion():
    for method in ("l1-filter", "l2-filter", "fpgm"):
        net = build(FLATNET)
        w = net.params["conv1"][0].data
        w[4] = 0
        w[1] = 0
        prune_net(net, method=method, spec='layer { name: "conv1" sparsity: 0.34 }')
        assert [c for c in range(6) if not w[c].any()] == [1, 4], method


# --- activation criteria ------------------------------------------------------------------------
# conv1: 4 filters 3x3 (pad 1) on a constant image of 1s, so output position p of filter c is
# a_c * (in-bounds taps at p: 4 at a corner, 6 at an edge, 9 in the centre) + b_c.
ACT_NET = """name: "act"
layer { name: "data" type: "DummyData" top: "data" top: "target"
  dummy_data_param { shape { dim: 2 dim: 1 dim: 3 dim: 3 } shape { dim: 2 dim: 1 dim: 3 dim: 3 }
    data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 0 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 1 kernel_size: 1 bias_term: false } }
layer { name: "loss" type: "EuclideanLoss" bottom: "conv2" bottom: "target" top: "loss" }
"""
A = np.array([1.0, 1.0, 1.0, -1.0])
B = np.array([-5.0, -7.0, 0.0, 0.0])
V = np.array([0.5, -2.0, 0.25, 1.0])
TAPS = np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]], np.float64)


def _act_net():
    net = caffe_lite.Net(net_param(ACT_NET), caffe_lite.TRAIN)
    net.params["conv1"][0].data[...] = A.reshape(4, 1, 1, 1)
    net.params["conv1"][1].data[...] = B
    net.params["conv2"][0].data[...] = V.reshape(1, 4, 1, 1)
    return net


def test_apoz_counts_zero_activations_where_the_consumer_reads():
    net = _act_net()
    g = ChannelGraph(net)
    stats = criteria.activation_stats(g, net, batches=3, gradients=False)
    # relu(a * taps + b) > 0 at: 5 of 9 positions (edges 1, centre 4), 1 (centre 2), 9, 0.
    nonzero = np.array([5 / 9, 1 / 9, 1.0, 0.0])
    np.testing.assert_allclose(stats[("conv2", 0)]["nonzero"], nonzero)
    s = criteria.component_scores(net, g, "apoz", stats)
    np.testing.assert_allclose([s[g.component_of("conv1", c).id] for c in range(4)],
                               nonzero / nonzero.mean())
    prune_net(net, method="apoz", sparsity=0.5)
    assert [c for c in range(4) if not net.params["conv1"][0].data[c].any()] == [1, 3]


def test_apoz_warns_when_nothing_is_ever_zero(caplog):
    net = caffe_lite.Net(net_param(ACT_NET.replace('type: "ReLU"', 'type: "TanH"')),
                         caffe_lite.TRAIN)
    net.params["conv1"][1].data[...] = 10.0     # tanh(> 0) > 0 everywhere
    g = ChannelGraph(net)
    stats = criteria.activation_stats(g, net, batches=1, gradients=False)
    with caplog.at_level(logging.WARNING, logger="caffe_lite"):
        criteria.component_scores(net, g, "apoz", stats)
    assert "no activation 'conv2' reads is ever zero" in caplog.text


def test_taylor_is_activation_times_gradient():
    net = _act_net()
    g = ChannelGraph(net)
    stats = criteria.activation_stats(g, net, batches=2, gradients=True)
    x = np.maximum(A[:, None, None] * TAPS + B[:, None, None], 0)        # (4, 3, 3)
    y = np.einsum("c,cij->ij", V, x)
    # EuclideanLoss sum (y - 0)^2 / (2 N): dL/dy = y / N, dL/dx_c = V_c y / N (N = 2).
    grad = V[:, None, None] * y / 2
    expected = np.abs((x * grad).sum(axis=(1, 2))) / 9
    np.testing.assert_allclose(stats[("conv2", 0)]["taylor"], expected, rtol=1e-6)
    # The backward pass leaves no parameter gradient behind.
    assert not any(b.diff.any() for b in net.learnable_params)


def test_data_criteria_need_a_net_that_reads_data():
    with pytest.raises(PruningError, match="taylor ranks channels by their activations"):
        prune_net(build(FLATNET), method="taylor", sparsity=0.5)


# --- coupled branches ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["l1-filter", "l2-filter"])
def test_concat_branches_of_different_filter_sizes_compare_fairly(method):
    net = build(CONCAT)
    w = net.params["stem"][0].data
    w[...] = np.sign(w) * np.abs(w).mean()    # the stem's share of every channel is equal
    g = ChannelGraph(net)
    [(layers, comps)] = [c for c in g.clusters() if "b1" in c[0]]
    assert layers == ["stem", "b1", "b3"]
    # What raw L1 sums would do: every b3 (3x3) filter outweighs every b1 (1x1) filter, and
    # the 1x1 branch loses all but the one filter the emptying guard keeps.
    raw = {c.id: sum(float(np.abs(criteria._filter(net, s)).sum()) for s in c.slices
                     if s.kind == "filter") for c in comps}
    lowest = sorted(comps, key=lambda c: raw[c.id])[:16]
    assert sum(1 for c in lowest if any(a[0] == "b1" for a in c.atoms)) == 16
    # Norms per weight alone would not do either (msra weights of the 3x3 are 3x smaller:
    # the 3x3 branch would lose 15); divided by their layer's mean, the branches compare.
    prune_net(net, method=method, spec='layer { name: "stem" sparsity: 0.5 }')
    lost = {n: sum(1 for c in range(16) if not net.params[n][0].data[c].any())
            for n in ("b1", "b3")}
    assert lost["b1"] + lost["b3"] == 16
    assert 5 <= lost["b1"] <= 11 and 5 <= lost["b3"] <= 11, lost


# --- layers declare their channel flow ----------------------------------------------------------
def test_layer_types_declare_channel_flow():
    routes = {t: cls.channel_route for t, cls in LAYERS.items() if cls.channel_route}
    assert routes == {"Concat": "concat", "Slice": "slice", "Eltwise": "join",
                      "Flatten": "flatten", "Silence": "sink"}
    for t in ("ReLU", "PReLU", "BatchNorm", "Dropout", "TanH", "Pooling", "Split"):
        assert LAYERS[t].channelwise is True, t
    for t in ("Softmax", "Reshape", "SoftmaxWithLoss", "Accuracy", "EuclideanLoss"):
        assert LAYERS[t].channelwise is False, t


def test_an_undeclared_layer_type_is_kept_and_reported(caplog):
    @register("MyChannelMixer")
    class Mixer(Layer):
        def reshape(self, bottom, top):
            top[0].reshape_like(bottom[0])

        def forward_cpu(self, bottom, top):
            top[0].data[...] = bottom[0].cpu_data
    try:
        text = ('layer { name: "data" type: "Input" top: "data" '
                'input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }\n'
                'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
                'convolution_param { num_output: 4 kernel_size: 1 } }\n'
                'layer { name: "m" type: "MyChannelMixer" bottom: "conv1" top: "m" }\n'
                'layer { name: "conv2" type: "Convolution" bottom: "m" top: "conv2" '
                'convolution_param { num_output: 3 kernel_size: 1 } }')
        net = caffe_lite.Net(net_param(text), caffe_lite.TEST)
        with caplog.at_level(logging.INFO, logger="caffe_lite"):
            g = ChannelGraph(net)
        assert "MyChannelMixer does not declare how it maps channels" in caplog.text
        assert g.unknown == {"MyChannelMixer"}
        assert "a layer type the channel analysis does not know" in g.fixed_reason("conv1")
        # Declared channelwise, its channels flow through it.
        Mixer.channelwise = True
        assert ChannelGraph(net).fixed_reason("conv1") is None
    finally:
        del LAYERS["MyChannelMixer"]


def test_scores_for_marks_pruned_components():
    net = build(FLATNET)
    net.params["conv1"][0].data[2] = 0
    g = ChannelGraph(net)
    s = scores_for(net, g, "fpgm")
    assert s[g.component_of("conv1", 2).id] == -1.0
    assert min(v for k, v in s.items() if k != g.component_of("conv1", 2).id) > 0
