"""Deploy (TEST-phase) prototxts of the nets people run at batch 1, for the OpenCV comparison.

Where ../shared/models holds the real prototxt it is used (LeNet, MobileNet v1 / v2); the
others are written here from their published structures (layer for layer as their authors'
Caffe prototxts: BVLC's cifar10_quick and GoogLeNet, DeepScale's SqueezeNet v1.1, the MTCNN
P/R/O-Nets of Zhang et al., the Ultra-Light-Fast-Generic-Face-Detector-1MB "slim" net as its
Caffe export lays it out).  Weights are random (`randomize`): timing and agreement with OpenCV
do not depend on them.

    text = deploy_nets.prototxt("mtcnn_rnet", batch=1)     # a NetParameter in text form
    deploy_nets.NETS                                        # name -> (builder, large?)"""
import numpy as np

from . import nets as _shared


class _Text:
    """A prototxt written layer by layer."""

    def __init__(self, name, shape):
        self.lines = [f'name: "{name}"',
                      'layer { name: "data" type: "Input" top: "data" input_param { shape { '
                      + " ".join(f"dim: {d}" for d in shape) + " } } }"]

    def add(self, name, type_, bottoms, tops=None, params=""):
        tops = [name] if tops is None else tops
        bt = " ".join(f'bottom: "{b}"' for b in bottoms)
        tp = " ".join(f'top: "{t}"' for t in tops)
        self.lines.append(f'layer {{ name: "{name}" type: "{type_}" {bt} {tp} {params} }}')
        return tops[0]

    def conv(self, name, bottom, num, k, stride=1, pad=0, group=1, bias=True, top=None):
        p = (f"convolution_param {{ num_output: {num} kernel_size: {k} stride: {stride} "
             f"pad: {pad} group: {group} bias_term: {str(bias).lower()} }}")
        return self.add(name, "Convolution", [bottom], [top or name], p)

    def relu(self, name, blob):
        return self.add(name, "ReLU", [blob], [blob])

    def prelu(self, name, blob):
        return self.add(name, "PReLU", [blob], [blob])

    def bn_scale(self, name, blob):
        self.add(f"{name}/bn", "BatchNorm", [blob], [blob])
        return self.add(f"{name}/scale", "Scale", [blob], [blob], "scale_param { bias_term: true }")

    def pool(self, name, bottom, kind, k=0, stride=1, pad=0, global_=False):
        p = f"pool: {kind} " + ("global_pooling: true" if global_ else
                                f"kernel_size: {k} stride: {stride} pad: {pad}")
        return self.add(name, "Pooling", [bottom], [name], f"pooling_param {{ {p} }}")

    def ip(self, name, bottom, num):
        return self.add(name, "InnerProduct", [bottom], [name],
                        f"inner_product_param {{ num_output: {num} }}")

    def text(self):
        return "\n".join(self.lines) + "\n"


def _from_shared(name, batch, size=None):
    from caffe_lite.io.prototxt import load_message
    from caffe_lite.io.upgrade import upgrade_net
    from caffe_lite.proto import caffe_pb2
    from google.protobuf import text_format
    src, _ = load_message(str(_shared.model_path(name)), caffe_pb2.NetParameter, "net prototxt")
    upgrade_net(src)
    for lp in src.layer:
        if lp.type == "Input":
            dims = lp.input_param.shape[0].dim
            dims[0] = batch
            if size is not None:
                dims[2] = dims[3] = size
    return text_format.MessageToString(src)


def lenet(batch):
    return _from_shared("lenet", batch)


def lenet_300_100(batch):
    n = _Text("LeNet-300-100", (batch, 1, 28, 28))
    x = n.ip("ip1", "data", 300)
    n.relu("relu1", x)
    x = n.ip("ip2", x, 100)
    n.relu("relu2", x)
    x = n.ip("ip3", x, 10)
    n.add("prob", "Softmax", [x])
    return n.text()


def cifar10_quick(batch):
    """BVLC's examples/cifar10/cifar10_quick.prototxt."""
    n = _Text("CIFAR10_quick", (batch, 3, 32, 32))
    x = n.conv("conv1", "data", 32, 5, pad=2)
    x = n.pool("pool1", x, "MAX", 3, 2)
    n.relu("relu1", x)
    x = n.conv("conv2", x, 32, 5, pad=2)
    n.relu("relu2", x)
    x = n.pool("pool2", x, "AVE", 3, 2)
    x = n.conv("conv3", x, 64, 5, pad=2)
    n.relu("relu3", x)
    x = n.pool("pool3", x, "AVE", 3, 2)
    x = n.ip("ip1", x, 64)
    x = n.ip("ip2", x, 10)
    n.add("prob", "Softmax", [x])
    return n.text()


def mtcnn_pnet(batch, height=72, width=96):
    """MTCNN's P-Net (det1.prototxt), fully convolutional: one level of an image pyramid."""
    n = _Text("PNet", (batch, 3, height, width))
    x = n.conv("conv1", "data", 10, 3)
    n.prelu("PReLU1", x)
    x = n.pool("pool1", x, "MAX", 2, 2)
    x = n.conv("conv2", x, 16, 3)
    n.prelu("PReLU2", x)
    x = n.conv("conv3", x, 32, 3)
    n.prelu("PReLU3", x)
    cls = n.conv("conv4-1", x, 2, 1)
    n.conv("conv4-2", x, 4, 1)
    n.add("prob1", "Softmax", [cls])
    return n.text()


def mtcnn_rnet(batch):
    """MTCNN's R-Net (det2.prototxt), 24x24 crops."""
    n = _Text("RNet", (batch, 3, 24, 24))
    x = n.conv("conv1", "data", 28, 3)
    n.prelu("prelu1", x)
    x = n.pool("pool1", x, "MAX", 3, 2)
    x = n.conv("conv2", x, 48, 3)
    n.prelu("prelu2", x)
    x = n.pool("pool2", x, "MAX", 3, 2)
    x = n.conv("conv3", x, 64, 2)
    n.prelu("prelu3", x)
    x = n.ip("conv4", x, 128)
    n.prelu("prelu4", x)
    cls = n.ip("conv5-1", x, 2)
    n.ip("conv5-2", x, 4)
    n.add("prob1", "Softmax", [cls])
    return n.text()


def mtcnn_onet(batch):
    """MTCNN's O-Net (det3.prototxt), 48x48 crops."""
    n = _Text("ONet", (batch, 3, 48, 48))
    x = n.conv("conv1", "data", 32, 3)
    n.prelu("prelu1", x)
    x = n.pool("pool1", x, "MAX", 3, 2)
    x = n.conv("conv2", x, 64, 3)
    n.prelu("prelu2", x)
    x = n.pool("pool2", x, "MAX", 3, 2)
    x = n.conv("conv3", x, 64, 3)
    n.prelu("prelu3", x)
    x = n.pool("pool3", x, "MAX", 2, 2)
    x = n.conv("conv4", x, 128, 2)
    n.prelu("prelu4", x)
    x = n.ip("conv5", x, 256)
    n.add("drop5", "Dropout", [x], [x], "dropout_param { dropout_ratio: 0.25 }")
    n.prelu("prelu5", x)
    cls = n.ip("conv6-1", x, 2)
    n.ip("conv6-2", x, 4)
    n.ip("conv6-3", x, 10)
    n.add("prob1", "Softmax", [cls])
    return n.text()


def mobilenet_v1(batch):
    return _from_shared("mobilenet_v1", batch)


def mobilenet_v2(batch):
    return _from_shared("mobilenet_v2", batch)


def squeezenet_v11(batch):
    """DeepScale's SqueezeNet v1.1 deploy.prototxt."""
    n = _Text("SqueezeNet_v1.1", (batch, 3, 227, 227))
    x = n.conv("conv1", "data", 64, 3, stride=2)
    n.relu("relu_conv1", x)
    x = n.pool("pool1", x, "MAX", 3, 2)

    def fire(name, x, s, e):
        q = n.conv(f"{name}/squeeze1x1", x, s, 1)
        n.relu(f"{name}/relu_squeeze1x1", q)
        a = n.conv(f"{name}/expand1x1", q, e, 1)
        n.relu(f"{name}/relu_expand1x1", a)
        b = n.conv(f"{name}/expand3x3", q, e, 3, pad=1)
        n.relu(f"{name}/relu_expand3x3", b)
        return n.add(f"{name}/concat", "Concat", [a, b])
    x = fire("fire2", x, 16, 64)
    x = fire("fire3", x, 16, 64)
    x = n.pool("pool3", x, "MAX", 3, 2)
    x = fire("fire4", x, 32, 128)
    x = fire("fire5", x, 32, 128)
    x = n.pool("pool5", x, "MAX", 3, 2)
    x = fire("fire6", x, 48, 192)
    x = fire("fire7", x, 48, 192)
    x = fire("fire8", x, 64, 256)
    x = fire("fire9", x, 64, 256)
    n.add("drop9", "Dropout", [x], [x], "dropout_param { dropout_ratio: 0.5 }")
    x = n.conv("conv10", x, 1000, 1)
    n.relu("relu_conv10", x)
    x = n.pool("pool10", x, "AVE", global_=True)
    n.add("prob", "Softmax", [x])
    return n.text()


def googlenet(batch):
    """BVLC GoogLeNet's deploy.prototxt (Inception v1)."""
    n = _Text("GoogleNet", (batch, 3, 224, 224))
    lrn = "lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }"
    x = n.conv("conv1/7x7_s2", "data", 64, 7, stride=2, pad=3)
    n.relu("conv1/relu_7x7", x)
    x = n.pool("pool1/3x3_s2", x, "MAX", 3, 2)
    x = n.add("pool1/norm1", "LRN", [x], params=lrn)
    x = n.conv("conv2/3x3_reduce", x, 64, 1)
    n.relu("conv2/relu_3x3_reduce", x)
    x = n.conv("conv2/3x3", x, 192, 3, pad=1)
    n.relu("conv2/relu_3x3", x)
    x = n.add("conv2/norm2", "LRN", [x], params=lrn)
    x = n.pool("pool2/3x3_s2", x, "MAX", 3, 2)

    def inception(name, x, c1, r3, c3, r5, c5, pp):
        a = n.conv(f"{name}/1x1", x, c1, 1)
        n.relu(f"{name}/relu_1x1", a)
        b = n.conv(f"{name}/3x3_reduce", x, r3, 1)
        n.relu(f"{name}/relu_3x3_reduce", b)
        b = n.conv(f"{name}/3x3", b, c3, 3, pad=1)
        n.relu(f"{name}/relu_3x3", b)
        c = n.conv(f"{name}/5x5_reduce", x, r5, 1)
        n.relu(f"{name}/relu_5x5_reduce", c)
        c = n.conv(f"{name}/5x5", c, c5, 5, pad=2)
        n.relu(f"{name}/relu_5x5", c)
        d = n.pool(f"{name}/pool", x, "MAX", 3, 1, 1)
        d = n.conv(f"{name}/pool_proj", d, pp, 1)
        n.relu(f"{name}/relu_pool_proj", d)
        return n.add(f"{name}/output", "Concat", [a, b, c, d])
    x = inception("inception_3a", x, 64, 96, 128, 16, 32, 32)
    x = inception("inception_3b", x, 128, 128, 192, 32, 96, 64)
    x = n.pool("pool3/3x3_s2", x, "MAX", 3, 2)
    x = inception("inception_4a", x, 192, 96, 208, 16, 48, 64)
    x = inception("inception_4b", x, 160, 112, 224, 24, 64, 64)
    x = inception("inception_4c", x, 128, 128, 256, 24, 64, 64)
    x = inception("inception_4d", x, 112, 144, 288, 32, 64, 64)
    x = inception("inception_4e", x, 256, 160, 320, 32, 128, 128)
    x = n.pool("pool4/3x3_s2", x, "MAX", 3, 2)
    x = inception("inception_5a", x, 256, 160, 320, 32, 128, 128)
    x = inception("inception_5b", x, 384, 192, 384, 48, 128, 128)
    x = n.pool("pool5/7x7_s1", x, "AVE", 7, 1)
    n.add("pool5/drop_7x7_s1", "Dropout", [x], [x], "dropout_param { dropout_ratio: 0.4 }")
    x = n.ip("loss3/classifier", x, 1000)
    n.add("prob", "Softmax", [x])
    return n.text()


def face_detector_slim(batch, height=240, width=320):
    """Ultra-Light-Fast-Generic-Face-Detector-1MB, version-slim at 320x240, laid out as its
    Caffe export: Conv + BatchNorm + Scale + ReLU blocks, depthwise-separable stages, four
    detection heads (depthwise-separable convolutions; plain 3x3 on the last) whose outputs
    are permuted, flattened and concatenated into boxes and class scores."""
    n = _Text("slim-320", (batch, 3, height, width))

    def conv_bn(name, x, out, stride):
        x = n.conv(name, x, out, 3, stride=stride, pad=1, bias=False)
        n.bn_scale(name, x)
        n.relu(f"{name}/relu", x)
        return x

    def conv_dw(name, x, cin, out, stride):
        d = n.conv(f"{name}/dw", x, cin, 3, stride=stride, pad=1, group=cin, bias=False)
        n.bn_scale(f"{name}/dw", d)
        n.relu(f"{name}/dw/relu", d)
        p = n.conv(f"{name}/pw", d, out, 1, bias=False)
        n.bn_scale(f"{name}/pw", p)
        n.relu(f"{name}/pw/relu", p)
        return p

    def separable(name, x, cin, out):
        d = n.conv(f"{name}/dw", x, cin, 3, pad=1, group=cin)
        n.relu(f"{name}/dw/relu", d)
        return n.conv(f"{name}/pw", d, out, 1)

    x = conv_bn("conv0", "data", 16, 2)
    stages = [(16, 32, 1), (32, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 64, 1),
              (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 128, 1), (128, 256, 2),
              (256, 256, 1)]
    sources = {7: 64, 10: 128, 12: 256}
    feats = []
    for i, (cin, out, stride) in enumerate(stages, 1):
        x = conv_dw(f"conv{i}", x, cin, out, stride)
        if i in sources:
            feats.append((x, out))
    e = n.conv("extra/conv1x1", x, 64, 1)
    n.relu("extra/relu1", e)
    e = separable("extra/sep", e, 64, 256)
    n.relu("extra/relu2", e)
    anchors = [3, 2, 2, 3]
    locs, confs = [], []
    for k, (f, c) in enumerate(feats + [(e, 256)]):
        for kind, per in (("loc", 4), ("conf", 2)):
            name = f"head{k}/{kind}"
            if k < 3:
                h = separable(name, f, c, anchors[k] * per)
            else:
                h = n.conv(name, f, anchors[k] * per, 3, pad=1)
            p = n.add(f"{name}/perm", "Permute", [h],
                      params="permute_param { order: 0 order: 2 order: 3 order: 1 }")
            p = n.add(f"{name}/flat", "Flatten", [p], params="flatten_param { axis: 1 }")
            (locs if kind == "loc" else confs).append(p)
    n.add("boxes", "Concat", locs, params="concat_param { axis: 1 }")
    c = n.add("conf", "Concat", confs, params="concat_param { axis: 1 }")
    c = n.add("conf/reshape", "Reshape", [c],
              params="reshape_param { shape { dim: 0 dim: -1 dim: 2 } }")
    n.add("scores", "Softmax", [c], params="softmax_param { axis: 2 }")
    return n.text()


# name -> (builder(batch) -> prototxt text, a large net (the batch-8 target applies))
NETS = {
    "lenet": (lenet, False),
    "lenet_300_100": (lenet_300_100, False),
    "cifar10_quick": (cifar10_quick, False),
    "mtcnn_pnet": (mtcnn_pnet, False),
    "mtcnn_rnet": (mtcnn_rnet, False),
    "mtcnn_onet": (mtcnn_onet, False),
    "face_detector_slim": (face_detector_slim, True),
    "mobilenet_v1": (mobilenet_v1, True),
    "mobilenet_v2": (mobilenet_v2, True),
    "squeezenet_v1.1": (squeezenet_v11, True),
    "googlenet": (googlenet, True),
}


def prototxt(name, batch):
    return NETS[name][0](batch)


def randomize(net, seed=0):
    """Random weights of sensible scale, so that activations stay O(1) through deep nets and
    the comparison with OpenCV means something: He-scaled filters, small biases, Scale
    factors near 1, PReLU slopes in (0, 0.5), and BatchNorm's running statistics those of its
    input on a random image (a calibration pass, layer by layer)."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        blobs = layer.blobs
        if not blobs:
            continue
        t = layer.type
        if t == "BatchNorm":
            c = blobs[0].count
            blobs[0].data[...] = rng.normal(0, 0.1, c)
            blobs[1].data[...] = rng.uniform(0.5, 1.5, c)
            blobs[2].data[...] = 1
        elif t == "Scale":
            blobs[0].data[...] = rng.uniform(0.8, 1.2, blobs[0].shape)
            for b in blobs[1:]:
                b.data[...] = rng.normal(0, 0.1, b.shape)
        elif t == "PReLU":
            blobs[0].data[...] = rng.uniform(0, 0.5, blobs[0].shape)
        else:
            w = blobs[0]
            fan_in = w.count // max(1, w.shape[0])
            w.data[...] = rng.normal(0, np.sqrt(2.0 / max(1, fan_in)), w.shape)
            for b in blobs[1:]:
                b.data[...] = rng.normal(0, 0.05, b.shape)
    if any(layer.type == "BatchNorm" for layer in net.layers):
        data = net.blobs[net.inputs[0]]
        data.data[...] = rng.standard_normal(data.shape)
        for i, layer in enumerate(net.layers):
            if layer.type == "BatchNorm":
                x = net.bottom_vecs[i][0].data
                axes = (0,) + tuple(range(2, x.ndim))
                layer.blobs[0].data[...] = x.mean(axis=axes)
                layer.blobs[1].data[...] = x.var(axis=axes) + 1e-3
                layer.blobs[2].data[...] = 1
            net.forward_from_to(i, i)
    return net
