"""NetSpec: write nets in Python, pycaffe's way.

    from caffe_lite import layers as L, params as P
    n = caffe_lite.NetSpec()
    n.data, n.label = L.Data(source="mnist_lmdb", backend=P.Data.LMDB, batch_size=64, ntop=2,
                             transform_param=dict(scale=1. / 255))
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.conv1, n.label)
    print(n.to_proto())

Keyword arguments that are LayerParameter fields (name, loss_weight, param, include, ...) or
end in `_param` go to the LayerParameter; the rest go to the layer type's own parameter message
(convolution_param for Convolution, ...).  Lists become repeated fields, dicts sub-messages."""
import collections

from .errors import ArgumentTypeError, CaffeLiteError, UnknownNameError
from .proto import caffe_pb2

_LAYER_FIELDS = {f.name for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields}


def _param_field_for_type():
    """Layer type -> its `*_param` field, from the proto's message names (as pycaffe does),
    plus the types that reuse another type's parameters."""
    out = {}
    for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if f.name.endswith("_param") and f.message_type is not None:
            t = f.message_type.name
            if t.endswith("Parameter"):
                out[t[: -len("Parameter")]] = f.name
    out.update({"Deconvolution": "convolution_param", "DepthwiseConvolution": "convolution_param",
                "ConvolutionDepthwise": "convolution_param",
                "SoftmaxWithLoss": "softmax_param"})
    return out


PARAM_FIELD = _param_field_for_type()


def param_name_dict():
    """pycaffe's form of the same table: layer type -> its parameter field without '_param'
    (Convolution -> 'convolution'), from the proto's message names."""
    return {t: f[: -len("_param")] for t, f in _param_field_for_type().items()}


_param_names = param_name_dict()


def _is_repeated(field):
    # protobuf >= 5.28 has is_repeated (and 7.x dropped `label`); older versions only label.
    flag = getattr(field, "is_repeated", None)
    return flag if flag is not None else field.label == field.LABEL_REPEATED


def assign_proto(proto, name, value):
    """Set field `name` of `proto` from a Python value (scalars, lists, dicts, messages)."""
    try:
        field = proto.DESCRIPTOR.fields_by_name[name]
    except KeyError:
        raise UnknownNameError(f"{proto.DESCRIPTOR.name} has no field '{name}'") from None
    is_repeated = _is_repeated(field)
    if is_repeated and not isinstance(value, (list, tuple)):
        value = [value]
    if field.message_type is not None:
        if is_repeated:
            for v in value:
                _fill(getattr(proto, name).add(), v)
        else:
            _fill(getattr(proto, name), value)
    elif is_repeated:
        getattr(proto, name).extend(value)
    else:
        setattr(proto, name, value)


def _fill(msg, value):
    if isinstance(value, dict):
        for k, v in value.items():
            assign_proto(msg, k, v)
    elif hasattr(value, "DESCRIPTOR"):
        msg.CopyFrom(value)
    else:
        raise CaffeLiteError(f"expected a dict for {msg.DESCRIPTOR.name}, got {value!r}")


class Top:
    """One output of a Function (a layer call)."""

    def __init__(self, fn, n):
        self.fn, self.n = fn, n

    def to_proto(self):
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)


class Function:
    """One layer call: its type, input Tops, parameters and output Tops (`ntop` of them; a
    layer with ntop=0, such as Silence, is returned as the Function itself)."""

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        for index, i in enumerate(inputs):
            if not isinstance(i, Top):
                # pycaffe's message, word for word (scripts match on it)
                raise ArgumentTypeError(f"{type_name} input {index} is not a Top (type is "
                                        f"{type(i)})")
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        if self.in_place and len(inputs) != 1:
            raise CaffeLiteError(f"{type_name}: in_place needs exactly one bottom")
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _name(self, names, autonames):
        if self not in names and self.ntop > 0:
            names[self] = self._top_name(self.tops[0], names, autonames)
        elif self not in names:
            autonames[self.type_name] += 1
            names[self] = f"{self.type_name}{autonames[self.type_name]}"
        return names[self]

    def _top_name(self, top, names, autonames):
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = f"{top.fn.type_name}{autonames[top.fn.type_name]}"
        return names[top]

    _get_name, _get_top_name = _name, _top_name  # pycaffe's names

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottoms = []
        for inp in self.inputs:
            inp.fn._to_proto(layers, names, autonames)
            bottoms.append(layers[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter(type=self.type_name)
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            for top in self.tops:
                layer.top.append(self._top_name(top, names, autonames))
        layer.name = self._name(names, autonames)
        for k, v in self.params.items():
            if k in _LAYER_FIELDS:
                assign_proto(layer, k, v)
            elif self.type_name in PARAM_FIELD:
                assign_proto(getattr(layer, PARAM_FIELD[self.type_name]), k, v)
            else:
                raise CaffeLiteError(f"{self.type_name}: unknown argument '{k}' (not a "
                                     "LayerParameter field and the type has no *_param message)")
        layers[self] = layer


def to_proto(*tops):
    """A NetParameter holding every layer the given tops depend on."""
    layers = collections.OrderedDict()
    autonames = collections.Counter()
    for t in tops:
        t._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """Assign layer outputs as attributes; `to_proto()` names tops (and single-top layers)
    after those attributes."""

    def __init__(self):
        super().__setattr__("tops", collections.OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self.tops[name]
        except KeyError:
            raise UnknownNameError(f"this NetSpec has no top '{name}'; it has "
                                   f"{', '.join(self.tops) or 'none'}") from None

    __setitem__ = __setattr__
    __getitem__ = __getattr__

    def __delitem__(self, name):
        del self.tops[name]

    def keys(self):
        return list(self.tops)

    def vals(self):
        return list(self.tops.values())

    def to_proto(self):
        names = {v: k for k, v in self.tops.items()}
        autonames = collections.Counter()
        layers = collections.OrderedDict()
        for name, top in self.tops.items():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class _LayerFactory:
    """`L.Convolution(bottom, ...)` builds a Function of type 'Convolution'."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def layer_fn(*args, **kwargs):
            fn = Function(type_name, args, kwargs)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops
        return layer_fn


class _ParamFactory:
    """`P.Pooling.MAX` is caffe_pb2.PoolingParameter.MAX."""

    def __getattr__(self, name):
        msg = getattr(caffe_pb2, name + "Parameter", None)
        if msg is None:
            raise AttributeError(f"no {name}Parameter in caffe.proto")
        return msg


Layers, Parameters = _LayerFactory, _ParamFactory  # pycaffe's class names
layers = _LayerFactory()
params = _ParamFactory()
