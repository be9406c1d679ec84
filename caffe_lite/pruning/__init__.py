"""Pruning: methods, specs, structure analysis, gradual schedules, reports, sensitivity, thinning.

    from caffe_lite import pruning
    net = caffe_lite.Net("deploy.prototxt", caffe_lite.TEST, weights="model.caffemodel")
    pruning.prune_net(net, spec='layer { name: "conv1" sparsity: 0.34 }', sparsity=0.9)
    print(pruning.report.to_table(pruning.sparsity_report(net)))
    net.save("pruned.caffemodel")

    pruning.GradualPruner(solver, "spec.prototxt").attach()   # prune while fine-tuning

Everything prunes through the Blob masks, which only ever shrink; see each module's doc."""
from . import filters, masks, methods, netutil, report, schedule, sensitivity, spec, structure, thin
from .filters import l1_filter_prune, select_filters
from .masks import shrink_mask
from .methods import LayerResult, global_keep, magnitude_keep, prune_net, std_keep
from .report import sparsity_report
from .schedule import GradualPruner, cubic_sparsity
from .spec import METHODS, Plan, PruningError, load_spec, make_plan, prunable_layers
from .structure import ChannelGraph, Component, Slice
from .thin import ThinResult, thin_net

__all__ = ["ChannelGraph", "Component", "GradualPruner", "LayerResult", "METHODS", "Plan",
           "PruningError", "Slice", "ThinResult", "cubic_sparsity", "filters",
           "global_keep", "l1_filter_prune", "load_spec", "magnitude_keep", "make_plan",
           "masks", "methods", "netutil", "prunable_layers", "prune_net", "report",
           "schedule", "select_filters", "sensitivity", "shrink_mask", "sparsity_report",
           "spec", "std_keep", "structure", "thin", "thin_net"]
