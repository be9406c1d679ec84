"""Normalize: the SSD fork's L2 normalisation with a learned scale (VGG-SSD's conv4_3_norm).

top = scale * x / sqrt(sum(x^2) + eps), the sum over each image's C x H x W values
(across_spatial) or over the channels at each position; scale is one learned value
(channel_shared) or one per channel.  Forward as the fork's; backward exact (see
backward_cpu)."""
import numpy as np

from ..fillers import fill
from ..proto import caffe_pb2
from .base import Layer
from .registry import register

_F = np.float32


@register("Normalize")
class NormalizeLayer(Layer):
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.norm_param
        if bottom[0].num_axes < 2:
            raise self.error(f"number of axes of bottom blob must be >= 2, got {bottom[0].shape}")
        self.across_spatial = p.across_spatial
        self.channel_shared = p.channel_shared
        self.eps = _F(p.eps)
        channels = bottom[0].shape[1]
        if not self.blobs:
            b = self.param_blob(() if self.channel_shared else (channels,))
            if p.HasField("scale_filler"):
                fill(b, p.scale_filler)
            else:
                fill(b, caffe_pb2.FillerParameter(type="constant", value=1.0))
            self.blobs = [b]
        want = 1 if self.channel_shared else channels
        if self.blobs[0].count != want:
            raise self.error(f"scale blob {self.blobs[0].shape} has {self.blobs[0].count} "
                             f"value(s) but channel_shared: {str(self.channel_shared).lower()} "
                             f"with {channels} channels needs {want}")

    def reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes < 2:
            raise self.error(f"number of axes of bottom blob must be >= 2, got {b.shape}")
        if not self.channel_shared and b.shape[1] != self.blobs[0].count:
            raise self.error(f"bottom {b.shape} has {b.shape[1]} channels but the scale has "
                             f"{self.blobs[0].count}")
        self.dims = (b.shape[0], b.shape[1], b.count_range(2))
        if top[0] is not b:
            top[0].reshape_like(b)

    def _scale(self):
        s = self.blobs[0].cpu_data.reshape(-1)
        return s[0] if self.channel_shared else s.reshape(1, -1, 1)

    def forward_cpu(self, bottom, top):
        x = bottom[0].cpu_data.reshape(self.dims)
        axes = (1, 2) if self.across_spatial else (1,)
        self.norm = np.sqrt(np.sum(np.square(x), axis=axes, keepdims=True, dtype=_F) + self.eps)
        # x / norm is kept for backward, which then also works in place.
        self.xhat = x / self.norm
        np.multiply(self.xhat, self._scale(), out=top[0].data.reshape(self.dims))

    def backward_cpu(self, top, propagate_down, bottom):
        dy = top[0].cpu_diff.reshape(self.dims)
        if self.param_propagate_down[0]:
            g = self.xhat * dy
            self.blobs[0].diff.reshape(-1)[...] += (g.sum(dtype=_F) if self.channel_shared
                                                    else g.sum(axis=(0, 2), dtype=_F))
        if propagate_down[0]:
            # d/dx of xhat = x / norm applied to g = dL/dxhat = scale * dy.  (The fork uses
            # scale * (dy - xhat * sum(xhat * dy)) / norm, which is this only when the scale is
            # the same for every channel; with channel_shared: false its gradient is off.)
            axes = (1, 2) if self.across_spatial else (1,)
            g = dy * self._scale()
            dot = np.sum(self.xhat * g, axis=axes, keepdims=True, dtype=_F)
            bottom[0].diff.reshape(self.dims)[...] = (g - self.xhat * dot) / self.norm
