"""ONNX export of whole nets: every net prototxt in ../shared/models and the test nets run in
ONNX Runtime to caffe-lite's outputs (within 1e-4 of each output's largest magnitude, random
weights); a pruned LeNet keeps its zeros; the export-onnx verb; refusals."""
import numpy as np
import pytest

import caffe_lite
from caffe_lite.cli import main
from caffe_lite.errors import CaffeLiteError
from caffe_lite.io import load_message, onnx as onnx_io, parse_text, upgrade_net
from caffe_lite.layers import LAYERS, NeuronLayer
from caffe_lite.proto import caffe_pb2
from caffe_lite.pruning import prune_net

from models import with_input_layers
from onnx_util import compare, need_onnx, randomize, run_onnx
from pruning_nets import FLATNET, MLP_NET, RESNET, restore_logging  # noqa: F401

onnx, ort = need_onnx()

MOBILE = (1, 3, 97, 97)     # odd sizes: every stride-2 layer rounds
# (prototxt, input shape, label shape or None, stages, outputs, left-out layers)
DEPLOY = [
    ("bvlc_mnist/lenet.prototxt", (2, 1, 28, 28), ["prob"]),
    ("bvlc_alexnet/deploy.prototxt", (1, 3, 227, 227), ["prob"]),
    ("bvlc_reference_caffenet/deploy.prototxt", (1, 3, 227, 227), ["prob"]),
    ("mobilenet_caffe/mobilenet_deploy.prototxt", MOBILE, ["prob"]),
    ("mobilenet_caffe/mobilenet_v2_deploy.prototxt", MOBILE, ["prob"]),
    ("depthwise_fork/depthwised_mobilenet_deploy.prototxt", MOBILE, ["fc7"]),
]
TRAIN_VAL = [
    ("bvlc_mnist/lenet_train_test.prototxt", (2, 1, 28, 28), (2,), None, ["ip2"],
     ["accuracy", "loss"]),
    ("bvlc_mnist/mnist_autoencoder.prototxt", (2, 1, 28, 28), None, ["test-on-test"],
     ["decode1", "decode1neuron"], ["loss", "loss"]),
    ("bvlc_alexnet/train_val.prototxt", (1, 3, 227, 227), (1,), None, ["fc8"],
     ["accuracy", "loss"]),
    ("bvlc_reference_caffenet/train_val.prototxt", (1, 3, 227, 227), (1,), None, ["fc8"],
     ["accuracy", "loss"]),
    ("mobilenet_caffe/mobilenet_train.prototxt", MOBILE, (1,), None, ["fc7"],
     ["loss", "top1/acc", "top5/acc"]),
    ("mobilenet_caffe/mobilenet_v2_train.prototxt", MOBILE, (1,), None, ["fc7"],
     ["loss", "top1/acc", "top5/acc"]),
]
SOLVER_NETS = ["bvlc_mnist/lenet_consolidated_solver.prototxt"]  # a solver with a net_param


def _deploy_param(path, shape):
    param, _ = load_message(str(path), caffe_pb2.NetParameter)
    upgrade_net(param, str(path))
    for lp in param.layer:
        if lp.type == "Input":
            lp.input_param.ClearField("shape")
            lp.input_param.shape.add().dim.extend(shape)
    return param


def _check(net, **kw):
    export = onnx_io.to_onnx(net, **kw)
    compare(net, export)
    return export


@pytest.mark.parametrize("rel,shape,outputs", DEPLOY, ids=[d[0] for d in DEPLOY])
def test_deploy_nets_match_onnx_runtime(models_dir, rel, shape, outputs):
    net = randomize(caffe_lite.Net(_deploy_param(models_dir / rel, shape), caffe_lite.TEST))
    # The scores before the softmax too: a saturated softmax would hide differences.
    last = [n for n in net.blob_names if n not in outputs and n in net.blobs][-1]
    export = _check(net, outputs=outputs + [last])
    assert export.inputs == {"data": shape}
    assert export.dropped == []


@pytest.mark.parametrize("rel,data,label,stages,outputs,dropped", TRAIN_VAL,
                         ids=[t[0] for t in TRAIN_VAL])
def test_train_val_nets_export_their_test_graph(models_dir, rel, data, label, stages, outputs,
                                                dropped):
    """The TEST phase without its loss and Accuracy layers: the blobs they read are the
    outputs, the label input is gone."""
    param = with_input_layers(models_dir / rel, data, label)
    net = randomize(caffe_lite.Net(param, caffe_lite.TEST, stages=stages))
    export = _check(net)
    assert sorted(export.outputs) == outputs
    assert sorted(n for n, _ in export.dropped) == dropped
    assert list(export.inputs) == ["data"]


@pytest.mark.parametrize("rel", SOLVER_NETS)
def test_net_inside_a_solver_prototxt(models_dir, rel, tmp_path):
    """The V1-format net_param of a solver, at its TEST stage."""
    solver, _ = load_message(str(models_dir / rel), caffe_pb2.SolverParameter)
    path = tmp_path / "net.prototxt"
    path.write_text(str(solver.net_param))
    param = with_input_layers(path, (2, 1, 28, 28), (2,))
    net = randomize(caffe_lite.Net(param, caffe_lite.TEST,
                                   stages=list(solver.test_state[0].stage)))
    export = _check(net)
    assert list(export.outputs) == ["ip2"] and list(export.inputs) == ["data"]


def test_every_net_prototxt_in_shared_models_is_checked(models_dir):
    """A net prototxt added to ../shared/models must join the lists above."""
    covered = {d[0] for d in DEPLOY} | {t[0] for t in TRAIN_VAL} | set(SOLVER_NETS)
    for path in sorted(models_dir.rglob("*.prototxt")):
        rel = path.relative_to(models_dir).as_posix()
        text = path.read_text()
        try:
            param = parse_text(text, caffe_pb2.NetParameter())
        except CaffeLiteError:
            param = None
        if param is not None and (param.layer or param.layers):
            assert rel in covered, f"{rel} is a net prototxt the ONNX tests do not export"
        else:
            solver = parse_text(text, caffe_pb2.SolverParameter())
            assert rel in covered or not solver.HasField("net_param"), rel


@pytest.mark.parametrize("text", [RESNET, FLATNET], ids=["resnet", "flatnet"])
def test_pruning_test_nets(text):
    net = randomize(caffe_lite.Net(parse_text(text, caffe_pb2.NetParameter()),
                                   caffe_lite.TEST))
    export = _check(net)
    if text is RESNET:
        # Each BatchNorm + Scale pair became one BatchNormalization.
        ops = [n.op_type for n in export.model.graph.node]
        assert ops.count("BatchNormalization") == 4 and "Scale" not in ops
        assert ops.count("Mul") == 1  # the Eltwise coefficient 0.5


def test_mlp_on_dummy_data_exports_without_its_loss():
    net = randomize(caffe_lite.Net(parse_text(MLP_NET, caffe_pb2.NetParameter()),
                                   caffe_lite.TEST))
    export = _check(net)
    assert export.inputs == {"data": (8, 6)} and list(export.outputs) == ["ip2"]
    assert export.dropped == [("loss", "EuclideanLoss")]


def _initializers(model):
    return {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}


def test_pruned_lenet_keeps_its_zeros(models_dir):
    net = randomize(caffe_lite.Net(_deploy_param(models_dir / "bvlc_mnist/lenet.prototxt",
                                                 (2, 1, 28, 28)), caffe_lite.TEST))
    prune_net(net, method="magnitude", sparsity=0.9)
    zeros = {n: int((p[0].data == 0).sum()) for n, p in net.params.items()}
    assert all(z >= 0.89 * net.params[n][0].count for n, z in zeros.items())
    export = _check(net)
    inits = _initializers(export.model)
    for name, params in net.params.items():
        w = inits[f"{name}/weight"]
        np.testing.assert_array_equal(w, params[0].data)   # bit for bit, zeros included
        assert int((w == 0).sum()) == zeros[name]
    assert export.zeros == sum(zeros.values())
    assert export.weights == sum(p[0].count for p in net.params.values())


# --- refusals ----------------------------------------------------------------------------------
class _Copy(NeuronLayer):
    def forward_cpu(self, bottom, top):
        top[0].data[...] = bottom[0].cpu_data


def test_layers_without_onnx_equivalent_are_all_named(monkeypatch):
    monkeypatch.setitem(LAYERS, "TestUpsample", _Copy)
    monkeypatch.setitem(LAYERS, "TestReorg", _Copy)
    text = """layer { name: "data" type: "Input" top: "data"
                      input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
    layer { name: "up" type: "TestUpsample" bottom: "data" top: "up" }
    layer { name: "relu" type: "ReLU" bottom: "up" top: "relu" }
    layer { name: "reorg" type: "TestReorg" bottom: "data" top: "reorg" }
    layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask"
            pooling_param { pool: MAX global_pooling: true } }"""
    net = caffe_lite.Net(parse_text(text, caffe_pb2.NetParameter()), caffe_lite.TEST)
    with pytest.raises(CaffeLiteError) as info:
        onnx_io.to_onnx(net)
    message = str(info.value)
    assert "3 layer(s) have no ONNX equivalent" in message
    assert "'up' (TestUpsample)" in message and "'reorg' (TestReorg)" in message
    assert "'pool' (Pooling): the argmax top of global MAX pooling" in message
    assert "'relu'" not in message  # fed by a refused layer, not refused itself


def test_missing_onnx_package_is_a_clear_error(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "onnx", None)
    net = caffe_lite.Net(parse_text(FLATNET, caffe_pb2.NetParameter()), caffe_lite.TEST)
    with pytest.raises(CaffeLiteError, match=r"pip install 'caffe-lite\[onnx\]'"):
        onnx_io.to_onnx(net)


# --- the export-onnx verb ----------------------------------------------------------------------
@pytest.fixture
def pruned_lenet(models_dir, tmp_path):
    """LeNet's train/test prototxt (MNIST LMDB sources absent) and a pruned caffemodel."""
    net = randomize(caffe_lite.Net(_deploy_param(models_dir / "bvlc_mnist/lenet.prototxt",
                                                 (1, 1, 28, 28)), caffe_lite.TEST))
    prune_net(net, method="magnitude", sparsity=0.75)
    weights = tmp_path / "lenet.caffemodel"
    net.save(str(weights))
    return models_dir / "bvlc_mnist/lenet_train_test.prototxt", weights, net


@pytest.mark.usefixtures("restore_logging")
def test_export_onnx_verb(pruned_lenet, tmp_path, capsys):
    model, weights, net = pruned_lenet
    out = tmp_path / "lenet.onnx"
    args = ["export-onnx", "-model", str(model), "-weights", str(weights), "-output", str(out),
            "-input_shape", "3,1,28,28", "-opset", "13"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "inputs: data 3x1x28x28" in printed and "outputs: ip2 3x10" in printed
    assert "left out: accuracy (Accuracy), loss (SoftmaxWithLoss)" in printed
    zeros = sum(int((p[0].data == 0).sum()) for p in net.params.values())
    assert f"prunable weights: 430500, {zeros} zero" in printed
    assert ("note: the graph input 'data' is layer 'mnist's output: apply its transform_param "
            "(scale 0.00390625) before feeding the model") in printed
    loaded = onnx.load(str(out))
    assert loaded.opset_import[0].version == 13
    x = np.random.default_rng(5).standard_normal((3, 1, 28, 28), dtype=np.float32)
    got = run_onnx(loaded, {"data": x})["ip2"]
    test_net = caffe_lite.Net(with_input_layers(model, (3, 1, 28, 28), (3,)), caffe_lite.TEST,
                              weights=str(weights))
    test_net.forward(data=x, label=np.zeros(3, np.float32))
    np.testing.assert_allclose(got, test_net.blobs["ip2"].data, rtol=1e-4,
                               atol=1e-4 * np.abs(got).max())

    # An existing file is kept unless -overwrite; bad flags are one-line errors.
    before = out.read_bytes()
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(args + ["-overwrite", "-outputs", "ip1,ip2"]) == 0
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["ip1", "ip2"]
    capsys.readouterr()
    assert main(args[:-1] + ["9", "-overwrite"]) == 1
    err = capsys.readouterr().err
    assert "opset 9 is not supported" in err and "Traceback" not in err
    assert main(args + ["-overwrite", "-outputs", "nope"]) == 1
    assert "no blob named 'nope'" in capsys.readouterr().err


@pytest.mark.usefixtures("restore_logging")
def test_export_onnx_verb_reshapes_a_deploy_net(pruned_lenet, models_dir, tmp_path, capsys):
    """lenet.prototxt's Input is 64x1x28x28; -input_shape gives the exported batch."""
    _, weights, _ = pruned_lenet
    out = tmp_path / "deploy.onnx"
    assert main(["export-onnx", "-model", str(models_dir / "bvlc_mnist/lenet.prototxt"),
                 "-weights", str(weights), "-output", str(out), "-input_shape", "1,1,28,28"]) == 0
    printed = capsys.readouterr().out
    assert "inputs: data 1x1x28x28" in printed and "outputs: prob 1x10" in printed
    assert "note:" not in printed
    graph = onnx.load(str(out)).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 1, 28, 28]


def test_input_notes_name_the_transformations():
    text = """layer { name: "d" type: "Data" top: "data" top: "label"
                      include { phase: TRAIN } transform_param { scale: 0.5 } }
              layer { name: "d" type: "Data" top: "data" top: "label" include { phase: TEST }
                      transform_param { mean_value: 104 mean_value: 117 crop_size: 5
                                        mirror: false } }
              layer { name: "i" type: "Input" top: "x" }"""
    param = parse_text(text, caffe_pb2.NetParameter())
    (note,) = onnx_io.input_notes(param.layer)
    assert "'data' is layer 'd's output" in note
    assert "crop_size 5" in note and "mean_value [104.0, 117.0]" in note and "scale" not in note
