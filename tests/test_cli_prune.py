"""The pruning verbs on real files: prune, sparsity, thin, sensitivity."""
import csv
import json

import numpy as np
import pytest

import caffe_lite
from caffe_lite.cli import main
from caffe_lite.io import load_weights, parse_text, read_net_binary, write_net_binary
from caffe_lite.proto import caffe_pb2
from caffe_lite.pruning import load_spec
from caffe_lite.pruning.netutil import replace_data_layers

from pruning_nets import FLATNET, restore_logging  # noqa: F401

pytestmark = pytest.mark.usefixtures("restore_logging")
LAYERS = ("conv1", "conv2", "ip1", "ip2")


@pytest.fixture
def lenet(models_dir, tmp_path):
    """LeNet's deploy prototxt (batch 2) and a caffemodel with random weights and biases."""
    text = (models_dir / "bvlc_mnist" / "lenet.prototxt").read_text()
    model = tmp_path / "lenet.prototxt"
    model.write_text(text.replace("dim: 64", "dim: 2"))
    caffe_lite.set_random_seed(3)
    net = caffe_lite.Net(str(model), caffe_lite.TEST)
    rng = np.random.default_rng(3)
    for p in net.params.values():
        p[1].data[...] = rng.standard_normal(p[1].shape) * 0.1
    weights = tmp_path / "lenet.caffemodel"
    net.save(str(weights))
    return model, weights


def _w(path):
    return {n: a[0] for n, a in load_weights(str(path))}


def _run(*argv):
    return main([str(a) for a in argv])


def test_prune_methods(lenet, tmp_path):
    model, weights = lenet
    dense = _w(weights)
    out = tmp_path / "m.caffemodel"
    assert _run("prune", "-model", model, "-weights", weights, "-output", out,
                "-sparsity", "0.5") == 0
    w = _w(out)
    for n in LAYERS:
        assert np.sum(w[n] == 0) == int(np.floor(0.5 * w[n].size + 0.5))
        kept = w[n] != 0
        np.testing.assert_array_equal(w[n][kept], dense[n][kept])  # untouched survivors
        assert np.abs(dense[n][~kept]).max() <= np.abs(dense[n][kept]).min()
    # A standard caffemodel: the zeros are plain float zeros in BlobProto.data.
    proto = read_net_binary(str(out))
    conv1 = next(lp for lp in proto.layer if lp.name == "conv1")
    assert list(conv1.blobs[0].shape.dim) == [20, 1, 5, 5]
    assert sum(v == 0 for v in conv1.blobs[0].data) == 250

    out = tmp_path / "std.caffemodel"
    assert _run("prune", "-model", model, "-weights", weights, "-output", out,
                "-method", "std", "-q", "0.7") == 0
    w = _w(out)
    for n in LAYERS:
        t = np.float32(0.7 * np.std(dense[n], dtype=np.float64))
        np.testing.assert_array_equal(w[n] == 0, np.abs(dense[n]) <= t)

    out = tmp_path / "global.caffemodel"
    assert _run("prune", "-model", model, "-weights", weights, "-output", out,
                "-method", "global", "-sparsity", "0.9") == 0
    w = _w(out)
    total = sum(w[n].size for n in LAYERS)
    assert sum(np.sum(w[n] == 0) for n in LAYERS) == round(0.9 * total)

    out = tmp_path / "l1.caffemodel"
    assert _run("prune", "-model", model, "-weights", weights, "-output", out,
                "-method", "l1-filter", "-sparsity", "0.3") == 0
    w = _w(out)
    zero_filters = {n: int(np.sum(~w[n].reshape(w[n].shape[0], -1).any(axis=1)))
                    for n in LAYERS}
    assert zero_filters == {"conv1": 6, "conv2": 15, "ip1": 150, "ip2": 0}
    biases = {n: a[1] for n, a in load_weights(str(out))}
    assert np.sum(biases["conv1"] == 0) == 6


def test_spec_targets_exclusions_and_zeros_that_stay(lenet, tmp_path):
    model, weights = lenet
    spec = tmp_path / "spec.prototxt"
    spec.write_text('sparsity: 0.8\nlayer { name: "conv1" sparsity: 0.34 }\n'
                    'layer { name: "ip2" exclude: true }\n')
    first = tmp_path / "a.caffemodel"
    assert _run("prune", "-model", model, "-weights", weights, "-output", first,
                "-spec", spec) == 0
    w = _w(first)
    assert [round(float(np.mean(w[n] == 0)), 2) for n in LAYERS] == [0.34, 0.8, 0.8, 0.0]
    # Pruning the pruned model to a lower target changes nothing: zeros stay zeros.
    second = tmp_path / "b.caffemodel"
    assert _run("prune", "-model", model, "-weights", first, "-output", second,
                "-sparsity", "0.3") == 0
    w2 = _w(second)
    for n in ("conv1", "conv2", "ip1"):
        np.testing.assert_array_equal(w2[n], w[n])
    assert np.mean(w2["ip2"] == 0) == 0.3


@pytest.mark.parametrize("extra, message", [
    (["-sparsity", "1.0"], "sparsity must be in [0, 1), got 1.0"),
    (["-sparsity", "-0.2"], "sparsity must be in [0, 1)"),
    (["-method", "l1-filter", "-sparsity", "0.98"], "would remove all 20 filters of layer "
                                                     "'conv1'"),
    (["-spec", "SPEC"], "no layer named 'conv9'; prunable layers: conv1, conv2, ip1, ip2"),
    (["-spec", "MISSING"], "no such pruning spec file"),
    ([], "nothing to prune"),
])
def test_bad_input_writes_nothing(lenet, tmp_path, capsys, extra, message):
    model, weights = lenet
    (tmp_path / "spec.prototxt").write_text('layer { name: "conv9" sparsity: 0.1 }')
    extra = [str(tmp_path / "spec.prototxt") if a == "SPEC" else
             str(tmp_path / "missing.prototxt") if a == "MISSING" else a for a in extra]
    out = tmp_path / "out.caffemodel"
    assert _run("prune", "-model", model, "-weights", weights, "-output", out, *extra) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("caffe-lite prune: error:")
    assert not out.exists()


def test_weights_that_do_not_fit_the_model(lenet, tmp_path, capsys):
    model, _ = lenet
    other = tmp_path / "flat.prototxt"
    other.write_text(FLATNET)
    net = caffe_lite.Net(str(other), caffe_lite.TEST)
    net.save(str(tmp_path / "flat.caffemodel"))
    out = tmp_path / "out.caffemodel"
    # Same layer names (conv1, ip1, ip2), other shapes; conv2 missing altogether.
    assert _run("prune", "-model", model, "-weights", tmp_path / "flat.caffemodel",
                "-output", out, "-sparsity", "0.5") == 1
    assert "holds no weights for layer(s) conv2" in capsys.readouterr().err
    net = caffe_lite.Net(str(model), caffe_lite.TEST)
    net.params["conv2"][0].reshape((50, 20, 5, 5))
    proto = net.to_proto()
    ip1 = next(lp for lp in proto.layer if lp.name == "ip1")
    ip1.blobs[0].shape.dim[:] = [400, 1000]
    write_net_binary(str(tmp_path / "bad.caffemodel"), proto)
    assert _run("prune", "-model", model, "-weights", tmp_path / "bad.caffemodel",
                "-output", out, "-sparsity", "0.5") == 1
    assert "shape mismatch" in capsys.readouterr().err
    assert not out.exists()


def test_existing_outputs_are_not_overwritten(lenet, tmp_path, capsys):
    model, weights = lenet
    out = tmp_path / "out.caffemodel"
    out.write_bytes(b"precious")
    assert _run("prune", "-model", model, "-weights", weights, "-output", out,
                "-sparsity", "0.5") == 1
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"precious"
    assert _run("prune", "-model", model, "-weights", weights, "-output", out,
                "-sparsity", "0.5", "-overwrite") == 0
    assert np.mean(_w(out)["ip1"] == 0) == 0.5


def test_sparsity_formats(lenet, tmp_path, capsys):
    model, weights = lenet
    out = tmp_path / "p.caffemodel"
    assert _run("prune", "-model", model, "-weights", weights, "-output", out,
                "-method", "l1-filter", "-sparsity", "0.5") == 0
    capsys.readouterr()
    assert _run("sparsity", "-model", model, "-weights", out, "-format", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"layers", "total"}
    rows = {r["name"]: r for r in doc["layers"]}
    assert rows["conv2"]["zero_filters"] == 25 and rows["conv2"]["zero_input_channels"] == 10
    assert rows["conv1"]["shape"] == [20, 1, 5, 5] and rows["conv1"]["nonzeros"] == 250
    t = doc["total"]
    assert t["params"] == 430500 and t["compression"] == pytest.approx(430500 / t["nonzeros"])
    assert _run("sparsity", "-model", model, "-weights", out, "-format", "csv") == 0
    table = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert table[1][:5] == ["conv1", "Convolution", "20x1x5x5", "500", "250"]
    assert _run("sparsity", "-model", model, "-weights", out) == 0
    text = capsys.readouterr().out
    assert "compression (params / nonzeros): " in text and "weights file" in text


def test_tools_need_the_shapes_of_data_layers(models_dir, lenet, tmp_path, capsys):
    _, weights = lenet
    train_test = models_dir / "bvlc_mnist" / "lenet_train_test.prototxt"
    assert _run("sparsity", "-model", train_test, "-weights", weights) == 1
    assert "-input_shape" in capsys.readouterr().err
    assert _run("sparsity", "-model", train_test, "-weights", weights,
                "-input_shape", "1,1,28,28", "-format", "json") == 0
    assert json.loads(capsys.readouterr().out)["total"]["params"] == 430500


def test_thin(lenet, tmp_path, capsys):
    model, weights = lenet
    pruned = tmp_path / "p.caffemodel"
    assert _run("prune", "-model", model, "-weights", weights, "-output", pruned,
                "-method", "l1-filter", "-sparsity", "0.5") == 0
    small_model, small_weights = tmp_path / "thin.prototxt", tmp_path / "thin.caffemodel"
    assert _run("thin", "-model", model, "-weights", pruned, "-output_model", small_model,
                "-output", small_weights) == 0
    assert "outputs (prob) match the pruned net" in capsys.readouterr().out
    a = caffe_lite.Net(str(model), caffe_lite.TEST, weights=str(pruned))
    b = caffe_lite.Net(str(small_model), caffe_lite.TEST, weights=str(small_weights))
    assert [b.params[n][0].shape[0] for n in LAYERS] == [10, 25, 250, 10]
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(b.forward(data=x)["prob"], a.forward(data=x)["prob"].copy(),
                               rtol=1e-5, atol=1e-6)
    # Outputs exist now: refused; the same file twice: refused.
    assert _run("thin", "-model", model, "-weights", pruned, "-output_model", small_model,
                "-output", tmp_path / "x.caffemodel") == 1
    assert _run("thin", "-model", model, "-weights", pruned, "-output_model",
                tmp_path / "y", "-output", tmp_path / "y") == 1
    assert "must differ" in capsys.readouterr().err


def _mnist_like_lmdb(tmp_path, n=200):
    from caffe_lite.data.convert import convert_mnist
    from caffe_lite.data.mnist import write_idx_images, write_idx_labels
    rng = np.random.default_rng(0)
    write_idx_images(tmp_path / "img.idx", rng.integers(0, 256, (n, 28, 28)))
    write_idx_labels(tmp_path / "lab.idx", rng.integers(0, 10, n))
    db = tmp_path / "lmdb"
    convert_mnist(tmp_path / "img.idx", tmp_path / "lab.idx", str(db))
    return db


SMALL_TRAIN_TEST = """name: "small"
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 } data_param { source: "train_lmdb" batch_size: 20 } }
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 } data_param { source: "test_lmdb" batch_size: 50 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 5 stride: 3 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip1" type: "InnerProduct" bottom: "conv1" top: "ip1"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip1" bottom: "label" top: "accuracy"
  include { phase: TEST } }
"""


@pytest.fixture
def small(tmp_path):
    """A small conv net with Data layers (LMDB sources absent) and trained-looking weights."""
    model = tmp_path / "small_train_test.prototxt"
    model.write_text(SMALL_TRAIN_TEST)
    caffe_lite.set_random_seed(5)
    param = replace_data_layers(parse_text(SMALL_TRAIN_TEST, caffe_pb2.NetParameter()),
                                {"data": (1, 1, 28, 28), "label": (1,)})
    net = caffe_lite.Net(param, caffe_lite.TEST)
    weights = tmp_path / "small.caffemodel"
    net.save(str(weights))
    return model, weights


def test_sensitivity(small, tmp_path, capsys):
    model, weights = small
    db = _mnist_like_lmdb(tmp_path)
    csv_out, png, spec = tmp_path / "s.csv", tmp_path / "s.png", tmp_path / "proposed.prototxt"
    assert _run("sensitivity", "-model", model, "-weights", weights, "-test_source", db,
                "-iterations", "4", "-sparsities", "0.5,0.9", "-layers", "conv1,ip1",
                "-max_drop", "0.02", "-output_csv", csv_out, "-output_png", png,
                "-output_spec", spec) == 0
    out = capsys.readouterr().out
    assert "accuracy of the dense net" in out
    rows = list(csv.reader(csv_out.read_text().splitlines()))
    assert rows[0] == ["layer", "sparsity", "accuracy", "drop"]
    assert [r[:2] for r in rows[2:]] == [["conv1", "0.5"], ["conv1", "0.9"], ["ip1", "0.5"],
                                         ["ip1", "0.9"]]
    try:
        import matplotlib  # noqa: F401
        assert png.read_bytes()[:4] == b"\x89PNG"
    except ImportError:
        assert not png.exists() and "matplotlib is not installed" in out
    proposed = load_spec(str(spec))
    assert [e.name for e in proposed.layer] == ["conv1", "ip1"]
    assert any(not e.exclude for e in proposed.layer)
    # The proposal is a spec `prune` takes.
    assert _run("prune", "-model", model, "-weights", weights, "-input_shape", "1,1,28,28",
                "-spec", spec, "-output", tmp_path / "p.caffemodel") == 0


def test_sensitivity_rejects_unknown_layers(small, tmp_path, capsys):
    model, weights = small
    db = _mnist_like_lmdb(tmp_path, n=100)
    out = tmp_path / "s.csv"
    assert _run("sensitivity", "-model", model, "-weights", weights, "-test_source", db,
                "-iterations", "1", "-layers", "conv7", "-output_csv", out) == 1
    assert "'conv7' is not a prunable layer" in capsys.readouterr().err
    assert not out.exists()


def test_thin_a_train_test_net_with_data_layers(small, tmp_path, capsys):
    model, weights = small
    pruned = tmp_path / "p.caffemodel"
    shape = ["-input_shape", "3,1,28,28"]
    assert _run("prune", "-model", model, "-weights", weights, "-output", pruned,
                "-method", "l1-filter", "-sparsity", "0.5", *shape) == 0
    out_model, out_weights = tmp_path / "t.prototxt", tmp_path / "t.caffemodel"
    assert _run("thin", "-model", model, "-weights", pruned, "-output_model", out_model,
                "-output", out_weights, *shape) == 0
    assert "outputs (accuracy, loss) match" in capsys.readouterr().out
    thinned = parse_text(out_model.read_text(), caffe_pb2.NetParameter())
    assert [lp.type for lp in thinned.layer][:2] == ["Data", "Data"]  # data layers kept
    conv1 = next(lp for lp in thinned.layer if lp.name == "conv1")
    assert conv1.convolution_param.num_output == 2
    # Same scores on the same (labelled) batch.
    x = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)
    label = np.array([1, 2, 3], np.float32)
    scores = []
    for m, w in ((model, pruned), (out_model, out_weights)):
        param = replace_data_layers(parse_text(m.read_text(), caffe_pb2.NetParameter()),
                                    {"data": (3, 1, 28, 28), "label": (3,)})
        net = caffe_lite.Net(param, caffe_lite.TEST, weights=str(w))
        scores.append(net.forward(data=x, label=label)["loss"].copy())
    np.testing.assert_allclose(scores[1], scores[0], rtol=1e-5)


def _no_gpu(monkeypatch):
    from caffe_lite.backend import gpu
    monkeypatch.setattr(gpu, "_ctx", dict(gpu._ctx, checked=True, ok=False,
                                          reason="no CUDA device present"))


def test_evaluating_verbs_take_gpu_and_fail_in_one_line_without_one(small, lenet, tmp_path,
                                                                    capsys, monkeypatch):
    _no_gpu(monkeypatch)
    model, weights = small
    db = _mnist_like_lmdb(tmp_path, n=50)
    out = tmp_path / "s.csv"
    capsys.readouterr()
    assert _run("sensitivity", "-model", model, "-weights", weights, "-test_source", db,
                "-iterations", "1", "-output_csv", out, "-gpu", "0") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("caffe-lite sensitivity: error: GPU mode requested but unavailable: "
                          "no CUDA device present")
    assert "\n" not in err and not out.exists()
    lmodel, lweights = lenet
    assert _run("thin", "-model", lmodel, "-weights", lweights, "-output_model",
                tmp_path / "t.prototxt", "-output", tmp_path / "t.caffemodel", "-gpu", "0") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("caffe-lite thin: error: GPU mode requested but unavailable")
    assert "\n" not in err and not (tmp_path / "t.caffemodel").exists()
    assert _run("prune", "-model", model, "-weights", weights, "-train_source", db,
                "-method", "taylor", "-sparsity", "0.5", "-output", tmp_path / "p.caffemodel",
                "-gpu", "0") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("caffe-lite prune: error: GPU mode requested but unavailable")
    assert "\n" not in err and not (tmp_path / "p.caffemodel").exists()


@pytest.mark.gpu
def test_sensitivity_and_thin_on_the_gpu(small, lenet, tmp_path, capsys):
    """-gpu 0 runs the evaluations on the device and gives the CPU's numbers."""
    from caffe_lite.backend import gpu
    ok, reason = gpu.available()
    if not ok:
        pytest.skip(f"needs PyCUDA and a CUDA device: {reason}")
    model, weights = small
    db = _mnist_like_lmdb(tmp_path, n=100)
    rows = {}
    for device in ("cpu", "gpu"):
        out = tmp_path / f"{device}.csv"
        flags = ["-gpu", "0"] if device == "gpu" else []
        assert _run("sensitivity", "-model", model, "-weights", weights, "-test_source", db,
                    "-iterations", "2", "-sparsities", "0.5,0.9", "-layers", "conv1",
                    "-output_csv", out, *flags) == 0
        rows[device] = list(csv.reader(out.read_text().splitlines()))
        caffe_lite.set_mode_cpu()
    assert rows["gpu"][0] == rows["cpu"][0]
    for g, c in zip(rows["gpu"][1:], rows["cpu"][1:]):
        assert g[:2] == c[:2]
        np.testing.assert_allclose([float(v) for v in g[2:]], [float(v) for v in c[2:]],
                                   atol=1e-6)
    lmodel, lweights = lenet
    pruned = tmp_path / "p.caffemodel"
    assert _run("prune", "-model", lmodel, "-weights", lweights, "-output", pruned,
                "-method", "l1-filter", "-sparsity", "0.5") == 0
    assert _run("thin", "-model", lmodel, "-weights", pruned, "-output_model",
                tmp_path / "t.prototxt", "-output", tmp_path / "t.caffemodel", "-gpu", "0") == 0
    assert "outputs (prob) match the pruned net" in capsys.readouterr().out
    from caffe_lite.backend import state
    assert state.mode() == state.GPU
    caffe_lite.set_mode_cpu()
    # prune's data-driven criteria run their nets on the device: the same filters go
    pruned = {}
    for device in ("cpu", "gpu"):
        out = tmp_path / f"taylor-{device}.caffemodel"
        flags = ["-gpu", "0"] if device == "gpu" else []
        assert _run("prune", "-model", model, "-weights", weights, "-train_source", db,
                    "-test_source", db, "-method", "taylor", "-data_batches", "2",
                    "-sparsity", "0.5",
                    "-output", out, *flags) == 0
        caffe_lite.set_mode_cpu()
        pruned[device] = _w(out)["conv1"]
    np.testing.assert_array_equal(pruned["gpu"] == 0, pruned["cpu"] == 0)
