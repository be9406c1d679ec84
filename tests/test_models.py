"""Every real prototxt in ../shared/models builds with the right output shapes, and the deploy
nets run forward to a probability distribution."""
import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.net import Net

from models import with_input_layers

DEPLOY = [
    ("bvlc_mnist/lenet.prototxt", "prob", (64, 10)),
    ("bvlc_alexnet/deploy.prototxt", "prob", (10, 1000)),
    ("bvlc_reference_caffenet/deploy.prototxt", "prob", (10, 1000)),
    ("mobilenet_caffe/mobilenet_deploy.prototxt", "prob", (1, 1000, 1, 1)),
    ("mobilenet_caffe/mobilenet_v2_deploy.prototxt", "prob", (1, 1000, 1, 1)),
    ("depthwise_fork/depthwised_mobilenet_deploy.prototxt", "fc7", (1, 1000, 1, 1)),
]

TRAIN_VAL = [
    ("bvlc_mnist/lenet_train_test.prototxt", (4, 1, 28, 28), (4,), ["accuracy", "loss"]),
    ("bvlc_mnist/mnist_autoencoder.prototxt", (4, 1, 28, 28), None, None),
    ("bvlc_alexnet/train_val.prototxt", (2, 3, 227, 227), (2,), ["accuracy", "loss"]),
    ("bvlc_reference_caffenet/train_val.prototxt", (2, 3, 227, 227), (2,),
     ["accuracy", "loss"]),
    ("mobilenet_caffe/mobilenet_train.prototxt", (2, 3, 224, 224), (2,), None),
    ("mobilenet_caffe/mobilenet_v2_train.prototxt", (2, 3, 224, 224), (2,), None),
]


def _unit_batch_norm_stats(net):
    """Untrained BatchNorm statistics are all 0 (scale factor 0), which in TEST phase divides
    by sqrt(eps) at every layer and overflows a deep net, in Caffe as here.  Use mean 0,
    variance 1."""
    for layer in net.layers:
        if layer.type == "BatchNorm":
            layer.blobs[2].data[...] = 1
            layer.blobs[1].data[...] = 1


@pytest.mark.parametrize("rel,out,shape", DEPLOY)
def test_deploy_nets_build_with_expected_output(models_dir, rel, out, shape):
    net = Net(str(models_dir / rel), caffe.TEST)
    assert net.blobs[out].shape == shape
    assert out in net.outputs


@pytest.mark.parametrize("rel,data,label,outputs", TRAIN_VAL)
@pytest.mark.parametrize("phase", [caffe.TRAIN, caffe.TEST])
def test_train_val_nets_build(models_dir, rel, data, label, outputs, phase):
    param = with_input_layers(models_dir / rel, data, label)
    stages = ["test-on-test"] if "autoencoder" in rel else None
    net = Net(param, phase, stages=stages)
    assert net.layers
    if outputs and phase == caffe.TEST:
        assert net.outputs == outputs
    losses = [n for n, w in net.blob_loss_weights.items() if w]
    assert losses, "a train/val net has a loss"


@pytest.mark.parametrize("rel", ["bvlc_mnist/lenet.prototxt",
                                 "mobilenet_caffe/mobilenet_deploy.prototxt",
                                 "depthwise_fork/depthwised_mobilenet_deploy.prototxt"])
def test_deploy_forward_is_a_distribution(models_dir, rel):
    net = Net(str(models_dir / rel), caffe.TEST)
    _unit_batch_norm_stats(net)
    shape = (1,) + net.blobs["data"].shape[1:]
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    out = net.forward(data=x)
    key = next(iter(out))
    p = out[key].reshape(1, -1)
    if key == "prob":
        np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-4)
        assert (p >= 0).all()
    assert np.isfinite(p).all()


def test_mobilenet_grouped_and_depthwise_forms_agree(models_dir):
    """The Caffe form (Convolution with group) and the fork form (DepthwiseConvolution) of
    MobileNet v1 hold interchangeable weights and give the same outputs."""
    grouped = Net(str(models_dir / "mobilenet_caffe/mobilenet_deploy.prototxt"), caffe.TEST)
    fork = Net(str(models_dir / "depthwise_fork/depthwised_mobilenet_deploy.prototxt"),
               caffe.TEST)
    g_params = [(n, p) for n, p in grouped.params.items()]
    f_params = [(n, p) for n, p in fork.params.items()]
    assert len(g_params) == len(f_params)
    for (gn, gp), (fn, fp) in zip(g_params, f_params):
        assert [b.shape for b in gp] == [b.shape for b in fp], (gn, fn)
        for a, b in zip(gp, fp):
            b.data[...] = a.data
    _unit_batch_norm_stats(fork)
    _unit_batch_norm_stats(grouped)
    x = np.random.default_rng(1).normal(size=(1, 3, 224, 224)).astype(np.float32)
    a = grouped.forward(data=x, blobs=["fc7"])["fc7"]
    b = fork.forward(data=x)["fc7"]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
