"""Sensitivity analysis: prune each layer alone at a range of sparsities, score the test net
after each, and propose per-layer targets that cost at most `max_drop` of the metric.

The batches are read once (from the net's data layers) and replayed for every evaluation, so
each trial sees exactly the same images.  Each trial starts from the original weights and
masks.  The proposal takes, per layer, the largest sparsity up to which every trial's drop
stays within `max_drop`; the layers' drops are measured one at a time, so pruning all of
them together usually costs more (fine-tune, or lower the targets)."""
import csv
import dataclasses
import io
import logging

import numpy as np

from ..errors import CaffeLiteError
from ..proto import caffe_lite_pb2
from .masks import restore_params, snapshot_params
from .methods import prune_net
from .spec import Plan, PruningError, check_sparsity, prunable_layers

log = logging.getLogger("caffe_lite")
DEFAULT_SPARSITIES = tuple(round(0.1 * i, 1) for i in range(1, 10))
# Methods a scan can use: those that need no training data.
SCAN_METHODS = ("magnitude", "l1-filter", "l2-filter", "fpgm", "bn-scale")


class CachedEvaluator:
    """Scores a net on `iterations` batches read once from its data layers."""

    def __init__(self, net, iterations):
        if iterations < 1:
            raise CaffeLiteError(f"iterations must be >= 1, got {iterations}")
        self.net = net
        self.sources = [i for i, _ in enumerate(net.layers) if not net.bottom_vecs[i]]
        self.batches = []
        for _ in range(iterations):
            tops = []
            for i in self.sources:
                net.layers[i].forward(net.bottom_vecs[i], net.top_vecs[i])
                tops.append([t.cpu_data.copy() for t in net.top_vecs[i]])
            self.batches.append(tops)

    def evaluate(self):
        """{output name: mean over the batches} (scalars as floats)."""
        net, totals = self.net, None
        for tops in self.batches:
            for i, arrays in zip(self.sources, tops):
                for t, a in zip(net.top_vecs[i], arrays):
                    t.reshape(a.shape)
                    t.data[...] = a
            for i, layer in enumerate(net.layers):
                if net.bottom_vecs[i]:
                    layer.forward(net.bottom_vecs[i], net.top_vecs[i])
            vals = [net.blobs[o].cpu_data.astype(np.float64).ravel().copy() for o in net.outputs]
            totals = vals if totals is None else [a + b for a, b in zip(totals, vals)]
        out = {}
        for o, t in zip(net.outputs, totals):
            m = t / len(self.batches)
            out[o] = float(m[0]) if m.size == 1 else m
        return out


def pick_metric(net, metric=None):
    """The output to score: `metric`, else the first output named like 'accuracy', else the
    first output without a loss weight."""
    outs = net.outputs
    if metric:
        if metric not in outs:
            raise CaffeLiteError(f"-metric '{metric}' is not an output of the net; outputs: "
                                 f"{', '.join(outs)}")
        return metric
    for o in outs:
        if "accuracy" in o.lower():
            return o
    for o in outs:
        if not net.blob_loss_weights.get(o):
            return o
    raise CaffeLiteError("the net has no accuracy output to score (outputs: "
                         f"{', '.join(outs) or 'none'}); use a test net with an Accuracy layer "
                         "or pass -metric")


@dataclasses.dataclass
class Row:
    layer: str
    sparsity: float
    metric: float
    drop: float


def sensitivity(net, evaluator, metric, layers=None, sparsities=DEFAULT_SPARSITIES,
                method="magnitude", progress=None):
    """Returns (baseline, [Row]).  `method`: magnitude or a structured method that ranks by
    weights (SCAN_METHODS)."""
    if method not in SCAN_METHODS:
        raise PruningError(f"sensitivity: method must be one of {', '.join(SCAN_METHODS)}, "
                           f"got '{method}'")
    names = [n for n, _ in prunable_layers(net)]
    layers = list(layers or names)
    for n in layers:
        if n not in names:
            raise PruningError(f"sensitivity: '{n}' is not a prunable layer of the net; "
                               f"prunable layers: {', '.join(names)}")
    sparsities = [check_sparsity(s, "sensitivity") for s in sparsities]
    baseline = _scalar(evaluator.evaluate()[metric], metric)
    saved = snapshot_params(net)
    rows = []
    try:
        for n in layers:
            for s in sparsities:
                plan = Plan(method, {n: s}, [], {n})
                try:
                    prune_net(net, plan=plan)
                    value = _scalar(evaluator.evaluate()[metric], metric)
                except PruningError as exc:  # e.g. l1-filter emptying a layer
                    log.info("sensitivity %s at %g: %s", n, s, exc)
                    value = float("nan")
                finally:
                    restore_params(saved)
                rows.append(Row(n, s, value, baseline - value))
                if progress:
                    progress(rows[-1])
    finally:
        restore_params(saved)
    return baseline, rows


def _scalar(v, metric):
    if not np.isscalar(v):
        raise CaffeLiteError(f"metric '{metric}' is not a scalar output")
    return float(v)


def propose(rows, max_drop):
    """{layer: the largest sparsity s such that every sparsity tried up to s costs at most
    max_drop} (0 when even the smallest does not).  Requiring the smaller ones too keeps a
    lucky high-sparsity trial from beating an unlucky lower one."""
    best = {}
    for layer in dict.fromkeys(r.layer for r in rows):
        best[layer] = 0.0
        for r in sorted((r for r in rows if r.layer == layer), key=lambda r: r.sparsity):
            if not (np.isfinite(r.metric) and r.drop <= max_drop):
                break
            best[layer] = r.sparsity
    return best


def proposal_spec(best, method="magnitude"):
    spec = caffe_lite_pb2.PruningSpec(method=method)
    for n, s in best.items():
        if s > 0:
            spec.layer.add(name=n, sparsity=s)
        else:
            spec.layer.add(name=n, exclude=True)
    return spec


def to_csv(baseline, rows, metric):
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["layer", "sparsity", metric, "drop"])
    w.writerow(["(dense)", 0.0, f"{baseline:.6g}", 0.0])
    for r in rows:
        w.writerow([r.layer, f"{r.sparsity:g}", f"{r.metric:.6g}", f"{r.drop:.6g}"])
    return out.getvalue()


def plot_png(path_or_file, baseline, rows, metric, title="Pruning sensitivity"):
    """Write a PNG: the metric against sparsity, one line per layer.  Needs matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CaffeLiteError("the PNG plot needs matplotlib (pip install 'caffe-lite[plot]')"
                             ) from None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for layer in dict.fromkeys(r.layer for r in rows):
        pts = [(0.0, baseline)] + [(r.sparsity, r.metric) for r in rows if r.layer == layer]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=layer)
    ax.set_xlabel("sparsity (fraction of weights pruned)")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path_or_file, format="png")
    plt.close(fig)
