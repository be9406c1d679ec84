"""pycaffe's image helpers (caffe.io): load_image, resize_image, oversample and the
preprocessing Transformer, with Pillow and numpy in place of scikit-image.

Conventions are pycaffe's: load_image gives H x W x K float32 RGB in [0, 1]; the Transformer
turns such images into the net's K x H x W input (transpose, channel swap to BGR, raw scale,
mean, input scale) and back."""
import os

import numpy as np

from ..errors import CaffeLiteError, DataError, DataShapeError, MissingDataError


class TransformerError(CaffeLiteError, ValueError):
    """A Transformer setting that does not fit the net input (pycaffe raises ValueError)."""


def load_image(filename, color=True):
    """An image file as H x W x 3 (color) or H x W x 1 (gray) float32 in [0, 1], RGB order.

    Gray images are tiled to 3 channels when color=True; an alpha channel is dropped; with
    color=False a color image becomes luminance 0.2125 R + 0.7154 G + 0.0721 B (as
    scikit-image's rgb2gray, which pycaffe uses)."""
    from ..data import _deps
    Image = _deps.pil_image("load_image")
    path = os.fspath(filename)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float32) / np.float32(65535)
                arr = arr[:, :, None]
            elif mode == "F":
                arr = np.asarray(img, dtype=np.float32)[:, :, None]
            elif mode in ("L", "1") or (mode == "LA"):
                arr = np.asarray(img.convert("L"), dtype=np.float32)[:, :, None] / np.float32(255)
            else:
                arr = np.asarray(img.convert("RGB"), dtype=np.float32) / np.float32(255)
    except FileNotFoundError:
        raise MissingDataError(f"{path}: no such image file") from None
    except Exception as exc:
        raise DataError(f"{path}: cannot decode the image: {type(exc).__name__}: {exc}") \
            from None
    if arr.shape[2] == 1:
        return np.tile(arr, (1, 1, 3)) if color else arr
    if color:
        return arr
    gray = arr @ np.array([0.2125, 0.7154, 0.0721], np.float32)
    return gray[:, :, None].astype(np.float32)


def _nearest_index(in_size, out_size):
    idx = np.floor((np.arange(out_size) + 0.5) * (in_size / out_size)).astype(np.int64)
    return np.minimum(idx, in_size - 1)


def resize_image(im, new_dims, interp_order=1):
    """Resize an H x W x K image to new_dims = (height, width); float32 out.

    interp_order 0: nearest neighbour; 1: bilinear (pixel centres aligned, edges clamped, no
    anti-aliasing); higher orders use scipy.ndimage.zoom (spline), as pycaffe does for images
    that are not 1- or 3-channel."""
    im = np.asarray(im)
    if im.ndim != 3:
        raise DataShapeError(f"resize_image: expected an H x W x K image, got shape "
                             f"{im.shape}")
    new_h, new_w = (int(d) for d in new_dims)
    if new_h <= 0 or new_w <= 0:
        raise DataError(f"resize_image: new_dims must be positive, got {tuple(new_dims)}")
    im = im.astype(np.float32, copy=False)
    if interp_order == 0:
        return np.ascontiguousarray(im[_nearest_index(im.shape[0], new_h)][
            :, _nearest_index(im.shape[1], new_w)])
    if interp_order == 1:
        from ..data.images import resize_linear
        return resize_linear(im, new_h, new_w).astype(np.float32, copy=False)
    try:
        from scipy.ndimage import zoom
    except ImportError:
        raise DataError("resize_image: interp_order > 1 needs scipy (pip install scipy)") \
            from None
    scale = (new_h / im.shape[0], new_w / im.shape[1], 1)
    return zoom(im, scale, order=interp_order).astype(np.float32)


def oversample(images, crop_dims):
    """pycaffe's 10-crop: for each H x W x K image, the 4 corner crops and the centre crop,
    then the same 5 mirrored.  Returns (10 N) x crop_h x crop_w x K float32."""
    ims = np.asarray(images if isinstance(images, np.ndarray) else np.stack(images),
                     dtype=np.float32)
    if ims.ndim != 4:
        raise DataShapeError(f"oversample: expected N images of H x W x K, got shape "
                             f"{ims.shape}")
    n, h, w, k = ims.shape
    ch, cw = (int(d) for d in crop_dims)
    if ch > h or cw > w:
        raise DataShapeError(f"oversample: crop {ch}x{cw} is larger than the images "
                             f"({h}x{w})")
    starts = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw),
              (int(h / 2.0 - ch / 2.0), int(w / 2.0 - cw / 2.0))]
    crops = np.empty((n, 10, ch, cw, k), np.float32)
    for i, (y, x) in enumerate(starts):
        crops[:, i] = ims[:, y:y + ch, x:x + cw]
    crops[:, 5:] = crops[:, :5, :, ::-1]
    return crops.reshape(n * 10, ch, cw, k)


class Transformer:
    """pycaffe's caffe.io.Transformer: preprocess images into net inputs and back.

        t = Transformer({'data': net.blobs['data'].data.shape})
        t.set_transpose('data', (2, 0, 1)); t.set_channel_swap('data', (2, 1, 0))
        t.set_raw_scale('data', 255); t.set_mean('data', mean)   # mean: K values or K x H x W
        net.blobs['data'].data[...] = t.preprocess('data', load_image(path))

    preprocess: resize to the input's H x W, transpose, channel swap, * raw_scale, - mean,
    * input_scale.  deprocess undoes them in reverse order."""

    def __init__(self, inputs):
        self.inputs = {k: tuple(int(d) for d in v) for k, v in dict(inputs).items()}
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def _check_input(self, name):
        if name not in self.inputs:
            raise TransformerError(f"{name} is not one of the net inputs: "
                                   f"{list(self.inputs)}")

    def preprocess(self, in_, data):
        self._check_input(in_)
        x = np.asarray(data).astype(np.float32, copy=False)
        in_dims = self.inputs[in_][2:]
        if x.shape[:2] != in_dims:
            x = resize_image(x, in_dims)
        if in_ in self.transpose:
            x = x.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            x = x[list(self.channel_swap[in_]), :, :]
        x = np.array(x, dtype=np.float32)  # a private copy from here on
        if in_ in self.raw_scale:
            x *= np.float32(self.raw_scale[in_])
        if in_ in self.mean:
            x -= self.mean[in_]
        if in_ in self.input_scale:
            x *= np.float32(self.input_scale[in_])
        return x

    def deprocess(self, in_, data):
        self._check_input(in_)
        x = np.array(data, dtype=np.float32).squeeze()
        if in_ in self.input_scale:
            x /= np.float32(self.input_scale[in_])
        if in_ in self.mean:
            x += self.mean[in_]
        if in_ in self.raw_scale:
            x /= np.float32(self.raw_scale[in_])
        if in_ in self.channel_swap:
            x = x[np.argsort(self.channel_swap[in_]), :, :]
        if in_ in self.transpose:
            x = x.transpose(np.argsort(self.transpose[in_]))
        return x

    def set_transpose(self, in_, order):
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise TransformerError("transpose order needs to have the same number of dimensions "
                                   f"as the input ({len(self.inputs[in_]) - 1}), got {order}")
        self.transpose[in_] = tuple(order)

    def set_channel_swap(self, in_, order):
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise TransformerError("channel swap needs to have the same number of dimensions "
                                   f"as the input channels ({self.inputs[in_][1]}), got {order}")
        self.channel_swap[in_] = tuple(order)

    def set_raw_scale(self, in_, scale):
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """mean: K values (one per channel) or a K x H x W (or H x W) array."""
        self._check_input(in_)
        mean = np.asarray(mean, dtype=np.float32)
        shape = self.inputs[in_]
        if mean.ndim == 1:
            if mean.shape[0] != shape[1]:
                raise TransformerError(f"mean channels ({mean.shape[0]}) incompatible with input "
                                       f"channels ({shape[1]})")
            mean = mean[:, None, None]
        else:
            ms = mean.shape if mean.ndim != 2 else (1,) + mean.shape
            if len(ms) != 3:
                raise TransformerError(f"mean shape {mean.shape} invalid; expected K, H x W or "
                                       "K x H x W")
            if ms != shape[1:]:
                raise TransformerError(f"mean shape {ms} incompatible with input shape "
                                       f"{shape[1:]}")
            mean = mean.reshape(ms)
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        self._check_input(in_)
        self.input_scale[in_] = scale


__all__ = ["load_image", "resize_image", "oversample", "Transformer", "TransformerError"]
