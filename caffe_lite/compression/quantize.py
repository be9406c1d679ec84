"""Weight sharing (Deep Compression's trained quantisation, Han et al. 2016, section 3).

Each quantised layer's live weights (mask 1) are clustered by one-dimensional k-means into at
most 2^bits shared values, the centroids initialised linearly between the smallest and the
largest live weight (the initialisation Han et al. found best: it keeps the rare large
weights represented).  Every live weight becomes its centroid (float32); pruned weights stay
exactly 0.  A layer whose live weights already take at most 2^bits values is adopted as it is
(its values are its codebook), so quantising twice changes nothing.

Which layers, and how many bits, comes from a plan: per layer, per kind (`conv`: Convolution,
DepthwiseConvolution, Deconvolution; `fc`: InnerProduct) or for all, given as text
("conv=8,fc=5", "ip1=4,fc=5", "6") or in a PruningSpec (`quantize { conv_bits: 8 fc_bits: 5 }`,
`layer { name: "ip1" bits: 4 }`); a layer's own entry beats its kind, which beats the default,
and 0 bits keeps a layer unquantised.

    from caffe_lite import compression
    books = compression.quantize_net(net, "conv=8,fc=5")
    books["ip1"].values, books["ip1"].labels     # codebook, cluster of each weight (-1: pruned)
"""
import dataclasses
import logging

import numpy as np

from ..errors import CaffeLiteError
from ..proto import caffe_lite_pb2
from ..pruning.spec import load_spec, prunable_layers

log = logging.getLogger("caffe_lite")

MAX_BITS = 16
KINDS = {"conv": ("Convolution", "DepthwiseConvolution", "Deconvolution"),
         "fc": ("InnerProduct",)}


class QuantizationError(CaffeLiteError):
    """A quantisation request that cannot be carried out (bad bits, unknown layer, ...)."""


# --- k-means -----------------------------------------------------------------------------------
def kmeans_1d(x, k, max_iter=100):
    """Lloyd's k-means on the values x with k centroids initialised linearly over
    [min(x), max(x)].  Returns (centroids float64 (k,), labels int64, iterations); a centroid
    that loses all its points keeps its value.  Exact 1-d Lloyd steps on the sorted values:
    the clusters are runs between the midpoints of consecutive centroids."""
    x = np.asarray(x, np.float64).ravel()
    if x.size == 0:
        return np.zeros(0), np.zeros(0, np.int64), 0
    xs = np.sort(x)
    csum = np.concatenate([[0.0], np.cumsum(xs)])
    c = np.linspace(xs[0], xs[-1], k) if k > 1 else np.array([xs.mean()])
    cuts = None
    it = 0
    for it in range(1, max_iter + 1):
        new_cuts = np.searchsorted(xs, (c[1:] + c[:-1]) / 2, side="left")
        if cuts is not None and np.array_equal(new_cuts, cuts):
            break
        cuts = new_cuts
        lo = np.concatenate([[0], cuts])
        hi = np.concatenate([cuts, [xs.size]])
        n = hi - lo
        full = n > 0
        c = c.copy()
        c[full] = (csum[hi[full]] - csum[lo[full]]) / n[full]
        c = np.sort(c)          # sums of sorted runs keep centroids ordered; guard rounding
    labels = np.searchsorted((c[1:] + c[:-1]) / 2, x, side="right")
    return c, labels, it


@dataclasses.dataclass
class Codebook:
    """The shared values of one layer: `values` (float32, (K,)), `labels` (int32, the weight's
    shape flattened: the cluster of each weight, -1 for a pruned one)."""
    values: np.ndarray
    labels: np.ndarray
    bits: int
    iterations: int = 0          # k-means iterations (0: adopted, already quantised)

    @property
    def size(self):
        return int(self.values.size)

    def counts(self):
        live = self.labels[self.labels >= 0]
        return np.bincount(live, minlength=self.size)

    def weights(self, shape):
        """The dense float32 weight this codebook gives (pruned entries +0.0)."""
        out = np.zeros(self.labels.size, np.float32)
        live = self.labels >= 0
        out[live] = self.values[self.labels[live]]
        return out.reshape(shape)


def build_codebook(weight, mask, bits, max_iter=100):
    """The Codebook of one weight: its live values adopted when at most 2^bits distinct
    ones (compared bit for bit), else k-means with linear initialisation."""
    w = np.asarray(weight, np.float32).ravel()
    live = np.ones(w.size, bool) if mask is None else np.asarray(mask).ravel() != 0
    vals = w[live]
    labels = np.full(w.size, -1, np.int32)
    values, inverse = distinct_values(vals)
    if values.size <= (1 << bits):
        labels[live] = inverse
        return Codebook(values, labels, bits, 0)
    centroids, lab, it = kmeans_1d(vals, 1 << bits, max_iter)
    # Empty clusters and clusters whose float32 values coincide drop out: the codebook is
    # the distinct shared values.
    values, inverse = distinct_values(centroids.astype(np.float32)[lab])
    labels[live] = inverse
    return Codebook(values, labels, bits, it)


def distinct_values(x):
    """(values, inverse) of a float32 array: its distinct values compared bit for bit,
    in increasing order, and the index of each element's value."""
    bits, inverse = np.unique(np.asarray(x, np.float32).view(np.uint32), return_inverse=True)
    values = bits.view(np.float32)
    order = np.argsort(values, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return values[order].copy(), rank[inverse.ravel()].astype(np.int32)


# --- plans ---------------------------------------------------------------------------------
def _check_bits(b, what):
    if not (isinstance(b, (int, np.integer)) and 0 <= b <= MAX_BITS):
        raise QuantizationError(f"{what}: bits must be an integer in 0..{MAX_BITS} (0: keep "
                                f"the layer unquantised), got {b}")
    return int(b)


def parse_bits(text, what="-bits"):
    """'conv=8,fc=5' / 'ip1=4,fc=5' / '6' -> {key: bits} (key None: every layer)."""
    out = {}
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, val = part.rpartition("=")
        key = key.strip() if sep else None
        try:
            b = int(val)
        except ValueError:
            raise QuantizationError(f"{what}: '{part}' is not KIND=BITS, LAYER=BITS or BITS "
                                    "(e.g. conv=8,fc=5)") from None
        if key in out:
            raise QuantizationError(f"{what}: '{key or 'the default'}' is given twice")
        out[key] = _check_bits(b, f"{what} '{part}'")
    if not out:
        raise QuantizationError(f"{what}: empty; give e.g. conv=8,fc=5")
    return out


def spec_bits(spec):
    """{key: bits} from a PruningSpec's quantize block and layer bits."""
    out = {}
    q = spec.quantize
    if q.HasField("bits"):
        out[None] = _check_bits(q.bits, "quantize.bits")
    if q.HasField("conv_bits"):
        out["conv"] = _check_bits(q.conv_bits, "quantize.conv_bits")
    if q.HasField("fc_bits"):
        out["fc"] = _check_bits(q.fc_bits, "quantize.fc_bits")
    for e in spec.layer:
        if e.HasField("bits"):
            if e.name in out:
                raise QuantizationError(f"quantisation spec: layer '{e.name}' is given twice")
            out[e.name] = _check_bits(e.bits, f"layer '{e.name}' bits")
    return out


def make_plan(net, bits=None, spec=None):
    """{layer name: bits} for the prunable layers to quantise, in net order.  `bits`: text
    or dict as parse_bits gives (it overrides the spec's entries key by key); `spec`: a
    PruningSpec, its text or a path.  Layer names are checked against the net."""
    keys = {}
    if spec is not None:
        sp = load_spec(spec) if not isinstance(spec, caffe_lite_pb2.PruningSpec) else spec
        keys.update(spec_bits(sp))
    if bits is not None:
        keys.update(parse_bits(bits) if not isinstance(bits, dict) else
                    {k: _check_bits(v, f"bits of '{k}'") for k, v in bits.items()})
    layers = prunable_layers(net)
    names = [n for n, _ in layers]
    for k in keys:
        if k is None or k in names:
            continue
        if k in KINDS:
            continue
        if k in net.layer_dict:
            raise QuantizationError(f"layer '{k}' ({net.layer_dict[k].type}) has no weight "
                                    f"that can be shared; quantisable layers: "
                                    f"{', '.join(names) or 'none'}")
        raise QuantizationError(f"the net has no layer named '{k}' (and it is not a kind: "
                                f"conv, fc); quantisable layers: {', '.join(names) or 'none'}")
    plan = {}
    for name, layer in layers:
        kind = next((k for k, types in KINDS.items() if layer.type in types), None)
        b = keys.get(name, keys.get(kind, keys.get(None, 0)))
        if b:
            plan[name] = b
    if not plan:
        raise QuantizationError("nothing to quantise: give bits per kind (conv=8,fc=5), per "
                                "layer, or for all layers")
    return plan


def quantize_net(net, bits=None, spec=None, max_iter=None):
    """Quantise the net's weights in place; returns {layer: Codebook} in net order.
    `max_iter` (k-means steps) defaults to the spec's quantize.max_iter, 100."""
    if spec is not None and not isinstance(spec, caffe_lite_pb2.PruningSpec):
        spec = load_spec(spec)
    if max_iter is None:
        max_iter = spec.quantize.max_iter if spec is not None else 100
    plan = make_plan(net, bits, spec)
    books = {}
    for name, b in plan.items():
        blob = net.layer_dict[name].blobs[0]
        book = build_codebook(blob.cpu_data, blob.cpu_mask, b, max_iter)
        blob.data[...] = book.weights(blob.shape)
        books[name] = book
        log.info("Quantised %s: %d live weights -> %d shared values (%d bits, %s)", name,
                 int((book.labels >= 0).sum()), book.size, b,
                 f"{book.iterations} k-means iterations" if book.iterations else "adopted")
    return books
