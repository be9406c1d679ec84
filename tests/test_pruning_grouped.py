"""Grouped convolutions: pruned in units that keep `group` valid (the same filters, and input
channels, in every group) and thinned exactly, the ResNeXt block (group 32) included."""
import numpy as np
import pytest

import caffe_lite
from caffe_lite.pruning import ChannelGraph, prune_net, thin_net
from caffe_lite.pruning.structure import FILTER, INPUT

from pruning_nets import GROUPED, build, net_param, resnext_block
from pruning_nets import _conv_f as _conv_text, _input as _input_text


def _thinned(result):
    from caffe_lite.pruning.netutil import with_blobs
    return caffe_lite.Net(with_blobs(result.net_param, result.weights), caffe_lite.TEST)


def _same_outputs(a, b, seed=0):
    x = np.random.default_rng(seed).standard_normal(a.blobs["data"].shape).astype(np.float32)
    ya = {k: v.copy() for k, v in a.forward(data=x).items()}
    yb = b.forward(data=x)
    for k in ya:
        np.testing.assert_allclose(yb[k], ya[k], rtol=1e-4, atol=1e-5)


def test_grouped_units_join_the_same_place_in_every_group():
    g = ChannelGraph(build(GROUPED))
    # g: 8 -> 8 in 4 groups of 2: its outputs j, 2 + j, 4 + j, 6 + j are one unit, and so are
    # its inputs (a's channels) j, 2 + j, 4 + j, 6 + j.
    unit = g.component_of("g", 1)
    assert sorted(unit.atoms) == [("g", 1), ("g", 3), ("g", 5), ("g", 7)]
    s = {(x.layer, x.blob, x.axis, x.start, x.stop, x.kind) for x in unit.slices}
    assert {("g", 0, 0, o, o + 1, FILTER) for o in (1, 3, 5, 7)} <= s
    # d, a Deconvolution with group 2 (weight (8, 3, 2, 2)), reads g's channel o at row o.
    assert {("d", 0, 0, o, o + 1, INPUT) for o in (1, 3, 5, 7)} <= s
    a_unit = g.component_of("a", 2)
    assert sorted(a_unit.atoms) == [("a", 0), ("a", 2), ("a", 4), ("a", 6)]
    # g's weight (8, 2, 3, 3) reads input j of every group at column j.
    assert ("g", 0, 1, 0, 1, INPUT) in {(x.layer, x.blob, x.axis, x.start, x.stop, x.kind)
                                        for x in a_unit.slices}
    # d's outputs 6 in 2 groups of 3: units {j, 3 + j}, its weight's column j.
    d_unit = g.component_of("d", 4)
    assert sorted(d_unit.atoms) == [("d", 1), ("d", 4)]
    assert ("d", 0, 1, 1, 2, FILTER) in {(x.layer, x.blob, x.axis, x.start, x.stop, x.kind)
                                         for x in d_unit.slices}


def test_grouped_net_prunes_and_thins_exactly():
    net = build(GROUPED)
    results = {r.name: r for r in prune_net(net, method="l1-filter", sparsity=0.5)}
    assert results["g"].detail == "zero filters 4/8"
    assert results["a"].detail == "zero filters 4/8"
    # d's 6 outputs are 3 units of 2 (one per group): 0.5 x 3 rounds up to 2 units.
    assert results["d"].detail == "zero filters 4/6"
    result = thin_net(net, net_param(GROUPED))
    small = _thinned(result)
    _same_outputs(net, small)
    lp = {l.name: l for l in result.net_param.layer}
    assert lp["g"].convolution_param.group == 4 and lp["g"].convolution_param.num_output == 4
    assert lp["d"].convolution_param.group == 2
    assert small.params["g"][0].shape == (4, 1, 3, 3)     # 4 groups of 1 in, 1 out
    assert small.params["a"][0].shape == (4, 8, 1, 1)
    assert small.params["d"][0].shape == (4, 1, 2, 2)      # 2 groups: 2 in, 1 out each


@pytest.mark.parametrize("method", ["l1-filter", "fpgm", "bn-scale"])
def test_resnext_block_group_32_prunes_and_thins_exactly(method):
    text = resnext_block()
    net = build(text)
    results = {r.name: r for r in prune_net(net, method=method, sparsity=0.5)}
    # The grouped b (64 -> 64, group 32, 2 per group) loses one filter of every group, and a
    # one input channel of every group of b; c's outputs meet the identity shortcut: kept.
    assert results["b"].detail == "zero filters 32/64"
    assert results["a"].detail == "zero filters 32/64"
    assert "c" not in results
    result = thin_net(net, net_param(text))
    assert result.channels["a"] == (64, 32) and result.channels["b"] == (64, 32)
    small = _thinned(result)
    _same_outputs(net, small)
    b = next(l for l in result.net_param.layer if l.name == "b").convolution_param
    assert (b.num_output, b.group) == (32, 32)
    assert small.params["b"][0].shape == (32, 1, 3, 3)
    assert result.params_after < 0.6 * result.params_before


def test_depthwise_with_a_multiplier_keeps_its_input_channels():
    text = ('name: "dwm"\n' + _input_text((1, 4, 5, 5))
            + _conv_text("a", "data", 4)
            + _conv_text("dw", "a", 8, k=3, pad=1, group=4)   # multiplier 2
            + _conv_text("c", "dw", 3))
    g = ChannelGraph(build(text))
    # Cg = 1: the input units join every channel of a; the outputs pair up as j, 2 + j, ...
    assert sorted(g.component_of("a", 0).atoms) == [("a", 0), ("a", 1), ("a", 2), ("a", 3)]
    assert sorted(g.component_of("dw", 1).atoms) == [("dw", 1), ("dw", 3), ("dw", 5),
                                                      ("dw", 7)]
    net = build(text)
    prune_net(net, method="l1-filter", spec='layer { name: "dw" sparsity: 0.5 }')
    result = thin_net(net, net_param(text))
    assert result.channels["dw"] == (8, 4) and result.channels["a"] == (4, 4)
    _same_outputs(net, _thinned(result))
