"""darknet models in and out: a .cfg (pjreddie's, AlexeyAB's, or the darknet-mobilenet fork's
[depthwise_convolutional]) and its .weights become a Caffe deploy prototxt and caffemodel that
compute the same numbers (float32 rounding), and a caffe-lite net made of layers darknet has
goes back to a .cfg and .weights, pruned zeros included.  Each section maps to Caffe layers
that compute exactly what darknet computes (maxpool's windows, batch norm's sqrt(var) + 1e-6,
upsample, reorg, route groups, mish, ...); every darknet array is kept bit for bit, so
darknet -> caffe-lite -> darknet rewrites the .weights byte for byte.  YOLO/region heads are
left to the user: their inputs become the net's outputs.  See docs/darknet.md."""
import os

import numpy as np

from ...proto import caffe_pb2
from ..prototxt import to_text
from .cfg import DarknetError, format_cfg, parse_cfg, read_cfg
from .layers import REORG_SEMANTICS, describe
from .weights import Header, read_weights

__all__ = ["load", "convert", "export", "read_cfg", "parse_cfg", "format_cfg", "Header",
           "DarknetError", "REORG_SEMANTICS"]

HEADER_TAG = "darknet-weights-header:"


class Conversion:
    """A converted darknet model: `param` (deploy NetParameter), `values` ({layer name:
    [arrays]}), `notes` (what the user must know: heads, the cost layer), `header` (the
    weights file's, or None), `net_section` ([net]) and `layers` ([DkLayer])."""

    def __init__(self, param, values, notes, header, net_section, layers, cfg):
        self.param, self.values, self.notes, self.header = param, values, notes, header
        self.net_section, self.layers, self.cfg = net_section, layers, cfg

    def net(self):
        """A caffe-lite Net (TEST phase) holding the darknet weights."""
        from ...net import Net
        net = Net(self.param, caffe_pb2.TEST)
        for name, arrays in self.values.items():
            blobs = net.layer_dict[name].blobs
            for blob, a in zip(blobs, arrays):
                blob.data[...] = np.asarray(a, np.float32).reshape(blob.shape)
        net.init_masks_from_weights()
        return net

    def prototxt(self):
        """The deploy prototxt's text, with a comment saying where it came from (the weights
        header there is what export() writes back by default)."""
        lines = [f"Converted from darknet by caffe-lite: {os.path.basename(self.cfg)}"]
        if self.header is not None:
            h = self.header
            lines.append(f"{HEADER_TAG} major={h.major} minor={h.minor} "
                         f"revision={h.revision} seen={h.seen}")
        kinds = {ly.kind for ly in self.layers}
        if "depthwise_convolutional" in kinds:
            lines.append("darknet-sections: depthwise_convolutional (Convolution with group = "
                         "channels here)")
        lines += self.notes
        head = "".join(f"# {line}\n" for line in lines)
        return head + to_text(self.param)


def convert(cfg, weights=None, reorg="pjreddie", name=None):
    """Convert a darknet cfg (a path) and optional weights (a path) to a Conversion.
    `reorg` picks what [reorg] means: "pjreddie" (the original darknet) or "alexeyab"."""
    from .to_caffe import build
    sections = read_cfg(cfg)
    net_section, layers = describe(sections, reorg)
    header, arrays = (None, None)
    if weights is not None:
        header, arrays = read_weights(weights, layers)
    from .layers import net_input
    name = name or os.path.splitext(os.path.basename(os.fspath(cfg)))[0]
    param, values, notes = build(name, net_input(net_section), layers, arrays)
    return Conversion(param, values, notes, header, net_section, layers, os.fspath(cfg))


def load(cfg, weights=None, reorg="pjreddie"):
    """caffe_lite.io.darknet.load(cfg, weights) -> Net: the darknet model as a caffe-lite Net
    (TEST phase; without weights, darknet's initialisation through Caffe's fillers)."""
    return convert(cfg, weights, reorg).net()


def export(net, cfg_path, weights_path, header=None, depthwise=False, reorg="pjreddie",
           overwrite=True):
    """Write a caffe-lite Net as a darknet cfg and weights; returns the [DkLayer]s written.
    Raises DarknetError naming every layer darknet has no equivalent for."""
    from .from_caffe import export_net
    return export_net(net, cfg_path, weights_path, header=header, depthwise=depthwise,
                      reorg=reorg, overwrite=overwrite)
