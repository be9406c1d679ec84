"""A Python data layer for MNIST, written as a pycaffe user writes one (`import caffe`,
`caffe.Layer`): it reads the idx files itself and feeds LeNet the batches Caffe's Data layer
would give from an LMDB of the same images (same order, wrapping at the end, scaled by
`scale`).  caffe-lite runs it unchanged; the module imports `caffe`, which caffe-lite serves
with its pycaffe alias when no other caffe is installed.

    layer { name: "mnist" type: "Python" top: "data" top: "label"
            python_param { module: "mnist_layers" layer: "MnistData"
                           param_str: "{'images': 'train-images-idx3-ubyte.gz',
                                        'labels': 'train-labels-idx1-ubyte.gz',
                                        'batch_size': 64, 'scale': 0.00390625}" } }"""
import ast
import gzip
import struct

import numpy as np

import caffe


def read_idx(path):
    """An idx file (gzipped or not) as a uint8 array: (N, rows, cols) images or (N,) labels."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    magic, n = struct.unpack(">2i", raw[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">2i", raw[8:16])
        return np.frombuffer(raw, np.uint8, n * rows * cols, 16).reshape(n, rows, cols)
    if magic == 2049:
        return np.frombuffer(raw, np.uint8, n, 8)
    raise ValueError(f"{path}: not an MNIST idx file (magic {magic})")


class MnistData(caffe.Layer):
    """Tops: data (batch_size x 1 x rows x cols, pixel * scale) and label (batch_size)."""

    def setup(self, bottom, top):
        params = ast.literal_eval(self.param_str)
        self.images = read_idx(params["images"])
        self.labels = read_idx(params["labels"]).astype(np.float32)
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.batch_size = int(params["batch_size"])
        self.scale = np.float32(params.get("scale", 1.0))
        self.pos = 0
        top[0].reshape(self.batch_size, 1, *self.images.shape[1:])
        top[1].reshape(self.batch_size)

    def reshape(self, bottom, top):
        pass  # the shapes were set in setup and do not change

    def forward(self, bottom, top):
        idx = (self.pos + np.arange(self.batch_size)) % len(self.images)
        top[0].data[:, 0] = self.images[idx]
        top[0].data[...] *= self.scale
        top[1].data[...] = self.labels[idx]
        self.pos = (self.pos + self.batch_size) % len(self.images)

    def backward(self, top, propagate_down, bottom):
        pass  # a data layer has no gradient to give

    # caffe-lite keeps these in a solver snapshot, so a resumed run reads the same batches
    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = int(state["pos"])
