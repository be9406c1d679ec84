"""Reading the compressed models that Deep Compression published with its paper (Han et al.,
e.g. `AlexNet_compressed.net` of songhan/Deep-Compression-AlexNet, and SqueezeNet's
`compressed_SqueezeNet.net`), given the net they belong to: the file holds no names or shapes.

Layout, as the release's decoder reads it (little-endian, no header, no Huffman coding):

    uint32 nz_num[L]   L = the net's layers with parameters whose name contains "conv",
                       "fc" or "ip", in net order; nz_num = entries, padding included
    then per layer, in that order:
      float32 codebook[2^b]    b = 8 for a name containing "conv", else 4
      float32 bias[n]          the layer's second blob (n = its size)
      uint8   spm_stream[(nz - 1) // (8 / b) + 1]   codebook index per entry: one per byte
                               (b = 8) or two per byte, the first in the low 4 bits (b = 4)
      uint8   ind_stream[(nz - 1) // 2 + 1]         relative index per entry, 4 bits, two
                               per byte, the first in the low 4 bits

Entry i sits at flat position cumsum(ind + 1) - 1 of the weight (C order) and holds
codebook[spm]; every other position holds codebook[0] (0 in the published files: index 0 is
the zero that padding entries carry).  Such a file is recognised by its size, which nz_num and
the net's shapes fix to the byte."""
import os

import numpy as np

from ..errors import CaffeLiteError, ModelFileError

NAME_KEYS = ("conv", "fc", "ip")


def default_bits(name):
    return 8 if "conv" in name else 4


def layers_of(net, bits=None):
    """[(name, layer, b)] of the layers the file covers, in order; `bits` overrides the
    codebook width per layer ({name: 4 or 8})."""
    out = []
    for name, layer in zip(net.layer_names, net.layers):
        if layer.blobs and any(k in name for k in NAME_KEYS):
            b = (bits or {}).get(name, default_bits(name))
            if b not in (4, 8):
                raise CaffeLiteError(f"layer '{name}': the Deep Compression layout has 4- or "
                                     f"8-bit codebooks, not {b}")
            out.append((name, layer, b))
    return out


def _stream_sizes(nz, b):
    if nz == 0:
        return 0, 0
    return (nz - 1) // (8 // b) + 1, (nz - 1) // 2 + 1


def _bias_count(layer):
    return layer.blobs[1].count if len(layer.blobs) > 1 else 0


def expected_size(nz_num, layers):
    size = 4 * len(layers)
    for nz, (_, layer, b) in zip(nz_num, layers):
        spm, ind = _stream_sizes(int(nz), b)
        size += 4 * (1 << b) + 4 * _bias_count(layer) + spm + ind
    return size


def _header(path, layers):
    size = os.path.getsize(path)
    if not layers or size < 4 * len(layers):
        return None, size
    with open(path, "rb") as f:
        nz = np.frombuffer(f.read(4 * len(layers)), "<u4").astype(np.int64)
    return nz, size


def matches(path, net, bits=None):
    """True when `path` has exactly the size a Deep Compression file for `net` would."""
    try:
        layers = layers_of(net, bits)
        nz, size = _header(path, layers)
    except (OSError, CaffeLiteError):
        return False
    return nz is not None and expected_size(nz, layers) == size


def _nibbles(stream, n):
    out = np.empty(2 * stream.size, np.int64)
    out[0::2] = stream & 15
    out[1::2] = stream >> 4
    return out[:n]


def load_weights(path, net, bits=None):
    """[(layer name, [weight, bias])] from a Deep Compression file for `net`."""
    path = os.fspath(path)
    layers = layers_of(net, bits)
    if not layers:
        raise CaffeLiteError(f"{path}: the net has no layer named like conv*, fc* or ip*, so "
                             "a Deep Compression file cannot belong to it")
    nz_num, size = _header(path, layers)
    if nz_num is None or expected_size(nz_num, layers) != size:
        raise ModelFileError(f"{path}: not a Deep Compression file for this net (its size, "
                             f"{size} bytes, is not what the nz_num header and the net's "
                             f"layers {', '.join(n for n, _, _ in layers)} give)")
    with open(path, "rb") as f:
        data = f.read()
    pos = 4 * len(layers)
    out = []

    def take(n, dtype):
        nonlocal pos
        a = np.frombuffer(data, dtype, count=n // np.dtype(dtype).itemsize, offset=pos)
        pos += n
        return a

    for nz, (name, layer, b) in zip(nz_num, layers):
        nz = int(nz)
        weight = layer.blobs[0]
        codebook = take(4 << b, "<f4").astype(np.float32)
        bias = take(4 * _bias_count(layer), "<f4").astype(np.float32)
        n_spm, n_ind = _stream_sizes(nz, b)
        spm = take(n_spm, np.uint8).astype(np.int64)
        ind = take(n_ind, np.uint8).astype(np.int64)
        codes = _nibbles(spm, nz) if b == 4 else spm[:nz]
        positions = np.cumsum(_nibbles(ind, nz) + 1) - 1
        if positions.size and positions[-1] >= weight.count:
            raise ModelFileError(f"{path}: layer '{name}': entry positions run to "
                                 f"{positions[-1]}, past its {weight.count} weights")
        dense = np.zeros(weight.count, np.int64)
        dense[positions] = codes
        arrays = [codebook[dense].reshape(weight.shape)]
        if len(layer.blobs) > 1:
            arrays.append(bias.reshape(layer.blobs[1].shape))
        out.append((name, arrays))
    return out
