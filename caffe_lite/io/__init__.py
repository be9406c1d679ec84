"""File formats: prototxt, caffemodel (binary and HDF5), BlobProto, and pycaffe's io helpers."""
from .blobproto import array_to_proto, proto_to_array, proto_shape
from .caffemodel import load_weights, read_net_binary, write_net_binary
from .datum import array_to_datum, datum_to_array
from .image import Transformer, load_image, oversample, resize_image
from .prototxt import load_message, parse_text, read_text, to_text, write_text
from .upgrade import upgrade_net
from ..proto import caffe_pb2


def array_to_blobproto(arr, diff=None):
    """pycaffe's name: an N-d array as a BlobProto (shape form)."""
    return array_to_proto(arr, diff=diff)


def blobproto_to_array(blob, return_diff=False):
    """pycaffe's name: a BlobProto's data (or diff) as an array in its declared shape (a blob
    that declares none is a scalar: one value gives a 0-d array, more raise ModelFileError, a
    ValueError, as in pycaffe)."""
    return proto_to_array(blob, what="diff" if return_diff else "data")


def arraylist_to_blobprotovector_str(arraylist):
    """pycaffe's name: arrays as a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    for a in arraylist:
        array_to_proto(a, vec.blobs.add())
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(s):
    """pycaffe's name: a serialized BlobProtoVector as a list of arrays."""
    from .caffemodel import parse_binary
    vec = parse_binary(s, caffe_pb2.BlobProtoVector(), "<bytes>", "BlobProtoVector")
    return [proto_to_array(b, f"BlobProtoVector blob {i}") for i, b in enumerate(vec.blobs)]


__all__ = ["array_to_proto", "proto_to_array", "proto_shape", "load_weights",
           "read_net_binary", "write_net_binary", "load_message", "parse_text", "read_text",
           "to_text", "write_text", "upgrade_net", "array_to_blobproto", "blobproto_to_array",
           "arraylist_to_blobprotovector_str", "blobprotovector_str_to_arraylist",
           "array_to_datum", "datum_to_array", "load_image", "resize_image", "oversample",
           "Transformer"]
