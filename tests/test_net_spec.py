import numpy as np

import caffe_lite as caffe
from caffe_lite import layers as L, params as P


def lenet(batch):
    n = caffe.NetSpec()
    n.data, n.label = L.Input(shape=[dict(dim=[batch, 1, 28, 28]), dict(dim=[batch])], ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool1, num_output=10, weight_filler=dict(type="xavier"),
                           param=[dict(lr_mult=1), dict(lr_mult=2)])
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.loss = L.SoftmaxWithLoss(n.ip1, n.label)
    n.acc = L.Accuracy(n.ip1, n.label, include=dict(phase=caffe.TEST))
    return n.to_proto()


def test_netspec_builds_the_prototxt_pycaffe_would():
    proto = lenet(4)
    assert [l.name for l in proto.layer] == ["data", "conv1", "pool1", "ip1", "relu1", "loss",
                                             "acc"]
    assert list(proto.layer[0].top) == ["data", "label"]
    assert proto.layer[1].convolution_param.kernel_size == [5]
    assert proto.layer[1].convolution_param.weight_filler.type == "xavier"
    assert proto.layer[2].pooling_param.pool == caffe.caffe_pb2.PoolingParameter.MAX
    assert [p.lr_mult for p in proto.layer[3].param] == [1, 2]
    assert list(proto.layer[4].bottom) == list(proto.layer[4].top) == ["ip1"]
    assert proto.layer[6].include[0].phase == caffe.TEST


def test_netspec_net_runs():
    proto = lenet(3)
    net = caffe.Net(proto, caffe.TEST)
    net.blobs["data"].data[...] = np.random.default_rng(0).random((3, 1, 28, 28))
    net.blobs["label"].data[...] = [1, 2, 3]
    out = net.forward()
    assert set(out) == {"acc", "loss"} and out["loss"] > 0
