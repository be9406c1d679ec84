"""Sparse weight formats and sparse inference.

`CSRMatrix` is a pruned weight in compressed sparse row form: for each row (an output: an
InnerProduct output or a convolution filter) the positions and values of its nonzero weights.
Column indices are unsigned, 16-bit when the matrix has at most 65,536 columns (every layer of
LeNet, AlexNet, VGG and MobileNet) and 32-bit otherwise, so a weight at 9 % density streams
0.09 x 6 = 0.54 bytes per dense weight instead of 4.

InnerProduct and Convolution layers keep such a copy of their weight and run their forward
product on it when that is faster (caffe_lite/layers/sparse.py decides, per layer and per
call, from the density and the shape).  This module is the user's side of it:

    from caffe_lite.compression import sparse
    sparse.configure(net, "auto")                   # the default: measured thresholds decide
    sparse.configure(net, "sparse")                 # every layer that can, whatever it costs
    sparse.configure(net, {"fc6": "sparse", "fc8": "dense"})   # per layer; others unchanged
    sparse.configure(net, "sparse_inference.prototxt")          # a SparseInferenceSpec file
    sparse.report(net)                              # per layer: density, mode, path, reason
    sparse.time_forward(net)                        # dense vs sparse forward, side by side

The spec file is a text SparseInferenceSpec (proto/caffe_lite.proto), a file of its own: the
net prototxt stays Caffe's.  CAFFE_LITE_SPARSE=auto|sparse|dense sets the default mode of
layers that were not configured."""
import math
import os
import time

import numpy as np

from ..errors import CaffeLiteError

MODES = ("auto", "sparse", "dense")
_U16_COLUMNS = 1 << 16


class SparseConfigError(CaffeLiteError):
    """A sparse-inference setting that cannot be applied: unknown mode or layer name."""


class CSRMatrix:
    """A float32 matrix (rows, cols) in CSR form: row r's nonzeros are
    data[indptr[r]:indptr[r+1]] at columns indices[indptr[r]:indptr[r+1]], in column order.

    indptr is int64; indices uint16 when cols <= 65536, else uint32."""
    __slots__ = ("shape", "indptr", "indices", "data", "__weakref__")

    def __init__(self, shape, indptr, indices, data):
        self.shape = (int(shape[0]), int(shape[1]))
        self.indptr = np.ascontiguousarray(indptr, np.int64)
        self.indices = np.ascontiguousarray(indices, index_dtype(self.shape[1]))
        self.data = np.ascontiguousarray(data, np.float32)
        if self.indptr.shape != (self.shape[0] + 1,) or self.indptr[0] != 0 or \
                self.indptr[-1] != self.data.size or self.indices.size != self.data.size:
            raise CaffeLiteError(f"inconsistent CSR arrays for shape {self.shape}: indptr "
                                 f"{self.indptr.size} entries ending at {self.indptr[-1]}, "
                                 f"{self.indices.size} indices, {self.data.size} values")

    @classmethod
    def from_dense(cls, a):
        """The nonzeros of the 2-D array `a` (float32; -0.0 counts as zero, NaN as nonzero)."""
        a = np.asarray(a, np.float32)
        if a.ndim != 2:
            raise CaffeLiteError(f"CSRMatrix.from_dense needs a 2-D array, got shape {a.shape}")
        rows, cols = a.shape
        nz = a != 0
        indptr = np.zeros(rows + 1, np.int64)
        np.cumsum(np.count_nonzero(nz, axis=1), out=indptr[1:])
        flat = np.flatnonzero(nz)
        return cls((rows, cols), indptr, (flat % max(cols, 1)).astype(index_dtype(cols)),
                   a.reshape(-1)[flat])

    @classmethod
    def from_weight(cls, weight, group=1, transpose=False):
        """The weight of a layer as the matrix its forward multiplies by.

        InnerProduct: weight (N, K), or (K, N) with transpose=True -> (N, K).
        Convolution: weight (Cout, Cin/group, *kernel) -> (Cout, Cin * kernel_count), block
        diagonal over the groups: filter o of group g = o // (Cout/group) reads columns
        g*Cg*K .. (g+1)*Cg*K - 1 of the im2col columns (Cin * kernel_count, positions)."""
        w = np.asarray(weight, np.float32)
        if transpose:
            w = w.T
        rows = w.shape[0]
        m = cls.from_dense(w.reshape(rows, -1))
        if group == 1:
            return m
        per_group = m.shape[1]
        counts = np.diff(m.indptr)
        offsets = np.repeat(np.arange(rows, dtype=np.int64) // (rows // group), counts)
        cols = per_group * group
        indices = m.indices.astype(np.int64) + offsets * per_group
        return cls((rows, cols), m.indptr, indices, m.data)

    def to_dense(self):
        out = np.zeros(self.shape, np.float32)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        out[rows, self.indices] = self.data
        return out

    @property
    def nnz(self):
        return int(self.data.size)

    @property
    def density(self):
        return self.nnz / max(1, self.shape[0] * self.shape[1])

    @property
    def nbytes(self):
        return self.indptr.nbytes + self.indices.nbytes + self.data.nbytes

    def __repr__(self):
        return (f"CSRMatrix(shape={self.shape}, nnz={self.nnz}, density={self.density:.3f}, "
                f"indices={self.indices.dtype})")


def index_dtype(cols):
    return np.uint16 if cols <= _U16_COLUMNS else np.uint32


# --- choosing the path per layer --------------------------------------------------------------
def check_mode(mode, what="sparse mode"):
    """A mode name ("auto", "sparse", "dense", any case), or None for None (the default)."""
    if mode is None:
        return None
    m = str(mode).strip().lower()
    if m not in MODES:
        raise SparseConfigError(f"{what}: unknown mode '{mode}'; expected one of "
                                f"{', '.join(MODES)}")
    return m


def sparse_layers(net):
    """{name: layer} of the layers that have a sparse path (InnerProduct, Convolution and the
    types built on them)."""
    return {name: layer for name, layer in net.layer_dict.items()
            if getattr(layer, "sparse", None) is not None}


def load_spec(source):
    """A SparseInferenceSpec from a path, its text, or the message itself."""
    from ..io.prototxt import load_message
    from ..proto import caffe_lite_pb2
    if isinstance(source, caffe_lite_pb2.SparseInferenceSpec):
        return source
    spec, _ = load_message(source, caffe_lite_pb2.SparseInferenceSpec,
                           "sparse inference spec")
    return spec


def _spec_modes(spec):
    from ..proto import caffe_lite_pb2
    name = caffe_lite_pb2.SparseInferenceSpec.Mode.Name
    default = name(spec.mode).lower() if spec.HasField("mode") else None
    per_layer = {}
    for entry in spec.layer:
        if not entry.name:
            raise SparseConfigError("sparse inference spec: a layer entry has no name")
        if not entry.HasField("mode"):
            raise SparseConfigError(f"sparse inference spec: layer '{entry.name}' has no mode")
        per_layer[entry.name] = name(entry.mode).lower()
    return default, per_layer


def configure(net, setting):
    """Set the sparse-inference mode of a net's layers; returns the net.

    setting: a mode ("auto", "sparse", "dense") for every layer with a sparse path; a dict
    {layer name: mode} (other layers unchanged); or a SparseInferenceSpec (path, text or
    message: its `mode` for every layer, then its per-layer entries).  Every name and mode is
    checked before anything changes."""
    layers = sparse_layers(net)
    if isinstance(setting, dict):
        default, per_layer = None, {k: check_mode(v, f"layer '{k}'") for k, v in
                                    setting.items()}
    elif isinstance(setting, str) and setting.strip().lower() in MODES:
        default, per_layer = check_mode(setting), {}
    elif isinstance(setting, str) and not any(c in setting for c in ":{\n") and \
            not os.path.exists(setting):
        raise SparseConfigError(f"sparse inference: '{setting}' is neither a mode "
                                f"({', '.join(MODES)}) nor a spec file")
    else:
        default, per_layer = _spec_modes(load_spec(setting))
    unknown = [n for n in per_layer if n not in layers]
    if unknown:
        raise SparseConfigError(
            f"net '{net.name}': no InnerProduct or Convolution layer named "
            f"{', '.join(repr(n) for n in unknown)}; layers with a sparse path: "
            f"{', '.join(layers) or 'none'}")
    for name, layer in layers.items():
        mode = per_layer.get(name, default)
        if mode is not None:
            layer.sparse.mode = mode
    return net


def report(net):
    """Per layer with a sparse path: its weight's density and size dense and as CSR, its mode,
    and what its last forward ran ("sparse", "dense", or "-" before any forward) and why."""
    rows = []
    for name, layer in sparse_layers(net).items():
        path = layer.sparse
        w = layer.blobs[0]
        density = path.density
        nnz = int(round(density * w.count))
        n_rows = w.shape[1] if path.transpose else w.shape[0]
        cols = w.count // max(1, n_rows) * path.group
        csr_bytes = 8 * (n_rows + 1) + nnz * (4 + np.dtype(index_dtype(cols)).itemsize)
        rows.append({
            "layer": name, "type": layer.type, "shape": tuple(w.shape),
            "density": density, "nnz": nnz, "dense_bytes": 4 * w.count,
            "csr_bytes": csr_bytes, "mode": path.mode or _default_mode(),
            "ran": ("-" if path._why is None else
                    "sparse" if path.active else "dense"),
            "reason": path.reason})
    return rows


def _default_mode():
    from ..layers.sparse import default_mode
    return default_mode()


def format_report(rows):
    lines = [f"{'layer':<16} {'type':<14} {'density':>8} {'dense KB':>9} {'CSR KB':>8} "
             f"{'mode':<7} {'ran':<7} reason"]
    for r in rows:
        lines.append(f"{r['layer']:<16} {r['type']:<14} {r['density']:8.3f} "
                     f"{r['dense_bytes'] / 1024:9.1f} {r['csr_bytes'] / 1024:8.1f} "
                     f"{r['mode']:<7} {r['ran']:<7} {r['reason']}")
    return "\n".join(lines)


# --- timing -----------------------------------------------------------------------------------
def inference_net(model, weights=None, batch=None, data=None, seed=0):
    """A TEST-phase Net of `model` (prototxt) with `weights` (caffemodel path(s)), its inputs
    reshaped to `batch` and filled with `data` (an array for the first input) or uniform
    random values."""
    from ..net import Net
    from ..proto import caffe_pb2
    net = Net(model, caffe_pb2.TEST)
    for w in ([weights] if isinstance(weights, (str, os.PathLike)) else weights or []):
        net.copy_from(w)
    if batch is not None and batch < 1:
        raise CaffeLiteError(f"batch must be at least 1, got {batch}")
    g = np.random.default_rng(seed)
    for i, name in enumerate(net.inputs):
        b = net.blobs[name]
        if i == 0 and data is not None:
            data = np.asarray(data, np.float32)
            b.reshape(data.shape)
            b.data[...] = data
            continue
        if batch is not None and b.num_axes:
            b.reshape((batch,) + tuple(b.shape[1:]))
        b.data[...] = g.uniform(0, 1, b.shape)
    net.reshape()
    return net


def time_model(model, weights=None, batch=1, data=None, sparse_mode="sparse", repeats=50):
    """Dense vs sparse forward of a deploy prototxt + (pruned) caffemodel, as time_forward
    measures it (e.g. the MNIST example's last stage: `time_model("lenet.prototxt",
    "pruned.caffemodel")`)."""
    net = inference_net(model, weights, batch, data)
    configure(net, sparse_mode)
    net.forward_from_to()
    return time_forward(net, sparse_mode, repeats=repeats)


def time_forward(net, sparse_mode="sparse", repeats=50, warmup=5, per_layer=True):
    """Median forward times of `net` on the dense path and with `sparse_mode` ("sparse",
    "auto", or None: each layer's mode as configured), measured alternately in one run (so
    that load on the machine hits both alike).

    The net's inputs are used as they are (fill them first).  Returns {"dense_ms",
    "sparse_ms", "speedup" (dense / sparse), "layers": {name: {"dense_ms", "sparse_ms",
    "speedup", "ran"}} for the layers with a sparse path}.  The layers' modes are restored
    afterwards."""
    layers = sparse_layers(net)
    saved = {name: layer.sparse.mode for name, layer in layers.items()}
    modes = ("dense", check_mode(sparse_mode) or "configured")
    index = {name: i for i, name in enumerate(net.layer_names)}
    totals = {m: [] for m in modes}
    per = {m: {name: [] for name in layers} for m in modes}
    ran = {}
    try:
        for it in range(warmup + repeats):
            for m in modes:
                for name, layer in layers.items():
                    layer.sparse.mode = saved[name] if m == "configured" else m
                t0 = time.perf_counter()
                net.forward_from_to()
                elapsed = time.perf_counter() - t0
                if it >= warmup:
                    totals[m].append(elapsed)
                if per_layer and it >= warmup:
                    for name, layer in layers.items():
                        i = index[name]
                        t0 = time.perf_counter()
                        layer.forward(net.bottom_vecs[i], net.top_vecs[i])
                        per[m][name].append(time.perf_counter() - t0)
                        if m != "dense":
                            ran[name] = "sparse" if layer.sparse.active else "dense"
    finally:
        for name, layer in layers.items():
            layer.sparse.mode = saved[name]

    def ms(values):
        return 1e3 * float(np.median(values)) if values else math.nan
    out = {"dense_ms": ms(totals["dense"]), "sparse_ms": ms(totals[modes[1]])}
    out["speedup"] = out["dense_ms"] / out["sparse_ms"]
    out["layers"] = {}
    if per_layer:
        for name in layers:
            d, s = ms(per["dense"][name]), ms(per[modes[1]][name])
            out["layers"][name] = {"dense_ms": d, "sparse_ms": s, "speedup": d / s,
                                   "ran": ran.get(name, "-")}
    return out
