"""Python layer classes the Python-layer tests name in their prototxts (python_param.module
'python_layer_classes'), written as pycaffe users write them."""
import ast

import numpy as np

import caffe_lite as caffe


class TimesTen(caffe.Layer):
    """pycaffe's SimpleLayer: multiplies by ten."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff


class Raises(caffe.Layer):
    def setup(self, bottom, top):
        raise RuntimeError("setup of a layer that always fails")


class OneParameter(caffe.Layer):
    """pycaffe's ParameterLayer: one learnable value whose gradient is always 1."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] = 1


class Phase(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape()

    def forward(self, bottom, top):
        top[0].data[()] = self.phase


class MultiplyByParamStr(caffe.Layer):
    """pycaffe's SimpleParamLayer: param_str is "{'value': v}"."""

    def setup(self, bottom, top):
        self.value = ast.literal_eval(self.param_str)["value"]

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.value * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.value * top[0].diff


class ChannelScale(caffe.Layer):
    """y[n, c, ...] = w[c] * x[n, c, ...] with a learnable, prunable w (filled with 1 + c)."""
    prunable = True

    def setup(self, bottom, top):
        c = bottom[0].shape[1]
        self.blobs.add_blob(c)
        self.blobs[0].data[...] = 1 + np.arange(c)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def _w(self, bottom):
        return self.blobs[0].data.reshape((1, -1) + (1,) * (len(bottom[0].shape) - 2))

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data * self._w(bottom)

    def backward(self, top, propagate_down, bottom):
        axes = (0,) + tuple(range(2, len(top[0].shape)))
        self.blobs[0].diff[...] += (top[0].diff * bottom[0].data).sum(axis=axes)
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self._w(bottom)


class EuclideanLoss(caffe.Layer):
    """Caffe's examples/pycaffe/layers/pyloss.py: 0.5 / N * sum((a - b)^2)."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num


class Counter(caffe.Layer):
    """A data layer: batches of 0, 1, 2, ... (wrapping at `max`), with its position in
    state_dict() so a solver snapshot resumes it."""

    def setup(self, bottom, top):
        self.batch, self.max = 4, 10
        self.pos = 0
        top[0].reshape(self.batch)

    def forward(self, bottom, top):
        top[0].data[...] = (self.pos + np.arange(self.batch)) % self.max
        self.pos = (self.pos + self.batch) % self.max

    def reset(self):
        self.pos = 0

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]
