"""BlobProto <-> Blob / numpy, including Caffe's legacy 4-D (num, channels, height, width) form."""
import math

import numpy as np

from ..errors import ModelFileError, ShapeMismatchError
from ..proto import caffe_pb2

_LEGACY = ("num", "channels", "height", "width")


def proto_shape(proto):
    """The shape a BlobProto declares: `shape.dim`, or the legacy 4-D fields when set.

    A blob that declares no shape at all is a scalar, as in Caffe (whose empty shape has count
    1): one value reads as a 0-d array; any other count raises ModelFileError (a ValueError, as
    pycaffe's io.blobproto_to_array raises)."""
    if any(proto.HasField(f) for f in _LEGACY):
        return tuple(int(getattr(proto, f)) for f in _LEGACY)
    if proto.HasField("shape"):
        return tuple(int(d) for d in proto.shape.dim)
    n = len(proto.data) or len(proto.double_data)
    if n == 1:
        return ()
    raise ModelFileError(f"a BlobProto holds {n} values but declares no shape "
                         "(neither shape.dim nor num/channels/height/width)")


def proto_values(proto, source="", what="data"):
    """The values of a BlobProto as a float32 array (double_data converted)."""
    dbl = proto.double_diff if what == "diff" else proto.double_data
    flt = proto.diff if what == "diff" else proto.data
    if len(dbl):
        return np.asarray(dbl, dtype=np.float64).astype(np.float32)
    return np.asarray(flt, dtype=np.float32)


def proto_to_array(proto, source="", what="data"):
    from ..blob import MAX_BLOB_AXES, MAX_BLOB_COUNT
    shape = proto_shape(proto)
    where = f"{source}: " if source else ""
    count = math.prod(shape)
    if any(d < 0 for d in shape) or len(shape) > MAX_BLOB_AXES or count > MAX_BLOB_COUNT:
        raise ModelFileError(f"{where}blob shape {shape} is not a valid blob shape (dimensions "
                             f">= 0, at most {MAX_BLOB_AXES} axes, fewer than 2^31 elements): "
                             "the file is corrupt")
    values = proto_values(proto, source, what)
    if values.size != count:
        raise ModelFileError(f"{where}blob of shape {shape} needs {count} values but holds "
                             f"{values.size}: the file is truncated or corrupt")
    return values.reshape(shape)


def array_to_proto(array, proto=None, diff=None):
    """A BlobProto with `shape` (N-d form) and float data (and diff when given)."""
    proto = caffe_pb2.BlobProto() if proto is None else proto
    array = np.asarray(array, dtype=np.float32)
    proto.ClearField("shape")
    proto.shape.SetInParent()  # a 0-axis (scalar) blob still declares its empty shape
    proto.shape.dim.extend(array.shape)
    proto.ClearField("data")
    merge_packed_floats(proto, 5, array)
    if diff is not None:
        proto.ClearField("diff")
        merge_packed_floats(proto, 6, np.asarray(diff, dtype=np.float32))
    return proto


def merge_packed_floats(proto, field, array):
    """Append float32 values to a packed repeated float field through the wire format (parsed
    in C: several times faster than extending the field from a Python list)."""
    raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
    n, head = len(raw), bytearray([field << 3 | 2])
    while True:
        head.append((n & 0x7F) | (0x80 if n >> 7 else 0))
        n >>= 7
        if not n:
            break
    proto.MergeFromString(bytes(head) + raw)


def blob_to_proto(blob, proto=None, write_diff=False):
    return array_to_proto(blob.cpu_data, proto, blob.cpu_diff if write_diff else None)


def shapes_equal(proto, shape):
    """Caffe's Blob::ShapeEquals: a legacy 4-D proto matches an N-d shape (N <= 4) when the
    shape, left-padded with 1s, equals (num, channels, height, width)."""
    if any(proto.HasField(f) for f in _LEGACY):
        if len(shape) > 4:
            return False
        padded = (1,) * (4 - len(shape)) + tuple(shape)
        return padded == tuple(int(getattr(proto, f)) for f in _LEGACY)
    return tuple(int(d) for d in proto.shape.dim) == tuple(shape)


def blob_from_proto(blob, proto, reshape=True, source=""):
    if reshape:
        arr = proto_to_array(proto, source)
        blob.reshape(arr.shape)
    else:
        if not shapes_equal(proto, blob.shape):
            raise ShapeMismatchError(f"{source}: blob shape {proto_shape(proto)} does not match "
                                     f"the target shape {blob.shape}")
        arr = proto_to_array(proto, source).reshape(blob.shape)
    blob.data[...] = arr
    if len(proto.diff) or len(proto.double_diff):
        blob.diff[...] = proto_to_array(proto, source, "diff").reshape(blob.shape)
