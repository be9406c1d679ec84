"""Reading and writing trained weights: binary caffemodel (a serialized NetParameter) and
Caffe's HDF5 form (`/data/<layer>/<i>` datasets)."""
import os

from google.protobuf.message import DecodeError

from ..errors import CaffeLiteError, MissingFileError, ModelFileError
from ..proto import caffe_pb2
from ..util.atomic import atomic_write_bytes
from .blobproto import proto_to_array
from .upgrade import upgrade_net

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def read_bytes(path, what="a weights file"):
    """The bytes of a model file; a typed error naming the path when there are none."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise MissingFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CaffeLiteError(f"{path}: is a directory, expected {what}") from None


def parse_binary(data, message, path, what):
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a valid {what} (truncated or corrupt: {exc})") from None
    return message


def _looks_like_text(data):
    head = data[:256].lstrip()
    return bool(head) and all(32 <= b < 127 or b in (9, 10, 13) for b in head[:128])


def read_net_binary(path):
    """A binary caffemodel as an upgraded NetParameter, with every blob's size checked."""
    data = read_bytes(path)
    if not data:
        raise ModelFileError(f"{path}: empty file, expected a binary caffemodel")
    if data.startswith(HDF5_SIGNATURE):
        raise ModelFileError(f"{path}: is an HDF5 file; load it with load_weights()")
    net = parse_binary(data, caffe_pb2.NetParameter(), path, "binary caffemodel")
    if not net.layer and not net.layers:
        hint = " (it looks like a text prototxt)" if _looks_like_text(data) else ""
        raise ModelFileError(f"{path}: holds no layers; not a binary caffemodel{hint}")
    upgrade_net(net, path)
    for layer in net.layer:
        for i, b in enumerate(layer.blobs):
            proto_to_array(b, f"{path}: layer '{layer.name}' blob {i}")  # raises on a bad size
    return net


def load_weights(path, net=None):
    """[(layer_name, [float32 arrays])] from a binary caffemodel, an HDF5 caffemodel or a
    caffe-lite compressed model (told apart by their first bytes), or, given the `net` it
    belongs to, a compressed model published by Deep Compression (recognised by its size).
    (An HDF5 file may hold None for a parameter a layer shares with another.)"""
    path = os.fspath(path)
    if not os.path.isfile(path):
        _missing(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if head == HDF5_SIGNATURE:
        return _load_hdf5(path)
    from ..compression import deepcompression, format as compressed
    if head == compressed.MAGIC:
        return compressed.load_weights(path)
    if net is not None and deepcompression.matches(path, net):
        return deepcompression.load_weights(path, net)
    net = read_net_binary(path)
    out = []
    for layer in net.layer:
        if layer.blobs:
            out.append((layer.name, [proto_to_array(b, f"{path}: layer '{layer.name}' blob {i}")
                                     for i, b in enumerate(layer.blobs)]))
    return out


def _missing(path):
    if os.path.isdir(path):
        raise CaffeLiteError(f"{path}: is a directory, expected a weights file")
    raise MissingFileError(f"{path}: no such file")


def _load_hdf5(path):
    from .hdf5 import load_hdf5_weights
    return load_hdf5_weights(path)


def write_net_binary(path, net_param, overwrite=True):
    atomic_write_bytes(path, net_param.SerializeToString(), overwrite=overwrite)
