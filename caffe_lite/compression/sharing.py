"""Fine-tuning shared weights: a solver callback that keeps each quantised layer's clusters
tied while any solver trains them.

After backward (`on_gradients_ready`) every live weight's gradient is replaced by its
cluster's summed gradient (Han et al.: the shared value's gradient), or by the mean with
gradient "mean".  Every member of a cluster then holds the same value, gradient and solver
history, so each solver's element-wise update (momentum, AdaGrad / RMSProp / AdaDelta / Adam
statistics, L1 / L2 decay, clipping's common factor, iter_size normalisation, the mask) moves
them identically: they stay bit-identical, and the shared value moves as one parameter whose
gradient is the sum.  (Weight decay thus acts once per shared value, as on any parameter;
clipping measures the norm over the weights, each member counting.)

    ws = WeightSharing(solver, "conv=8,fc=5").attach()    # quantises the net now
    solver.step(1000)
    ws.codebooks()["ip1"].values                          # the trained shared values

The cluster assignment is saved in snapshots (the `.masks` sidecar, as this callback's
`state_dict()`), so `-snapshot` resumes with the same clusters; a snapshot taken without
weight sharing is quantised afresh at the first iteration after it is restored.  Masks may
shrink while sharing (gradual pruning): a pruned weight just leaves its cluster."""
import logging

import numpy as np

from ..errors import ModelFileError, SolverError
from ..proto import caffe_lite_pb2
from ..pruning.spec import load_spec
from ..solvers import cuda
from .quantize import Codebook, build_codebook, make_plan

log = logging.getLogger("caffe_lite")

GRADIENTS = ("sum", "mean")


class _Layer:
    """One quantised weight: its blob, solver param index and cluster labels."""

    def __init__(self, name, blob, param_index, labels, bits):
        self.name, self.blob, self.param_index, self.bits = name, blob, param_index, bits
        self.set_labels(labels)

    def set_labels(self, labels):
        self.labels = np.asarray(labels, np.int32).ravel()
        self.k = int(self.labels.max()) + 1 if self.labels.size else 0
        self.live = np.flatnonzero(self.labels >= 0)
        self.live_labels = self.labels[self.live].astype(np.intp)
        self.counts = np.bincount(self.live_labels, minlength=self.k)
        self.n_live = self.live.size

    def cluster_mean(self, flat):
        s = np.bincount(self.live_labels, weights=flat[self.live], minlength=self.k)
        return s / np.maximum(self.counts, 1)

    def first_members(self):
        """Flat index of one member of each non-empty cluster (-1 for an empty one)."""
        first = np.full(self.k, -1, np.int64)
        first[self.live_labels[::-1]] = self.live[::-1]
        return first


class WeightSharing:
    """Quantise the solver's net (see quantize.py) and keep the clusters tied while it trains.

    `bits`: text ("conv=8,fc=5") or {key: bits}; `spec`: a PruningSpec (its quantize block and
    layer bits), its text or a path; `gradient`: "sum" (Han et al.) or "mean"."""
    state_key = "WeightSharing"

    def __init__(self, solver, bits=None, spec=None, gradient=None, max_iter=None):
        self.solver = solver
        sp = None
        if spec is not None:
            sp = load_spec(spec) if not isinstance(spec, caffe_lite_pb2.PruningSpec) else spec
        q = sp.quantize if sp is not None else caffe_lite_pb2.Quantization()
        self.gradient = gradient or q.gradient
        if self.gradient not in GRADIENTS:
            raise SolverError(f"weight sharing: gradient must be one of {', '.join(GRADIENTS)}, "
                              f"got '{self.gradient}'")
        self.max_iter = int(max_iter if max_iter is not None else q.max_iter)
        self.plan = make_plan(solver.net, bits, sp)
        self.layers = []
        self._verified = False

    # --- setting up ------------------------------------------------------------------------
    def attach(self):
        """Quantise the net now (k-means, or the values it already shares), tie the solver's
        history per cluster, and register as a solver callback."""
        self._quantize()
        s = self.solver
        if self not in s.callbacks:
            s.callbacks.append(self)
        return self

    def _quantize(self):
        net = self.solver.net
        self.layers = []
        for name, bits in self.plan.items():
            blob = net.layer_dict[name].blobs[0]
            book = build_codebook(blob.cpu_data, blob.cpu_mask, bits, self.max_iter)
            blob.data[...] = book.weights(blob.shape)
            pid = next(i for i, p in enumerate(net.learnable_params) if p is blob)
            self.layers.append(_Layer(name, blob, pid, book.labels, bits))
            log.info("Weight sharing %s: %d weights in %d shared values (%d bits%s)", name,
                     int((book.labels >= 0).sum()), book.size, bits,
                     f", {book.iterations} k-means iterations" if book.iterations else
                     ", values adopted")
        self.tie_history()
        self._verified = False      # checked once more at the first iteration

    def tie_history(self):
        """Set the solver history (momentum, squared-gradient sums, ...) of every cluster to
        its members' mean, so that the members' updates agree from the first step."""
        s = self.solver
        cuda.sync_history_to_host(s)
        n = s.n_params
        for L in self.layers:
            for k in range(s.history_per_param):
                h = s.history[L.param_index + k * n].reshape(-1)
                if L.k:
                    h[L.live] = L.cluster_mean(h)[L.live_labels].astype(np.float32)

    def _follow_masks(self):
        """Weights pruned since the clusters were made leave them (masks only shrink)."""
        for L in self.layers:
            mask = L.blob.cpu_mask
            if mask is None or int(np.count_nonzero(mask)) == L.n_live:
                continue
            labels = L.labels.copy()
            labels[mask.reshape(-1) == 0] = -1
            L.set_labels(labels)
            log.info("Weight sharing %s: %d weights left after pruning", L.name, L.n_live)

    # --- solver callback -------------------------------------------------------------------
    def on_start(self, solver):
        self._follow_masks()
        if not self._verified:
            # Weights replaced since the clusters were made, without clusters of their own
            # (a restored snapshot taken without weight sharing): share them afresh.
            self._verified = True
            if any(self.untied().values()):
                log.info("Weight sharing: the weights changed since they were quantised "
                         "(restored without clusters); quantising them again")
                self._quantize()

    def on_gradients_ready(self, solver):
        for L in self.layers:
            if not L.k:
                continue
            g = L.blob.diff.reshape(-1)
            s = np.bincount(L.live_labels, weights=g[L.live], minlength=L.k)
            if self.gradient == "mean":
                s /= np.maximum(L.counts, 1)
            g[L.live] = s.astype(np.float32)[L.live_labels]

    # --- results ---------------------------------------------------------------------------
    def codebooks(self):
        """{layer: Codebook} with the current shared values (read from the weights)."""
        out = {}
        for L in self.layers:
            flat = L.blob.cpu_data.reshape(-1)
            first = L.first_members()
            values = np.where(first >= 0, flat[np.maximum(first, 0)], 0).astype(np.float32)
            out[L.name] = Codebook(values, L.labels.copy(), L.bits)
        return out

    def untied(self):
        """{layer: number of live weights that differ (bitwise) from their cluster's first
        member}; all zeros while the sharing holds."""
        out = {}
        for L in self.layers:
            flat = L.blob.cpu_data.reshape(-1).view(np.uint32)
            first = L.first_members()
            out[L.name] = int(np.count_nonzero(flat[L.live] != flat[first[L.live_labels]]))
        return out

    # --- persistence -----------------------------------------------------------------------
    def state_dict(self):
        state = {"layers": [L.name for L in self.layers], "bits": [L.bits for L in self.layers],
                 "gradient": self.gradient}
        for i, L in enumerate(self.layers):
            state[f"labels_{i}"] = L.labels.astype(np.int16 if L.k <= 32767 else np.int32)
        return state

    def load_state_dict(self, state):
        names = list(state.get("layers", []))
        mine = [L.name for L in self.layers]
        if names != mine:
            raise ModelFileError(f"the snapshot shares the weights of layers {names}, this run "
                                 f"those of {mine}: use the same quantisation as the snapshot")
        if state.get("gradient", self.gradient) != self.gradient:
            log.warning("The snapshot fine-tuned with gradient '%s'; continuing with '%s'",
                        state.get("gradient"), self.gradient)
        for i, L in enumerate(self.layers):
            labels = np.asarray(state[f"labels_{i}"]).ravel()
            if labels.size != L.blob.count or labels.max(initial=-1) >= (1 << 16):
                raise ModelFileError(f"the snapshot's clusters of '{L.name}' do not fit its "
                                     f"weight ({labels.size} labels, {L.blob.count} weights)")
            L.set_labels(labels)
        bad = {k: v for k, v in self.untied().items() if v}
        if bad:
            log.warning("The restored weights are not tied to the snapshot's clusters (%s); "
                        "setting each cluster to its mean", bad)
            for L in self.layers:
                if L.name in bad:
                    flat = L.blob.data.reshape(-1)
                    flat[L.live] = L.cluster_mean(flat)[L.live_labels].astype(np.float32)
            self.tie_history()
