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
        return np.ascontiguousarray(np.asarray(img.convert("RGB"))[:, :, ::-1])
    # unchanged: the file's own channels
    if img.mode in ("L", "1"):
        return np.asarray(img.convert("L"))[:, :, None]
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and
                                                    "transparency" in img.info)
    if has_alpha:
        a = np.asarray(img.convert("RGBA"))
        return np.ascontiguousarray(a[:, :, [2, 1, 0, 3]])
    return np.ascontiguousarray(np.asarray(img.convert("RGB"))[:, :, ::-1])


def decode_image(data, mode="color", where="image"):
    """Decode encoded image bytes (JPEG, PNG, ...) to H x W x K uint8 (BGR order).

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
    except OSError as exc:
        raise DataError(f"{path}: cannot read the image ({exc})") from None
    img = decode_image(data, mode, where=path)
    if new_height > 0 and new_width > 0:
        img = resize_linear(img, new_height, new_width)
    return img


def _axis_weights(in_size, out_size):
    """Source indices and weights of OpenCV's INTER_LINEAR along one axis (pixel centres
    aligned: src = (dst + 0.5) * in / out - 0.5, clamped at the borders)."""
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    i0 = np.floor(src).astype(np.int64)
    frac = src - i0
    low = i0 < 0
    i0[low], frac[low] = 0, 0.0
    high = i0 >= in_size - 1
    i0[high], frac[high] = in_size - 1, 0.0
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, frac.astype(np.float32)


def resize_linear(img, new_height, new_width):
    """Bilinear resize of an H x W x K image with cv::resize(INTER_LINEAR)'s geometry.

    uint8 in, uint8 out (rounded); float in, float32 out.  No anti-aliasing, like OpenCV.
    (OpenCV computes uint8 in 11-bit fixed point, so a pixel can differ from it by 1.)"""
    img = np.asarray(img)
    squeeze = img.ndim == 2
    if squeeze:
        img = img[:, :, None]
    h, w = img.shape[:2]
    new_height, new_width = int(new_height), int(new_width)
    if new_height <= 0 or new_width <= 0:
        raise DataError(f"cannot resize to {new_height}x{new_width}: sizes must be positive")
    if (h, w) == (new_height, new_width):
        out = img.copy()
    else:
        y0, y1, fy = _axis_weights(h, new_height)
        x0, x1, fx = _axis_weights(w, new_width)
        src = img.astype(np.float32)
        fy = fy[:, None, None]
        rows = src[y0] * (np.float32(1) - fy) + src[y1] * fy
        fx = fx[None, :, None]
        out = rows[:, x0] * (np.float32(1) - fx) + rows[:, x1] * fx
        if img.dtype == np.uint8:
            out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
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
    """H x W x K image -> K x H x W (Caffe's planar Datum layout)."""
    return np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1))
