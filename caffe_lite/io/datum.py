"""Caffe's Datum records: pycaffe's array_to_datum / datum_to_array, and the checked parsing
and decoding the data layers and tools use.

A Datum holds one image as C x H x W planar uint8 bytes (`data`), as floats (`float_data`), or
as an encoded image file's bytes (`encoded: true`, decoded to BGR like OpenCV does)."""
import numbers

import numpy as np
from google.protobuf.message import DecodeError

from ..errors import DataError, DataShapeError
from ..proto import caffe_pb2


def _check_label(label, where="array_to_datum"):
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (numbers.Integral,
                                                                      numbers.Real)):
        raise DataError(f"{where}: label must be an integer, got {label!r}")
    if isinstance(label, numbers.Integral):
        value = int(label)
    elif float(label).is_integer():
        value = int(label)
    else:
        raise DataError(f"{where}: label must be an integer, got {label!r}")
    if not -2**31 <= value < 2**31:
        raise DataError(f"{where}: label {value} does not fit Datum's int32 label")
    return value


def array_to_datum(arr, label=None):
    """A C x H x W array as a Datum: uint8 arrays go to `data` (bytes), others to
    `float_data`.  As pycaffe's caffe.io.array_to_datum."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise DataShapeError(f"array_to_datum: expected a 3-D C x H x W array, got shape "
                             f"{arr.shape}")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float64).ravel().tolist())
    if label is not None:
        datum.label = _check_label(label)
    return datum


def datum_to_array(datum):
    """A Datum's pixels as a C x H x W array: uint8 for `data`, float64 for `float_data` (as
    pycaffe's caffe.io.datum_to_array); an encoded Datum is decoded (BGR, uint8)."""
    arr = decode_datum(datum, where="datum_to_array")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    return arr.astype(np.float64)


def parse_datum(value, where="datum"):
    """Datum from serialized bytes; DataError naming `where` (file and key) if corrupt."""
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(bytes(value))
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise DataError(f"{where}: not a valid Caffe Datum ({len(value)} bytes; "
                        f"truncated or corrupt: {exc})") from None
    return datum


def decode_datum(datum, mode="unchanged", where="datum"):
    """A Datum's pixels as a C x H x W array: uint8 for `data` and encoded images, float32 for
    `float_data`.  `mode` applies to encoded Datums only: "unchanged" (Caffe's native decode),
    "color" (force_color) or "gray" (force_gray)."""
    if datum.encoded:
        from ..data.images import decode_image, hwc_to_chw
        if not len(datum.data):
            raise DataError(f"{where}: encoded Datum holds no image bytes")
        return hwc_to_chw(decode_image(datum.data, mode, where=where))
    c, h, w = datum.channels, datum.height, datum.width
    if c <= 0 or h <= 0 or w <= 0:
        raise DataError(f"{where}: Datum has invalid shape channels={c} height={h} width={w} "
                        "(expected all > 0)")
    n = c * h * w
    if len(datum.data):
        if len(datum.data) != n:
            raise DataError(f"{where}: Datum data holds {len(datum.data)} bytes but "
                            f"channels x height x width = {c}x{h}x{w} = {n}")
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(c, h, w)
    if len(datum.float_data):
        if len(datum.float_data) != n:
            raise DataError(f"{where}: Datum float_data holds {len(datum.float_data)} values "
                            f"but channels x height x width = {c}x{h}x{w} = {n}")
        return np.asarray(datum.float_data, dtype=np.float32).reshape(c, h, w)
    raise DataError(f"{where}: Datum holds no pixels (neither data nor float_data)")


__all__ = ["array_to_datum", "datum_to_array", "parse_datum", "decode_datum"]
