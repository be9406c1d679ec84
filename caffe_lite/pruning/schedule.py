"""Gradual pruning during fine-tuning: Zhu & Gupta's (2017) cubic schedule as a solver callback.

At t = t0 + k * dt (k = 0 .. n) each layer is pruned to

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3

by the spec's method (magnitude per layer, global, or l1-filter), where s_f is the layer's own
final target.  Pruning happens in `on_start`, before that iteration's forward pass; the masks
only ever shrink, and every solver update keeps pruned weights at 0 in between.

    pruner = GradualPruner(solver, "spec.prototxt").attach()
    solver.solve()

The progress (the last pruning step applied) is saved in the snapshot's `.masks` sidecar
as this callback's `state_dict()`, so `-snapshot` resumes the schedule where it stopped; a
resumed run that missed a step (restored from a snapshot taken without the pruner) catches up
on its first iteration."""
import logging

from ..proto import caffe_lite_pb2
from . import criteria
from .methods import prune_net
from .spec import Plan, PruningError, check_sparsity, is_structured, load_spec, make_plan

log = logging.getLogger("caffe_lite")


def cubic_sparsity(t, initial, final, begin, steps, frequency):
    """Zhu & Gupta's s_t; before `begin` nothing is pruned (returns None)."""
    if t < begin:
        return None
    progress = min(1.0, (t - begin) / float(steps * frequency))
    return final + (initial - final) * (1.0 - progress) ** 3


class GradualPruner:
    """A solver callback that prunes on the cubic schedule of a spec's `gradual { }` block.

    `spec`: a PruningSpec, its text or a path; `method`, `sparsity` (the final target) and
    `gradual` (a GradualPruning, or a dict of its fields) override the spec's."""

    def __init__(self, solver, spec=None, method=None, sparsity=None, gradual=None):
        self.solver = solver
        spec = load_spec(spec) if not isinstance(spec, caffe_lite_pb2.PruningSpec) else spec
        g = caffe_lite_pb2.GradualPruning()
        g.CopyFrom(spec.gradual)
        if isinstance(gradual, dict):
            for k, v in gradual.items():
                if v is not None:
                    setattr(g, k, v)
        elif gradual is not None:
            g.MergeFrom(gradual)
        self.schedule = g
        self.method = method or spec.method
        if self.method == "std":
            raise PruningError("gradual pruning needs a sparsity method (magnitude, global or "
                               "a structured one); std has no sparsity target to schedule")
        if self.method == "dns":
            raise PruningError("method dns prunes with splicing: use DnsPruner (train "
                               "-prune_spec with method \"dns\" attaches it)")
        if spec.HasField("target_params") or spec.HasField("target_flops"):
            raise PruningError("gradual pruning follows per-layer targets: solve them for "
                               "target_params / target_flops first (caffe-lite prune "
                               "-target_params X -output_spec SPEC) and train with that spec")
        if g.num_steps < 1 or g.frequency < 1 or g.begin_iter < 0:
            raise PruningError(f"gradual: num_steps ({g.num_steps}) and frequency "
                               f"({g.frequency}) must be >= 1 and begin_iter ({g.begin_iter}) "
                               ">= 0")
        check_sparsity(g.initial_sparsity, "gradual: initial_sparsity")
        final = sparsity
        if final is None and g.HasField("final_sparsity"):
            final = g.final_sparsity
        # The final plan: per-layer targets from the spec, the default from final_sparsity.
        self.plan = make_plan(solver.net, spec, self.method, final)
        self.applied = -1          # iteration of the last pruning step applied
        self.history = []          # [(iteration, {layer: target})]
        # Check now that the final step can be carried out (structured: no layer emptied).
        if is_structured(self.method) and not criteria.needs_data(self.method):
            from .filters import select_filters
            select_filters(solver.net, self.plan, criterion=self.method)

    # --- the schedule --------------------------------------------------------------------
    def step_iters(self):
        g = self.schedule
        return [g.begin_iter + k * g.frequency for k in range(g.num_steps + 1)]

    def last_step(self, t):
        """The latest pruning step at or before iteration t (None before the first)."""
        g = self.schedule
        if t < g.begin_iter:
            return None
        k = min(g.num_steps, (t - g.begin_iter) // g.frequency)
        return g.begin_iter + k * g.frequency

    def targets_at(self, t):
        """{layer: sparsity} the schedule asks for at iteration t."""
        g = self.schedule
        out = {}
        for name, final in self.plan.targets.items():
            out[name] = cubic_sparsity(t, min(g.initial_sparsity, final), final,
                                       g.begin_iter, g.num_steps, g.frequency)
        return out

    def prune_at(self, t):
        targets = self.targets_at(t)
        # (method global: every layer has the same target, the overall one)
        plan = Plan(self.method, targets, list(self.plan.excluded), set(self.plan.explicit),
                    max(targets.values()) if self.method == "global" else None,
                    data_batches=self.plan.data_batches)
        results = prune_net(self.solver.net, plan=plan, data=self.solver.net)
        self.solver.mask_history()
        self.applied = t
        self.history.append((t, {n: round(v, 6) for n, v in targets.items()}))
        summary = ", ".join(f"{r.name} {r.after:.3f}" for r in results)
        log.info("Gradual pruning at iteration %d: %s", t, summary)
        return results

    # --- solver callback -----------------------------------------------------------------
    def attach(self):
        s = self.solver
        if self not in s.callbacks:
            s.callbacks.append(self)
        return self

    def on_start(self, solver):
        step = self.last_step(solver.iter)
        if step is not None and step > self.applied:
            self.prune_at(step)

    # --- persistence ---------------------------------------------------------------------
    def _schedule_dict(self):
        g = self.schedule
        return {"method": self.method, "initial_sparsity": round(g.initial_sparsity, 6),
                "begin_iter": g.begin_iter, "num_steps": g.num_steps,
                "frequency": g.frequency,
                "targets": {n: round(v, 6) for n, v in self.plan.targets.items()}}

    def state_dict(self):
        return {"applied_iter": self.applied, "schedule": self._schedule_dict(),
                "history": self.history}

    def load_state_dict(self, state):
        saved = state.get("schedule")
        if saved and saved != self._schedule_dict():
            log.warning("The snapshot was pruned on a different schedule (%s); continuing "
                        "with the current one (%s)", saved, self._schedule_dict())
        self.applied = int(state.get("applied_iter", -1))
        self.history = [tuple(h) for h in state.get("history", [])]
