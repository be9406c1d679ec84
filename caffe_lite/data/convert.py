"""Caffe's dataset tools as functions: convert_mnist_data, convert_imageset, compute_image_mean.

What they write is what BVLC Caffe writes: LMDB records keyed "%08d" (MNIST) or
"%08d_<file name>" (image sets), each a serialized Datum; the mean is a legacy 1 x C x H x W
BlobProto.  Progress is logged every 1000 records, as Caffe's tools do."""
import logging
import os
import time

import numpy as np

from ..errors import DataError
from ..io.datum import decode_datum, parse_datum
from ..proto import caffe_pb2
from ..util.atomic import OutputExistsError, atomic_write_bytes
from .images import encode_image, hwc_to_chw, read_image
from .lmdb_io import COMMIT_EVERY, DBWriter, iterate, key_text, open_db
from .mnist import read_idx_images, read_idx_labels
from .sources import _join_root, read_list_file

log = logging.getLogger("caffe_lite")


class _Progress:
    """Caffe's tools log every 1000 records; here at most every 2 seconds, so fast
    conversions stay quiet and long ones still show they are moving."""
    EVERY_S = 2.0

    def __init__(self, what, total):
        self.what, self.total = what, total
        self.t0 = self.last = time.perf_counter()

    def step(self, count):
        if count % COMMIT_EVERY == 0:
            now = time.perf_counter()
            if now - self.last >= self.EVERY_S:
                self.last = now
                log.info("Processed %d of %d %s (%.0f/s).", count, self.total, self.what,
                         count / max(now - self.t0, 1e-9))

    def done(self, count):
        log.info("Processed %d %s in %.1f s.", count, self.what, time.perf_counter() - self.t0)


def _check_out(out_db):
    if os.path.lexists(out_db):
        raise OutputExistsError(f"{out_db} already exists; refusing to overwrite it (remove it "
                                "or choose another output name)")


def convert_mnist(images_path, labels_path, out_db, backend="lmdb"):
    """MNIST idx files (gzipped or not) -> LMDB of 1 x rows x cols Datums keyed %08d.
    Returns the number of records written."""
    _check_out(out_db)
    images = read_idx_images(images_path)
    labels = read_idx_labels(labels_path)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                        f"{labels.shape[0]} labels; the counts must match")
    n, rows, cols = images.shape
    log.info("A total of %d items.", n)
    log.info("Rows: %d Cols: %d", rows, cols)
    datum = caffe_pb2.Datum(channels=1, height=rows, width=cols)
    progress = _Progress("items", n)
    with DBWriter(out_db, backend) as db:
        for i in range(n):
            datum.data = images[i].tobytes()
            datum.label = int(labels[i])
            db.put(b"%08d" % i, datum.SerializeToString())
            progress.step(i + 1)
    progress.done(n)
    return n


def _encoding_for(name, encoded, encode_type):
    """Caffe's convert_imageset: -encode_type wins; -encoded alone guesses from the name."""
    if encode_type:
        return encode_type.lower()
    if encoded:
        _, dot, ext = name.rpartition(".")
        if not dot:
            log.warning("Failed to guess the encoding of '%s'", name)
            return name.lower()
        return ext.lower()
    return ""


def _ext_matches(name, enc):
    ext = name.rpartition(".")[2].lower()
    return ext == enc or (enc == "jpg" and ext == "jpeg")


def image_to_datum(path, label, resize_height=0, resize_width=0, is_color=True, encoding=""):
    """Caffe's ReadImageToDatum: raw planar BGR pixels, or (with `encoding`) an encoded image;
    the original file's bytes are kept when no resize is asked and its extension matches."""
    img = read_image(path, "color" if is_color else "gray", resize_height, resize_width)
    datum = caffe_pb2.Datum()
    if encoding:
        if not (resize_height > 0 and resize_width > 0) and _ext_matches(path, encoding):
            # Caffe stores the file itself (its channels are decoded later as stored).
            with open(path, "rb") as f:
                datum.data = f.read()
        else:
            datum.data = encode_image(img, encoding, where=path)
        datum.label = label
        datum.encoded = True
        return datum, img.shape
    chw = hwc_to_chw(img)
    datum.channels, datum.height, datum.width = chw.shape
    datum.data = chw.tobytes()
    datum.label = label
    return datum, img.shape


def convert_imageset(root, list_file, out_db, resize_height=0, resize_width=0, shuffle=False,
                     gray=False, encoded=False, encode_type="", check_size=False,
                     backend="lmdb", skip_bad_images=False, rng=None):
    """Images named in `list_file` (lines 'name label') under `root` -> LMDB keyed
    "%08d_<name>".  Returns (records written, images skipped).

    An image that cannot be read is an error naming the file; with skip_bad_images it is
    logged and skipped, as Caffe's convert_imageset does."""
    _check_out(out_db)
    lines = read_list_file(list_file, "convert-imageset")
    if shuffle:
        log.info("Shuffling data")
        if rng is None:
            from ..backend.state import rng as global_rng
            rng = global_rng()
        order = rng.permutation(len(lines))
        lines = [lines[i] for i in order]
    log.info("A total of %d images.", len(lines))
    if encode_type and not encoded:
        log.info("encode_type %s given: images are stored encoded", encode_type)
    progress = _Progress("files", len(lines))
    count = skipped = 0
    first_shape = None
    with DBWriter(out_db, backend) as db:
        for line_id, (name, label) in enumerate(lines):
            path = _join_root(root, name)
            enc = _encoding_for(name, encoded, encode_type)
            try:
                datum, shape = image_to_datum(path, label, resize_height, resize_width,
                                              not gray, enc)
            except DataError as exc:
                if not skip_bad_images:
                    raise DataError(f"{list_file} line for '{name}': {exc}") from None
                log.error("Could not read %s, skipped: %s", path, exc)
                skipped += 1
                continue
            if check_size:
                if first_shape is None:
                    first_shape = shape
                elif shape != first_shape:
                    raise DataError(f"{path}: image is {shape[0]}x{shape[1]}x{shape[2]} but the "
                                    f"first image was {'x'.join(map(str, first_shape))} "
                                    "(-check_size)")
            db.put(f"{line_id:08d}_{name}".encode("utf-8"), datum.SerializeToString())
            count += 1
            progress.step(count)
    progress.done(count)
    if skipped:
        log.warning("%d image(s) could not be read and were skipped", skipped)
    return count, skipped


def compute_mean(db_path, out_path=None, backend="lmdb", overwrite=False):
    """Caffe's compute_image_mean: the per-pixel mean of every Datum in an LMDB (encoded ones
    decoded natively), written as a legacy 1 x C x H x W BlobProto.  Returns the C x H x W mean
    and logs the per-channel means."""
    from .lmdb_io import check_backend
    if backend.lower() != "lmdb":
        check_backend(caffe_pb2.DataParameter.LEVELDB, db_path, "")
    if out_path is not None and os.path.lexists(out_path) and not overwrite:
        raise OutputExistsError(f"{out_path} already exists; refusing to overwrite it (pass "
                                "-overwrite / overwrite=True)")
    db = open_db(db_path)
    total = None
    count = 0
    progress = _Progress("files", db.entries)
    try:
        for key, value in iterate(db, db_path):
            where = f"LMDB '{db_path}' key '{key_text(key)}'"
            arr = decode_datum(parse_datum(value, where), "unchanged", where)
            if total is None:
                total = np.zeros(arr.shape, np.float64)
                log.info("Starting iteration")
            elif arr.shape != total.shape:
                raise DataError(f"{where}: Datum is {'x'.join(map(str, arr.shape))} but the "
                                f"first one was {'x'.join(map(str, total.shape))}; the mean "
                                "needs equal sizes")
            total += arr
            count += 1
            progress.step(count)
    finally:
        db.close()
    progress.done(count)
    # Exact sums of uint8 pixels, rounded once to float32 and divided in float32 (Caffe sums in
    # float32, which is exact until the sums pass 2^24).
    mean = total.astype(np.float32) / np.float32(count)
    if out_path is not None:
        proto = caffe_pb2.BlobProto(num=1, channels=mean.shape[0], height=mean.shape[1],
                                    width=mean.shape[2])
        proto.data.extend(mean.ravel().tolist())
        log.info("Write to %s", out_path)
        atomic_write_bytes(out_path, proto.SerializeToString(), overwrite=overwrite)
    log.info("Number of channels: %d", mean.shape[0])
    for c, v in enumerate(mean.reshape(mean.shape[0], -1).mean(axis=1, dtype=np.float64)):
        log.info("mean_value channel [%d]: %g", c, v)
    return mean


__all__ = ["convert_mnist", "convert_imageset", "compute_mean", "image_to_datum"]
