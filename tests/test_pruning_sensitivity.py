"""Sensitivity analysis: each layer pruned alone, scored on cached batches, and proposals."""
import csv
import io

import numpy as np
import pytest

import caffe_lite
from caffe_lite.errors import CaffeLiteError
from caffe_lite.pruning import load_spec, make_plan, prune_net, sensitivity as sens

from pruning_nets import net_param

CLASSIFIER = """name: "cls"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 40 dim: 5 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 40 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 8 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" }
"""


def _classifier():
    """A net whose labels are its own predictions: dense accuracy exactly 1."""
    caffe_lite.set_random_seed(11)
    net = caffe_lite.Net(net_param(CLASSIFIER), caffe_lite.TEST)
    x = np.random.default_rng(2).standard_normal((40, 5)).astype(np.float32)
    net.forward(data=x, label=np.zeros(40, np.float32))
    net.blobs["label"].data[...] = net.blobs["ip2"].data.argmax(axis=1)
    return net


def _accuracy_after(prune_kw):
    net = _classifier()
    prune_net(net, **prune_kw)
    net.forward_from_to()
    return float(net.blobs["accuracy"].data)


def test_each_layer_alone_from_the_original_weights():
    net = _classifier()
    before = {n: [b.data.copy() for b in p] for n, p in net.params.items()}
    ev = sens.CachedEvaluator(net, iterations=2)
    metric = sens.pick_metric(net)
    assert metric == "accuracy"
    baseline, rows = sens.sensitivity(net, ev, metric, sparsities=[0.5, 0.9])
    assert baseline == 1.0
    assert [(r.layer, r.sparsity) for r in rows] == [("ip1", 0.5), ("ip1", 0.9), ("ip2", 0.5),
                                                     ("ip2", 0.9)]
    for r in rows:
        spec = f'layer {{ name: "{r.layer}" sparsity: {r.sparsity} }}'
        assert r.metric == pytest.approx(_accuracy_after({"spec": spec}))
        assert r.drop == pytest.approx(1.0 - r.metric)
    assert any(r.drop > 0 for r in rows)
    for n, blobs in before.items():  # the trials leave the net as it was
        for a, b in zip(blobs, net.params[n]):
            np.testing.assert_array_equal(b.data, a)
    assert all(not np.any(b.mask == 0) for b in (net.params["ip1"][0], net.params["ip2"][0]))


def test_l1_filter_sensitivity_marks_impossible_targets():
    net = _classifier()
    ev = sens.CachedEvaluator(net, iterations=1)
    _, rows = sens.sensitivity(net, ev, "accuracy", layers=["ip1"], sparsities=[0.5, 0.95],
                               method="l1-filter")
    assert np.isfinite(rows[0].metric) and np.isnan(rows[1].metric)  # 0.95 empties ip1


def test_proposal_and_outputs(tmp_path):
    rows = [sens.Row("a", 0.1, 0.99, 0.0), sens.Row("a", 0.5, 0.985, 0.005),
            sens.Row("a", 0.9, 0.90, 0.09), sens.Row("b", 0.1, 0.95, 0.04),
            sens.Row("c", 0.3, float("nan"), float("nan")),
            sens.Row("d", 0.1, 0.99, 0.0), sens.Row("d", 0.5, 0.97, 0.02),
            sens.Row("d", 0.9, 0.985, 0.005)]  # a lucky 0.9 after a bad 0.5
    assert sens.propose(rows, 0.01) == {"a": 0.5, "b": 0.0, "c": 0.0, "d": 0.1}
    spec = sens.proposal_spec(sens.propose(rows[:5], 0.01))
    assert [(e.name, e.sparsity, e.exclude) for e in spec.layer] == [
        ("a", pytest.approx(0.5), False), ("b", 0.0, True), ("c", 0.0, True)]
    text = sens.to_csv(0.99, rows, "accuracy")
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == ["layer", "sparsity", "accuracy", "drop"]
    assert table[1] == ["(dense)", "0.0", "0.99", "0.0"]
    assert table[3] == ["a", "0.5", "0.985", "0.005"]


def test_proposed_spec_is_a_valid_pruning_spec():
    net = _classifier()
    spec = sens.proposal_spec({"ip1": 0.4, "ip2": 0.0})
    plan = make_plan(net, load_spec(str(spec)))
    assert plan.targets == {"ip1": pytest.approx(0.4)} and plan.excluded == ["ip2"]


def test_plot_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "s.png"
    sens.plot_png(str(out), 1.0, [sens.Row("a", 0.5, 0.9, 0.1)], "accuracy")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metric_errors():
    net = _classifier()
    with pytest.raises(CaffeLiteError, match="-metric 'top5' is not an output"):
        sens.pick_metric(net, "top5")
    assert sens.pick_metric(net, "loss") == "loss"
    no_accuracy = caffe_lite.Net(net_param(CLASSIFIER.split('layer { name: "accuracy"')[0]),
                                 caffe_lite.TEST)
    with pytest.raises(CaffeLiteError, match="no accuracy output to score"):
        sens.pick_metric(no_accuracy)
