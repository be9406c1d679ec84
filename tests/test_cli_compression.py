"""The compression verbs on real files: quantize, compress, decompress (also of a Deep
Compression file), and train -quantize_bits / -quantize_spec with snapshots and resume."""
import numpy as np
import pytest

import caffe_lite
from caffe_lite.cli import main
from caffe_lite.compression import format as F
from caffe_lite.io import load_weights

from pruning_nets import mlp_solver, restore_logging  # noqa: F401
from test_compression_format import _write_deep_compression

pytestmark = pytest.mark.usefixtures("restore_logging")
LAYERS = ("conv1", "conv2", "ip1", "ip2")


@pytest.fixture
def pruned_lenet(models_dir, tmp_path):
    """LeNet's deploy prototxt (batch 2) and a caffemodel pruned to Han et al.'s profile."""
    text = (models_dir / "bvlc_mnist" / "lenet.prototxt").read_text()
    model = tmp_path / "lenet.prototxt"
    model.write_text(text.replace("dim: 64", "dim: 2"))
    caffe_lite.set_random_seed(3)
    net = caffe_lite.Net(str(model), caffe_lite.TEST)
    from caffe_lite.pruning import prune_net
    prune_net(net, 'layer { name: "conv1" sparsity: 0.34 } layer { name: "conv2" sparsity: 0.88 }'
                   ' layer { name: "ip1" sparsity: 0.92 } layer { name: "ip2" sparsity: 0.81 }')
    weights = tmp_path / "pruned.caffemodel"
    net.save(str(weights))
    return model, weights


def _run(*argv):
    return main([str(a) for a in argv])


def _w(path):
    return {n: a[0] for n, a in load_weights(str(path))}


def test_quantize_compress_decompress(pruned_lenet, tmp_path, capsys):
    model, weights = pruned_lenet
    q = tmp_path / "q.caffemodel"
    assert _run("quantize", "-model", model, "-weights", weights, "-output", q,
                "-bits", "conv=8,fc=5,ip2=3") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:5] == ["layer", "type", "live", "bits", "values"]
    before, after = _w(weights), _w(q)
    for n, bits in zip(LAYERS, (8, 8, 5, 3)):
        np.testing.assert_array_equal(after[n] == 0, before[n] == 0)      # masks hold
        assert 2 < len(np.unique(after[n][after[n] != 0])) <= 2 ** bits
    # compress, then decompress: the same caffemodel, byte for byte
    c = tmp_path / "q.cmodel"
    assert _run("compress", "-weights", q, "-output", c) == 0
    out = capsys.readouterr().out
    ratio = q.stat().st_size / c.stat().st_size
    assert ratio > 30 and f"{ratio:.1f}x smaller" in out
    back = tmp_path / "back.caffemodel"
    assert _run("decompress", "-weights", c, "-output", back) == 0
    assert back.read_bytes() == q.read_bytes()
    # every verb loads the compressed file as weights
    assert _run("sparsity", "-model", model, "-weights", c) == 0
    assert "ip1" in capsys.readouterr().out
    # the spec file's quantize block gives the same result as the flags
    spec = tmp_path / "spec.prototxt"
    spec.write_text('quantize { conv_bits: 8 fc_bits: 5 } layer { name: "ip2" bits: 3 }')
    q2 = tmp_path / "q2.caffemodel"
    assert _run("quantize", "-model", model, "-weights", weights, "-output", q2,
                "-spec", spec) == 0
    assert q2.read_bytes() == q.read_bytes()
    # quantising a quantised model changes nothing
    q3 = tmp_path / "q3.caffemodel"
    assert _run("quantize", "-model", model, "-weights", q, "-output", q3,
                "-bits", "conv=8,fc=5,ip2=3") == 0
    assert q3.read_bytes() == q.read_bytes()


def test_outputs_are_not_overwritten_and_errors_are_one_line(pruned_lenet, tmp_path, capsys):
    model, weights = pruned_lenet
    c = tmp_path / "m.cmodel"
    c.write_bytes(b"mine")
    assert _run("compress", "-weights", weights, "-output", c) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert c.read_bytes() == b"mine"
    assert _run("compress", "-weights", weights, "-output", c, "-overwrite") == 0
    capsys.readouterr()
    bad = tmp_path / "bad.cmodel"
    bad.write_bytes(c.read_bytes()[:-10])
    assert _run("decompress", "-weights", bad, "-output", tmp_path / "x.caffemodel") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "truncated or damaged" in err[0] and str(bad) in err[0]
    assert not (tmp_path / "x.caffemodel").exists()
    assert _run("decompress", "-weights", weights, "-output", tmp_path / "y.caffemodel") == 1
    assert "not a caffe-lite compressed model" in capsys.readouterr().err
    assert _run("quantize", "-model", model, "-weights", weights, "-output",
                tmp_path / "z.caffemodel", "-bits", "fc7=4") == 1
    assert "no layer named 'fc7'" in capsys.readouterr().err
    assert not (tmp_path / "z.caffemodel").exists()
    assert _run("quantize", "-model", model, "-weights", weights, "-output",
                tmp_path / "z.caffemodel") == 1
    assert "give -bits" in capsys.readouterr().err


def test_decompress_a_deep_compression_file(pruned_lenet, tmp_path, capsys):
    model, weights = pruned_lenet
    net = caffe_lite.Net(str(model), caffe_lite.TEST, weights=str(weights))
    from caffe_lite.compression.quantize import quantize_net
    quantize_net(net, "conv=7,fc=3")
    w = {n: net.params[n][0].data.copy() for n in LAYERS}
    b = {n: net.params[n][1].data.copy() for n in LAYERS}
    dc = tmp_path / "AlexNet_compressed.net"
    _write_deep_compression(dc, w, b, list(LAYERS))
    out = tmp_path / "dc.caffemodel"
    assert _run("decompress", "-weights", dc, "-model", model, "-output", out) == 0
    assert "as a Deep Compression file" in capsys.readouterr().out
    got = dict(load_weights(str(out)))
    for n in LAYERS:
        np.testing.assert_array_equal(got[n][0], w[n])
        np.testing.assert_array_equal(got[n][1], b[n])
    other = tmp_path / "other.prototxt"
    other.write_text(model.read_text().replace("num_output: 500", "num_output: 400"))
    assert _run("decompress", "-weights", dc, "-model", other, "-output",
                tmp_path / "o.caffemodel") == 1
    assert "not a Deep Compression file for this net" in capsys.readouterr().err


def test_train_fine_tunes_shared_weights_and_resumes(tmp_path):
    def distinct(path):
        net = caffe_lite.Net(str(tmp_path / "a" / "mlp.prototxt"), caffe_lite.TEST,
                             weights=str(path))
        return {n: np.unique(net.params[n][0].data) for n in ("ip1", "ip2")}

    a = mlp_solver(tmp_path / "a", max_iter=12, snapshot=6, extra="snapshot_after_train: true")
    assert _run("train", "-solver", a, "-quantize_bits", "fc=2") == 0
    end = distinct(tmp_path / "a" / "snap" / "mlp_iter_12.caffemodel")
    mid = distinct(tmp_path / "a" / "snap" / "mlp_iter_6.caffemodel")
    for n in ("ip1", "ip2"):
        assert len(end[n]) <= 4 and len(mid[n]) <= 4
        assert not np.array_equal(end[n], mid[n])          # the shared values trained
    # resume from iteration 6 with the spec file: the same weights at 12
    spec = tmp_path / "q.prototxt"
    spec.write_text("quantize { fc_bits: 2 }")
    b = mlp_solver(tmp_path / "b", max_iter=12, snapshot=6, extra="snapshot_after_train: true")
    assert _run("train", "-solver", b, "-quantize_spec", spec, "-snapshot",
                tmp_path / "a" / "snap" / "mlp_iter_6.solverstate") == 0
    ra, rb = (dict(load_weights(str(d / "snap" / "mlp_iter_12.caffemodel")))
              for d in (tmp_path / "a", tmp_path / "b"))
    for n in ra:
        for x, y in zip(ra[n], rb[n]):
            np.testing.assert_array_equal(x, y)
    assert F.is_compressed(str(spec)) is False
