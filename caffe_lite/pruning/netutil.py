"""Small NetParameter helpers the pruning tools share."""
import numpy as np

from ..proto import caffe_pb2
from .structure import DATA_LAYERS


def data_top_shapes(net):
    """{top name: shape} of the net's bottomless layers (data and Input layers)."""
    shapes = {}
    for lid, layer in enumerate(net.layers):
        if not net.bottom_vecs[lid]:
            for j, t in enumerate(net.top_vecs[lid]):
                shapes[net.blob_names[net.top_ids[lid][j]]] = tuple(t.shape)
    return shapes


def replace_data_layers(param, shapes):
    """A copy of `param` whose data layers are Input layers with the given top shapes
    ({top: shape}); a data layer with a top not in `shapes` is left as it is."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    for lp in out.layer:
        if lp.type in DATA_LAYERS and lp.type != "Input" and not lp.bottom and \
                all(t in shapes for t in lp.top):
            keep = caffe_pb2.LayerParameter(name=lp.name, type="Input")
            keep.top.extend(lp.top)
            keep.include.extend(lp.include)
            keep.exclude.extend(lp.exclude)
            for t in lp.top:
                keep.input_param.shape.add().dim.extend(shapes[t])
            lp.CopyFrom(keep)
    return out


def with_blobs(param, weights):
    """A copy of `param` with each layer carrying the blobs of the same-named layer of
    `weights` (a NetParameter); a Net built from it needs no caffemodel."""
    by_name = {lp.name: lp for lp in weights.layer if lp.blobs}
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    for lp in out.layer:
        src = by_name.get(lp.name)
        if src is not None:
            lp.ClearField("blobs")
            lp.blobs.extend(src.blobs)
    return out


def random_inputs(net, seed=0):
    """Random arrays for every Input top: normal data, zeros for 1-axis blobs (labels)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in net.inputs or _bottomless_tops(net):
        shape = net.blobs[name].shape
        out[name] = np.zeros(shape, np.float32) if len(shape) <= 1 else \
            rng.standard_normal(shape).astype(np.float32)
    return out


def _bottomless_tops(net):
    return [n for n in data_top_shapes(net)]


def recalibrate_batchnorm(net, batches):
    """Re-estimate every BatchNorm's running statistics over `batches` forward passes of `net`,
    which must compute batch statistics (a TRAIN-phase net; it reads its own data layers).
    After structured pruning the statistics a BatchNorm holds describe its input before the
    channels upstream were removed, and a TEST-phase net normalises with them; Caffe's moving
    average (moving_average_fraction 0.999) takes thousands of iterations to forget them.  The
    sums restart from zero, so the result is the plain average over these batches.  Returns
    the names of the layers recalibrated."""
    bns = [layer for layer in net.layers if layer.type == "BatchNorm"]
    if any(layer.use_global_stats for layer in bns):
        from ..errors import CaffeLiteError
        raise CaffeLiteError("recalibrate_batchnorm needs a net whose BatchNorm layers compute "
                             "batch statistics (the TRAIN phase, use_global_stats false)")
    for layer in bns:
        for b in layer.blobs:
            b.data[...] = 0
    for _ in range(batches):
        net.forward_from_to()
    return [layer.name for layer in bns]
