"""Layers: one module per family, each class registered under its Caffe type string."""
from .base import Layer, LossLayer, NeuronLayer
from .registry import LAYERS, create_layer, layer_type_list, register

# Importing the family modules registers their layers.
from . import (input, conv, depthwise, inner_product, pooling, neuron,  # noqa: E402,F401
               normalization, scale_bias, eltwise, concat_slice, reshaping, softmax, loss,
               accuracy, data_layers, python, detection, normalize)



def __getattr__(name):
    """`from caffe_lite import layers as L; L.Convolution(...)`: pycaffe's NetSpec factory,
    reached for any name that is not an attribute of this package."""
    if name[:1].isupper():
        from ..net_spec import layers as _factory
        return getattr(_factory, name)
    raise AttributeError(f"module 'caffe_lite.layers' has no attribute '{name}'")


__all__ = ["Layer", "LossLayer", "NeuronLayer", "LAYERS", "create_layer", "layer_type_list",
           "register"]
