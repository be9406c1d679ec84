"""Solver snapshots: Caffe's files (<prefix>_iter_N.caffemodel[.h5] and .solverstate[.h5]) plus
caffe-lite's `.masks` sidecar (masks, RNG and layer state), each written atomically."""
import io
import json
import logging
import os
import zipfile

import numpy as np

from ..backend import state as backend_state
from ..errors import CaffeLiteError, ModelFileError, SolverError
from ..io.blobproto import array_to_proto, proto_to_array
from ..io.caffemodel import _read_bytes, parse_binary
from ..proto import caffe_lite_pb2, caffe_pb2
from ..util.atomic import atomic_open, atomic_write_bytes

log = logging.getLogger("caffe_lite")
BINARYPROTO = caffe_pb2.SolverParameter.BINARYPROTO
HDF5 = caffe_pb2.SolverParameter.HDF5


def snapshot_filename(prefix, it, ext):
    return f"{prefix}_iter_{it}{ext}"


def extras_path(state_file):
    """The sidecar beside a solverstate: `<name>.solverstate` -> `<name>.masks`."""
    for ext in (".solverstate.h5", ".solverstate"):
        if state_file.endswith(ext):
            return state_file[: -len(ext)] + ".masks"
    return state_file + ".masks"


def write_snapshot(solver):
    """Write weights, solver state and extras; return the weights file name."""
    p = solver.param
    prefix = p.snapshot_prefix
    if not prefix:
        raise SolverError("cannot snapshot: snapshot_prefix is not set in the solver")
    d = os.path.dirname(prefix)
    if d:
        os.makedirs(d, exist_ok=True)
    if p.snapshot_format == HDF5:
        model = snapshot_filename(prefix, solver.iter, ".caffemodel.h5")
        log.info("Snapshotting to HDF5 file %s", model)
        solver.net.save_hdf5(model, write_diff=p.snapshot_diff)
        state = snapshot_filename(prefix, solver.iter, ".solverstate.h5")
        log.info("Snapshotting solver state to HDF5 file %s", state)
        _write_state_hdf5(solver, state, model)
    else:
        model = snapshot_filename(prefix, solver.iter, ".caffemodel")
        log.info("Snapshotting to binary proto file %s", model)
        from ..io.caffemodel import write_net_binary
        write_net_binary(model, solver.net.to_proto(write_diff=p.snapshot_diff))
        state = snapshot_filename(prefix, solver.iter, ".solverstate")
        log.info("Snapshotting solver state to binary proto file %s", state)
        _write_state_binary(solver, state, model)
    atomic_write_bytes(extras_path(state), _extras(solver).SerializeToString())
    return model


def _write_state_binary(solver, path, model):
    s = caffe_pb2.SolverState(iter=solver.iter, learned_net=model,
                              current_step=solver.current_step)
    for h in solver.history:
        array_to_proto(h, s.history.add())
    atomic_write_bytes(path, s.SerializeToString())


def _h5py():
    try:
        import h5py
        return h5py
    except ImportError:
        raise CaffeLiteError("HDF5 snapshots need h5py (pip install h5py)") from None


def _write_state_hdf5(solver, path, model):
    h5py = _h5py()
    with atomic_open(path, "w+b") as fobj, h5py.File(fobj, "w") as f:
        f.create_dataset("iter", data=np.int32(solver.iter))
        f.create_dataset("learned_net", data=model)
        f.create_dataset("current_step", data=np.int32(solver.current_step))
        g = f.create_group("history")
        for i, h in enumerate(solver.history):
            g.create_dataset(str(i), data=h)


def _extras(solver):
    ex = caffe_lite_pb2.SolverExtras()
    for lid, layer in enumerate(solver.net.layers):
        for pid, b in enumerate(layer.blobs):
            if b.has_mask and solver.net.param_owners[solver.net.param_ids[lid][pid]] == -1:
                m = ex.mask.add(layer=layer.name, param_index=pid)
                m.shape.extend(b.shape)
                m.bits = np.packbits(b.cpu_mask.ravel() != 0).tobytes()
    ex.rng_state = json.dumps(backend_state.rng().bit_generator.state)
    layer_state = {}
    for net in [solver.net] + list(solver.test_nets):
        for layer in net.layers:
            if hasattr(layer, "state_dict"):
                layer_state[f"{id(net) == id(solver.net) and 'train' or 'test'}/{layer.name}"] = \
                    layer.state_dict()
    ex.layer_state = json.dumps(layer_state)
    for key, cb in callback_states(solver):
        ex.callback.append(_pack_callback_state(key, cb.state_dict()))
    return ex


def callback_states(solver):
    """(state_key, callback) for every solver callback that keeps state across a resume: an
    object with `state_dict()` / `load_state_dict(d)` and a unique `state_key`."""
    out = {}
    for cb in solver.callbacks:
        if hasattr(cb, "state_dict") and hasattr(cb, "load_state_dict"):
            key = getattr(cb, "state_key", type(cb).__name__)
            if key in out:
                raise SolverError(f"two solver callbacks share the state key '{key}'")
            out[key] = cb
    return list(out.items())


def _pack_callback_state(key, state):
    """A CallbackState: numpy arrays in an .npz, everything else as JSON."""
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    plain = {k: v for k, v in state.items() if k not in arrays}
    cs = caffe_lite_pb2.CallbackState(key=key, json=json.dumps(plain))
    if arrays:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        cs.arrays = buf.getvalue()
    return cs


def _unpack_callback_state(cs, path):
    try:
        state = json.loads(cs.json) if cs.json else {}
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
        if cs.arrays:
            with np.load(io.BytesIO(cs.arrays), allow_pickle=False) as z:
                state.update({k: z[k] for k in z.files})
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"{path}: the state of solver callback '{cs.key}' is damaged "
                             f"({exc})") from None
    return state


def restore(solver, state_file):
    """Restore iteration, weights, history and (when the sidecar exists) masks, RNG and layer
    state.  Returns the weights file that was loaded."""
    state_file = os.fspath(state_file)
    if state_file.endswith(".h5"):
        it, learned, step, history = _read_state_hdf5(state_file)
    else:
        s = parse_binary(_read_bytes(state_file), caffe_pb2.SolverState(), state_file,
                         "solverstate")
        it, learned, step = s.iter, s.learned_net, s.current_step
        history = [proto_to_array(h, f"{state_file}: history {i}") for i, h in enumerate(s.history)]
    if len(history) != len(solver.history):
        raise ModelFileError(f"{state_file}: holds {len(history)} history blobs but this "
                             f"{solver.type} solver on this net needs {len(solver.history)}")
    for i, (h, mine) in enumerate(zip(history, solver.history)):
        if h.size != mine.size:
            raise ModelFileError(f"{state_file}: history blob {i} has shape {h.shape}, the "
                                 f"solver's has {mine.shape}")
    if learned:
        path = learned
        if not os.path.exists(path):
            beside = os.path.join(os.path.dirname(state_file), os.path.basename(learned))
            if os.path.exists(beside):
                path = beside
        solver.net.copy_from(path)
    for h, mine in zip(history, solver.history):
        mine[...] = h.reshape(mine.shape)
    solver.iter, solver.current_step = int(it), int(step)
    sidecar = extras_path(state_file)
    if os.path.exists(sidecar):
        _apply_extras(solver, sidecar)
    else:
        log.warning("No %s beside the solver state: masks derived from zero weights", sidecar)
    for p in solver.net.learnable_params:
        p.apply_mask()
    return learned


def _read_state_hdf5(path):
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            it = int(np.asarray(f["iter"]))
            learned = f["learned_net"][()]
            learned = learned.decode() if isinstance(learned, bytes) else str(learned)
            step = int(np.asarray(f["current_step"])) if "current_step" in f else 0
            g = f["history"]
            history = [np.asarray(g[str(i)], np.float32) for i in range(len(g))]
    except (OSError, KeyError) as exc:
        raise ModelFileError(f"{path}: not a valid HDF5 solverstate ({exc})") from None
    return it, learned, step, history


def _apply_extras(solver, path):
    ex = parse_binary(_read_bytes(path), caffe_lite_pb2.SolverExtras(), path, "masks file")
    for m in ex.mask:
        layer = solver.net.layer_dict.get(m.layer)
        if layer is None or m.param_index >= len(layer.blobs):
            raise ModelFileError(f"{path}: mask for '{m.layer}' param {m.param_index}, which "
                                 "this net does not have")
        b = layer.blobs[m.param_index]
        shape = tuple(m.shape)
        if shape != b.shape:
            raise ModelFileError(f"{path}: mask for '{m.layer}' has shape {shape}, the net's "
                                 f"parameter has {b.shape}")
        bits = np.unpackbits(np.frombuffer(m.bits, np.uint8), count=b.count)
        b.mask = bits.reshape(shape)
    if ex.rng_state:
        backend_state.rng().bit_generator.state = json.loads(ex.rng_state)
    if ex.layer_state:
        states = json.loads(ex.layer_state)
        for net, tag in [(solver.net, "train")] + [(n, "test") for n in solver.test_nets]:
            for layer in net.layers:
                key = f"{tag}/{layer.name}"
                if key in states and hasattr(layer, "load_state_dict"):
                    layer.load_state_dict(states[key])
    callbacks = dict(callback_states(solver))
    saved = {cs.key: cs for cs in ex.callback}
    if ex.pruning_state and "GradualPruner" not in saved:  # sidecars written before `callback`
        saved["GradualPruner"] = caffe_lite_pb2.CallbackState(key="GradualPruner",
                                                              json=ex.pruning_state)
    for key, cs in saved.items():
        if key in callbacks:
            callbacks[key].load_state_dict(_unpack_callback_state(cs, path))
        else:
            log.warning("%s holds the state of solver callback '%s', which this run does not "
                        "use; ignored", path, key)
