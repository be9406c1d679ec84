"""The layer registry: Caffe type string -> layer class."""
from ..errors import UnknownLayerTypeError

LAYERS = {}


def register(*type_names):
    """Class decorator: register a layer class under one or more Caffe type strings."""
    def deco(cls):
        for t in type_names:
            if t in LAYERS and LAYERS[t] is not cls:
                raise ValueError(f"layer type '{t}' registered twice "
                                 f"({LAYERS[t].__name__} and {cls.__name__})")
            LAYERS[t] = cls
        if cls.type is None:
            cls.type = type_names[0]
        return cls
    return deco


def create_layer(layer_param):
    cls = LAYERS.get(layer_param.type)
    if cls is None:
        raise UnknownLayerTypeError(layer_param.name, layer_param.type, LAYERS)
    return cls(layer_param)


def layer_type_list():
    return sorted(LAYERS)
