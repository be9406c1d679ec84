"""darknet's .weights file: a header, then each weighted layer's float32 arrays in file order.

Header: int32 major, minor, revision, then `seen` (images trained on) as a 64-bit integer when
major * 10 + minor >= 2 (and both < 1000), else as a 32-bit one.  major or minor > 1000 marks a
file whose [connected] weights are stored transposed (inputs x outputs).  Everything is
little-endian, as darknet writes it on the machines it runs on."""
import logging
import os
import struct

import numpy as np

from ...errors import CaffeLiteError, ModelFileError
from ...util.atomic import atomic_write_bytes

log = logging.getLogger("caffe_lite")
_F32 = np.dtype("<f4")


class Header:
    def __init__(self, major=0, minor=2, revision=0, seen=0):
        self.major, self.minor, self.revision, self.seen = major, minor, revision, seen

    @property
    def seen_is_64bit(self):
        return (self.major * 10 + self.minor) >= 2 and self.major < 1000 and self.minor < 1000

    @property
    def transpose(self):
        return self.major > 1000 or self.minor > 1000

    @property
    def size(self):
        return 12 + (8 if self.seen_is_64bit else 4)

    def pack(self):
        seen = struct.pack("<Q" if self.seen_is_64bit else "<i", self.seen)
        return struct.pack("<iii", self.major, self.minor, self.revision) + seen

    @classmethod
    def unpack(cls, data, path):
        if len(data) < 16:
            raise ModelFileError(f"{path}: {len(data)} bytes: too short for a darknet weights "
                                 "header")
        major, minor, revision = struct.unpack_from("<iii", data, 0)
        h = cls(major, minor, revision)
        if h.seen_is_64bit:
            if len(data) < 20:
                raise ModelFileError(f"{path}: truncated in the header (version "
                                     f"{major}.{minor}.{revision} has a 64-bit 'seen')")
            h.seen = struct.unpack_from("<Q", data, 12)[0]
        else:
            h.seen = struct.unpack_from("<i", data, 12)[0]
        return h

    def __str__(self):
        return (f"{self.major}.{self.minor}.{self.revision}, seen {self.seen} "
                f"({64 if self.seen_is_64bit else 32}-bit)")

    def __eq__(self, other):
        return isinstance(other, Header) and self.__dict__ == other.__dict__


def layer_arrays(layer, header):
    """[(name, shape, file_shape)] of a weighted darknet layer in file order."""
    order = []
    for name, shape in layer.weights:
        file_shape = shape
        if name == "weights" and layer.kind == "connected" and header.transpose:
            file_shape = shape[::-1]
        order.append((name, shape, file_shape))
    return order


def read_weights(path, layers):
    """(Header, {layer index: {name: float32 array}}) for the weighted `layers`.

    A file that ends exactly between two layers is a partial file (darknet's `.conv.N`
    backbones): the layers after it are left out, with a warning.  A file that ends inside a
    layer, or has bytes left after the last layer, does not belong to the cfg: an error."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CaffeLiteError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CaffeLiteError(f"{path}: is a directory, expected a darknet .weights file") from None
    header = Header.unpack(data, path)
    if header.major < 0 or header.minor < 0 or header.revision < 0:
        raise ModelFileError(f"{path}: header version {header.major}.{header.minor}."
                             f"{header.revision} is not a darknet weights file")
    offset = header.size
    out = {}
    weighted = [ly for ly in layers if ly.weights]
    for n, layer in enumerate(weighted):
        if offset == len(data):
            rest = ", ".join(f"{ly.index} [{ly.kind}]" for ly in weighted[n:])
            log.warning("%s ends after layer %d's weights: a partial weights file; layer(s) %s "
                        "keep their initial values", path, weighted[n - 1].index if n else -1,
                        rest)
            break
        arrays = {}
        for name, shape, file_shape in layer_arrays(layer, header):
            count = int(np.prod(file_shape))
            need = count * 4
            if offset + need > len(data):
                raise ModelFileError(
                    f"{path}: truncated: layer {layer.index} [{layer.kind}] needs {count} "
                    f"floats for its {name} at byte {offset}, only {(len(data) - offset) // 4} "
                    "left (does the cfg match these weights?)")
            a = np.frombuffer(data, _F32, count, offset).reshape(file_shape)
            arrays[name] = np.ascontiguousarray(a.T if file_shape != shape else a,
                                                dtype=np.float32)
            offset += need
        out[layer.index] = arrays
    if offset != len(data):
        left = len(data) - offset
        raise ModelFileError(
            f"{path}: {left} bytes ({left / 4:g} floats) left after the last layer's weights: "
            "the weights do not belong to this cfg (a layer missing or of another size?)")
    return header, out


def pack_weights(header, layers, arrays):
    """The bytes of a .weights file: `arrays[index][name]` for every weighted layer."""
    parts = [header.pack()]
    for layer in layers:
        if not layer.weights:
            continue
        for name, shape, file_shape in layer_arrays(layer, header):
            a = np.asarray(arrays[layer.index][name], dtype=np.float32).reshape(shape)
            if file_shape != shape:
                a = a.T
            parts.append(np.ascontiguousarray(a, dtype=_F32).tobytes())
    return b"".join(parts)


def write_weights(path, header, layers, arrays, overwrite=True):
    atomic_write_bytes(path, pack_weights(header, layers, arrays), overwrite=overwrite)
