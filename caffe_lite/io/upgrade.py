"""The upgrades Caffe applies when it reads an old net: V1 `layers` to `layer`, the `input` /
`input_dim` / `input_shape` fields to an Input layer, deprecated data-transformation fields,
and BatchNorm's old three-ParamSpec form.  Applied to every net caffe-lite reads."""
from ..errors import NetError
from ..proto import caffe_pb2

_V1 = caffe_pb2.V1LayerParameter
V1_TYPE_NAMES = {
    _V1.NONE: "", _V1.ABSVAL: "AbsVal", _V1.ACCURACY: "Accuracy", _V1.ARGMAX: "ArgMax",
    _V1.BNLL: "BNLL", _V1.CONCAT: "Concat", _V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    _V1.CONVOLUTION: "Convolution", _V1.DATA: "Data", _V1.DECONVOLUTION: "Deconvolution",
    _V1.DROPOUT: "Dropout", _V1.DUMMY_DATA: "DummyData", _V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    _V1.ELTWISE: "Eltwise", _V1.EXP: "Exp", _V1.FLATTEN: "Flatten", _V1.HDF5_DATA: "HDF5Data",
    _V1.HDF5_OUTPUT: "HDF5Output", _V1.HINGE_LOSS: "HingeLoss", _V1.IM2COL: "Im2col",
    _V1.IMAGE_DATA: "ImageData", _V1.INFOGAIN_LOSS: "InfogainLoss",
    _V1.INNER_PRODUCT: "InnerProduct", _V1.LRN: "LRN", _V1.MEMORY_DATA: "MemoryData",
    _V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss", _V1.MVN: "MVN",
    _V1.POOLING: "Pooling", _V1.POWER: "Power", _V1.RELU: "ReLU", _V1.SIGMOID: "Sigmoid",
    _V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss", _V1.SILENCE: "Silence",
    _V1.SOFTMAX: "Softmax", _V1.SOFTMAX_LOSS: "SoftmaxWithLoss", _V1.SPLIT: "Split",
    _V1.SLICE: "Slice", _V1.TANH: "TanH", _V1.WINDOW_DATA: "WindowData",
    _V1.THRESHOLD: "Threshold",
}

# V1 fields that carry over to LayerParameter under the same name and message type.
_SAME_NAME_FIELDS = [f.name for f in _V1.DESCRIPTOR.fields
                     if f.name.endswith("_param") and f.name != "layer"]


def upgrade_v1_layer(v1, source=""):
    if v1.HasField("layer"):
        raise NetError(f"{source}: layer '{v1.layer.name}' is in the pre-2014 V0 format; "
                       "upgrade it with Caffe's upgrade_net_proto_text first")
    layer = caffe_pb2.LayerParameter()
    layer.name = v1.name
    layer.type = V1_TYPE_NAMES.get(v1.type, "")
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    layer.blobs.extend(v1.blobs)
    layer.loss_weight.extend(v1.loss_weight)
    n = max(len(v1.param), len(v1.blob_share_mode), len(v1.blobs_lr), len(v1.weight_decay))
    for i in range(n):
        spec = layer.param.add()
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    for name in _SAME_NAME_FIELDS:
        if v1.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1, name))
    _upgrade_data_transformation(layer)
    return layer


def _upgrade_data_transformation(layer):
    """V1 data layers kept scale / mean_file / crop_size / mirror in their own parameter."""
    for name in ("data_param", "image_data_param", "window_data_param"):
        if not layer.HasField(name):
            continue
        p = getattr(layer, name)
        for field in ("scale", "mean_file", "crop_size", "mirror"):
            if p.HasField(field):
                setattr(layer.transform_param, field, getattr(p, field))
                p.ClearField(field)


def _upgrade_input(net, source=""):
    if not net.input:
        return
    if net.input_dim and len(net.input_dim) != 4 * len(net.input):
        raise NetError(f"{source}: {len(net.input)} input(s) need {4 * len(net.input)} "
                       f"input_dim values, found {len(net.input_dim)}")
    if net.input_shape and len(net.input_shape) not in (1, len(net.input)):
        raise NetError(f"{source}: {len(net.input)} input(s) but {len(net.input_shape)} "
                       "input_shape entries")
    layer = caffe_pb2.LayerParameter(name="input", type="Input")
    for i, name in enumerate(net.input):
        layer.top.append(name)
        shape = layer.input_param.shape.add()
        if net.input_shape:
            shape.CopyFrom(net.input_shape[min(i, len(net.input_shape) - 1)])
        elif net.input_dim:
            shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
    layers = [layer] + list(net.layer)
    net.ClearField("layer")
    net.layer.extend(layers)
    net.ClearField("input")
    net.ClearField("input_dim")
    net.ClearField("input_shape")


def _upgrade_batch_norm(net):
    # Early BatchNorm definitions declared their three statistics blobs as parameters with
    # lr_mult 0; Caffe keeps the specs but forces them to 0 so they are never learned.
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


def upgrade_net(net, source=""):
    """Upgrade `net` (a NetParameter) in place; returns it."""
    if net.layers and net.layer:
        raise NetError(f"{source}: uses both the V1 'layers' field and the 'layer' field; "
                       "a net must use only one")
    if net.layers:
        upgraded = [upgrade_v1_layer(v1, source) for v1 in net.layers]
        net.ClearField("layers")
        net.layer.extend(upgraded)
    _upgrade_input(net, source)
    _upgrade_batch_norm(net)
    return net
