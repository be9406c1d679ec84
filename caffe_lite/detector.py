"""Detector: pycaffe's caffe.Detector, windowed detection (R-CNN style): crop windows from
images, optionally with a border of context, warp each to the net's input size, classify.

    det = caffe_lite.Detector("deploy.prototxt", "weights.caffemodel", raw_scale=255,
                              context_pad=16)
    dets = det.detect_windows([("img.jpg", [(ymin, xmin, ymax, xmax), ...])])
    # [{'window': ..., 'prediction': class scores, 'filename': 'img.jpg'}, ...]

`detect_selective_search` needs the external selective_search_ijcv_with_python package (and
MATLAB), as in pycaffe; without it, it raises an ImportError that says so."""
import os

import numpy as np

from . import io as caffe_io
from .classifier import _configure_transformer
from .errors import CaffeLiteError
from .net import Net
from .proto import caffe_pb2


class SelectiveSearchUnavailableError(CaffeLiteError, ImportError):
    pass


class Detector(Net):
    """Net(model_file, TEST, weights=pretrained_file) plus preprocessing (mean, input_scale,
    raw_scale, channel_swap) and `context_pad`, the width of the context border (in net input
    pixels) around each window, as in R-CNN feature extraction."""

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None, context_pad=None):
        super().__init__(model_file, caffe_pb2.TEST, weights=pretrained_file)
        self.transformer = _configure_transformer(self, mean, input_scale, raw_scale,
                                                  channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """Windows (ymin, xmin, ymax, xmax) of each image file, classified: a list of
        {'window', 'prediction', 'filename'} dicts in input order."""
        images_windows = [(f, list(ws)) for f, ws in images_windows]
        crops = []
        for fname, windows in images_windows:
            image = caffe_io.load_image(fname).astype(np.float32)
            crops.extend(self.crop(image, w) for w in windows)
        in_ = self.inputs[0]
        batch = np.stack([self.transformer.preprocess(in_, c) for c in crops])
        predictions = self.forward_all(**{in_: batch})[self.outputs[0]]
        detections, i = [], 0
        for fname, windows in images_windows:
            for w in windows:
                detections.append({"window": w, "prediction": predictions[i],
                                   "filename": fname})
                i += 1
        return detections

    def detect_selective_search(self, image_fnames):
        """detect_windows over Selective Search proposals (needs the external
        selective_search_ijcv_with_python package, as pycaffe does)."""
        try:
            import selective_search_ijcv_with_python as selective_search
        except ImportError:
            raise SelectiveSearchUnavailableError(
                "detect_selective_search needs the selective_search_ijcv_with_python package "
                "(and MATLAB), as pycaffe's does; give windows to detect_windows instead") \
                from None
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        windows = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(image_fnames, windows))

    def crop(self, im, window):
        """The window (ymin, xmin, ymax, xmax) of an H x W x K image; with context_pad, the
        window grown so that context_pad pixels of the warped input are context, the part
        outside the image filled with the mean (in unprocessed input space)."""
        window = np.asarray(window)
        crop = im[int(window[0]):int(window[2]), int(window[1]):int(window[3])]
        if not self.context_pad:
            return crop
        crop_size = self.blobs[self.inputs[0]].width  # assumes a square input
        scale = crop_size / (1.0 * crop_size - self.context_pad * 2)
        half_h = (window[2] - window[0] + 1) / 2.0
        half_w = (window[3] - window[1] + 1) / 2.0
        center = (window[0] + half_h, window[1] + half_w)
        box = np.round(np.tile(center, 2) + scale * np.array((-half_h, -half_w, half_h, half_w)))
        full_h, full_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        scale_h, scale_w = crop_size / full_h, crop_size / full_w
        pad_y = int(round(max(0, -box[0]) * scale_h))  # the part outside the image
        pad_x = int(round(max(0, -box[1]) * scale_w))
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        clip_h, clip_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        crop_h = min(int(round(clip_h * scale_h)), crop_size - pad_y)
        crop_w = min(int(round(clip_w * scale_w)), crop_size - pad_x)
        context = im[int(box[0]):int(box[2]), int(box[1]):int(box[3])]
        context = caffe_io.resize_image(context, (crop_h, crop_w))
        out = np.ones(self.crop_dims, np.float32) * self.crop_mean
        out[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context
        return out

    def configure_crop(self, context_pad):
        """Crop dimensions (H, W, K of the input) and, with context_pad, the mean image used to
        fill context that falls outside the image."""
        in_ = self.inputs[0]
        tpose = self.transformer.transpose[in_]
        inv = [tpose[t] for t in tpose]
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inv]
        self.context_pad = context_pad
        if not context_pad:
            return
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, np.float32)
            return
        crop_mean = mean.copy().transpose(inv)
        order = self.transformer.channel_swap.get(in_)
        if order is not None:
            crop_mean = crop_mean[:, :, [list(order).index(i)
                                         for i in range(crop_mean.shape[2])]]
        raw_scale = self.transformer.raw_scale.get(in_)
        if raw_scale is not None:
            crop_mean = crop_mean / raw_scale
        self.crop_mean = crop_mean
