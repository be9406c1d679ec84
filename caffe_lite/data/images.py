"""Image decoding, resizing and encoding with Caffe's (OpenCV's) conventions, done with Pillow.

Images are H x W x K uint8 arrays with K = 1 (gray), 3 (BGR) or 4 (BGRA): OpenCV decodes to
BGR, so Caffe's Datums and data layers hold BGR; Pillow's RGB is reversed to match.

Decode modes mirror OpenCV's imread/imdecode flags as Caffe uses them:
  "color"      IMREAD_COLOR: always 3 channels (BGR)
  "gray"       IMREAD_GRAYSCALE: always 1 channel
  "unchanged"  IMREAD_UNCHANGED (Caffe's DecodeDatumToCVMatNative): the file's own channels
"""
import io
import os

import numpy as np

from ..errors import DataError
from . import _deps

# Extensions Caffe users pass to -encode_type, as Pillow format names.
_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "bmp": "BMP", "tif": "TIFF",
            "tiff": "TIFF", "webp": "WEBP", "ppm": "PPM", "pgm": "PPM", "pbm": "PPM"}
JPEG_QUALITY = 95  # OpenCV's imencode default


def _to_array(img, mode):
    """A loaded PIL image as H x W x K uint8 in OpenCV's channel order for `mode`."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit images: OpenCV's 8-bit modes keep the high byte.
        a = np.asarray(img)
        if a.dtype.kind in "ui" and a.max(initial=0) > 255:
            a = a >> 8
        arr = np.clip(a, 0, 255).astype(np.uint8)
        if mode == "color":
            return np.repeat(arr[:, :, None], 3, axis=2)
        return arr[:, :, None]
    if mode == "gray":
        if img.mode not in ("L", "1", "P", "LA"):
            img = img.convert("RGB")
        return np.asarray(img.convert("L"))[:, :, None]
    if mode == "color":
        return np.asarray(img.convert("RGB"))[:, :, ::-1]
    # unchanged: the file's own channels
    if img.mode in ("L", "1"):
        return np.asarray(img.convert("L"))[:, :, None]
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and
                                                    "transparency" in img.info)
    if has_alpha:
        a = np.asarray(img.convert("RGBA"))
        return a[:, :, [2, 1, 0, 3]]
    return np.asarray(img.convert("RGB"))[:, :, ::-1]


def decode_image(data, mode="color", where="image"):
    """Decode encoded image bytes (JPEG, PNG, ...) to H x W x K uint8 (BGR order; possibly a
    read-only strided view).

    Raises DataError naming `where` when the bytes are not a decodable image."""
    Image = _deps.pil_image("decoding an encoded image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return _to_array(img, mode)
    except DataError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ...
        raise DataError(f"{where}: cannot decode the image ({len(data)} bytes): "
                        f"{type(exc).__name__}: {exc}") from None


def read_image(path, mode="color", new_height=0, new_width=0):
    """Caffe's ReadImageToCVMat: read a file, decode it, and resize it when both new_height
    and new_width are > 0 (bilinear, as cv::resize's default)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: no such image file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected an image file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        raise DataError(f"{path!r}: cannot read the image ({exc})") from None
    img = decode_image(data, mode, where=path)
    if new_height > 0 and new_width > 0:
        img = resize_linear(img, new_height, new_width)
    return img


def _axis_coords(in_size, out_size):
    """OpenCV's INTER_LINEAR source coordinates along one axis, pixel centres aligned:
    src = (dst + 0.5) * in / out - 0.5 (computed in double, stored as float).  Returns the
    lower source index and the float32 fraction."""
    scale = 1.0 / (out_size / in_size)
    src = ((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(src).astype(np.int64)
    return i0, (src - i0).astype(np.float32)


_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS


def resize_linear(img, new_height, new_width):
    """Bilinear resize of an H x W x K image with cv::resize(INTER_LINEAR)'s arithmetic.

    uint8 images follow OpenCV's fixed-point path (weights rounded to 1/2048, columns then
    rows, rounded half up); float images are interpolated in float32.  No anti-aliasing.
    (OpenCV's SIMD code rounds some uint8 pixels differently, by at most 1.)"""
    img = np.asarray(img)
    squeeze = img.ndim == 2
    if squeeze:
        img = img[:, :, None]
    h, w = img.shape[:2]
    new_height, new_width = int(new_height), int(new_width)
    if new_height <= 0 or new_width <= 0:
        raise DataError(f"cannot resize to {new_height}x{new_width}: sizes must be positive")
    from ..blob import MAX_BLOB_COUNT
    if new_height * new_width * img.shape[2] > MAX_BLOB_COUNT:
        raise DataError(f"cannot resize to {new_height}x{new_width}: {img.shape[2]} channels of "
                        f"that size exceed a blob's 2^31 - 1 elements")
    if (h, w) == (new_height, new_width):
        out = img.copy()
        return out[:, :, 0] if squeeze else out
    x0, fx = _axis_coords(w, new_width)
    # columns: at the borders OpenCV clamps the index and drops the fraction
    edge = (x0 < 0) | (x0 >= w - 1)
    fx[edge] = 0
    x0 = np.clip(x0, 0, w - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    y0, fy = _axis_coords(h, new_height)
    # rows: OpenCV keeps the fraction and clamps both row indices
    y1 = np.clip(y0 + 1, 0, h - 1)
    y0 = np.clip(y0, 0, h - 1)
    if img.dtype == np.uint8:
        one = 1 << _COEF_BITS
        ax0 = np.rint((np.float32(1) - fx) * np.float32(one)).astype(np.int64)
        ax1 = np.rint(fx * np.float32(one)).astype(np.int64)
        by0 = np.rint((np.float32(1) - fy) * np.float32(one)).astype(np.int64)
        by1 = np.rint(fy * np.float32(one)).astype(np.int64)
        src = img.astype(np.int64)
        cols = src[:, x0] * ax0[None, :, None] + src[:, x1] * ax1[None, :, None]
        acc = cols[y0] * by0[:, None, None] + cols[y1] * by1[:, None, None]
        out = np.clip((acc + (1 << (2 * _COEF_BITS - 1))) >> (2 * _COEF_BITS), 0, 255)
        out = out.astype(np.uint8)
    else:
        src = img.astype(np.float32)
        cols = src[:, x0] * (1 - fx)[None, :, None] + src[:, x1] * fx[None, :, None]
        out = cols[y0] * (1 - fy)[:, None, None] + cols[y1] * fy[:, None, None]
        out = out.astype(np.float32, copy=False)
    return out[:, :, 0] if squeeze else out


def encode_image(img, ext, where="image"):
    """Encode an H x W x K (BGR) uint8 image as `ext` ("png", "jpg", ...): cv::imencode."""
    Image = _deps.pil_image("encoding an image")
    fmt = _FORMATS.get(ext.lower().lstrip("."))
    if fmt is None:
        raise DataError(f"{where}: unsupported encode type '{ext}' "
                        f"(supported: {', '.join(sorted(_FORMATS))})")
    img = np.asarray(img, dtype=np.uint8)
    if img.ndim == 2 or img.shape[2] == 1:
        pil = Image.fromarray(img.reshape(img.shape[:2]), "L")
    elif img.shape[2] == 3:
        pil = Image.fromarray(np.ascontiguousarray(img[:, :, ::-1]), "RGB")
    elif img.shape[2] == 4:
        pil = Image.fromarray(np.ascontiguousarray(img[:, :, [2, 1, 0, 3]]), "RGBA")
    else:
        raise DataError(f"{where}: cannot encode an image with {img.shape[2]} channels")
    buf = io.BytesIO()
    kw = {"quality": JPEG_QUALITY} if fmt == "JPEG" else {}
    if fmt == "JPEG" and pil.mode == "RGBA":
        pil = pil.convert("RGB")
    pil.save(buf, format=fmt, **kw)
    return buf.getvalue()


def hwc_to_chw(img):
    """H x W x K image -> K x H x W (Caffe's planar Datum layout), as a view: the copy is left
    to whoever stacks or serializes it."""
    return np.asarray(img).transpose(2, 0, 1)
