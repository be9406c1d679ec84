"""Pruning: methods, criteria, specs, structure analysis, gradual schedules, splicing, reports,
sensitivity, automatic ratios, thinning.

    from caffe_lite import pruning
    net = caffe_lite.Net("deploy.prototxt", caffe_lite.TEST, weights="model.caffemodel")
    pruning.prune_net(net, spec='layer { name: "conv1" sparsity: 0.34 }', sparsity=0.9)
    print(pruning.report.to_table(pruning.sparsity_report(net)))
    net.save("pruned.caffemodel")

    pruning.GradualPruner(solver, "spec.prototxt").attach()   # prune while fine-tuning
    pruning.DnsPruner(solver, "dns.prototxt").attach()        # prune and splice (DNS)

Everything prunes through the Blob masks, which only ever shrink (DNS's splicing phase is the
one documented exception); see each module's doc."""
from . import (criteria, filters, masks, methods, netutil, ratios, report, result, schedule,
               sensitivity, slimming, spec, splicing, structure, thin)
from .criteria import CRITERIA
from .filters import filter_prune, l1_filter_prune, select_filters
from .masks import shrink_mask
from .methods import METHODS, global_keep, magnitude_keep, prune_net, std_keep
from .ratios import solve_global, solve_from_sensitivity
from .report import sparsity_report
from .result import LayerResult
from .schedule import GradualPruner, cubic_sparsity
from .slimming import BNScalePenalty
from .spec import Plan, PruningError, load_spec, make_plan, prunable_layers
from .splicing import DnsPruner
from .structure import ChannelGraph, Component, Slice
from .thin import ThinResult, thin_net

__all__ = ["BNScalePenalty", "CRITERIA", "ChannelGraph", "Component", "DnsPruner",
           "GradualPruner", "LayerResult", "METHODS", "Plan", "PruningError", "Slice",
           "ThinResult", "criteria", "cubic_sparsity", "filter_prune", "filters",
           "global_keep", "l1_filter_prune", "load_spec", "magnitude_keep", "make_plan",
           "masks", "methods", "netutil", "prunable_layers", "prune_net", "ratios", "report",
           "result", "schedule", "select_filters", "sensitivity", "shrink_mask", "slimming",
           "solve_from_sensitivity", "solve_global", "sparsity_report", "spec", "splicing",
           "std_keep", "structure", "thin", "thin_net"]
