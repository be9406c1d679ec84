"""GPU (PyCUDA) implementations of the layer families; imported only in GPU mode.

Each module registers classes with @gpu_impl("Type") whose static forward / backward run the
layer on the device, reading the shapes and parameters the layer's CPU class computed in
layer_setup / reshape.  Types without an entry here run their CPU code (the blobs move to the
host and back): Input, Accuracy, ArgMax and the data layers.  See docs/gpu.md."""
from . import (concat_slice, conv, eltwise, fusion, inner_product,  # noqa: F401
               neuron, normalization, pooling, scale_bias, softmax_loss)
