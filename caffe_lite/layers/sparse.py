"""Sparse inference: InnerProduct and Convolution computing their forward product from a CSR
copy of their weight (caffe_lite/compression/sparse.py), when that is faster than the dense
product.

Each such layer owns a `SparsePath` (`layer.sparse`) and asks it once per forward:
`csr = self.sparse.choose(columns)`; None means "run dense".  `columns` says how much dense
work each nonzero weight meets: the batch for InnerProduct, the output positions of one image
for Convolution.  The sparse path runs when:

  * mode "dense": never;
  * mode "sparse": whenever the layer can (InnerProduct; Convolution on the im2col engine, any
    group, stride, pad, dilation; not Deconvolution, not the depthwise kernel) and the device
    has the kernels (CPU: numba; GPU: layers/kernels/sparse.cu), in any phase;
  * mode "auto" (the default): as "sparse", and only on the CPU, and only where no weight
    gradient is needed (the layer is in the TEST phase, or every parameter of it has
    lr_mult 0), and only when the weight's density is below the break-even density measured
    for this kind of product and number of columns (BREAK_EVEN below).

Backward always uses the dense weight: training keeps its masked dense path.  The CSR copy is
rebuilt when the weight's data has changed (Blob.data_version: a new caffemodel, a solver
step of a net sharing the weight, pruning); a dense layer pays one count of its nonzeros per
change of its weight, in the phases where "auto" looks at it.

A NaN or infinite input that meets a zero weight gives NaN on the dense path (0 x inf) and is
skipped on the sparse one; otherwise outputs equal the dense path's to float32 rounding."""
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..compression.sparse import CSRMatrix, check_mode
from ..proto import caffe_pb2
from ..util import env
from . import jit, parallel
from .im2col import Scratch
from .parallel import MIN_PARALLEL_MACS, num_threads, run_tasks

_NO_BIAS = np.zeros(0, np.float32)

# Break-even densities (fraction of nonzero weights) below which the sparse CPU product beats
# the dense one, per kind of product, as (most columns, density) steps: the first entry whose
# column count is >= the layer's applies.  Columns: the batch for InnerProduct; the output
# positions of one image for Convolution (each nonzero weight meets a run that long per
# image).  About the smallest break-even measured by benchmarks/sparse_thresholds.py on
# 2026-12-04 (benchmarks/results/sparse-thresholds-2026-12-04.json, docs/performance.md):
#   InnerProduct  batch 1: 0.20 (LeNet ip1) .. 0.35 (AlexNet fc8); batch 2-256: 0.09 .. 0.36
#   Convolution   7x7 outputs: 0.17 .. 0.26; 8x8 .. 14x14: 0.35 .. 0.69; 28x28: 0.47 .. 0.65
BREAK_EVEN = {
    "ip": ((1, 0.2), (math.inf, 0.1)),
    "conv": ((63, 0.15), (783, 0.35), (math.inf, 0.45)),
}


def break_even(kind, columns):
    for most, density in BREAK_EVEN[kind]:
        if columns <= most:
            return density
    return 0.0


def default_mode():
    """The mode of layers not configured otherwise: CAFFE_LITE_SPARSE, else "auto"."""
    value = env.get("CAFFE_LITE_SPARSE") or "auto"
    mode = _checked_modes.get(value)
    if mode is None:
        mode = _checked_modes[value] = check_mode(value, "CAFFE_LITE_SPARSE") or "auto"
    return mode


_checked_modes = {}


class SparsePath:
    """The sparse side of one layer: its mode, the CSR copy of its weight (kept while the
    weight's data is unchanged) and the last decision with its reason.

    kind: "ip" or "conv" (the BREAK_EVEN row), or None with `unsupported` saying why the layer
    cannot run sparse; group and transpose describe how the weight blob maps to the matrix
    (CSRMatrix.from_weight)."""

    def __init__(self, layer, kind, group=1, transpose=False, unsupported=""):
        self.layer = layer
        self.kind = kind
        self.group = group
        self.transpose = transpose
        self.unsupported = unsupported
        self._mode = None           # None: default_mode()
        self.kernels = None         # the numba kernels, as the last CPU choose() found them
        self.active = False         # what the last choose() decided
        self._why = None
        self.scratch = Scratch()
        self.offsets = {}           # column-offset table (or convolution plan) of one shape
        self._version = None
        self._density = None
        self._csr = None
        self._choice_key = self._choice = None

    # --- the weight's sparse copy --------------------------------------------------------
    def _refresh(self):
        blob = self.layer.blobs[0]
        version = blob.data_version
        if version != self._version:
            self._csr = None
            self._density = np.count_nonzero(blob.cpu_data) / max(1, blob.count)
            self._version = version

    @property
    def density(self):
        """Fraction of nonzero weights (as the weight's data is now)."""
        self._refresh()
        return self._density

    def matrix(self):
        """The CSR copy of the weight, built if the weight changed since the last one."""
        self._refresh()
        if self._csr is None:
            self._csr = CSRMatrix.from_weight(self.layer.blobs[0].cpu_data, self.group,
                                              self.transpose)
        return self._csr

    def _kernels(self):
        self.kernels = jit.kernels("sparse")
        return self.kernels

    # --- the decision --------------------------------------------------------------------
    def _needs_weight_gradient(self):
        layer = self.layer
        return layer.phase != caffe_pb2.TEST and any(layer.param_propagate_down)

    def choose(self, columns, gpu=False):
        """The CSR weight to run this forward on, or None for the dense path (decided again
        when the mode, the column count, the device, the weight's data or CAFFE_LITE_JIT
        changed since the last call)."""
        mode = self.mode or default_mode()
        key = (mode, columns, gpu, self.layer.blobs[0].data_version, jit.enabled(),
               any(self.layer.param_propagate_down))
        if key == self._choice_key:
            return self._choice
        csr = self._decide(mode, columns, gpu)
        self._choice_key, self._choice = key, csr
        return csr

    def chooser(self, columns):
        """A callable giving choose(columns) on the CPU, for a step prepared in a Net's plan:
        the plan's key covers the environment's settings (CAFFE_LITE_JIT, CAFFE_LITE_SPARSE;
        plan.current_key), and param_propagate_down is fixed once the net is built, so it
        decides again only when the layer's mode or its weight's data changed."""
        layer = self.layer
        seen = [None, None]     # (mode, weight data version), the choice

        def choice():
            state = (self.mode, layer.blobs[0].data_version)
            if state != seen[0]:
                seen[1] = self.choose(columns)
                seen[0] = state
            return seen[1]
        # (what it reads besides the weight's version, the mode, moves parallel.changes)
        choice.watch = (layer.blobs[0]._data.mem,)
        return choice

    @property
    def mode(self):
        """"dense", "sparse", "auto" or None (default_mode())."""
        return self._mode

    @mode.setter
    def mode(self, value):
        self._mode = value
        parallel.changes += 1   # (a native program's ready checks read it: layers/program.py)

    def _decide(self, mode, columns, gpu):
        csr, why = None, None
        if mode == "dense":
            why = ("mode dense",)
        elif self.kind is None:
            why = (self.unsupported,)
        elif mode == "auto" and gpu:
            why = ("auto: no thresholds measured on a GPU (mode sparse forces it)",)
        elif mode == "auto" and self._needs_weight_gradient():
            why = ("auto: weights are trained (TRAIN phase, lr_mult != 0)",)
        elif not gpu and self._kernels() is None:
            why = ("no compiled kernels (numba absent or CAFFE_LITE_JIT=0)",)
        else:
            density = self.density
            limit = break_even(self.kind, columns) if mode == "auto" else None
            if limit is None or density < limit:
                csr = self.matrix()
            why = (mode, density, limit, columns)
        self.active = csr is not None
        self._why = why     # formatted only when asked for (this runs every forward)
        return csr

    @property
    def reason(self):
        """Why the last forward ran the path it ran."""
        why = self._why
        if why is None:
            return "not run yet"
        if len(why) == 1:
            return why[0]
        mode, density, limit, columns = why
        if limit is None:
            return f"{mode}: density {density:.3f}"
        return (f"auto: density {density:.3f} {'<' if self.active else '>='} break-even "
                f"{limit:.3f} at {columns} columns")


# --- CPU products -----------------------------------------------------------------------------
# Split over the pool under the same rule as the dense products (parallel.MIN_PARALLEL_MACS):
# handing work to another thread costs 20-50 us on an idle machine, and far more when that
# thread has to wait for a busy core.  Work is counted in multiply-adds of the many-column
# kernel; one nonzero of a matrix-vector product (a gather) costs about as much as 4 of them
# (0.5 ns against 0.1-0.2 ns per weight of a dense matrix-vector product).
MIN_PARALLEL_WORK = MIN_PARALLEL_MACS
GEMV_WORK_PER_NONZERO = 4


def _run_rows(csr, work, fn):
    """fn(r0, r1) over row ranges with about equal numbers of nonzeros, one per thread (one
    range in all when `work` is too small to be worth splitting)."""
    rows = csr.shape[0]
    threads = 1 if work < MIN_PARALLEL_WORK else min(num_threads(), rows)
    if threads <= 1:
        fn(0, rows)
        return
    cuts = np.searchsorted(csr.indptr, np.linspace(0, csr.nnz, threads + 1)[1:-1])
    bounds = [0] + sorted(set(int(c) for c in cuts if 0 < c < rows)) + [rows]
    run_tasks([lambda a=a, b=b: fn(a, b) for a, b in zip(bounds[:-1], bounds[1:])])


def _tile(run_bytes_per_position, positions):
    """Positions per tile: all of them while one tile of every input run fits in 1 MiB, else
    even tiles of at most 512 KiB, but never fewer than 256 positions (shorter runs cost more
    in loop overhead than the cache saves: an InnerProduct's batch is never split)."""
    total = run_bytes_per_position * positions
    if total <= 1 << 20 or positions <= 512:
        return max(positions, 1)
    pieces = -(-total // (1 << 19))
    return max(256, -(-positions // pieces))


def spmm(path, csr, col_offset, src, bias, y):
    """y (n, R, L) = csr (R, K) x the runs of src (n, S) at col_offset (see
    numba/sparse.py:csr_spmm) (+ bias (R,)), on the thread pool."""
    k = path.kernels
    b = _NO_BIAS if bias is None else bias
    n, _, length = y.shape
    tile = _tile(4 * csr.shape[1], length)
    _run_rows(csr, csr.nnz * n * length,
              lambda r0, r1: k.csr_spmm(csr.indptr, csr.indices, csr.data, col_offset, src, b,
                                        y, r0, r1, tile))


def _offsets(path, key, make):
    """A column-offset table kept per layer and shape."""
    cache = path.offsets
    if cache.get("key") != key:
        cache.clear()
        cache["key"] = key
        cache["table"] = make()
    return cache["table"]


def inner_product(path, csr, x, bias, y):
    """y (M, N) = x (M, K) x W^T (+ bias) with W as csr (N, K)."""
    k = path.kernels
    b = _NO_BIAS if bias is None else bias
    m, kk = x.shape
    if m == 1:
        x1, y1 = x[0], y[0]
        _run_rows(csr, csr.nnz * GEMV_WORK_PER_NONZERO,
                  lambda r0, r1: k.csr_gemv(csr.indptr, csr.indices, csr.data, x1, b, y1, r0,
                                            r1))
        return
    xt = path.scratch.get("xt", (kk, m))
    np.copyto(xt, x.T)
    yt = path.scratch.get("yt", (1, y.shape[1], m))
    offsets = _offsets(path, ("ip", m), lambda: np.arange(kk, dtype=np.int64) * m)
    spmm(path, csr, offsets, xt.reshape(1, -1), b, yt)
    np.copyto(y, yt[0].T)


# Direct convolution computes (padded width / output width) - 1 more products than im2col's
# (the discarded columns of the wide output rows); up to this factor it still saves the
# im2col copy, which costs the same at any density.
MAX_DIRECT_WASTE = 2.0


class _ConvPlan:
    """How a convolution of one input shape runs on a CSR weight: "1x1" (the input is the
    columns), "direct" (stride 1: each weight's column meets a run of the zero-padded input,
    output rows come out as wide as the padded input), or "im2col" (the GemmEngine's
    columns)."""

    def __init__(self, layer, csr_cols):
        eng = layer.engine
        g = eng.geom
        cin, p = eng.conv_in, eng.out_count
        self.num = eng.num
        if g.is_1x1:
            self.kind = "1x1"
            self.offsets = np.arange(cin, dtype=np.int64) * p
            return
        padded = tuple(i + 2 * q for i, q in zip(eng.in_spatial, g.pad))
        strides = [1] * len(padded)
        for a in range(len(padded) - 2, -1, -1):
            strides[a] = strides[a + 1] * padded[a + 1]
        out = eng.out_spatial
        wide = 1 + sum((o - 1) * st for o, st in zip(out, strides))
        if all(s == 1 for s in g.stride) and wide <= MAX_DIRECT_WASTE * p:
            self.kind = "direct"
            plane = math.prod(padded)
            taps = np.array([sum(t * d * st for t, d, st in zip(tap, g.dilation, strides))
                             for tap in g.taps()], np.int64)
            self.offsets = (np.arange(cin, dtype=np.int64)[:, None] * plane
                            + taps[None, :]).reshape(-1)
            # the zero-bordered input (its interior is written per call) or None (no pad)
            self.padded = (np.zeros((self.num, cin) + padded, np.float32) if any(g.pad)
                           else None)
            self.interior = (slice(None), slice(None)) + tuple(
                slice(q, q + i) for q, i in zip(g.pad, eng.in_spatial))
            self.wide = np.empty((self.num, layer.conv_out, wide), np.float32)
            self.wide_out = as_strided(self.wide, (self.num, layer.conv_out) + tuple(out),
                                       self.wide.strides[:2] + tuple(4 * s for s in strides),
                                       writeable=False)
        else:
            self.kind = "im2col"
            self.offsets = np.arange(cin * g.kernel_count, dtype=np.int64) * p
        assert self.offsets.size == csr_cols


def convolution(path, csr, x, bias, y):
    """The convolution's forward, y (num, Cout, *out) = conv(x, W) (+ bias), with W as csr
    (Cout, Cin * kernel_count) (block diagonal over the groups)."""
    layer = path.layer
    eng = layer.engine
    key = ("conv", eng.num, eng.in_spatial, eng.out_spatial)
    plan = _offsets(path, key, lambda: _ConvPlan(layer, csr.shape[1]))
    num, rows, p = eng.num, csr.shape[0], eng.out_count
    if plan.kind == "1x1":
        spmm(path, csr, plan.offsets, x.reshape(num, -1), bias, y.reshape(num, rows, p))
    elif plan.kind == "direct":
        if plan.padded is not None:
            plan.padded[plan.interior] = x
            src = plan.padded
        else:
            src = x
        spmm(path, csr, plan.offsets, src.reshape(num, -1), bias, plan.wide)
        np.copyto(y, plan.wide_out)
    else:
        for n0, n1 in eng._chunks():
            col = eng._im2col(x, n0, n1)
            spmm(path, csr, plan.offsets, col.reshape(n1 - n0, -1), bias,
                 y[n0:n1].reshape(n1 - n0, rows, p))
