"""Every value of a solverstate and of its `.masks` sidecar is checked where it is read: a wrong
one is a ModelFileError naming the file and the value, never a KeyError, a JSONDecodeError or
a numpy error -- and a few hundred random byte mutations of both files give nothing else."""
import json
import random

import h5py
import numpy as np
import pytest

from caffe_lite.errors import CaffeLiteError, ModelFileError
from caffe_lite.proto import caffe_lite_pb2, caffe_pb2
from caffe_lite.pruning import GradualPruner
from caffe_lite.solvers import get_solver

from pruning_nets import restore_logging  # noqa: F401

pytestmark = pytest.mark.usefixtures("restore_logging")

NET = """name: "h5mlp"
layer {{ name: "data" type: "HDF5Data" top: "x" top: "y"
  hdf5_data_param {{ source: "{src}" batch_size: 4 shuffle: true }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "x" top: "ip1"
  inner_product_param {{ num_output: 5 weight_filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param {{ num_output: 2 weight_filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "ip2" bottom: "y" top: "loss" }}
"""
SPEC = 'method: "magnitude" gradual { final_sparsity: 0.5 begin_iter: 0 num_steps: 2 frequency: 2 }'


@pytest.fixture
def snap(tmp_path):
    """A solver on an HDF5-fed net with a gradual pruner, and its snapshot at iteration 3.
    Returns (make a fresh solver with the pruner, solverstate path, sidecar path)."""
    g = np.random.default_rng(0)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"] = g.normal(size=(10, 3)).astype(np.float32)
        f["y"] = g.normal(size=(10, 2)).astype(np.float32)
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'd.h5'}\n")
    net = tmp_path / "net.prototxt"
    net.write_text(NET.format(src=tmp_path / "list.txt"))
    text = (f'net: "{net}" base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" random_seed: 3 '
            f'display: 0 snapshot_prefix: "{tmp_path}/s"')

    def fresh():
        s = get_solver(text)
        GradualPruner(s, SPEC).attach()
        return s
    s = fresh()
    s.step(3)
    s.snapshot()
    return fresh, tmp_path / "s_iter_3.solverstate", tmp_path / "s_iter_3.masks"


def _state(path):
    return caffe_pb2.SolverState.FromString(path.read_bytes())


def _extras(path):
    return caffe_lite_pb2.SolverExtras.FromString(path.read_bytes())


def _restore_fails(fresh, state, match):
    with pytest.raises(ModelFileError, match=match):
        fresh().restore(str(state))


def test_the_snapshot_restores(snap):
    fresh, state, _ = snap
    s = fresh()
    s.restore(str(state))
    assert s.iter == 3 and s.callbacks[0].applied == 2


@pytest.mark.parametrize("edit, match", [
    (lambda s: setattr(s, "iter", -1), r"s_iter_3.solverstate: iter is -1; an iteration count "
                                       "cannot be negative"),
    (lambda s: setattr(s, "current_step", -2), r"s_iter_3.solverstate: current_step is -2"),
    (lambda s: s.history.pop(), r"holds 3 history blobs but this SGD solver on this net needs 4"),
    (lambda s: s.history[1].shape.dim.extend([1]), r"history blob 1 has shape \(5, 1\), the "
                                                   r"solver's has \(5,\)"),
    (lambda s: s.history[0].data.__setitem__(0, float("nan")),
     r"history blob 0 holds non-finite values"),
    (lambda s: setattr(s, "learned_net", "/no/such/model.caffemodel"),
     r"its weights file \(learned_net '/no/such/model.caffemodel'\) does not exist"),
    (lambda s: setattr(s, "learned_net", "a\0b"), r"learned_net 'a\\x00b' holds a NUL"),
    (lambda s: s.ClearField("iter"), r"s_iter_3.solverstate: not a solverstate"),
])
def test_solverstate_values_are_checked(snap, edit, match):
    fresh, state, _ = snap
    s = _state(state)
    edit(s)
    state.write_bytes(s.SerializeToString())
    _restore_fails(fresh, state, match)


def test_hdf5_solverstate_values_are_checked(snap, tmp_path):
    fresh, _, _ = snap
    path = tmp_path / "x.solverstate.h5"
    with h5py.File(path, "w") as f:
        f["iter"] = np.int32(-5)
        f["learned_net"] = ""
        f["history"] = np.zeros(3)  # a dataset where a group belongs
    _restore_fails(fresh, path, "not a valid HDF5 solverstate")
    with h5py.File(path, "w") as f:
        f["iter"] = np.int32(-5)
        f["learned_net"] = ""
        f.create_group("history")
    _restore_fails(fresh, path, "iter is -5")
    with h5py.File(path, "w") as f:
        f.create_group("data")
    _restore_fails(fresh, path, r"not a solverstate \(it is an HDF5 caffemodel")


def _set(field, value):
    return lambda ex: setattr(ex, field, value)


def _mask(i, **kw):
    def edit(ex):
        m = ex.mask[i]
        for k, v in kw.items():
            if k == "shape":
                m.ClearField("shape")
                m.shape.extend(v)
            else:
                setattr(m, k, v)
    return edit


@pytest.mark.parametrize("edit, match", [
    (_mask(0, bits=b"\x00"), r"mask 0 \(layer 'ip1' param 0\): shape \(5, 3\) needs 2 bytes"),
    (_mask(0, shape=[-5, -3]), r"mask 0 .* negative dimension in its shape \(-5, -3\)"),
    (_mask(0, shape=[2**20, 2**20]), r"2\^31 or more weights"),
    (_mask(0, shape=[3, 5]), r"mask for 'ip1' has shape \(3, 5\), the net's parameter has "
                             r"\(5, 3\)"),
    (_mask(0, layer=""), r"mask 0 names no layer"),
    (_mask(0, layer="ipX"), r"mask for 'ipX' param 0, which this net does not have"),
    (_mask(0, param_index=1, shape=[5], bits=b"\xf8"), r"mask for 'ip1' param 1, which is not "
                                                       "a prunable weight"),
    (_mask(1, layer="ip1"), r"holds two masks for one parameter"),
    (_set("rng_state", "{not json"), r"s_iter_3.masks: rng_state is damaged \(JSONDecodeError"),
    (_set("rng_state", "[1, 2]"), r"rng_state is damaged \(a JSON list, expected an object\)"),
    (_set("rng_state", '{"bit_generator": "MT19937", "state": {}}'), r"rng_state is damaged"),
    (_set("rng_state", '{"bit_generator": "PCG64", "state": {"state": "x", "inc": 1}}'),
     r"rng_state is damaged"),
    (_set("rng_state", "[" * 100000), r"rng_state is damaged \(RecursionError"),
    (_set("layer_state", "\x00"), r"layer_state is damaged"),
    (_set("layer_state", '"text"'), r"layer_state is damaged \(a JSON str"),
    (_set("layer_state", '{"train/data": 5}'), r"the state of layer 'data' \(train net\) is "
                                               r"damaged \(ValueError: expected an object"),
    (_set("layer_state", '{"train/data": {"position": {"files": {"epoch": -1, "index": 0, '
                         '"size": 1, "seed": 4}, "row": 0}}}'),
     r"layer 'data' \(train net\) is damaged \(ValueError: 'epoch' is -1, expected an integer "
     r">= 0\)"),
    (_set("layer_state", '{"train/data": {"position": {"files": {"epoch": 0, "index": 0, '
                         '"size": 1, "seed": 4}, "row": 99}}}'),
     r"'row' is 99 but '.*d.h5' has 10 rows"),
    (_set("layer_state", '{"train/data": {"position": {"files": {"epoch": 0, "index": 3, '
                         '"size": 1, "seed": 4.5}, "row": 0}}}'),
     r"'index' is 3, expected an integer >= 0 and < 1"),
    (_set("layer_state", '{"train/data": {"position": {"files": {"epoch": 0, "index": 0, '
                         '"size": 1, "seed": "x"}, "row": 0}}}'), r"'seed' is 'x'"),
])
def test_sidecar_values_are_checked(snap, edit, match):
    fresh, state, sidecar = snap
    ex = _extras(sidecar)
    edit(ex)
    sidecar.write_bytes(ex.SerializeToString())
    _restore_fails(fresh, state, match)


@pytest.mark.parametrize("value, match", [
    ("[1]", r"state of solver callback 'GradualPruner' is damaged \(not a JSON object\)"),
    ('{"applied_iter": [1]}', r"the state of solver callback 'GradualPruner' is damaged "
                              r"\(TypeError"),
    ('{"applied_iter": "x"}', r"callback 'GradualPruner' is damaged \(ValueError"),
    ('{"history": [5]}', r"callback 'GradualPruner' is damaged \(TypeError"),
    ("{" * 50000, r"callback 'GradualPruner' is damaged"),
])
def test_callback_states_are_checked(snap, value, match):
    fresh, state, sidecar = snap
    ex = _extras(sidecar)
    ex.callback[0].json = value
    sidecar.write_bytes(ex.SerializeToString())
    _restore_fails(fresh, state, match)
    ex.ClearField("callback")
    ex.pruning_state = "{oops"  # the field sidecars used before `callback`
    sidecar.write_bytes(ex.SerializeToString())
    _restore_fails(fresh, state, r"pruning_state is damaged")


def test_a_data_set_of_another_size_starts_over_with_a_warning(snap, caplog):
    fresh, state, sidecar = snap
    ex = _extras(sidecar)
    states = json.loads(ex.layer_state)
    states["train/data"]["position"]["files"]["size"] = 2
    ex.layer_state = json.dumps(states)
    sidecar.write_bytes(ex.SerializeToString())
    s = fresh()
    s.restore(str(state))
    assert "cannot continue where the snapshot stopped reading (the snapshot was taken " \
           "reading 2 records, the source now has 1); reading starts over" in caplog.text


def test_a_bvlc_solverstate_without_sidecar_restores(snap, caplog):
    fresh, state, sidecar = snap
    sidecar.unlink()
    s = fresh()
    s.restore(str(state))
    assert s.iter == 3
    assert "No " in caplog.text and "masks derived from zero weights" in caplog.text


@pytest.mark.parametrize("which", ["solverstate", "masks"])
def test_random_mutations_give_only_typed_errors(snap, which):
    """Seeded byte flips, truncations and insertions: restore succeeds or raises a
    CaffeLiteError -- nothing else escapes."""
    fresh, state, sidecar = snap
    path = state if which == "solverstate" else sidecar
    original = path.read_bytes()
    rnd = random.Random(11)
    outcomes = {"ok": 0, "typed": 0}
    for _ in range(150):
        data = bytearray(original)
        for _ in range(rnd.randint(1, 4)):
            kind = rnd.random()
            i = rnd.randrange(len(data))
            if kind < 0.6:
                data[i] = rnd.randrange(256)
            elif kind < 0.8:
                del data[i:i + rnd.randint(1, 16)]
            else:
                data[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
        path.write_bytes(bytes(data))
        try:
            fresh().restore(str(state))
            outcomes["ok"] += 1
        except CaffeLiteError:
            outcomes["typed"] += 1
    path.write_bytes(original)
    assert outcomes["typed"] > 30, outcomes
