"""Datum wire format (both ways, raw / float / encoded) and caffe_lite.io's datum and
blobproto helpers."""
import io as pyio

import numpy as np
import pytest
from PIL import Image

from caffe_lite.errors import CaffeLiteError, DataError, ModelFileError
from caffe_lite.io import (array_to_blobproto, array_to_datum, blobproto_to_array,
                           datum_to_array)
from caffe_lite.io.datum import decode_datum, parse_datum
from caffe_lite.proto import caffe_pb2

from data_util import caffe_datum_bytes


def test_caffe_raw_datum_bytes_decode():
    pixels = bytes(range(2 * 3 * 4))
    raw = caffe_datum_bytes(channels=2, height=3, width=4, data=pixels, label=7)
    d = parse_datum(raw, "k")
    assert (d.channels, d.height, d.width, d.label, d.encoded) == (2, 3, 4, 7, False)
    arr = decode_datum(d)
    assert arr.dtype == np.uint8 and arr.shape == (2, 3, 4)
    assert arr[1, 2, 3] == 23 and arr[0, 1, 0] == 4  # planar C x H x W
    # and what we write is byte-identical to what Caffe's C++ writes
    assert array_to_datum(arr, 7).SerializeToString() == raw


def test_label_zero_and_negative_are_written_like_caffe():
    arr = np.zeros((1, 1, 2), np.uint8)
    assert array_to_datum(arr, 0).SerializeToString() == caffe_datum_bytes(1, 1, 2, b"\0\0", 0)
    d = parse_datum(caffe_datum_bytes(1, 1, 2, b"\0\0", -3))
    assert d.label == -3
    assert array_to_datum(arr, -3).SerializeToString() == caffe_datum_bytes(1, 1, 2, b"\0\0", -3)


@pytest.mark.parametrize("packed", [False, True])
def test_caffe_float_datum_bytes_decode(packed):
    vals = [0.5, -1.25, 3.0, 1e-3, 7.0, 255.5]
    raw = caffe_datum_bytes(channels=1, height=2, width=3, label=4, float_data=vals,
                            packed_floats=packed)
    d = parse_datum(raw)
    arr = decode_datum(d)
    assert arr.dtype == np.float32
    np.testing.assert_array_equal(arr.ravel(), np.float32(vals))
    assert datum_to_array(d).dtype == np.float64  # pycaffe's datum_to_array gives float
    # our float Datums use Caffe's (unpacked proto2) encoding
    assert array_to_datum(np.float32(vals).reshape(1, 2, 3), 4).SerializeToString() == \
        caffe_datum_bytes(1, 2, 3, label=4, float_data=vals)


def _png_bytes(rgb):
    buf = pyio.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_caffe_encoded_datum_decodes_to_bgr():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0] = 200  # red
    rgb[..., 2] = 10   # blue
    rgb[1, 2] = (1, 2, 3)
    # Caffe's ReadFileToDatum: data = file bytes, label, encoded; no channels/height/width
    raw = caffe_datum_bytes(data=_png_bytes(rgb), label=5, encoded=True)
    d = parse_datum(raw)
    arr = decode_datum(d)
    assert arr.shape == (3, 2, 3)
    assert arr[0, 0, 0] == 10 and arr[2, 0, 0] == 200  # B first, R last
    assert tuple(arr[:, 1, 2]) == (3, 2, 1)
    gray = decode_datum(d, "gray")
    assert gray.shape == (1, 2, 3)
    assert gray[0, 1, 2] == round(0.299 * 1 + 0.587 * 2 + 0.114 * 3)


def test_encoded_gray_png_native_decode_keeps_one_channel():
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    buf = pyio.BytesIO()
    Image.fromarray(g, "L").save(buf, format="PNG")
    d = parse_datum(caffe_datum_bytes(data=buf.getvalue(), label=1, encoded=True))
    np.testing.assert_array_equal(decode_datum(d), g[None])
    color = decode_datum(d, "color")
    assert color.shape == (3, 3, 4)
    np.testing.assert_array_equal(color[2], g)


def test_corrupt_datum_is_an_error_naming_the_key():
    with pytest.raises(DataError, match=r"key 00000003.*not a valid Caffe Datum"):
        parse_datum(b"\x0a\xff\xff\xff", "key 00000003")
    d = parse_datum(caffe_datum_bytes(2, 2, 2, data=b"abc", label=1))
    with pytest.raises(DataError, match=r"3 bytes but .*2x2x2 = 8"):
        decode_datum(d, where="key x")
    with pytest.raises(DataError, match="invalid shape"):
        decode_datum(parse_datum(caffe_datum_bytes(0, 2, 2, data=b"", label=1)))
    bad = parse_datum(caffe_datum_bytes(data=b"not an image at all", label=1, encoded=True))
    with pytest.raises(DataError, match=r"key 7: cannot decode the image"):
        decode_datum(bad, where="key 7")


def test_array_to_datum_and_back():
    a = np.random.default_rng(0).integers(0, 256, (3, 4, 5)).astype(np.uint8)
    d = array_to_datum(a, label=9)
    assert (d.channels, d.height, d.width, d.label) == (3, 4, 5, 9)
    np.testing.assert_array_equal(datum_to_array(d), a)
    f = a.astype(np.float32) / 3
    np.testing.assert_allclose(datum_to_array(array_to_datum(f)), f, rtol=1e-7)
    assert not array_to_datum(a).HasField("label")
    with pytest.raises(DataError, match="3-D"):
        array_to_datum(np.zeros((2, 2)))
    with pytest.raises(DataError, match="label must be an integer"):
        array_to_datum(a, 2.5)
    assert array_to_datum(a, np.int64(3)).label == 3


def test_blobproto_helpers_legacy_and_nd():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    p = array_to_blobproto(a)
    assert list(p.shape.dim) == [2, 3, 4]
    np.testing.assert_array_equal(blobproto_to_array(p), a)
    # legacy 4-D blob as Caffe's compute_image_mean writes it
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3)
    legacy.data.extend([1, 2, 3, 4, 5, 6])
    assert blobproto_to_array(legacy).shape == (1, 2, 1, 3)
    noshape = caffe_pb2.BlobProto()
    noshape.data.extend([1.0, 2.0])
    with pytest.raises(ModelFileError, match="declares no shape"):
        blobproto_to_array(noshape)
    assert issubclass(ModelFileError, CaffeLiteError)
