"""Solver snapshots: Caffe's files (<prefix>_iter_N.caffemodel[.h5] and .solverstate[.h5]) plus
caffe-lite's `.masks` sidecar (masks, RNG, layer and callback state), written as one set
(util/fileset.py: all of it or none of it becomes usable), under a lock on the prefix held for
the run.  Restoring checks every value it reads and names the file and value when one is
wrong.  docs/snapshots.md describes the files."""
import io
import json
import logging
import os
import zipfile

import numpy as np

from ..backend import state as backend_state
from ..errors import CaffeLiteError, ModelFileError, SolverError
from ..io.blobproto import array_to_proto, proto_to_array
from ..io.caffemodel import _looks_like_text, read_bytes, parse_binary
from ..io.masks import masks_message, net_mask_entries, parse_masks, sidecar_path
from ..proto import caffe_lite_pb2, caffe_pb2
from ..util import fileset

log = logging.getLogger("caffe_lite")
BINARYPROTO = caffe_pb2.SolverParameter.BINARYPROTO
HDF5 = caffe_pb2.SolverParameter.HDF5


def snapshot_filename(prefix, it, ext):
    return f"{prefix}_iter_{it}{ext}"


def extras_path(state_file):
    """The sidecar beside a solverstate: `<name>.solverstate` -> `<name>.masks` (the same file
    is the sidecar of `<name>.caffemodel`)."""
    return sidecar_path(state_file)


def _split_prefix(prefix):
    directory, base = os.path.split(prefix)
    return directory or ".", base


def lock_path(prefix):
    return prefix + ".lock"


def snapshot_lock(prefix):
    """The lock a run holds on its snapshot_prefix (util/fileset.PrefixLock)."""
    return fileset.PrefixLock(lock_path(prefix))


def recover(prefix):
    """Clear what an interrupted snapshot write left under `prefix` (call with the lock held):
    an incomplete set is removed, stray temp files deleted.  Returns the paths removed."""
    directory, base = _split_prefix(prefix)
    if not os.path.isdir(directory):
        return []
    return fileset.recover(directory, f"{base}_iter_*")


def write_snapshot(solver):
    """Write weights, sidecar and solver state as one set; return the weights file name."""
    p = solver.param
    prefix = p.snapshot_prefix
    if not prefix:
        raise SolverError("cannot snapshot: snapshot_prefix is not set in the solver")
    directory, base = _split_prefix(prefix)
    os.makedirs(directory, exist_ok=True)
    hdf5 = p.snapshot_format == HDF5
    model = snapshot_filename(prefix, solver.iter, ".caffemodel.h5" if hdf5 else ".caffemodel")
    state = snapshot_filename(prefix, solver.iter, ".solverstate.h5" if hdf5 else
                              ".solverstate")
    journal = os.path.join(directory, f".{base}_iter_{solver.iter}.journal")
    with fileset.FileSet(journal) as files:
        if hdf5:
            log.info("Snapshotting to HDF5 file %s", model)
            from ..io.hdf5 import write_net_hdf5
            with files.open(model, "w+b") as f:
                write_net_hdf5(solver.net, f, write_diff=p.snapshot_diff)
        else:
            log.info("Snapshotting to binary proto file %s", model)
            with files.open(model) as f:
                f.write(solver.net.to_proto(write_diff=p.snapshot_diff).SerializeToString())
        with files.open(extras_path(state)) as f:
            f.write(_extras(solver).SerializeToString())
        if hdf5:
            log.info("Snapshotting solver state to HDF5 file %s", state)
            with files.open(state, "w+b") as f:
                _write_state_hdf5(solver, f, model)
        else:
            log.info("Snapshotting solver state to binary proto file %s", state)
            with files.open(state) as f:  # last: the set is usable once this is in place
                f.write(_state_binary(solver, model).SerializeToString())
    return model


def _state_binary(solver, model):
    s = caffe_pb2.SolverState(iter=solver.iter, learned_net=model,
                              current_step=solver.current_step)
    for h in solver.history:
        array_to_proto(h, s.history.add())
    return s


def _h5py():
    try:
        import h5py
        return h5py
    except ImportError:
        raise CaffeLiteError("HDF5 snapshots need h5py (pip install h5py)") from None


def _write_state_hdf5(solver, fobj, model):
    h5py = _h5py()
    with h5py.File(fobj, "w") as f:
        f.create_dataset("iter", data=np.int32(solver.iter))
        f.create_dataset("learned_net", data=model)
        f.create_dataset("current_step", data=np.int32(solver.current_step))
        g = f.create_group("history")
        for i, h in enumerate(solver.history):
            g.create_dataset(str(i), data=h)


def _net_tags(solver):
    """(net, key prefix) for the train net and each test net."""
    return [(solver.net, "train")] + [(n, f"test{i}") for i, n in enumerate(solver.test_nets)]


def _extras(solver):
    ex = masks_message(net_mask_entries(solver.net))
    ex.rng_state = json.dumps(backend_state.rng().bit_generator.state)
    layer_state = {}
    for net, tag in _net_tags(solver):
        for layer in net.layers:
            if hasattr(layer, "state_dict"):
                layer_state[f"{tag}/{layer.name}"] = layer.state_dict()
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
    except (ValueError, OSError, zipfile.BadZipFile, RecursionError, EOFError, KeyError) as exc:
        raise ModelFileError(f"{path}: the state of solver callback '{cs.key}' is damaged "
                             f"({exc})") from None
    return state


def _damaged(path, what, exc):
    return ModelFileError(f"{path}: {what} is damaged ({type(exc).__name__}: {exc})")


def _json(text, path, what, kind=dict):
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _damaged(path, what, exc) from None
    if not isinstance(value, kind):
        raise ModelFileError(f"{path}: {what} is damaged (a JSON {type(value).__name__}, "
                             f"expected an {'object' if kind is dict else kind.__name__})")
    return value


def restore(solver, state_file):
    """Restore iteration, weights, history and (when the sidecar exists) masks, RNG and layer
    and callback state.  Every value is checked where it is read: a wrong one is a
    ModelFileError naming the file and the value.  Returns the weights file loaded."""
    state_file = os.fspath(state_file)
    if state_file.endswith(".h5"):
        it, learned, step, history = _read_state_hdf5(state_file)
    else:
        it, learned, step, history = _read_state_binary(state_file)
    _check_state_values(solver, state_file, it, step, history)
    if "\0" in learned:
        raise ModelFileError(f"{state_file}: learned_net {learned!r} holds a NUL character")
    sidecar = extras_path(state_file)
    extras = _read_extras(sidecar) if os.path.exists(sidecar) else None
    if learned:
        path = learned
        if not os.path.exists(path):
            beside = os.path.join(os.path.dirname(state_file), os.path.basename(learned))
            if os.path.exists(beside):
                path = beside
            else:
                raise ModelFileError(f"{state_file}: its weights file (learned_net "
                                     f"'{learned}') does not exist, nor does {beside}")
        solver.net.copy_from(path)
    for h, mine in zip(history, solver.history):
        mine[...] = h.reshape(mine.shape)
    solver.iter, solver.current_step = int(it), int(step)
    if extras is not None:
        _apply_extras(solver, sidecar, extras)
    else:
        log.warning("No %s beside the solver state (a BVLC Caffe snapshot?): masks derived "
                    "from zero weights; data layers start at their first record", sidecar)
    for p in solver.net.learnable_params:
        p.apply_mask()
    return learned


def _read_state_binary(path):
    data = read_bytes(path)
    s = None
    if data and not _looks_like_text(data):
        try:
            s = parse_binary(data, caffe_pb2.SolverState(), path, "solverstate")
        except ModelFileError:
            if _what_is(data) == _UNKNOWN:
                raise
    if s is None or not s.HasField("iter"):  # Caffe and caffe-lite always write iter
        raise ModelFileError(f"{path}: not a solverstate ({_what_is(data)}); -snapshot takes "
                             "the .solverstate a snapshot wrote (to start from trained weights, "
                             "give the caffemodel to -weights)")
    history = [proto_to_array(h, f"{path}: history {i}") for i, h in enumerate(s.history)]
    learned = s.learned_net
    if isinstance(learned, bytes):  # protobuf hands back invalid UTF-8 as bytes
        raise ModelFileError(f"{path}: learned_net {learned!r} is not valid UTF-8")
    return s.iter, learned, s.current_step, history


def _what_is(data):
    """A guess at what a file that is not a solverstate holds, for the error message."""
    if not data:
        return "the file is empty"
    if _looks_like_text(data):
        return "it looks like a text file"
    net = caffe_pb2.NetParameter()
    ex = caffe_lite_pb2.SolverExtras()
    try:
        net.ParseFromString(data)
        if any(len(layer.blobs) for layer in net.layer) or \
                any(len(layer.blobs) for layer in net.layers):
            return "it is a caffemodel: trained weights, without the solver's history"
    except Exception:  # noqa: BLE001 -- only a guess
        pass
    try:
        ex.ParseFromString(data)
        if len(ex.mask) or ex.rng_state or ex.layer_state:
            return "it is a caffe-lite .masks sidecar"
    except Exception:  # noqa: BLE001
        pass
    return _UNKNOWN


_UNKNOWN = "it holds no iteration, weights file or history"


def _check_state_values(solver, path, it, step, history):
    if it < 0:
        raise ModelFileError(f"{path}: iter is {it}; an iteration count cannot be negative")
    if step < 0:
        raise ModelFileError(f"{path}: current_step is {step}; it cannot be negative")
    if len(history) != len(solver.history):
        raise ModelFileError(f"{path}: holds {len(history)} history blobs but this "
                             f"{solver.type} solver on this net needs {len(solver.history)} "
                             "(a snapshot of another solver type or net?)")
    from ..net import _legacy_equal
    for i, (h, mine) in enumerate(zip(history, solver.history)):
        if h.size != mine.size or not _legacy_equal(h.shape, mine.shape):
            raise ModelFileError(f"{path}: history blob {i} has shape {h.shape}, the "
                                 f"solver's has {mine.shape}")
        if not np.isfinite(h).all():
            raise ModelFileError(f"{path}: history blob {i} holds non-finite values")


def _read_state_hdf5(path):
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            if "iter" not in f and "data" in f:
                raise ModelFileError(f"{path}: not a solverstate (it is an HDF5 caffemodel: "
                                     "trained weights; give it to -weights to fine-tune)")
            it = int(np.asarray(f["iter"]))
            learned = f["learned_net"][()]
            learned = learned.decode() if isinstance(learned, bytes) else str(learned)
            step = int(np.asarray(f["current_step"])) if "current_step" in f else 0
            g = f["history"]
            history = [np.asarray(g[str(i)], np.float32) for i in range(len(g))]
    except (OSError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: not a valid HDF5 solverstate ({exc})") from None
    return it, learned, step, history


class _Extras:
    """A sidecar read and checked, before anything is changed."""

    def __init__(self, ex, path):
        self.masks = parse_masks(ex, path)
        self.rng_state = None
        if ex.rng_state:
            self.rng_state = _json(ex.rng_state, path, "rng_state")
            probe = type(backend_state.rng().bit_generator)()
            try:
                probe.state = self.rng_state
            except (ValueError, TypeError, KeyError, OverflowError) as exc:
                raise _damaged(path, "rng_state", exc) from None
        self.layer_state = _json(ex.layer_state, path, "layer_state") if ex.layer_state \
            else None
        self.callbacks = {}
        for cs in ex.callback:
            if cs.key in self.callbacks:
                raise ModelFileError(f"{path}: two states for solver callback '{cs.key}'")
            self.callbacks[cs.key] = _unpack_callback_state(cs, path)
        if ex.pruning_state and "GradualPruner" not in self.callbacks:  # before `callback`
            self.callbacks["GradualPruner"] = _json(ex.pruning_state, path, "pruning_state")


def _read_extras(path):
    ex = parse_binary(read_bytes(path), caffe_lite_pb2.SolverExtras(), path, "masks file")
    return _Extras(ex, path)


_STATE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError)


def _apply_extras(solver, path, extras):
    for name, pid, bits in extras.masks:
        layer = solver.net.layer_dict.get(name)
        if layer is None or pid >= len(layer.blobs):
            raise ModelFileError(f"{path}: mask for '{name}' param {pid}, which this net does "
                                 "not have")
        b = layer.blobs[pid]
        if not b.has_mask:
            raise ModelFileError(f"{path}: mask for '{name}' param {pid}, which is not a "
                                 "prunable weight")
        if bits.shape != b.shape:
            raise ModelFileError(f"{path}: mask for '{name}' has shape {bits.shape}, the net's "
                                 f"parameter has {b.shape}")
        b.mask = bits
    if extras.rng_state is not None:
        backend_state.rng().bit_generator.state = extras.rng_state
    if extras.layer_state is not None:
        states = extras.layer_state
        for net, tag in _net_tags(solver):
            for layer in net.layers:
                if not hasattr(layer, "load_state_dict"):
                    continue
                key = f"{tag}/{layer.name}"
                if key not in states:
                    log.warning("%s holds no state for layer '%s' of the %s net; it starts "
                                "afresh (reading from its first record)", path, layer.name,
                                tag)
                    continue
                try:
                    layer.load_state_dict(states[key])
                except _STATE_ERRORS as exc:
                    raise _damaged(path, f"the state of layer '{layer.name}' ({tag} net)",
                                   exc) from None
    callbacks = dict(callback_states(solver))
    for key, state in extras.callbacks.items():
        if key in callbacks:
            try:
                callbacks[key].load_state_dict(state)
            except _STATE_ERRORS as exc:
                raise _damaged(path, f"the state of solver callback '{key}'", exc) from None
        else:
            log.warning("%s holds the state of solver callback '%s', which this run does not "
                        "use; ignored", path, key)
