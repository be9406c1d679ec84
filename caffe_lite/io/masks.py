"""The `.masks` sidecar: the pruning masks of a caffemodel, in a file beside it.

A caffemodel holds only weights, so a loader can only guess masks as `weight != 0`, which
turns a live weight that happens to be exactly 0 into a pruned one.  caffe-lite therefore
writes, beside every caffemodel it writes, `X.masks` (for `X.caffemodel`, `X.caffemodel.h5`,
`X.solverstate` and `X.solverstate.h5`; `NAME.masks` for any other NAME): a
`caffe_lite.SolverExtras` message (proto/caffe_lite.proto) whose `mask` entries hold one bit
per weight, and whose `weights_sha256` fingerprints the masked weights it was written with.
A snapshot's sidecar is the same file with the solver's extras added.  The caffemodel stays an
ordinary one (BVLC Caffe and OpenCV read it and never see the sidecar).

Reading (`read_masks`) checks every field and gives ModelFileError naming the file and the
value; a sidecar whose fingerprint does not match the weights (the caffemodel was replaced
since) is ignored with a warning."""
import hashlib
import logging
import os

import numpy as np

from ..errors import ModelFileError
from ..proto import caffe_lite_pb2
from ..util.atomic import OutputExistsError, atomic_write_bytes

log = logging.getLogger("caffe_lite")

_EXTENSIONS = (".caffemodel.h5", ".caffemodel", ".solverstate.h5", ".solverstate")


def sidecar_path(path):
    """`X.caffemodel` / `X.caffemodel.h5` / `X.solverstate[.h5]` -> `X.masks`; any other
    name gets `.masks` appended."""
    path = os.fspath(path)
    for ext in _EXTENSIONS:
        if path.endswith(ext):
            return path[: -len(ext)] + ".masks"
    return path + ".masks"


def mask_entries(net):
    """[(layer name, param index, blob)] of every masked parameter the net owns (shared
    parameters are written once, by their owner)."""
    out = []
    for lid, layer in enumerate(net.layers):
        for pid, b in enumerate(layer.blobs):
            if b.has_mask and net.param_owners[net.param_ids[lid][pid]] == -1:
                out.append((layer.name, pid, b))
    return out


def weights_digest(items):
    """SHA-256 over (layer name, param index, float32 weights) for each item, in order."""
    h = hashlib.sha256()
    for name, pid, weights in items:
        h.update(name.encode("utf-8") + b"\0" + int(pid).to_bytes(4, "little"))
        h.update(np.ascontiguousarray(weights, dtype="<f4").tobytes())
    return h.digest()


def masks_message(entries, extras=None):
    """A SolverExtras (`extras`, or a new one) with the masks and fingerprint of `entries`:
    [(layer, param index, weights array, mask array)]."""
    ex = caffe_lite_pb2.SolverExtras() if extras is None else extras
    for name, pid, _, mask in entries:
        m = ex.mask.add(layer=name, param_index=pid)
        m.shape.extend(mask.shape)
        m.bits = np.packbits(np.asarray(mask).ravel() != 0).tobytes()
    ex.weights_sha256 = weights_digest((n, p, w) for n, p, w, _ in entries)
    return ex


def net_mask_entries(net):
    return [(name, pid, b.cpu_data, b.cpu_mask) for name, pid, b in mask_entries(net)]


def check_writable(model_path, overwrite):
    """Refuse, before anything is written, to replace a model or its sidecar."""
    if overwrite:
        return
    for p in (model_path, sidecar_path(model_path)):
        if os.path.exists(p):
            raise OutputExistsError(f"{p} already exists; refusing to overwrite it (choose "
                                    "another name or pass the overwrite flag)")


def write_sidecar(model_path, entries, overwrite=True):
    """Write the sidecar of the caffemodel at `model_path` (atomically)."""
    atomic_write_bytes(sidecar_path(model_path), masks_message(entries).SerializeToString(),
                       overwrite=overwrite)


def save_model(path, net_param, entries, overwrite=True):
    """Write a binary caffemodel (a NetParameter with blobs) and its sidecar with `entries`
    [(layer, param index, weights, mask)], each file atomically.  (Should a crash fall
    between the two, the fingerprint tells the old sidecar from the new model's.)"""
    from .caffemodel import write_net_binary
    check_writable(path, overwrite)
    write_net_binary(path, net_param, overwrite=overwrite)
    write_sidecar(path, entries, overwrite=overwrite)


def parse_masks(ex, path):
    """[(layer, param index, mask array)] from a parsed sidecar, every field checked."""
    out = []
    for i, m in enumerate(ex.mask):
        what = f"{path}: mask {i} (layer '{m.layer}' param {m.param_index})"
        if not m.layer:
            raise ModelFileError(f"{path}: mask {i} names no layer")
        shape = tuple(m.shape)
        if any(d < 0 for d in shape):
            raise ModelFileError(f"{what} has a negative dimension in its shape {shape}")
        count = 1
        for d in shape:
            count *= d
            if count >= 2**31:
                raise ModelFileError(f"{what} has shape {shape}: 2^31 or more weights")
        need = (count + 7) // 8
        if len(m.bits) != need:
            raise ModelFileError(f"{what}: shape {shape} needs {need} bytes of bits, the file "
                                 f"holds {len(m.bits)}")
        bits = np.unpackbits(np.frombuffer(m.bits, np.uint8), count=count)
        out.append((m.layer, int(m.param_index), bits.reshape(shape)))
    keys = [(n, p) for n, p, _ in out]
    if len(set(keys)) != len(keys):
        raise ModelFileError(f"{path}: holds two masks for one parameter")
    return out


def read_masks(model_path, weights):
    """{(layer, param index): mask} from the sidecar beside `model_path`, or None when there
    is none or it belongs to other weights (a warning says so).  `weights`: the model's
    [(layer, [arrays])] as load_weights gives them."""
    from .caffemodel import read_bytes, parse_binary
    path = sidecar_path(model_path)
    if not os.path.isfile(path):
        return None
    ex = parse_binary(read_bytes(path), caffe_lite_pb2.SolverExtras(), path, "masks file")
    masks = parse_masks(ex, path)
    by_name = dict(weights)
    items = []
    for name, pid, mask in masks:
        arrays = by_name.get(name)
        w = arrays[pid] if arrays is not None and pid < len(arrays) else None
        if w is None or w.size != mask.size:
            items = None
            break
        items.append((name, pid, w))
    if items is not None and not ex.HasField("weights_sha256"):
        # Written before sidecars had fingerprints (a snapshot's): usable when its pruned
        # entries are zeros of these weights.
        if all(not np.any(w[m.reshape(w.shape) == 0]) for (_, _, w), (_, _, m)
               in zip(items, masks)):
            return {(name, pid): mask for name, pid, mask in masks}
        items = None
    if items is None or weights_digest(items) != ex.weights_sha256:
        log.warning("%s does not belong to the weights in %s (they were replaced since it "
                    "was written); ignored: masks are derived from the zero weights",
                    path, model_path)
        return None
    return {(name, pid): mask for name, pid, mask in masks}
