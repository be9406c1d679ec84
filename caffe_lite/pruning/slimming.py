"""Network slimming's training half (Liu et al. 2017): an L1 penalty on the gamma of every Scale
layer that follows a BatchNorm, so that training drives the gammas of unneeded channels toward
0 and the bn-scale criterion (criteria.py) finds them.

    BNScalePenalty(solver, 1e-4).attach()     # or PruningSpec bn_scale_l1 / train -bn_scale_l1

A solver callback: at on_gradients_ready it adds rate * sign(gamma) to gamma's gradient, as if
rate * sum |gamma| were part of the loss, so every solver treats it like the rest of the
gradient (the blob's lr_mult, momentum, clipping); Caffe's weight decay still applies on top.
sign(0) = 0: a pruned (zero) gamma gets nothing."""
import logging

import numpy as np

from .spec import PruningError

log = logging.getLogger("caffe_lite")


def bn_scale_layers(net):
    """Names of the Scale layers whose input a BatchNorm wrote (in place or not)."""
    writer, out = {}, []
    for lid, layer in enumerate(net.layers):
        if layer.type == "Scale" and layer.blobs and len(net.bottom_vecs[lid]) == 1 and \
                writer.get(id(net.bottom_vecs[lid][0])) == "BatchNorm":
            out.append(layer.name)
        for t in net.top_vecs[lid]:
            writer[id(t)] = layer.type
    return out


class BNScalePenalty:
    """rate * sign(gamma) added to the gradient of the Scale layers after a BatchNorm (all of
    them, or those named in `layers`)."""

    def __init__(self, solver, rate, layers=None):
        if not (np.isfinite(rate) and rate >= 0):
            raise PruningError(f"bn_scale_l1 must be a finite number >= 0, got {rate}")
        self.solver, self.rate = solver, float(rate)
        found = bn_scale_layers(solver.net)
        if layers is not None:
            unknown = [n for n in layers if n not in found]
            if unknown:
                raise PruningError(f"bn_scale_l1: '{unknown[0]}' is not a Scale layer after a "
                                   f"BatchNorm; those are: {', '.join(found) or 'none'}")
            found = list(layers)
        if not found:
            raise PruningError("bn_scale_l1: the net has no Scale layer after a BatchNorm")
        self.layers = found
        self.blobs = [solver.net.layer_dict[n].blobs[0] for n in found]

    def attach(self):
        if self not in self.solver.callbacks:
            self.solver.callbacks.append(self)
        log.info("Network slimming: L1 penalty %g on the gamma of %d Scale layer(s)", self.rate,
                 len(self.blobs))
        return self

    def on_gradients_ready(self, solver):
        # The diffs still hold the sum over iter_size passes; the solver divides by it next.
        k = np.float32(self.rate * solver.param.iter_size)
        for b in self.blobs:
            b.diff[...] += k * np.sign(b.cpu_data)
