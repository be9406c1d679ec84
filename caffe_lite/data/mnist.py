"""MNIST's idx files (gzipped or not): images (magic 2051) and labels (magic 2049)."""
import gzip
import os
import struct

import numpy as np

from ..errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049


def _read(path):
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected an idx file") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: corrupt gzip file ({exc})") from None
    return raw


def read_idx_images(path):
    """(N, rows, cols) uint8 from an idx3 image file."""
    raw = _read(path)
    if len(raw) < 16:
        raise DataError(f"{path}: too short for an idx image file ({len(raw)} bytes)")
    magic, n, rows, cols = struct.unpack(">4i", raw[:16])
    if magic != IMAGES_MAGIC:
        raise DataError(f"{path}: incorrect image file magic {magic} (expected {IMAGES_MAGIC}; "
                        "is this an idx3 images file?)")
    need = 16 + n * rows * cols
    if n < 0 or rows <= 0 or cols <= 0 or len(raw) < need:
        raise DataError(f"{path}: truncated idx image file: header says {n} images of "
                        f"{rows}x{cols} ({need} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, np.uint8, n * rows * cols, 16).reshape(n, rows, cols)


def read_idx_labels(path):
    """(N,) uint8 from an idx1 label file."""
    raw = _read(path)
    if len(raw) < 8:
        raise DataError(f"{path}: too short for an idx label file ({len(raw)} bytes)")
    magic, n = struct.unpack(">2i", raw[:8])
    if magic != LABELS_MAGIC:
        raise DataError(f"{path}: incorrect label file magic {magic} (expected {LABELS_MAGIC}; "
                        "is this an idx1 labels file?)")
    if n < 0 or len(raw) < 8 + n:
        raise DataError(f"{path}: truncated idx label file: header says {n} labels but the "
                        f"file has {len(raw) - 8} bytes of labels")
    return np.frombuffer(raw, np.uint8, n, 8)


def write_idx_images(path, images, compress=None):
    """Write (N, rows, cols) uint8 images as an idx3 file (gzipped if path ends in .gz)."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    data = struct.pack(">4i", IMAGES_MAGIC, *images.shape) + images.tobytes()
    _write(path, data, compress)


def write_idx_labels(path, labels, compress=None):
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    _write(path, struct.pack(">2i", LABELS_MAGIC, labels.shape[0]) + labels.tobytes(), compress)


def _write(path, data, compress):
    path = os.fspath(path)
    if compress is None:
        compress = path.endswith(".gz")
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if compress else data)
