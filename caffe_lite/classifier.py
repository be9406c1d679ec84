"""Classifier: pycaffe's caffe.Classifier, a Net for image classification that resizes,
center-crops or 10-crop oversamples, preprocesses (caffe_lite.io.Transformer) and averages.

    net = caffe_lite.Classifier("deploy.prototxt", "weights.caffemodel", image_dims=(256, 256),
                                mean=np.array([104, 117, 123]), raw_scale=255,
                                channel_swap=(2, 1, 0))
    probs = net.predict([caffe_lite.io.load_image("cat.jpg")])     # N x classes"""
import numpy as np

from . import io as caffe_io
from .net import Net
from .proto import caffe_pb2


def _configure_transformer(net, mean, input_scale, raw_scale, channel_swap):
    """The Transformer Classifier and Detector share: H x W x K images in, K x H x W out."""
    in_ = net.inputs[0]
    t = caffe_io.Transformer({in_: net.blobs[in_].data.shape})
    t.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        t.set_mean(in_, mean)
    if input_scale is not None:
        t.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        t.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        t.set_channel_swap(in_, channel_swap)
    return t


class Classifier(Net):
    """Net(model_file, TEST, weights=pretrained_file) plus pycaffe's preprocessing:
    image_dims (H, W) to resize inputs to before cropping (default: the net's input size),
    mean, input_scale, raw_scale and channel_swap as the Transformer takes them."""

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None,
                 input_scale=None, raw_scale=None, channel_swap=None):
        super().__init__(model_file, caffe_pb2.TEST, weights=pretrained_file)
        self.transformer = _configure_transformer(self, mean, input_scale, raw_scale,
                                                  channel_swap)
        in_ = self.inputs[0]
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        self.image_dims = self.crop_dims if image_dims is None or not len(image_dims) \
            else image_dims

    def predict(self, inputs, oversample=True):
        """Class probabilities (N x C) for N H x W x K images: the mean over the 10 crops
        (corners, center, mirrored) when oversample, else for the center crop."""
        h, w = (int(d) for d in self.image_dims)
        resized = np.zeros((len(inputs), h, w, inputs[0].shape[2]), np.float32)
        for i, im in enumerate(inputs):
            resized[i] = caffe_io.resize_image(im, (h, w))
        ch, cw = (int(d) for d in self.crop_dims)
        if oversample:
            crops = caffe_io.oversample(resized, (ch, cw))
        else:
            # pycaffe's center crop: the box [center - crop/2, center + crop/2), truncated
            y0, x0 = int(h / 2.0 - ch / 2.0), int(w / 2.0 - cw / 2.0)
            y1, x1 = int(h / 2.0 + ch / 2.0), int(w / 2.0 + cw / 2.0)
            crops = resized[:, y0:y1, x0:x1, :]
        in_ = self.inputs[0]
        batch = np.stack([self.transformer.preprocess(in_, c) for c in crops])
        out = self.forward_all(**{in_: batch})
        predictions = out[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions
