"""Automatic per-layer ratios: solve the structured methods' per-layer targets for one global
goal, the fraction of the net's parameters (`target_params`) or FLOPs (`target_flops`) that
remains once the pruned channels are thinned away.

Costs are counted as the thinned net would have them, exactly: a removed channel takes its
filter, bias and per-channel parameters and the consumers' input weights (structure.py), and
every parameter blob keeps prod(dim - removed along each axis) entries; parameters are every
blob of every layer (as `thin` counts them), FLOPs those of report.layer_flops (2 x
multiply-accumulates of the Convolution / Deconvolution / InnerProduct weights per image).

Two solvers:
  * solve_global: one ranking of every prunable channel of the net by its criterion score,
    normalised by the mean score of its cluster (criteria.normalise_by), so that layers of any
    size and scale compare; channels go lowest first until the goal is met, no layer losing
    more than max_sparsity of its filters (nor its last one);
  * solve_from_sensitivity: from a sensitivity scan (layer, sparsity, metric drop), greedily
    raise the layer whose next step costs the least metric per parameter (or FLOP) saved,
    until the goal is met.
Both return a Solution whose `plan` prunes to the chosen ratios and whose `spec` writes them
out (a PruningSpec with one layer { sparsity } per layer)."""
import collections
import dataclasses

import numpy as np

from ..proto import caffe_lite_pb2
from .criteria import normalise_by
from .filters import pick
from .report import layer_flops
from .result import _round
from .spec import Plan, PruningError, prunable_layers


class Cost:
    """Parameters and FLOPs of the net after removing components (thin's count)."""

    def __init__(self, net, graph):
        self.net, self.graph = net, graph
        self.shapes = {}
        for lid, layer in enumerate(net.layers):
            for j, b in enumerate(layer.blobs):
                if net.param_owners[net.param_ids[lid][j]] == -1:
                    self.shapes[(layer.name, j)] = b.shape
        self.flop_rate = {n: layer_flops(net, layer) / max(layer.blobs[0].count, 1)
                          for n, layer in prunable_layers(net)}
        self.removed = collections.Counter()      # (layer, blob, axis) -> indices removed
        self.base = self.totals()

    @staticmethod
    def removal(comp):
        out = collections.Counter()
        for s in comp.slices:
            out[(s.layer, s.blob, s.axis)] += s.stop - s.start
        return out

    def kept(self, layer, blob, removed=None):
        removed = self.removed if removed is None else removed
        return int(np.prod([d - removed.get((layer, blob, a), 0)
                            for a, d in enumerate(self.shapes[(layer, blob)])], dtype=np.int64))

    def totals(self, removed=None):
        """(parameters, FLOPs)."""
        params = sum(self.kept(n, j, removed) for n, j in self.shapes)
        flops = sum(rate * self.kept(n, 0, removed) for n, rate in self.flop_rate.items())
        return params, int(round(flops))

    def value(self, what, removed=None):
        return self.totals(removed)[0 if what == "params" else 1]


def thinned_cost(net, graph=None):
    """(parameters, FLOPs) of the net `thin` would make of `net` as it is: every component
    that is not fixed and that no consumer reads any more is removed."""
    from .structure import ChannelGraph
    graph = graph or ChannelGraph(net)
    cost = Cost(net, graph)
    for c in graph.components:
        if not c.fixed and c.inputs_zero(net):
            cost.removed.update(Cost.removal(c))
    return cost.base, cost.totals()


@dataclasses.dataclass
class Solution:
    plan: Plan
    ratios: dict            # layer -> fraction of its filters removed
    what: str               # "params" or "flops"
    target: float           # the fraction asked to remain
    base: tuple             # (params, FLOPs) before
    after: tuple            # (params, FLOPs) with the chosen ratios
    spec: object = None     # a PruningSpec of the ratios
    graph: object = None    # the ChannelGraph and criterion scores it was solved on
    scores: dict = None

    def summary(self):
        i = 0 if self.what == "params" else 1
        return (f"{self.what} {self.base[i]:,} -> {self.after[i]:,} "
                f"({self.after[i] / max(self.base[i], 1):.1%} remain, target "
                f"{self.target:.1%}); params {self.base[0]:,} -> {self.after[0]:,}, FLOPs "
                f"{self.base[1]:,} -> {self.after[1]:,}")


def _goal(plan):
    if plan.target_params is not None:
        return "params", plan.target_params
    if plan.target_flops is not None:
        return "flops", plan.target_flops
    raise PruningError("no target_params or target_flops to solve for")


def _eligible(graph, plan, scores):
    """[(layers, free components)] of the clusters the plan may prune."""
    out = []
    for layers, comps in graph.clusters():
        if not any(n in plan.targets for n in layers) or \
                any(n in plan.excluded for n in layers):
            continue
        free = [c for c in comps if not c.fixed]
        if free and all(c.id in scores for c in free):
            out.append((layers, free))
    return out


def _caps(graph, layers, max_sparsity):
    totals = {n: len(graph.producers[n]) for n in layers}
    return totals, {n: min(int(np.floor(max_sparsity * t + 1e-9)), t - 1)
                    for n, t in totals.items()}


def _finish(net, plan, graph, scores, criterion, clusters, chosen, what, target):
    """The Solution: per-layer ratios from the chosen counts, checked by a real selection."""
    from .filters import select_filters
    ratios, targets = {}, {}
    for (layers, free), k in zip(clusters, chosen):
        r = k / len(free)
        for n in layers:
            ratios[n] = r
            if n in plan.targets:
                targets[n] = float(np.float32(r))
    new = Plan(plan.method, targets, list(plan.excluded), set(targets), None, None, None,
               plan.max_sparsity, plan.data_batches)
    _, comps, _ = select_filters(net, new, graph, scores, criterion)
    cost = Cost(net, graph)
    for c in comps:
        cost.removed.update(Cost.removal(c))
    spec = caffe_lite_pb2.PruningSpec(method=plan.method)
    if plan.data_batches != 10:
        spec.data_batches = plan.data_batches
    for n in (n for n, _ in prunable_layers(net)):
        if n in plan.excluded:
            spec.layer.add(name=n, exclude=True)
        elif n in targets:
            spec.layer.add(name=n, sparsity=targets[n])
    return Solution(new, ratios, what, target, cost.base, cost.totals(), spec)


def solve_global(net, plan, graph, scores, criterion):
    """Per-layer ratios from one normalised ranking (see the module doc)."""
    what, target = _goal(plan)
    clusters = _eligible(graph, plan, scores)
    norm = normalise_by(scores, [[c.id for c in free] for _, free in clusters])
    cost = Cost(net, graph)
    goal = target * cost.value(what)
    order = sorted(((norm[c.id], ci, pos) for ci, (_, free) in enumerate(clusters)
                    for pos, c in enumerate(free)))
    limits = [_caps(graph, layers, plan.max_sparsity) for layers, _ in clusters]
    removed = [collections.Counter() for _ in clusters]
    chosen = [0] * len(clusters)
    value = cost.value(what)
    for _, ci, pos in order:
        if value <= goal:
            break
        comp = clusters[ci][1][pos]
        mine = collections.Counter(layer for layer, _ in comp.atoms)
        cap = limits[ci][1]
        if any(removed[ci][n] + m > cap[n] for n, m in mine.items()):
            continue
        removed[ci].update(mine)
        chosen[ci] += 1
        cost.removed.update(Cost.removal(comp))
        value = cost.value(what)
    if value > goal:
        raise PruningError(f"target_{what} {target:g} is out of reach: removing up to "
                           f"max_sparsity {plan.max_sparsity:g} of every prunable layer's "
                           f"filters leaves {value / cost.value(what, collections.Counter()):.3f}"
                           f" of the {what}")
    return _finish(net, plan, graph, scores, criterion, clusters, chosen, what, target)


def solve(net, plan, data=None, rows=None):
    """Solve plan's target_params / target_flops for its structured method: from a sensitivity
    scan when `rows` (layer, sparsity, drop) are given, else by the global ranking.  `data`:
    the net reading training data for taylor / apoz."""
    from .filters import scores_for
    from .structure import ChannelGraph
    graph = ChannelGraph(net)
    scores = scores_for(net, graph, plan.method, data, plan.data_batches)
    if rows:
        sol = solve_from_sensitivity(net, plan, graph, scores, plan.method, rows)
    else:
        sol = solve_global(net, plan, graph, scores, plan.method)
    sol.graph, sol.scores = graph, scores
    return sol


def read_sensitivity_csv(path):
    """Rows (layer, sparsity, drop) of a `caffe-lite sensitivity -output_csv` file."""
    import csv
    from ..errors import CaffeLiteError
    rows = []
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            head = next(reader, None)
            if not head or head[0] != "layer" or len(head) < 4 or head[3] != "drop":
                raise CaffeLiteError(f"{path}: not a sensitivity CSV (expected the header "
                                     "layer,sparsity,<metric>,drop)")
            for line in reader:
                if not line or line[0] == "(dense)":
                    continue
                rows.append((line[0], float(line[1]), float(line[3])))
    except OSError as exc:
        raise CaffeLiteError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, IndexError):
        raise CaffeLiteError(f"{path}: a row is not layer,sparsity,metric,drop") from None
    return rows


def solve_from_sensitivity(net, plan, graph, scores, criterion, rows):
    """Per-layer ratios from a sensitivity scan: rows of (layer, sparsity, metric drop)."""
    what, target = _goal(plan)
    clusters = _eligible(graph, plan, scores)
    # Per cluster: the scanned sparsities and the drop at each, made monotone (a sparsity
    # costs at least what any smaller one cost); a NaN drop (the layer emptied) ends it.
    options = []
    for layers, free in clusters:
        by_s = collections.defaultdict(float)
        for layer, s, drop in rows:
            if layer in layers:
                by_s[s] = max(by_s[s], drop if np.isfinite(drop) else np.inf)
        opts, worst = [(0, 0.0)], 0.0
        for s in sorted(by_s):
            worst = max(worst, by_s[s], 0.0)
            if not np.isfinite(worst) or s > plan.max_sparsity + 1e-9:
                break
            k = _round(s * len(free))
            if k > opts[-1][0]:
                opts.append((k, worst))
        options.append(opts)
    if not any(len(o) > 1 for o in options):
        raise PruningError("the sensitivity scan has no rows for the layers to prune (scan "
                           "them with `caffe-lite sensitivity -method l1-filter`)")
    removal = {}

    def picked(ci, k):
        if (ci, k) not in removal:
            layers, free = clusters[ci]
            totals = {n: len(graph.producers[n]) for n in layers}
            comps, _, _ = pick(free, [scores[c.id] for c in free], k, totals)
            total = collections.Counter()
            for c in comps:
                total.update(Cost.removal(c))
            removal[(ci, k)] = total
        return removal[(ci, k)]

    cost = Cost(net, graph)
    goal = target * cost.value(what)
    level = [0] * len(clusters)

    def removed_with(ci=None, j=None):
        total = collections.Counter()
        for c, lv in enumerate(level):
            lv = j if c == ci else lv
            total.update(picked(c, options[c][lv][0]))
        return total
    value = cost.value(what, removed_with())
    while value > goal:
        best = None
        for ci, opts in enumerate(options):
            for j in range(level[ci] + 1, len(opts)):
                v = cost.value(what, removed_with(ci, j))
                saved = value - v
                if saved <= 0:
                    continue
                rate = (opts[j][1] - opts[level[ci]][1]) / saved
                # Ties (e.g. steps that cost nothing) go to the smaller step: no overshoot.
                if best is None or rate < best[0] - 1e-15 or \
                        (abs(rate - best[0]) <= 1e-15 and saved < best[3]):
                    best = (rate, ci, j, saved, v)
        if best is None:
            raise PruningError(f"target_{what} {target:g} is out of reach with the scanned "
                               f"sparsities (up to max_sparsity {plan.max_sparsity:g}): "
                               f"{value / cost.value(what, collections.Counter()):.3f} of the "
                               f"{what} remain at most")
        level[best[1]] = best[2]
        value = best[4]
    chosen = [options[ci][lv][0] for ci, lv in enumerate(level)]
    return _finish(net, plan, graph, scores, criterion, clusters, chosen, what, target)
