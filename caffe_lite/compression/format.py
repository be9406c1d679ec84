"""caffe-lite's compressed model file (version 1): a caffemodel stored as Deep Compression
stores one (relative indices with padding zeros, shared-value indices, Huffman coding), plus
the rest of the caffemodel so that decompressing gives it back.

Layout (little-endian; docs/compression.md describes every byte):

    header    magic 89 43 4C 43 4D 0D 0A 1A, uint16 version, uint16 flags (0),
              uint64 file length, uint32 S
    skeleton  S bytes: zlib of the NetParameter with every blob's values removed
    blobs     for every blob of every layer of the skeleton, in order: uint8 kind, payload
                kind 0 DENSE:  float32 x count
                kind 1 SHARED: positions, uint32 K, float32 x K codebook,
                               Huffman stream of value symbols (0: zero, s: codebook[s - 1])
                kind 2 SPARSE: positions, float32 value of every entry (0 for padding)
              positions = uint8 width, uint32 entries, Huffman stream of relative indices
    trailer   uint32 CRC-32 of every byte before it

Only the weights (blob 0) of prunable layers are stored sparse; biases, BatchNorm and the
blobs of other layers are float32 as they are.  For each weight the writer takes the smallest
of the three kinds (and the best index width), all exact: decompressing gives every value
back bit for bit, except that a pruned weight stored as -0.0 comes back as +0.0."""
import logging
import os
import struct
import zlib

import numpy as np

from ..errors import CaffeLiteError, ModelFileError
from ..io.blobproto import merge_packed_floats, proto_shape, proto_values
from ..io.caffemodel import read_bytes
from ..proto import caffe_pb2
from ..util.atomic import atomic_write_bytes
from . import huffman, positions

log = logging.getLogger("caffe_lite")

MAGIC = b"\x89CLCM\r\n\x1a"
VERSION = 1
_HEADER = struct.Struct("<8sHHQI")
DENSE, SHARED, SPARSE = 0, 1, 2
KIND_NAMES = {DENSE: "dense", SHARED: "shared", SPARSE: "sparse"}
MAX_WIDTH = 15
MAX_CODEBOOK = (1 << huffman.MAX_BITS) - 1   # value symbols 0..K fit the code


def is_compressed(path):
    """True when the file starts with this format's magic number."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


# --- writing -----------------------------------------------------------------------------------
class BlobStat:
    """What the writer did with one blob (for the reports of compress)."""

    def __init__(self, layer, index, kind, count, entries, nbytes, width=0, codebook=0):
        self.layer, self.index, self.kind, self.count = layer, index, kind, count
        self.entries, self.nbytes, self.width, self.codebook = entries, nbytes, width, codebook

    def __repr__(self):
        return (f"BlobStat({self.layer!r}, {self.index}, {KIND_NAMES[self.kind]}, "
                f"count={self.count}, entries={self.entries}, bytes={self.nbytes})")


def _prunable_types():
    from ..layers.registry import LAYERS
    return {t for t, cls in LAYERS.items() if getattr(cls, "prunable", False)}


def _live(values):
    """Flat positions of the nonzero values (+0.0 and -0.0 are zero)."""
    return np.flatnonzero(values.view(np.uint32) & np.uint32(0x7FFFFFFF))


def _best_width(pos, value_cost):
    """(width, bytes) minimising the positions' stream plus value_cost(freqs, n_pad)."""
    best = None
    n_live = pos.size
    for width in range(1, MAX_WIDTH + 1):
        freqs, n_pad = positions.histogram(pos, width)
        n = n_live + n_pad
        cost = 5 + huffman.stream_bytes(freqs, n) + value_cost(n_pad, n)
        if best is None or cost < best[1]:
            best = (width, cost)
        if n_pad == 0:
            break                   # wider indices only grow the code table
    return best


def _encode_weight(values):
    """(kind, payload bytes, entries, width, codebook size) for a prunable layer's weight:
    the smallest exact encoding."""
    flat = values.ravel()
    count = flat.size
    pos = _live(flat)
    live_vals = flat[pos]
    candidates = [(4 * count, DENSE)]
    # SPARSE: float32 per entry.
    w_sparse, c_sparse = _best_width(pos, lambda n_pad, n: 4 * n)
    candidates.append((c_sparse, SPARSE))
    uniq, inverse = np.unique(live_vals.view(np.uint32), return_inverse=True)
    inverse = inverse.ravel()
    if pos.size and uniq.size <= MAX_CODEBOOK:
        vfreq = np.bincount(inverse + 1, minlength=uniq.size + 1)
        memo = {}

        def shared_cost(n_pad, n):
            if n_pad not in memo:
                f = vfreq.copy()
                f[0] += n_pad
                memo[n_pad] = 4 + 4 * uniq.size + huffman.stream_bytes(f, n)
            return memo[n_pad]
        w_shared, c_shared = _best_width(pos, shared_cost)
        candidates.append((c_shared, SHARED))
    cost, kind = min(candidates)
    if kind == DENSE:
        return kind, flat.astype("<f4").tobytes(), count, 0, 0
    width = w_sparse if kind == SPARSE else w_shared
    symbols, padding = positions.encode(pos, width)
    parts = [struct.pack("<BI", width, symbols.size), huffman.encode(symbols)]
    if kind == SPARSE:
        vals = np.zeros(symbols.size, np.float32)
        vals[~padding] = live_vals
        parts.append(vals.astype("<f4").tobytes())
        return kind, b"".join(parts), symbols.size, width, 0
    codes = np.zeros(symbols.size, np.int64)
    codes[~padding] = inverse + 1
    parts += [struct.pack("<I", uniq.size), uniq.astype("<u4").tobytes(), huffman.encode(codes)]
    return kind, b"".join(parts), symbols.size, width, int(uniq.size)


def _skeleton(net_param):
    """A copy of the NetParameter with every blob's values (and gradients) removed."""
    skeleton = caffe_pb2.NetParameter()
    skeleton.CopyFrom(net_param)
    if skeleton.layers and not skeleton.layer:
        raise CaffeLiteError("a V1 (legacy `layers`) NetParameter: upgrade it first "
                             "(caffe_lite.io.upgrade_net)")
    dropped_diff = False
    for lp in skeleton.layer:
        for b in lp.blobs:
            dropped_diff |= bool(len(b.diff) or len(b.double_diff))
            if len(b.double_data):
                log.warning("layer '%s' holds double-precision values; they are stored as "
                            "float32", lp.name)
            for f in ("data", "diff", "double_data", "double_diff"):
                b.ClearField(f)
    if dropped_diff:
        log.warning("the gradients (diff) stored in the caffemodel are not kept")
    return skeleton


def encode(skeleton, arrays):
    """(file bytes, [BlobStat]) for a skeleton NetParameter (blobs holding shapes only) and
    the values of its blobs: arrays[i] lists those of skeleton.layer[i]."""
    prunable = _prunable_types()
    body, stats = [], []
    for lp, values_list in zip(skeleton.layer, arrays):
        if len(values_list) != len(lp.blobs):
            raise CaffeLiteError(f"layer '{lp.name}': {len(values_list)} arrays for "
                                 f"{len(lp.blobs)} blobs")
        for i, (b, values) in enumerate(zip(lp.blobs, values_list)):
            values = np.ascontiguousarray(values, np.float32)
            count = int(np.prod(proto_shape(b), dtype=np.int64))
            if values.size != count:
                raise CaffeLiteError(f"layer '{lp.name}' blob {i}: {values.size} values for "
                                     f"shape {proto_shape(b)}")
            if i == 0 and lp.type in prunable:
                kind, payload, entries, width, k = _encode_weight(values)
            else:
                kind, payload, entries, width, k = \
                    DENSE, values.astype("<f4").tobytes(), count, 0, 0
            body.append(bytes([kind]) + payload)
            stats.append(BlobStat(lp.name, i, kind, count, int(entries), 1 + len(payload),
                                  width, k))
    skel = zlib.compress(skeleton.SerializeToString(), 9)
    blobs = b"".join(body)
    length = _HEADER.size + len(skel) + len(blobs) + 4
    data = _HEADER.pack(MAGIC, VERSION, 0, length, len(skel)) + skel + blobs
    return data + struct.pack("<I", zlib.crc32(data)), stats


def encode_net_param(net_param):
    """(file bytes, [BlobStat]) for a NetParameter with weights (a caffemodel's content)."""
    arrays = [[proto_values(b) for b in lp.blobs] for lp in net_param.layer]
    return encode(_skeleton(net_param), arrays)


def encode_net(net):
    """(file bytes, [BlobStat]) for a Net: what net.save() writes, compressed."""
    skeleton = _skeleton(net.to_proto())
    arrays = [[b.cpu_data for b in net.layer_dict[lp.name].blobs] if lp.blobs else []
              for lp in skeleton.layer]
    return encode(skeleton, arrays)


def _net_param_of(source):
    """A NetParameter with weights from a NetParameter or a weights file."""
    if isinstance(source, caffe_pb2.NetParameter):
        return source
    path = os.fspath(source)
    if is_compressed(path):
        return read(path)
    from ..io.caffemodel import HDF5_SIGNATURE, read_net_binary
    with open(path, "rb") as f:
        if f.read(8) == HDF5_SIGNATURE:
            raise CaffeLiteError(f"{path}: an HDF5 caffemodel holds no net description; "
                                 "load it into a Net (with its prototxt) and compress the Net")
    return read_net_binary(path)


def compress(source, output, overwrite=True):
    """Write `source` (a Net, a NetParameter with weights, or a caffemodel path) as a
    compressed file; returns the [BlobStat] of its blobs."""
    if hasattr(source, "to_proto"):
        data, stats = encode_net(source)
    else:
        data, stats = encode_net_param(_net_param_of(source))
    atomic_write_bytes(output, data, overwrite=overwrite)
    return stats


# --- reading -----------------------------------------------------------------------------------
class _Reader:
    def __init__(self, data, path):
        self.data, self.path, self.pos = data, path, 0

    def fail(self, what):
        raise ModelFileError(f"{self.path}: {what}")

    def take(self, n, what):
        if n < 0 or self.pos + n > len(self.data):
            self.fail(f"cut short in {what}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt, what):
        s = struct.Struct(fmt)
        return s.unpack(self.take(s.size, what))

    def stream(self, n, what):
        try:
            out, self.pos = huffman.decode(self.data, self.pos, n)
        except huffman.HuffmanError as exc:
            self.fail(f"{what}: {exc}")
        return out


def _check_container(data, path):
    if not data.startswith(MAGIC):
        raise ModelFileError(f"{path}: not a caffe-lite compressed model (no magic number)")
    if len(data) < _HEADER.size + 4:
        raise ModelFileError(f"{path}: a compressed model of {len(data)} bytes: truncated")
    _, version, flags, length, _ = _HEADER.unpack_from(data)
    if version != VERSION:
        raise ModelFileError(f"{path}: compressed model format version {version}; this "
                             f"caffe-lite reads version {VERSION}")
    if flags:
        raise ModelFileError(f"{path}: unknown flags 0x{flags:04x} in the header")
    if length != len(data):
        raise ModelFileError(f"{path}: the file is {len(data)} bytes but its header says "
                             f"{length}: truncated or damaged")
    crc, = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(memoryview(data)[:-4]) != crc:
        raise ModelFileError(f"{path}: checksum mismatch: the file is damaged")


def _positions(r, count, where):
    width, n = r.unpack("<BI", f"{where} (positions)")
    if not 1 <= width <= MAX_WIDTH:
        r.fail(f"{where}: relative index width {width} (1..{MAX_WIDTH})")
    if n > count:
        r.fail(f"{where}: {n} entries for {count} weights")
    symbols = r.stream(n, f"{where} (relative indices)")
    if symbols.size and symbols.max() >= (1 << width):
        r.fail(f"{where}: a relative index wider than {width} bits")
    pos = positions.decode(symbols)
    if pos.size and pos[-1] >= count:
        r.fail(f"{where}: a position ({pos[-1]}) past the end of the weight ({count})")
    return pos


def _decode_blob(r, count, where):
    kind, = r.unpack("<B", where)
    if kind == DENSE:
        return np.frombuffer(r.take(4 * count, where), "<f4").astype(np.float32)
    if kind not in (SHARED, SPARSE):
        r.fail(f"{where}: unknown blob kind {kind}")
    out = np.zeros(count, np.float32)
    pos = _positions(r, count, where)
    if kind == SPARSE:
        out[pos] = np.frombuffer(r.take(4 * pos.size, f"{where} (values)"), "<f4")
        return out
    k, = r.unpack("<I", f"{where} (codebook)")
    if k > MAX_CODEBOOK:
        r.fail(f"{where}: a codebook of {k} values (at most {MAX_CODEBOOK})")
    table = np.zeros(k + 1, np.float32)
    table[1:] = np.frombuffer(r.take(4 * k, f"{where} (codebook)"), "<f4")
    codes = r.stream(pos.size, f"{where} (shared-value indices)")
    if codes.size and codes.max() > k:
        r.fail(f"{where}: a shared-value index past the codebook ({k} values)")
    out[pos] = table[codes]
    return out


def decode_arrays(data, path="<compressed model>"):
    """(skeleton NetParameter, [[float32 arrays] per layer]) of a compressed file's bytes."""
    _check_container(data, path)
    _, _, _, _, skel_len = _HEADER.unpack_from(data)
    r = _Reader(data, path)
    r.pos = _HEADER.size
    try:
        skel = zlib.decompress(r.take(skel_len, "the net description"))
    except zlib.error as exc:
        raise ModelFileError(f"{path}: the net description does not decompress ({exc})") \
            from None
    from ..io.caffemodel import parse_binary
    net = parse_binary(skel, caffe_pb2.NetParameter(), path, "net description")
    arrays = []
    for lp in net.layer:
        values = []
        for i, b in enumerate(lp.blobs):
            where = f"layer '{lp.name}' blob {i}"
            try:
                shape = proto_shape(b)
            except ModelFileError as exc:
                r.fail(f"{where}: {exc}")
            count = int(np.prod(shape, dtype=np.int64))
            values.append(_decode_blob(r, count, where).reshape(shape))
        arrays.append(values)
    if r.pos != len(data) - 4:
        r.fail(f"{len(data) - 4 - r.pos} unexpected bytes after the last blob")
    return net, arrays


def decode_bytes(data, path="<compressed model>"):
    """The NetParameter (with its weights) that a compressed file's bytes hold."""
    net, arrays = decode_arrays(data, path)
    for lp, values in zip(net.layer, arrays):
        for b, v in zip(lp.blobs, values):
            merge_packed_floats(b, 5, v)
    return net


def read(path):
    """The NetParameter (a caffemodel's content) of a compressed file."""
    return decode_bytes(read_bytes(path, "a compressed model"), os.fspath(path))


def load_weights(path):
    """[(layer name, [float32 arrays])], as caffe_lite.io.load_weights gives."""
    net, arrays = decode_arrays(read_bytes(path, "a compressed model"), os.fspath(path))
    return [(lp.name, values) for lp, values in zip(net.layer, arrays) if lp.blobs]


def decompress(path, output, overwrite=True):
    """Write the caffemodel a compressed file holds; returns its NetParameter."""
    net = read(path)
    atomic_write_bytes(output, net.SerializeToString(), overwrite=overwrite)
    return net
