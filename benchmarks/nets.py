"""The nets the benchmarks time, built from the real prototxts in ../shared/models.

Every builder returns a NetParameter for a TRAIN net: the deploy prototxt's input becomes an
Input layer of the requested batch, BatchNorm computes batch statistics (use_global_stats
false, Caffe's TRAIN behaviour), the final Softmax becomes SoftmaxWithLoss on a `label` input,
and force_backward makes backward fill the input's gradient too (what Caffe's `time` and the
issue's reference numbers measure)."""
import os
import pathlib

from caffe_lite.io.prototxt import load_message
from caffe_lite.io.upgrade import upgrade_net
from caffe_lite.proto import caffe_pb2

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The shared models folder: CAFFE_LITE_MODELS, else CAFFE_LITE_SHARED/models (as the tests),
# else ../shared/models beside the checkout.
MODELS = pathlib.Path(os.environ.get("CAFFE_LITE_MODELS") or pathlib.Path(
    os.environ.get("CAFFE_LITE_SHARED", ROOT.parent / "shared")) / "models")

MODEL_FILES = {
    "lenet": "bvlc_mnist/lenet.prototxt",
    "mobilenet_v1": "mobilenet_caffe/mobilenet_deploy.prototxt",
    "mobilenet_v2": "mobilenet_caffe/mobilenet_v2_deploy.prototxt",
    "mobilenet_v1_dwfork": "depthwise_fork/depthwised_mobilenet_deploy.prototxt",
}


def model_path(name):
    path = MODELS / MODEL_FILES[name]
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (set CAFFE_LITE_MODELS to the folder holding "
                                f"{MODEL_FILES[name]})")
    return path


def _input_layer(name, shape):
    lp = caffe_pb2.LayerParameter(name=name, type="Input")
    lp.top.append(name)
    lp.input_param.shape.add().dim.extend(shape)
    return lp


def training_net(deploy, batch, size=None):
    """A NetParameter: `deploy` (path or NetParameter) made into a TRAIN net of `batch`
    (and input height = width = `size`, when given: the MobileNets take any size >= 32)."""
    if isinstance(deploy, caffe_pb2.NetParameter):
        src = caffe_pb2.NetParameter()
        src.CopyFrom(deploy)
    else:
        src, _ = load_message(str(deploy), caffe_pb2.NetParameter, "net prototxt")
    upgrade_net(src)
    out = caffe_pb2.NetParameter(name=src.name, force_backward=True)
    out.state.phase = caffe_pb2.TRAIN
    for lp in src.layer:
        if lp.type == "Input":
            shape = list(lp.input_param.shape[0].dim)
            shape[0] = batch
            if size is not None:
                shape[2:] = [size] * (len(shape) - 2)
            out.layer.append(_input_layer(lp.top[0], shape))
            out.layer.append(_input_layer("label", [batch]))
            continue
        new = out.layer.add()
        new.CopyFrom(lp)
        new.ClearField("include")
        new.ClearField("exclude")
        if lp.type == "BatchNorm":
            new.batch_norm_param.use_global_stats = False
        if lp.type == "Softmax":
            new.type = "SoftmaxWithLoss"
            new.bottom.append("label")
            new.top[0] = "loss"
    if not any(lp.type == "SoftmaxWithLoss" for lp in out.layer):
        # a deploy net that ends at its logits (the DepthwiseConvolution fork's MobileNet)
        logits = next(lp.top[0] for lp in reversed(out.layer) if lp.type != "Input")
        loss = out.layer.add(name="loss", type="SoftmaxWithLoss")
        loss.bottom.extend([logits, "label"])
        loss.top.append("loss")
    return out


def lenet(batch=64):
    return training_net(model_path("lenet"), batch)


def mobilenet_v1(batch=8, size=224):
    """MobileNet-v1 in Caffe's form: depthwise layers are Convolution with group = channels."""
    return training_net(model_path("mobilenet_v1"), batch, size)


def mobilenet_v1_dwfork(batch=8, size=224):
    """The same net in the DepthwiseConvolution fork's form."""
    return training_net(model_path("mobilenet_v1_dwfork"), batch, size)


def mobilenet_v2(batch=8, size=224):
    return training_net(model_path("mobilenet_v2"), batch, size)


def _conv(name, bottom, num_output, kernel, stride=1, pad=0, group=1, bias=False):
    lp = caffe_pb2.LayerParameter(name=name, type="Convolution")
    lp.bottom.append(bottom)
    lp.top.append(name)
    p = lp.convolution_param
    p.num_output = num_output
    p.kernel_size.append(kernel)
    p.stride.append(stride)
    p.pad.append(pad)
    p.group = group
    p.bias_term = bias
    p.weight_filler.type = "msra"
    return lp


def _bn_scale_relu(net, name, relu=True):
    bn = net.layer.add(name=f"{name}/bn", type="BatchNorm")
    bn.bottom.append(name)
    bn.top.append(name)
    sc = net.layer.add(name=f"{name}/scale", type="Scale")
    sc.bottom.append(name)
    sc.top.append(name)
    sc.scale_param.bias_term = True
    sc.scale_param.filler.value = 1
    if relu:
        r = net.layer.add(name=f"{name}/relu", type="ReLU")
        r.bottom.append(name)
        r.top.append(name)


def resnext_block(batch=8, channels=256, width=128, group=32, size=28):
    """A ResNeXt bottleneck (conv1x1 - grouped conv3x3 (group 32) - conv1x1, BN + Scale + ReLU,
    identity shortcut by Eltwise SUM), as in ResNeXt-50's stage 2, ending in a global pool,
    a classifier and SoftmaxWithLoss."""
    net = caffe_pb2.NetParameter(name="ResNeXtBlock", force_backward=True)
    net.state.phase = caffe_pb2.TRAIN
    net.layer.append(_input_layer("data", [batch, channels, size, size]))
    net.layer.append(_input_layer("label", [batch]))
    net.layer.append(_conv("a", "data", width, 1))
    _bn_scale_relu(net, "a")
    net.layer.append(_conv("b", "a", width, 3, pad=1, group=group))
    _bn_scale_relu(net, "b")
    net.layer.append(_conv("c", "b", channels, 1))
    _bn_scale_relu(net, "c", relu=False)
    add = net.layer.add(name="add", type="Eltwise")
    add.bottom.extend(["data", "c"])
    add.top.append("add")
    r = net.layer.add(name="add/relu", type="ReLU")
    r.bottom.append("add")
    r.top.append("add")
    pool = net.layer.add(name="pool", type="Pooling")
    pool.bottom.append("add")
    pool.top.append("pool")
    pool.pooling_param.pool = caffe_pb2.PoolingParameter.AVE
    pool.pooling_param.global_pooling = True
    fc = net.layer.add(name="fc", type="InnerProduct")
    fc.bottom.append("pool")
    fc.top.append("fc")
    fc.inner_product_param.num_output = 10
    fc.inner_product_param.weight_filler.type = "xavier"
    loss = net.layer.add(name="loss", type="SoftmaxWithLoss")
    loss.bottom.extend(["fc", "label"])
    loss.top.append("loss")
    return net


# The 13 depthwise 3x3 layers of MobileNet-v1 at 224x224: (channels, input size, stride).
MOBILENET_V1_DEPTHWISE = [
    (32, 112, 1), (64, 112, 2), (128, 56, 1), (128, 56, 2), (256, 28, 1), (256, 28, 2),
    (512, 14, 1), (512, 14, 1), (512, 14, 1), (512, 14, 1), (512, 14, 1), (512, 14, 2),
    (1024, 7, 1),
]


def depthwise_layer(batch, channels, size, stride):
    """One depthwise 3x3 Convolution (group == channels, pad 1, no bias), MobileNet's form."""
    net = caffe_pb2.NetParameter(name=f"dw{channels}x{size}s{stride}", force_backward=True)
    net.state.phase = caffe_pb2.TRAIN
    net.layer.append(_input_layer("data", [batch, channels, size, size]))
    net.layer.append(_conv("dw", "data", channels, 3, stride=stride, pad=1, group=channels))
    return net
