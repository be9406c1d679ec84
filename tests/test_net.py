"""Net construction and pycaffe surface: Caffe's Init logic, phases, splits, in-place layers,
backward decisions, loss aggregation, parameter sharing, weights I/O and masks."""
import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.errors import (CaffeLiteError, ModelFileError, NetError, PrototxtError,
                               ShapeMismatchError, UnknownLayerTypeError)
from caffe_lite.net import Net
from caffe_lite.proto import caffe_pb2

MLP = """
name: "mlp"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc"
        include { phase: TEST } }
"""


def _feed(net, seed=0):
    g = np.random.default_rng(seed)
    net.blobs["data"].data[...] = g.normal(size=net.blobs["data"].shape)
    net.blobs["label"].data[...] = g.integers(0, 3, net.blobs["label"].shape)


def test_build_from_string_and_message():
    net = Net(MLP, caffe.TRAIN)
    assert net.layer_names == ["data", "ip1", "relu1", "ip2", "loss"]
    param = caffe_pb2.NetParameter()
    from caffe_lite.io import parse_text
    parse_text(MLP, param)
    net2 = Net(param, caffe.TEST)
    assert net2.layer_names == ["data", "label_data_1_split", "ip1", "relu1", "ip2",
                                "ip2_ip2_0_split", "loss", "acc"]
    assert "acc" not in net.layer_names
    assert net.inputs == ["data", "label"]
    assert net.outputs == ["loss"]
    assert sorted(net2.outputs) == net2.outputs == ["acc", "loss"]


def test_forward_matches_numpy_and_loss_is_returned():
    net = Net(MLP, caffe.TRAIN)
    _feed(net)
    out = net.forward()
    x = net.blobs["data"].data.astype(np.float64)
    w1, b1 = (p.data for p in net.params["ip1"])
    w2, b2 = (p.data for p in net.params["ip2"])
    h = np.maximum(x @ w1.T + b1, 0)
    z = h @ w2.T + b2
    z -= z.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    lab = net.blobs["label"].data.astype(int)
    expect = -np.log(p[np.arange(4), lab]).mean()
    assert out["loss"] == pytest.approx(expect, rel=1e-5)
    assert net.forward_from_to() == pytest.approx(expect, rel=1e-5)


def test_forward_kwargs_reshape_and_start_end():
    net = Net(MLP, caffe.TEST)
    g = np.random.default_rng(1)
    out = net.forward(data=g.normal(size=(7, 3)), label=np.zeros(7), blobs=["ip1"])
    assert out["ip1"].shape == (7, 5)
    assert net.blobs["ip2"].shape == (7, 3)
    partial = net.forward(end="ip1")
    assert list(partial) == ["ip1"]
    with pytest.raises(CaffeLiteError, match="no layer named 'nope'"):
        net.forward(start="nope")


def test_backward_decisions_labels_and_inputs():
    net = Net(MLP, caffe.TRAIN)
    names = net.layer_names
    # Inputs get no gradient unless force_backward; the label never does.
    assert net.layer_need_backward[names.index("data")] is False
    assert net.bottom_need_backward[names.index("ip1")] == [False]
    assert net.bottom_need_backward[names.index("loss")] == [True, False]
    forced = Net(MLP.replace('name: "mlp"', 'name: "mlp" force_backward: true'), caffe.TRAIN)
    assert forced.bottom_need_backward[names.index("ip1")] == [True]
    assert forced.bottom_need_backward[names.index("loss")] == [True, False]
    _feed(forced)
    forced.forward()
    grads = forced.backward()
    assert np.abs(grads["data"]).sum() > 0


def test_lr_mult_zero_freezes_and_prunes_backward():
    frozen = MLP.replace('layer { name: "ip1" type: "InnerProduct"',
                         'layer { name: "ip1" type: "InnerProduct" param { lr_mult: 0 } '
                         'param { lr_mult: 0 }')
    net = Net(frozen, caffe.TRAIN)
    names = net.layer_names
    assert net.layer_need_backward[names.index("ip1")] is False
    assert net.layers[names.index("ip1")].param_propagate_down == [False, False]
    assert net.layer_need_backward[names.index("ip2")] is True
    assert net.params_lr[:2] == [0.0, 0.0] and net.params_lr[2:] == [1.0, 1.0]


def test_propagate_down_false_skips_bottom():
    text = MLP.replace('bottom: "ip1" top: "ip2"', 'bottom: "ip1" top: "ip2" propagate_down: false')
    net = Net(text, caffe.TRAIN)
    names = net.layer_names
    assert net.bottom_need_backward[names.index("ip2")] == [False]
    # ip1 no longer contributes to the loss through any gradient path.
    assert net.layer_need_backward[names.index("ip1")] is False


def test_split_insertion_names_like_caffe():
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "a" type: "ReLU" bottom: "x" top: "a" }
    layer { name: "b" type: "Sigmoid" bottom: "x" top: "b" }
    layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s" }
    """
    net = Net(text, caffe.TEST)
    assert net.layer_names == ["in", "x_in_0_split", "a", "b", "sum"]
    assert net.bottom_names["a"] == ["x_in_0_split_0"]
    assert net.bottom_names["b"] == ["x_in_0_split_1"]
    x = np.array([[-1, 0.5, 2], [3, -4, 0]], np.float32)
    out = net.forward(x=x)
    np.testing.assert_allclose(out["s"], np.maximum(x, 0) + 1 / (1 + np.exp(-x)), rtol=1e-6)


def test_split_for_loss_blob_also_consumed():
    text = """
    force_backward: true
    layer { name: "in" type: "Input" top: "x" top: "y"
            input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }
    layer { name: "l2" type: "EuclideanLoss" bottom: "x" bottom: "y" top: "l" loss_weight: 2 }
    layer { name: "p" type: "Power" bottom: "l" top: "l3" power_param { scale: 3 } }
    """
    net = Net(text, caffe.TRAIN)
    assert "l_l2_0_split" in net.layer_names
    assert net.blob_loss_weights["l_l2_0_split_0"] == 2.0
    assert net.blob_loss_weights["l"] == 0.0
    x = np.ones((2, 3), np.float32)
    net.blobs["x"].data[...] = x
    net.blobs["y"].data[...] = 0
    loss = net.forward_from_to()
    assert loss == pytest.approx(2 * 3 / 2)  # sum(1)/num/2 = 6/2/2 = 1.5, times 2


def test_loss_weights_aggregate():
    text = """
    layer { name: "in" type: "Input" top: "x" top: "y"
            input_param { shape { dim: 2 dim: 2 } shape { dim: 2 dim: 2 } } }
    layer { name: "l1" type: "EuclideanLoss" bottom: "x" bottom: "y" top: "l1" }
    layer { name: "l2" type: "EuclideanLoss" bottom: "x" bottom: "y" top: "l2"
            loss_weight: 0.5 }
    """
    net = Net(text, caffe.TRAIN)
    net.blobs["x"].data[...] = [[1, 2], [3, 4]]
    net.blobs["y"].data[...] = 0
    single = (1 + 4 + 9 + 16) / 2 / 2
    assert net.forward_from_to() == pytest.approx(1.5 * single)


def test_in_place_layers_share_blob():
    net = Net(MLP, caffe.TRAIN)
    relu = net.layer_dict["relu1"]
    i = net.layer_names.index("relu1")
    assert net.bottom_vecs[i][0] is net.top_vecs[i][0] is net.blobs["ip1"]
    assert relu.type == "ReLU"


def test_parameter_sharing_accumulates_gradients():
    text = """
    force_backward: true
    layer { name: "in" type: "Input" top: "x" top: "y"
            input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 4 } } }
    layer { name: "ipa" type: "InnerProduct" bottom: "x" top: "a"
            param { name: "w" } param { name: "b" }
            inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
    layer { name: "ipb" type: "InnerProduct" bottom: "x" top: "b"
            param { name: "w" } param { name: "b" }
            inner_product_param { num_output: 4 } }
    layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s" }
    layer { name: "loss" type: "EuclideanLoss" bottom: "s" bottom: "y" top: "loss" }
    """
    net = Net(text, caffe.TRAIN)
    wa, wb = net.params["ipa"][0], net.params["ipb"][0]
    np.testing.assert_array_equal(wa.data, wb.data)
    assert len(net.learnable_params) == 2 and net.param_owners[2:] == [0, 1]
    g = np.random.default_rng(3)
    net.blobs["x"].data[...] = g.normal(size=(2, 3))
    net.blobs["y"].data[...] = g.normal(size=(2, 4))
    net.clear_param_diffs()
    net.forward_backward()
    x = net.blobs["x"].data
    ds = net.blobs["s"].diff
    # both layers add x^T ds into the one shared diff
    np.testing.assert_allclose(wa.diff, 2 * ds.T @ x, rtol=1e-5, atol=1e-6)
    wa.data[0, 0] = 42
    assert wb.data[0, 0] == 42


def test_sharing_shape_mismatch():
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" }
            inner_product_param { num_output: 4 } }
    layer { name: "b" type: "InnerProduct" bottom: "x" top: "b" param { name: "w" }
            inner_product_param { num_output: 5 } }
    """
    with pytest.raises(ShapeMismatchError, match=r"cannot share param 'w'.*\(4, 3\).*\(5, 3\)"):
        Net(text, caffe.TEST)


def test_phase_level_stage_rules():
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }
    layer { name: "train_only" type: "ReLU" bottom: "x" top: "t" include { phase: TRAIN } }
    layer { name: "lvl" type: "ReLU" bottom: "x" top: "l" include { min_level: 2 } }
    layer { name: "stg" type: "ReLU" bottom: "x" top: "s" include { stage: "deploy" } }
    layer { name: "notstg" type: "ReLU" bottom: "x" top: "n" exclude { stage: "deploy" } }
    """
    assert "train_only" in Net(text, caffe.TRAIN).layer_names
    assert "train_only" not in Net(text, caffe.TEST).layer_names
    assert "lvl" not in Net(text, caffe.TEST, level=1).layer_names
    assert "lvl" in Net(text, caffe.TEST, level=2).layer_names
    deploy = Net(text, caffe.TEST, stages=["deploy"])
    assert "stg" in deploy.layer_names and "notstg" not in deploy.layer_names
    with pytest.raises(NetError, match="both include and exclude"):
        Net(text.replace('exclude { stage: "deploy" }',
                         'exclude { stage: "deploy" } include { phase: TEST }'), caffe.TEST)


def test_errors_name_what_is_wrong(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "x"\nlayer {\n  name: "a"\n  tpye: "ReLU"\n}\n')
    with pytest.raises(PrototxtError, match=r"bad.prototxt:4:3: .*tpye"):
        Net(str(bad), caffe.TEST)
    unknown = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n' \
              'layer { name: "mystery" type: "FancyLayer" bottom: "x" top: "y" }'
    with pytest.raises(UnknownLayerTypeError, match=r"'mystery'.*'FancyLayer'.*Convolution"):
        Net(unknown, caffe.TEST)
    orphan = 'layer { name: "r" type: "ReLU" bottom: "ghost" top: "y" }'
    with pytest.raises(NetError, match=r"layer 'r' \(bottom 0\) reads blob 'ghost'"):
        Net(orphan, caffe.TEST)
    twice = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }
    layer { name: "a" type: "ReLU" bottom: "x" top: "y" }
    layer { name: "b" type: "Sigmoid" bottom: "x" top: "y" }"""
    with pytest.raises(NetError, match="'y' is produced by more than one layer"):
        Net(twice, caffe.TEST)
    with pytest.raises(CaffeLiteError, match="no such net prototxt file"):
        Net(str(tmp_path / "missing.prototxt"), caffe.TEST)


def test_save_copy_from_round_trip_and_masks(tmp_path):
    net = Net(MLP, caffe.TRAIN)
    w = net.params["ip1"][0]
    w.data[:, 0] = 0  # prune a column
    w.mask_from_data()  # (the sidecar saved with the model keeps the masks as they are)
    path = tmp_path / "mlp.caffemodel"
    net.save(str(path))
    other = Net(MLP, caffe.TEST, weights=str(path))
    for name in ("ip1", "ip2"):
        for a, b in zip(net.params[name], other.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
    m = other.params["ip1"][0].mask
    np.testing.assert_array_equal(m, (w.data != 0).astype(np.float32))
    assert other.params["ip1"][1].mask is None  # biases are not prunable
    assert m[:, 0].sum() == 0 and m[:, 1:].all()

    # backward leaves masked weight gradients at exactly 0
    train = Net(MLP, caffe.TRAIN, weights=str(path))
    _feed(train)
    train.clear_param_diffs()
    train.forward_backward()
    gw = train.params["ip1"][0].diff
    assert np.all(gw[:, 0] == 0) and np.abs(gw[:, 1:]).sum() > 0


def test_to_proto_has_no_auto_splits_and_reloads(tmp_path):
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" inner_product_param { num_output: 2 } }
    layer { name: "b" type: "InnerProduct" bottom: "x" top: "b" inner_product_param { num_output: 2 } }
    """
    net = Net(text, caffe.TEST)
    proto = net.to_proto()
    assert [lp.name for lp in proto.layer] == ["in", "a", "b"]
    assert [list(lp.bottom) for lp in proto.layer] == [[], ["x"], ["x"]]
    rebuilt = Net(proto, caffe.TEST)  # the written net builds again, weights included
    np.testing.assert_array_equal(rebuilt.params["b"][0].data, net.params["b"][0].data)
    assert [len(lp.blobs) for lp in proto.layer] == [0, 2, 2]
    assert list(proto.layer[1].blobs[0].shape.dim) == [2, 3]


def test_copy_from_shape_mismatch_changes_nothing(tmp_path):
    net = Net(MLP, caffe.TRAIN)
    path = tmp_path / "m.caffemodel"
    net.save(str(path))
    wider = MLP.replace("num_output: 5", "num_output: 6")
    target = Net(wider, caffe.TEST)
    before = target.params["ip2"][0].data.copy()
    with pytest.raises(ShapeMismatchError,
                       match=r"param 0 of layer 'ip1'.*\(5, 3\).*\(6, 3\)"):
        target.copy_from(str(path))
    np.testing.assert_array_equal(target.params["ip2"][0].data, before)


def test_truncated_and_foreign_weight_files(tmp_path):
    net = Net(MLP, caffe.TRAIN)
    good = tmp_path / "good.caffemodel"
    net.save(str(good))
    data = good.read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[: len(data) - 7])
    with pytest.raises(ModelFileError, match="cut.caffemodel"):
        Net(MLP, caffe.TEST, weights=str(cut))
    text = tmp_path / "net.prototxt"
    text.write_text(MLP)
    with pytest.raises(ModelFileError, match="text prototxt|not a valid"):
        Net(MLP, caffe.TEST, weights=str(text))
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        Net(MLP, caffe.TEST, weights=str(empty))


def test_hdf5_weights_round_trip(tmp_path):
    pytest.importorskip("h5py")
    net = Net(MLP, caffe.TRAIN)
    net.params["ip2"][0].data[0] = 0
    net.init_masks_from_weights()
    path = tmp_path / "w.caffemodel.h5"
    net.save_hdf5(str(path))
    other = Net(MLP, caffe.TEST)
    other.copy_from(str(path))
    np.testing.assert_array_equal(other.params["ip2"][0].data, net.params["ip2"][0].data)
    assert other.params["ip2"][0].mask[0].sum() == 0


def test_legacy_v1_and_input_dim_upgrade():
    v1 = """
    name: "old"
    input: "data"
    input_dim: 2 input_dim: 3 input_dim: 4 input_dim: 4
    layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
             blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
             convolution_param { num_output: 5 kernel_size: 3 } }
    layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
    layers { name: "pool" type: POOLING bottom: "conv" top: "pool"
             pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
    """
    net = Net(v1, caffe.TEST)
    assert net.layer_names == ["input", "conv", "relu", "pool"]
    assert [l.type for l in net.layers] == ["Input", "Convolution", "ReLU", "Pooling"]
    assert net.inputs == ["data"]
    assert net.blobs["pool"].shape == (2, 5, 1, 1)
    assert net.params_lr == [1.0, 2.0] and net.params_weight_decay == [1.0, 0.0]


def test_copy_from_masks_only_the_layers_it_copies(tmp_path):
    net = Net(MLP, caffe.TRAIN)
    path = tmp_path / "partial.caffemodel"
    proto = net.to_proto()
    keep = [lp for lp in proto.layer if lp.name != "ip2"]
    del proto.layer[:]
    proto.layer.extend(keep)
    path.write_bytes(proto.SerializeToString())
    zero_init = MLP.replace('inner_product_param { num_output: 3 weight_filler { type: "gaussian" '
                            'std: 0.5 } }', "inner_product_param { num_output: 3 }")
    target = Net(zero_init, caffe.TRAIN, weights=str(path))
    w2 = target.params["ip2"][0]
    assert np.all(w2.data == 0)         # constant-0 filler, not in the file ...
    assert np.all(w2.mask == 1)         # ... so not "pruned": it can still learn
