"""Pruning specs: the PruningSpec prototxt (proto/caffe_lite.proto) and the plan it resolves to
for one net: which layers are pruned, to what target, by which method.

Precedence: a layer's own entry (`layer { name: "conv1" sparsity: 0.34 }`) beats the spec's
top-level default, and flags given on the command line (method, sparsity, q) replace the
spec's top-level fields.  Every name and number is checked against the net before anything is
pruned, so a bad spec changes nothing."""
import dataclasses
import math

from ..errors import CaffeLiteError
from ..io.prototxt import load_message
from ..proto import caffe_lite_pb2

# Methods whose targets are not per-layer sparsities: std's is a threshold multiplier, global's
# one overall sparsity.  Every other method (methods.METHODS) takes per-layer sparsities.
THRESHOLD_METHODS = ("std",)
GLOBAL_METHODS = ("global",)


def method_names():
    from .methods import METHODS
    return list(METHODS)


def is_structured(method):
    from .methods import METHODS
    return getattr(METHODS.get(method), "structured", False)


class PruningError(CaffeLiteError):
    """A pruning request that cannot be carried out: bad spec, unknown layer, bad target."""


def load_spec(source=None):
    """A PruningSpec from a path, text, PruningSpec or None / "" (an empty spec)."""
    if source is None or (isinstance(source, str) and not source.strip()):
        return caffe_lite_pb2.PruningSpec()
    spec, _ = load_message(source, caffe_lite_pb2.PruningSpec, "pruning spec")
    return spec


def check_sparsity(value, what):
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value < 1):
        raise PruningError(f"{what}: sparsity must be in [0, 1), got {value}")
    return float(value)


def check_q(value, what):
    if not (math.isfinite(value) and value >= 0):
        raise PruningError(f"{what}: q must be a finite number >= 0, got {value}")
    return float(value)


def prunable_layers(net):
    """[(name, layer)] of the prunable layers whose weight they own (a layer sharing another
    layer's weight by param name is pruned through its owner)."""
    out = []
    for lid, (name, layer) in enumerate(zip(net.layer_names, net.layers)):
        if layer.prunable and layer.blobs and net.param_owners[net.param_ids[lid][0]] == -1:
            out.append((name, layer))
    return out


@dataclasses.dataclass
class Plan:
    """What to prune: `targets` maps layer name -> sparsity (or q for method std), in net
    order; `excluded` lists layers the spec keeps dense; `explicit` the layers the spec names
    with a target of their own."""
    method: str
    targets: dict
    excluded: list
    explicit: set
    sparsity: float = None      # the overall target (method global)
    # Structured methods: a global target to solve the per-layer targets for (ratios.py):
    # the fraction of parameters / FLOPs that remains, and the cap per layer.
    target_params: float = None
    target_flops: float = None
    max_sparsity: float = 0.9
    data_batches: int = 10      # taylor, apoz


def check_fraction(value, what):
    if not (math.isfinite(value) and 0 < value <= 1):
        raise PruningError(f"{what} must be in (0, 1] (the fraction that remains), got {value}")
    return float(value)


def make_plan(net, spec=None, method=None, sparsity=None, q=None, where="pruning spec",
              target_params=None, target_flops=None):
    """Resolve a spec (+ command-line overrides) against `net`; raises PruningError naming
    the problem (an unknown or non-prunable layer, a target outside [0, 1), ...)."""
    spec = load_spec(spec) if not isinstance(spec, caffe_lite_pb2.PruningSpec) else spec
    method = method or spec.method
    if method not in method_names():
        raise PruningError(f"unknown pruning method '{method}'; known: "
                           f"{', '.join(method_names())}")
    targets_given = {"target_params": target_params, "target_flops": target_flops}
    for name, value in targets_given.items():
        if value is None and spec.HasField(name):
            targets_given[name] = getattr(spec, name)
        if targets_given[name] is not None:
            targets_given[name] = check_fraction(targets_given[name],
                                                 f"-{name}" if value is not None else
                                                 f"{where}: {name}")
    if all(v is not None for v in targets_given.values()):
        raise PruningError("give target_params or target_flops, not both")
    auto = any(v is not None for v in targets_given.values())
    if auto and not is_structured(method):
        raise PruningError(f"target_params / target_flops solve per-layer filter ratios: they "
                           f"need a structured method (l1-filter, l2-filter, fpgm, taylor, "
                           f"apoz, bn-scale), not '{method}'")
    max_sparsity = check_sparsity(spec.max_sparsity, f"{where}: max_sparsity")
    if spec.data_batches < 1:
        raise PruningError(f"{where}: data_batches must be >= 1, got {spec.data_batches}")
    default_s = sparsity if sparsity is not None else \
        (spec.sparsity if spec.HasField("sparsity") else None)
    if default_s is not None:
        default_s = check_sparsity(default_s, where if sparsity is None else "-sparsity")
    default_q = check_q(q if q is not None else spec.q, where if q is None else "-q")

    prunable = prunable_layers(net)
    names = [n for n, _ in prunable]
    entries = {}
    for e in spec.layer:
        if not e.name:
            raise PruningError(f"{where}: a layer entry has no name")
        if e.name in entries:
            raise PruningError(f"{where}: layer '{e.name}' is given twice")
        if e.name not in names:
            if e.name in net.layer_dict:
                layer = net.layer_dict[e.name]
                why = "is not prunable" if not layer.prunable else \
                    "shares its weights with another layer; name the owner instead"
                raise PruningError(f"{where}: layer '{e.name}' ({layer.type}) {why}; prunable "
                                   f"layers: {', '.join(names) or 'none'}")
            raise PruningError(f"{where}: the net has no layer named '{e.name}'; prunable "
                               f"layers: {', '.join(names) or 'none'}")
        if e.HasField("sparsity"):
            check_sparsity(e.sparsity, f"{where}: layer '{e.name}'")
        if e.HasField("q"):
            check_q(e.q, f"{where}: layer '{e.name}'")
        entries[e.name] = e

    excluded = [n for n in names if n in entries and entries[n].exclude]
    explicit, targets = set(), {}
    if method in GLOBAL_METHODS:
        per_layer = [n for n, e in entries.items() if e.HasField("sparsity") and not e.exclude]
        if per_layer:
            raise PruningError(f"{where}: method global uses one overall sparsity; per-layer "
                               f"targets are not allowed (layer '{per_layer[0]}'); use "
                               "exclude, or method magnitude for per-layer targets")
        if default_s is None:
            raise PruningError("method global needs an overall sparsity (-sparsity or the "
                               "spec's sparsity)")
        targets = {n: default_s for n in names if n not in excluded}
    elif auto:
        # Every layer not excluded is a candidate; the solver sets the targets.
        targets = {n: 0.0 for n in names if n not in excluded}
    else:
        for n in names:
            if n in excluded:
                continue
            e = entries.get(n)
            if method in THRESHOLD_METHODS:
                if e is not None and e.HasField("q"):
                    targets[n], _ = float(e.q), explicit.add(n)
                else:
                    targets[n] = default_q
            else:
                if e is not None and e.HasField("sparsity"):
                    targets[n], _ = float(e.sparsity), explicit.add(n)
                elif default_s is not None:
                    targets[n] = default_s
    if not targets:
        raise PruningError(f"nothing to prune with method {method}: give a sparsity (-sparsity "
                           "or the spec's sparsity) or per-layer targets in a spec")
    return Plan(method, targets, excluded, explicit,
                default_s if method in GLOBAL_METHODS else None,
                targets_given["target_params"], targets_given["target_flops"], max_sparsity,
                spec.data_batches)
