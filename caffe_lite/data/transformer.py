"""DataTransformer: Caffe's transform_param (crop, mirror, mean, scale) over a whole batch.

For every image, Caffe computes  out[c, h, w'] = (in[c, h_off + h, w_off + w] - mean) * scale
where w' = w, or width - 1 - w when the image is mirrored, and `mean` is the mean_file's value at
the same *uncropped* position or the channel's mean_value.  Crop offsets are random in TRAIN
(h_off uniform in [0, H - crop], w_off in [0, W - crop]) and central in TEST ((H - crop) / 2).
Mirroring is a coin flip per image whenever `mirror: true`, in either phase: Caffe draws it
regardless of phase (DataTransformer::Transform), so a TEST net with mirror: true mirrors too.
"""
import logging
import os

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import DataError
from ..proto import caffe_pb2

# The SSD fork's transform_param fields (its AnnotatedData layer's augmentation).
SSD_AUGMENTATION = ("resize_param", "noise_param", "distort_param", "expand_param",
                    "emit_constraint", "crop_h", "crop_w")

log = logging.getLogger("caffe_lite")


def derive_rng():
    """A generator for one data layer, seeded from caffe-lite's global generator (so runs are
    reproducible under the solver's random_seed).  Draw it only when randomness is needed, as
    Caffe's InitRand does, so a net's other random draws do not depend on its data layers."""
    from ..backend.state import rng
    return np.random.default_rng(int(rng().integers(0, 2**63 - 1)))


def load_mean_file(path, where="mean_file"):
    """A binaryproto mean (legacy 1 x C x H x W or N-d) as a C x H x W float32 array."""
    from ..io.blobproto import proto_to_array
    from ..io.caffemodel import parse_binary
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"{where}: mean_file '{path}' does not exist") from None
    except OSError as exc:
        raise DataError(f"{where}: cannot read mean_file '{path}' ({exc})") from None
    proto = parse_binary(data, caffe_pb2.BlobProto(), path, "binaryproto mean file")
    arr = proto_to_array(proto, path)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.size == 0:
        raise DataError(f"{where}: mean_file '{path}' has shape {arr.shape}; expected "
                        "1 x C x H x W (or C x H x W)")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _crop(x, h_off, w_off, ch, cw):
    """x[n, :, h_off[n]:+ch, w_off[n]:+cw] for every n, as one gather (x is N x C x H x W)."""
    if np.isscalar(h_off):
        return x[:, :, h_off:h_off + ch, w_off:w_off + cw]
    windows = sliding_window_view(x, (ch, cw), axis=(2, 3))  # N, C, H-ch+1, W-cw+1, ch, cw
    return windows[np.arange(x.shape[0]), :, h_off, w_off]   # N, C, ch, cw


class DataTransformer:
    """Caffe's DataTransformer for one data layer.  `rng`: the layer's Generator; None derives
    one from the global generator when the transformation is random; False leaves it unset
    (the caller assigns `.rng`)."""

    def __init__(self, param=None, phase=caffe_pb2.TRAIN, where="DataTransformer", rng=None):
        self.param = caffe_pb2.TransformationParameter()
        if param is not None:
            self.param.CopyFrom(param)
        p = self.param
        self.phase = phase
        self.where = where
        fork = [f for f in SSD_AUGMENTATION if p.HasField(f)]
        if fork:
            raise DataError(f"{where}: transform_param.{fork[0]} is the SSD fork's data "
                            "augmentation, which caffe-lite does not implement")
        self.scale = np.float32(p.scale)
        self.crop_size = int(p.crop_size)
        if p.force_color and p.force_gray:
            raise DataError(f"{where}: cannot set both force_color and force_gray")
        self.decode_mode = "color" if p.force_color else "gray" if p.force_gray else "unchanged"
        if p.HasField("mean_file") and len(p.mean_value):
            raise DataError(f"{where}: cannot specify mean_file and mean_value at the same time")
        self.mean = load_mean_file(p.mean_file, where) if p.HasField("mean_file") else None
        self.mean_values = np.asarray(p.mean_value, np.float32) if len(p.mean_value) else None
        self.rng = rng if rng is not None or not self.needs_rand else derive_rng()
        self.last = None  # (mirror, h_off, w_off) of the last batch, for inspection
        self._warned_force = False

    @property
    def needs_rand(self):
        return bool(self.param.mirror) or (self.phase == caffe_pb2.TRAIN and self.crop_size > 0)

    # ---------------------------------------------------------------------------------------
    def output_shape(self, chw):
        """(C, H', W') of a transformed C x H x W input; checks crop and mean against it."""
        c, h, w = (int(d) for d in chw)
        if c <= 0 or h <= 0 or w <= 0:
            raise DataError(f"{self.where}: input has invalid shape {c}x{h}x{w}")
        if self.crop_size and (self.crop_size > h or self.crop_size > w):
            raise DataError(f"{self.where}: crop_size {self.crop_size} is larger than the input "
                            f"image ({c} x {h} x {w})")
        if self.mean is not None and self.mean.shape != (c, h, w):
            raise DataError(f"{self.where}: mean_file '{self.param.mean_file}' has shape "
                            f"{'x'.join(map(str, self.mean.shape))} but the input data is "
                            f"{c}x{h}x{w} (the mean must match the uncropped input)")
        if self.mean_values is not None and self.mean_values.size not in (1, c):
            raise DataError(f"{self.where}: specify either 1 mean_value or as many as channels "
                            f"({c}); got {self.mean_values.size}")
        if self.crop_size:
            return (c, self.crop_size, self.crop_size)
        return (c, h, w)

    def decode(self, datum, where):
        """A Datum's C x H x W pixels, honouring force_color / force_gray for encoded ones."""
        from ..io.datum import decode_datum
        if not datum.encoded and self.decode_mode != "unchanged" and not self._warned_force:
            log.warning("%s: force_color and force_gray only apply to encoded Datums", self.where)
            self._warned_force = True
        return decode_datum(datum, self.decode_mode, where)

    # ---------------------------------------------------------------------------------------
    def draw(self, n, h, w):
        """The random choices for a batch of n images of h x w, in a fixed order: mirror
        flags, then row offsets, then column offsets."""
        mirror = None
        if self.param.mirror:
            mirror = self.rng.integers(0, 2, n).astype(bool)
        h_off = w_off = 0
        if self.crop_size:
            if self.phase == caffe_pb2.TRAIN:
                h_off = self.rng.integers(0, h - self.crop_size + 1, n)
                w_off = self.rng.integers(0, w - self.crop_size + 1, n)
            else:
                h_off = (h - self.crop_size) // 2
                w_off = (w - self.crop_size) // 2
        return mirror, h_off, w_off

    def transform(self, batch, out=None):
        """Transform an N x C x H x W batch (uint8 or float) to float32 N x C x H' x W'
        (into `out` when given and of that shape)."""
        batch = np.asarray(batch)
        if batch.ndim != 4:
            raise DataError(f"{self.where}: expected an N x C x H x W batch, got {batch.shape}")
        n, c, h, w = batch.shape
        _, oh, ow = self.output_shape((c, h, w))
        mirror, h_off, w_off = self.draw(n, h, w)
        self.last = (mirror, h_off, w_off)

        src = _crop(batch, h_off, w_off, oh, ow)
        flip = mirror is not None and mirror.any()
        if flip:
            # Mirroring the crop of the data and of the mean (both taken at the same source
            # positions) is Caffe's mirrored write, done here on the (uint8) crop.
            if np.may_share_memory(src, batch):
                src = src.copy()
            src[mirror] = src[mirror][..., ::-1]
        if out is None or out.shape != (n, c, oh, ow) or out.dtype != np.float32:
            out = np.empty((n, c, oh, ow), np.float32)
        if self.mean is not None:
            if np.isscalar(h_off):
                mean = self.mean[None, :, h_off:h_off + oh, w_off:w_off + ow]
            else:
                mean = _crop(np.broadcast_to(self.mean, batch.shape), h_off, w_off, oh, ow)
            if flip:
                mean = np.where(mirror[:, None, None, None], mean[..., ::-1], mean)
            np.subtract(src, mean, out=out, dtype=np.float32)
        elif self.mean_values is not None:
            mv = self.mean_values if self.mean_values.size == c else \
                np.repeat(self.mean_values, c)
            np.subtract(src, mv[None, :, None, None], out=out, dtype=np.float32)
        else:
            np.copyto(out, src, casting="unsafe")
        if self.scale != 1:
            out *= self.scale
        return out
