"""Unstructured pruning: magnitude, std, global; specs and their errors."""
import numpy as np
import pytest

from caffe_lite import Blob
from caffe_lite.errors import CaffeLiteError
from caffe_lite.pruning import (PruningError, global_keep, magnitude_keep, make_plan,
                                prune_net, shrink_mask, std_keep)
from caffe_lite.pruning.methods import std_threshold

from pruning_nets import FLATNET, build


def _blob(values):
    b = Blob.from_array(np.asarray(values, np.float32))
    b.mask_from_data()
    return b


def _prune(b, keep):
    shrink_mask(b, keep)
    return b.cpu_data.tolist()


def test_magnitude_prunes_smallest_with_stable_ties():
    # |w| = .5 .1 .3 0 .2 .1: at 0.5 the three smallest go: the zero, then the tied .1s.
    b = _blob([0.5, -0.1, 0.3, 0.0, -0.2, 0.1])
    assert _prune(b, magnitude_keep(b, 0.5)) == pytest.approx([0.5, 0, 0.3, 0, -0.2, 0])
    assert b.cpu_mask.tolist() == [1, 0, 1, 0, 1, 0]
    # Ties at the threshold go to the lower index: of the tied .1s only index 1 at 1/6.
    b = _blob([0.5, -0.1, 0.3, 0.7, -0.2, 0.1])
    assert _prune(b, magnitude_keep(b, 1 / 6)) == pytest.approx([0.5, 0, 0.3, 0.7, -0.2, 0.1])


def test_magnitude_counts_existing_zeros_and_only_shrinks():
    w = np.array([0, 0, 0, 0.4, 0, 0, 0.1, 0.9, 0, 0.2], np.float32)  # 60 % zero
    b = _blob(w)
    assert _prune(b, magnitude_keep(b, 0.5)) == pytest.approx(w.tolist())  # nothing to do
    assert _prune(b, magnitude_keep(b, 0.7)) == pytest.approx([0, 0, 0, .4, 0, 0, 0, .9, 0, .2])
    assert _prune(b, magnitude_keep(b, 0.3)) == pytest.approx([0, 0, 0, .4, 0, 0, 0, .9, 0, .2])
    # A masked entry counts as pruned even if its data were not 0; it is never revived.
    b = _blob([1.0, 2.0, 3.0, 4.0])
    b.mask = np.array([1, 0, 1, 1])
    assert _prune(b, magnitude_keep(b, 0.25)) == [1, 0, 3, 4]
    assert _prune(b, np.ones(4, bool)) == [1, 0, 3, 4]


def test_magnitude_rounds_the_count():
    b = _blob(np.arange(1, 8, dtype=np.float32))  # 7 weights: 0.34 * 7 = 2.38 -> 2
    shrink_mask(b, magnitude_keep(b, 0.34))
    assert np.count_nonzero(b.cpu_data) == 5
    b = _blob(np.arange(1, 8, dtype=np.float32))  # 0.5 * 7 = 3.5 -> 4
    shrink_mask(b, magnitude_keep(b, 0.5))
    assert b.cpu_data.tolist() == [0, 0, 0, 0, 5, 6, 7]


def test_std_threshold_is_q_times_std():
    b = _blob([3.0, -3.0, 1.0, -1.0])  # mean 0, std sqrt(5) = 2.236
    assert std_threshold(b, 1.0) == pytest.approx(np.sqrt(5))
    assert std_threshold(b, 0.5) == pytest.approx(np.sqrt(5) / 2)
    assert _prune(b, std_keep(b, 0.4)) == [3, -3, 1, -1]  # t = 0.894
    assert _prune(b, std_keep(b, 1.0)) == [3, -3, 0, 0]   # t = 2.236
    assert _prune(b, std_keep(b, 1.5)) == [0, 0, 0, 0]    # t = 3.354


def test_global_uses_one_threshold():
    a = _blob([0.1, 0.9, 0.5, 0.2])
    b = _blob([0.3, 0.05, 0.7, 0.4, 0.6, 0.8])
    keeps, t = global_keep([a, b], 0.5)  # the 5 smallest of 10: .05 .1 .2 .3 .4
    assert t == pytest.approx(0.4)
    assert _prune(a, keeps[0]) == pytest.approx([0, 0.9, 0.5, 0])
    assert _prune(b, keeps[1]) == pytest.approx([0, 0, 0.7, 0, 0.6, 0.8])


def _sparsity(net, name):
    w = net.params[name][0].data
    return 1 - np.count_nonzero(w) / w.size


def test_prune_net_per_layer_targets_and_exclusion():
    net = build(FLATNET)
    ip2_before = net.params["ip2"][0].data.copy()
    spec = ('sparsity: 0.5 layer { name: "conv1" sparsity: 0.25 } '
            'layer { name: "ip2" exclude: true }')
    results = prune_net(net, spec)
    assert [r.name for r in results] == ["conv1", "ip1"]
    assert np.count_nonzero(net.params["conv1"][0].data) == 108 - 27
    assert np.count_nonzero(net.params["ip1"][0].data) == 378 - 189
    np.testing.assert_array_equal(net.params["ip2"][0].data, ip2_before)
    assert results[0].before == 0 and results[0].after == pytest.approx(0.25)
    # The mask follows the data: pruned entries are 0 in both.
    m = net.params["conv1"][0].mask
    np.testing.assert_array_equal(m != 0, net.params["conv1"][0].data != 0)


def test_command_line_values_override_the_spec():
    net = build(FLATNET)
    prune_net(net, 'method: "std" sparsity: 0.9', method="magnitude", sparsity=0.5)
    assert _sparsity(net, "ip2") == pytest.approx(0.5)
    net = build(FLATNET)
    plan = make_plan(net, 'method: "std" q: 3 layer { name: "ip1" q: 0.5 }', q=0.25)
    assert plan.targets == {"conv1": 0.25, "ip1": 0.5, "ip2": 0.25}


def test_global_method_reaches_the_overall_target():
    net = build(FLATNET)
    prune_net(net, method="global", sparsity=0.6)
    total = sum(net.params[n][0].data.size for n in ("conv1", "ip1", "ip2"))
    zeros = sum(np.sum(net.params[n][0].data == 0) for n in ("conv1", "ip1", "ip2"))
    assert zeros == round(0.6 * total)
    # One threshold: every surviving |w| is >= every pruned original |w|.
    net2 = build(FLATNET)
    orig = np.concatenate([np.abs(net2.params[n][0].data).ravel() for n in ("conv1", "ip1", "ip2")])
    kept = np.concatenate([net.params[n][0].data.ravel() for n in ("conv1", "ip1", "ip2")]) != 0
    assert orig[kept].min() >= orig[~kept].max()


@pytest.mark.parametrize("spec, kw, message", [
    ('layer { name: "conv9" sparsity: 0.3 }', {}, "no layer named 'conv9'; prunable layers: "
                                                  "conv1, ip1, ip2"),
    ('layer { name: "relu1" sparsity: 0.3 }', {}, "'relu1' (ReLU) is not prunable"),
    ('layer { name: "conv1" sparsity: 1.0 }', {}, "sparsity must be in [0, 1), got 1.0"),
    ('layer { name: "conv1" sparsity: -0.1 }', {}, "sparsity must be in [0, 1)"),
    ("", {"sparsity": 1.5}, "-sparsity: sparsity must be in [0, 1), got 1.5"),
    ('layer { name: "conv1" sparsity: 0.2 } layer { name: "conv1" sparsity: 0.3 }', {},
     "layer 'conv1' is given twice"),
    ('method: "global" sparsity: 0.5 layer { name: "conv1" sparsity: 0.2 }', {},
     "per-layer targets are not allowed"),
    ('method: "global"', {}, "method global needs an overall sparsity"),
    ("", {}, "nothing to prune"),
    ("", {"method": "random", "sparsity": 0.5}, "unknown pruning method 'random'"),
    ('layer { name: "ip1" q: -1 }', {"method": "std"}, "q must be a finite number >= 0"),
])
def test_bad_specs_are_errors_and_change_nothing(spec, kw, message):
    net = build(FLATNET)
    before = [b.data.copy() for n in ("conv1", "ip1", "ip2") for b in net.params[n]]
    with pytest.raises(PruningError) as exc:
        prune_net(net, spec, **kw)
    assert message in str(exc.value)
    after = [b.data for n in ("conv1", "ip1", "ip2") for b in net.params[n]]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_spec_syntax_error_names_the_position():
    net = build(FLATNET)
    with pytest.raises(CaffeLiteError, match=r"1:\d+"):
        prune_net(net, "layer { name: 'conv1' sparsity: }")
