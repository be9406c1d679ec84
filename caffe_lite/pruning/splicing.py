"""Dynamic Network Surgery (Guo, Yao & Chen 2016): pruning with splicing while fine-tuning, as a
solver callback.

    spec:  method: "dns"
           layer { name: "ip1" sparsity: 0.985 } ...
           dns { frequency: 10 end_iter: 8000 margin: 0.1 }
           gradual { begin_iter: 0 num_steps: 20 frequency: 200 }   # optional: ramp the targets

    DnsPruner(solver, spec).attach(); solver.solve()        # or caffe-lite train -prune_spec

Every pruned layer's weight W keeps a *shadow* W~ that receives the solver's full update (its
momentum, weight decay, learning rate), pruned entries included, while the net computes with
W = W~ * T.  So the gradient of a pruned weight keeps moving its shadow, and a weight pruned
by mistake comes back.  Every `frequency` iterations the mask T is recomputed from |W~| with
two thresholds around a centre c:

    |w~| <  (1 - margin) c   ->  T = 0 (pruned)
    |w~| >= (1 + margin) c   ->  T = 1 (kept, or spliced back in)
    otherwise                ->  T as it was (hysteresis: no flapping at the threshold)

DNS derived c from the mean and std of |W|; here c is placed so that the layer lands exactly
on its target sparsity (splice_mask), which is what a spec's `sparsity` promises.

At end_iter the masks freeze: the shadows are dropped, the history (momentum, ...) of pruned
entries is zeroed, and from then on the usual invariant holds (masks only shrink, pruned
weights stay 0).  DNS's splicing phase is the one place where that invariant is suspended,
and only for the layers it prunes.

Between iterations the net always holds the masked weights and the blob masks hold T, so a
test, a snapshot's caffemodel (W~ * T) and its `.masks` sidecar (T) look like any pruned
net's; the shadows travel in the sidecar as this callback's state (arrays in the .npz), so
`-snapshot` resumes bit for bit.  Per iteration: on_start drops the blob masks (gradients then
reach pruned entries), on_gradients_ready puts W~ in place for the solver to update,
on_update_done takes the new W~, recomputes T when due and writes W~ * T back."""
import logging

import numpy as np

from ..proto import caffe_lite_pb2
from .result import _round
from .schedule import cubic_sparsity
from .spec import PruningError, check_sparsity, load_spec, make_plan, prunable_layers

log = logging.getLogger("caffe_lite")


def centre_threshold(w, sparsity):
    """The round(sparsity * n)-th smallest |w| (0-based): |w| below it are the targets."""
    a = np.abs(np.asarray(w, np.float32)).ravel()
    k = _round(sparsity * a.size)
    if k <= 0:
        return 0.0
    if k >= a.size:
        return float(np.nextafter(a.max(), np.float32(np.inf)))
    return float(np.partition(a, k)[k])


def splice_mask(shadow, previous, sparsity, margin):
    """DNS's mask update: a kept weight is pruned when |w~| < (1 - margin) c, a pruned one
    spliced back when |w~| >= (1 + margin) c, any other keeps its state.  The centre c is
    chosen so that exactly round(sparsity * n) weights end up pruned (ties aside): a weight is
    pruned iff c exceeds its trigger, |w~| / (1 - margin) if kept, |w~| / (1 + margin) if
    pruned, so c is the round(sparsity * n)-th smallest trigger.  Returns (mask, c)."""
    a = np.abs(np.asarray(shadow, np.float32))
    prev = np.ones(a.shape, bool) if previous is None else np.asarray(previous) != 0
    lo_f, hi_f = np.float32(1.0 - margin), np.float32(1.0 + margin)
    trigger = np.where(prev, a / lo_f, a / hi_f)
    c = centre_threshold(trigger, sparsity)
    lo, hi = np.float32(lo_f * c), np.float32(hi_f * c)
    pruned = np.where(prev, a < lo, a < hi)
    return ~pruned, c


class DnsPruner:
    """The DNS solver callback (see the module doc).  `spec`: a PruningSpec, its text or a
    path; `sparsity` overrides its default target; `dns` (a DnsSplicing or a dict of its
    fields) overrides its dns block."""
    state_key = "DNS"

    def __init__(self, solver, spec=None, sparsity=None, dns=None):
        self.solver = solver
        spec = load_spec(spec) if not isinstance(spec, caffe_lite_pb2.PruningSpec) else spec
        d = caffe_lite_pb2.DnsSplicing()
        d.CopyFrom(spec.dns)
        if isinstance(dns, dict):
            for k, v in dns.items():
                if v is not None:
                    setattr(d, k, v)
        elif dns is not None:
            d.MergeFrom(dns)
        self.frequency, self.begin, self.margin = d.frequency, d.begin_iter, d.margin
        self.end = d.end_iter if d.HasField("end_iter") else solver.param.max_iter
        if self.frequency < 1 or self.begin < 0 or self.end <= self.begin:
            raise PruningError(f"dns: frequency ({self.frequency}) must be >= 1 and begin_iter "
                               f"({self.begin}) < end_iter ({self.end}), begin_iter >= 0")
        if not 0 <= self.margin < 1:
            raise PruningError(f"dns: margin must be in [0, 1), got {self.margin}")
        self.gradual = None
        if spec.HasField("gradual"):
            g = spec.gradual
            if g.num_steps < 1 or g.frequency < 1 or g.begin_iter < 0:
                raise PruningError(f"gradual: num_steps ({g.num_steps}) and frequency "
                                   f"({g.frequency}) must be >= 1 and begin_iter "
                                   f"({g.begin_iter}) >= 0")
            check_sparsity(g.initial_sparsity, "gradual: initial_sparsity")
            self.gradual = g
        self.plan = make_plan(solver.net, spec, "dns", sparsity)
        layers = dict(prunable_layers(solver.net))
        self.blobs = {n: layers[n].blobs[0] for n in self.plan.targets}
        self.shadow = {}         # layer -> W~ while splicing
        self._masks = {}         # layer -> T while the blob carries no mask (in an iteration)
        self.frozen = False
        self.updates = 0         # mask recomputations so far
        self.spliced = 0         # weights brought back (mask 0 -> 1) so far

    def attach(self):
        if self not in self.solver.callbacks:
            self.solver.callbacks.append(self)
        return self

    # --- the schedule --------------------------------------------------------------------
    def target_at(self, name, t):
        final = self.plan.targets[name]
        g = self.gradual
        if g is None:
            return final
        s = cubic_sparsity(t, min(g.initial_sparsity, final), final, g.begin_iter,
                           g.num_steps, g.frequency)
        return 0.0 if s is None else s

    def update_masks(self, t):
        """Recompute T from the shadows (iteration t's targets)."""
        for n, w in self.blobs.items():
            before = self._current_mask(n, w)
            mask, _ = splice_mask(self.shadow[n], before, self.target_at(n, t), self.margin)
            if before is not None:
                self.spliced += int(np.count_nonzero(mask & (before == 0)))
            self._masks[n] = mask
        self.updates += 1

    def _current_mask(self, n, w):
        if n in self._masks:
            return self._masks[n]
        return None if not w.has_mask else w.cpu_mask.copy()

    # --- solver callback -----------------------------------------------------------------
    def on_start(self, solver):
        t = solver.iter
        if self.frozen or t < self.begin:
            return
        if t >= self.end:   # resumed past the end from a snapshot taken without freezing
            return self.freeze(solver)
        if not self.shadow:
            for n, w in self.blobs.items():
                self.shadow[n] = w.cpu_data.copy()
            self.update_masks(t)
            log.info("DNS: splicing %s every %d iterations until iteration %d",
                     ", ".join(self.blobs), self.frequency, self.end)
        for n, w in self.blobs.items():
            mask = self._current_mask(n, w)
            self._masks[n] = np.ones(w.shape, bool) if mask is None else mask != 0
            w.mask = None                   # pruned entries get their gradient too
            w.data[...] = self.shadow[n] * self._masks[n]

    def on_gradients_ready(self, solver):
        if self.shadow and not self.frozen:
            for n, w in self.blobs.items():
                w.data[...] = self.shadow[n]   # the solver updates W~

    def on_update_done(self, solver):
        if not self.shadow or self.frozen:
            return
        t = solver.iter
        for n, w in self.blobs.items():
            self.shadow[n] = w.cpu_data.copy()
        if (t - self.begin) % self.frequency == 0:
            self.update_masks(t)
        for n, w in self.blobs.items():
            w.mask = self._masks[n]
            w.apply_mask()
        self._masks.clear()
        if t >= self.end:
            self.freeze(solver)

    def freeze(self, solver):
        for n, w in self.blobs.items():
            if n in self._masks:
                w.mask = self._masks[n]
            w.apply_mask()
        self._masks.clear()
        self.shadow.clear()
        self.frozen = True
        solver.mask_history()
        summary = ", ".join(f"{n} {1 - np.count_nonzero(w.cpu_mask) / w.count:.4f}"
                            for n, w in self.blobs.items())
        log.info("DNS: masks frozen at iteration %d (sparsity %s; %d weights spliced back "
                 "over %d mask updates)", solver.iter, summary, self.spliced, self.updates)

    # --- persistence ---------------------------------------------------------------------
    def _config(self):
        return {"frequency": self.frequency, "begin_iter": self.begin, "end_iter": self.end,
                "margin": round(self.margin, 6),
                "targets": {n: round(v, 6) for n, v in self.plan.targets.items()}}

    def state_dict(self):
        state = {"frozen": self.frozen, "updates": self.updates, "spliced": self.spliced,
                 "config": self._config()}
        for n, w in self.shadow.items():
            state[f"shadow:{n}"] = w
        return state

    def load_state_dict(self, state):
        saved = state.get("config")
        if saved and saved != self._config():
            log.warning("The snapshot was spliced with other DNS settings (%s); continuing with "
                        "the current ones (%s)", saved, self._config())
        self.frozen = bool(state.get("frozen", False))
        self.updates = int(state.get("updates", 0))
        self.spliced = int(state.get("spliced", 0))
        self.shadow = {}
        for n, w in self.blobs.items():
            arr = state.get(f"shadow:{n}")
            if arr is not None:
                if arr.shape != w.shape:
                    raise PruningError(f"the snapshot's DNS shadow weights of '{n}' have shape "
                                       f"{arr.shape}, the layer has {w.shape}")
                self.shadow[n] = np.array(arr, np.float32)
        if self.shadow and len(self.shadow) != len(self.blobs):
            missing = [n for n in self.blobs if n not in self.shadow]
            raise PruningError(f"the snapshot holds no DNS shadow weights for "
                               f"{', '.join(missing)}")
