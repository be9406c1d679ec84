"""Masks travel with a model (the `.masks` sidecar beside every caffemodel caffe-lite writes),
so a live weight that is exactly 0 stays live; the caffemodel stays an ordinary one; loading
weights warns about every layer that got none and every file layer that matched nothing."""
import logging
import os

import numpy as np
import pytest

import caffe_lite
from caffe_lite.cli import main
from caffe_lite.errors import CaffeLiteError, ModelFileError
from caffe_lite.io import write_net_binary
from caffe_lite.io.masks import sidecar_path
from caffe_lite.net import Net
from caffe_lite.proto import caffe_lite_pb2, caffe_pb2
from caffe_lite.solvers import get_solver

from pruning_nets import FLATNET, build, restore_logging  # noqa: F401

pytestmark = pytest.mark.usefixtures("restore_logging")


def _pruned_with_live_zeros(seed=3):
    """FLATNET with half of conv1 pruned and some live weights set to exactly 0."""
    net = build(FLATNET, seed)
    g = np.random.default_rng(seed)
    for name in ("conv1", "ip1"):
        w = net.params[name][0]
        keep = g.random(w.shape) < 0.5
        w.data[...] *= keep
        w.mask = keep
        live = np.flatnonzero(keep)
        w.data.ravel()[live[:3]] = 0.0  # live, and 0 (as RMSProp + L1 leaves thousands)
    return net


def test_sidecar_names():
    assert sidecar_path("a/lenet_iter_5.caffemodel") == "a/lenet_iter_5.masks"
    assert sidecar_path("x.caffemodel.h5") == "x.masks"
    assert sidecar_path("x.solverstate") == "x.masks"
    assert sidecar_path("weights.bin") == "weights.bin.masks"


@pytest.mark.parametrize("fmt", ["binary", "hdf5"])
def test_a_live_zero_stays_live_through_save_and_load(tmp_path, fmt):
    net = _pruned_with_live_zeros()
    path = tmp_path / ("m.caffemodel" if fmt == "binary" else "m.caffemodel.h5")
    (net.save if fmt == "binary" else net.save_hdf5)(str(path))
    assert (tmp_path / "m.masks").exists()
    for loaded in (Net(FLATNET, caffe_lite.TEST, weights=str(path)),
                   Net(FLATNET, caffe_lite.TEST).copy_from(str(path))):
        for name in ("conv1", "ip1"):
            a, b = net.params[name][0], loaded.params[name][0]
            np.testing.assert_array_equal(b.mask, a.mask)
            assert np.sum((b.data == 0) & (b.mask == 1)) == 3
        assert loaded.params["ip2"][0].mask.all()
    # without the sidecar (a model from BVLC Caffe): masks from the zeros, as before
    os.remove(tmp_path / "m.masks")
    plain = Net(FLATNET, caffe_lite.TEST, weights=str(path))
    for name in ("conv1", "ip1"):
        b = plain.params[name][0]
        np.testing.assert_array_equal(b.mask, b.data != 0)


def test_the_caffemodel_stays_an_ordinary_one(tmp_path):
    net = _pruned_with_live_zeros()
    path = tmp_path / "m.caffemodel"
    net.save(str(path))
    data = path.read_bytes()
    assert data == net.to_proto().SerializeToString()  # nothing added to Caffe's file
    proto = caffe_pb2.NetParameter.FromString(data)
    assert [lp.name for lp in proto.layer if lp.blobs] == ["conv1", "ip1", "ip2"]
    ex = caffe_lite_pb2.SolverExtras.FromString((tmp_path / "m.masks").read_bytes())
    assert [(m.layer, m.param_index, tuple(m.shape)) for m in ex.mask] == \
        [("conv1", 0, (6, 2, 3, 3)), ("ip1", 0, (7, 54)), ("ip2", 0, (4, 7))]
    assert len(ex.weights_sha256) == 32 and not ex.rng_state


def test_a_replaced_model_ignores_the_old_sidecar(tmp_path, caplog):
    net = _pruned_with_live_zeros()
    path = tmp_path / "m.caffemodel"
    net.save(str(path))
    other = build(FLATNET, seed=9)
    other.params["ip1"][0].data[0] = 0
    write_net_binary(str(path), other.to_proto())  # e.g. rewritten by BVLC Caffe
    with caplog.at_level(logging.WARNING, "caffe_lite"):
        loaded = Net(FLATNET, caffe_lite.TEST, weights=str(path))
    assert "m.masks does not belong to the weights in" in caplog.text
    w = loaded.params["ip1"][0]
    np.testing.assert_array_equal(w.mask, w.data != 0)
    assert not w.mask[0].any()


def test_a_sidecar_that_prunes_nonzero_weights_is_an_error(tmp_path):
    net = _pruned_with_live_zeros()
    path = tmp_path / "m.caffemodel"
    net.save(str(path))
    ex = caffe_lite_pb2.SolverExtras.FromString((tmp_path / "m.masks").read_bytes())
    ex.mask[1].bits = bytes(len(ex.mask[1].bits))  # everything pruned
    (tmp_path / "m.masks").write_bytes(ex.SerializeToString())
    fresh = Net(FLATNET, caffe_lite.TEST)
    before = fresh.params["conv1"][0].data.copy()
    with pytest.raises(ModelFileError, match=r"m.masks: the mask of layer 'ip1' param 0 prunes "
                                             r"\d+ weight\(s\) that are not zero in"):
        fresh.copy_from(str(path))
    np.testing.assert_array_equal(fresh.params["conv1"][0].data, before)  # nothing copied
    ex.mask[1].bits = ex.mask[1].bits[:-1]
    (tmp_path / "m.masks").write_bytes(ex.SerializeToString())
    with pytest.raises(ModelFileError, match=r"mask 1 \(layer 'ip1' param 0\): shape \(7, 54\) "
                                             r"needs 48 bytes of bits, the file holds 47"):
        fresh.copy_from(str(path))
    (tmp_path / "m.masks").write_bytes(b"\xff\xff garbage")
    with pytest.raises(ModelFileError, match="m.masks: not a valid masks file"):
        fresh.copy_from(str(path))


def test_save_refuses_to_replace_a_sidecar(tmp_path):
    net = build(FLATNET)
    (tmp_path / "m.masks").write_bytes(b"a user's file")
    with pytest.raises(CaffeLiteError, match="m.masks already exists"):
        net.save(str(tmp_path / "m.caffemodel"), overwrite=False)
    assert not (tmp_path / "m.caffemodel").exists()
    net.save(str(tmp_path / "m.caffemodel"))  # the default, as before: overwrite


def test_snapshot_weights_keep_their_masks_with_weights_flag(tmp_path):
    from pruning_nets import mlp_solver
    solver_file = mlp_solver(tmp_path, max_iter=4, snapshot=4)
    s = get_solver(str(solver_file))
    w = s.net.params["ip1"][0]
    w.mask = np.arange(w.count).reshape(w.shape) % 3 != 0
    w.apply_mask()
    s.step(4)
    w.data.ravel()[np.flatnonzero(w.mask)[:2]] = 0  # live zeros in the snapshot
    s.snapshot()
    fine = get_solver(str(solver_file), weights=str(tmp_path / "snap" / "mlp_iter_4.caffemodel"))
    np.testing.assert_array_equal(fine.net.params["ip1"][0].mask, w.mask)
    assert np.sum((w.mask == 1) & (w.data == 0)) == 2


def test_prune_and_thin_write_sidecars(tmp_path, capsys):
    net = build(FLATNET)
    model = tmp_path / "flat.prototxt"
    model.write_text(FLATNET)
    weights = tmp_path / "flat.caffemodel"
    net.save(str(weights))
    pruned = tmp_path / "p.caffemodel"
    assert main(["prune", "-model", str(model), "-weights", str(weights), "-output",
                 str(pruned), "-method", "l1-filter", "-sparsity", "0.5"]) == 0
    assert (tmp_path / "p.masks").exists()
    p = Net(str(model), caffe_lite.TEST, weights=str(pruned))
    w = p.params["ip1"][0]
    w.data.ravel()[np.flatnonzero(w.mask)[0]] = 0  # a live zero, kept by thin
    p.save(str(pruned))
    thin_w = tmp_path / "t.caffemodel"
    assert main(["thin", "-model", str(model), "-weights", str(pruned), "-output_model",
                 str(tmp_path / "t.prototxt"), "-output", str(thin_w)]) == 0
    t = Net(str(tmp_path / "t.prototxt"), caffe_lite.TEST, weights=str(thin_w))
    tw = t.params["ip1"][0]
    assert tw.shape != w.shape and np.sum((tw.mask == 1) & (tw.data == 0)) == 1
    # a .masks file in the way of prune's output: refused without -overwrite
    (tmp_path / "q.masks").write_bytes(b"mine")
    capsys.readouterr()
    assert main(["prune", "-model", str(model), "-weights", str(weights), "-output",
                 str(tmp_path / "q.caffemodel"), "-sparsity", "0.5"]) == 1
    assert "q.masks already exists" in capsys.readouterr().err
    assert (tmp_path / "q.masks").read_bytes() == b"mine"


# --- warnings for layers that got no weights -------------------------------------------------------
def test_loading_warns_about_unmatched_layers_with_the_nearest_name(tmp_path, caplog):
    net = build(FLATNET)
    path = tmp_path / "m.caffemodel"
    net.save(str(path))
    renamed = FLATNET.replace('name: "ip1"', 'name: "ip_1"')
    with caplog.at_level(logging.WARNING, "caffe_lite"):
        Net(renamed, caffe_lite.TEST, weights=str(path))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"{path} holds no weights for layer 'ip_1' (InnerProduct) of net 'flat': it keeps its "
        "initial values (did you mean 'ip1'?)",
        f"{path}: layer 'ip1' matches no layer of net 'flat'; its weights are not used (did you "
        "mean 'ip_1'?)"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, "caffe_lite"):
        Net(FLATNET, caffe_lite.TEST, weights=str(path))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_cli_test_prints_the_warnings(tmp_path, capsys):
    net = build(FLATNET)
    path = tmp_path / "m.caffemodel"
    net.save(str(path))
    model = tmp_path / "renamed.prototxt"
    model.write_text(FLATNET.replace('"conv1"', '"conv_1"'))
    assert main(["test", "-model", str(model), "-weights", str(path), "-iterations", "1"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("W")]
    assert len(lines) == 2
    assert "holds no weights for layer 'conv_1' (Convolution)" in lines[0]
    assert "did you mean 'conv1'?" in lines[0] and "did you mean 'conv_1'?" in lines[1]
