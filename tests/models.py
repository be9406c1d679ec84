"""Helpers for tests over the real prototxts in ../shared/models."""
from caffe_lite.io import load_message, upgrade_net
from caffe_lite.proto import caffe_pb2

DATA_TYPES = {"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData"}


def with_input_layers(path, data_shape, label_shape=None):
    """The net at `path` with each data layer replaced by an Input layer of the given shapes
    (their LMDB / image sources are not available in tests)."""
    param, _ = load_message(str(path), caffe_pb2.NetParameter)
    upgrade_net(param, str(path))
    for layer in param.layer:
        if layer.type in DATA_TYPES:
            tops = list(layer.top)
            include = list(layer.include)
            name = layer.name
            layer.Clear()
            layer.name, layer.type = name, "Input"
            layer.top.extend(tops)
            layer.include.extend(include)
            shapes = [data_shape, label_shape][:len(tops)]
            for s in shapes:
                layer.input_param.shape.add().dim.extend(s)
    return param
