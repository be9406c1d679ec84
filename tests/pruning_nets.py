"""Small nets for the pruning tests: a residual net with Eltwise, Concat, BatchNorm, Scale and
a depthwise convolution; a conv -> Flatten -> InnerProduct net; helpers to fill weights."""
import numpy as np

import caffe_lite
from caffe_lite.proto import caffe_pb2
from caffe_lite.io import parse_text


def _conv(name, bottom, n, k=3, pad=1, group=1, bias=True, top=None):
    return f"""layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top or name}"
  convolution_param {{ num_output: {n} kernel_size: {k} pad: {pad} group: {group}
    bias_term: {str(bias).lower()}
    weight_filler {{ type: "gaussian" std: 0.5 }} bias_filler {{ type: "gaussian" std: 0.5 }} }} }}
"""


def _bn_scale(name, blob):
    return f"""layer {{ name: "{name}_bn" type: "BatchNorm" bottom: "{blob}" top: "{blob}" }}
layer {{ name: "{name}_sc" type: "Scale" bottom: "{blob}" top: "{blob}"
  scale_param {{ bias_term: true filler {{ type: "gaussian" std: 1 }}
    bias_filler {{ type: "gaussian" std: 1 }} }} }}
layer {{ name: "{name}_relu" type: "ReLU" bottom: "{blob}" top: "{blob}" }}
"""


RESNET = ('name: "tiny_res"\n'
          'layer { name: "data" type: "Input" top: "data" '
          'input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }\n'
          + _conv("conv1", "data", 8) + _bn_scale("conv1", "conv1")
          + _conv("conv2a", "conv1", 6) + _bn_scale("conv2a", "conv2a")
          + _conv("conv2b", "conv2a", 8, k=1, pad=0, bias=False)
          + 'layer { name: "res1" type: "Eltwise" bottom: "conv1" bottom: "conv2b" top: "res1" }\n'
          + _conv("conv3a", "res1", 4, k=1, pad=0) + _conv("conv3b", "res1", 4)
          + 'layer { name: "cat" type: "Concat" bottom: "conv3a" bottom: "conv3b" top: "cat" }\n'
          + _conv("dw", "cat", 8, group=8) + _bn_scale("dw", "dw")
          + 'layer { name: "res2" type: "Eltwise" bottom: "dw" bottom: "res1" top: "res2" '
            'eltwise_param { coeff: 1 coeff: 0.5 } }\n'
          + _conv("conv4", "res2", 5) + _bn_scale("conv4", "conv4")
          + 'layer { name: "pool" type: "Pooling" bottom: "conv4" top: "pool" '
            'pooling_param { pool: AVE global_pooling: true } }\n'
          + 'layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" '
            'inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } '
            'bias_filler { type: "gaussian" std: 0.5 } } }\n')

FLATNET = ('name: "flat"\n'
           'layer { name: "data" type: "Input" top: "data" '
           'input_param { shape { dim: 2 dim: 2 dim: 5 dim: 5 } } }\n'
           + _conv("conv1", "data", 6, k=3, pad=0)
           + 'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n'
           + 'layer { name: "flat" type: "Flatten" bottom: "conv1" top: "flat" }\n'
           + 'layer { name: "ip1" type: "InnerProduct" bottom: "flat" top: "ip1" '
             'inner_product_param { num_output: 7 weight_filler { type: "gaussian" std: 0.3 } '
             'bias_filler { type: "gaussian" std: 0.3 } } }\n'
           + 'layer { name: "sig" type: "TanH" bottom: "ip1" top: "ip1" }\n'
           + 'layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" '
             'inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.3 } '
             'bias_filler { type: "gaussian" std: 0.3 } } }\n')


def _input(shape):
    dims = " ".join(f"dim: {d}" for d in shape)
    return ('layer { name: "data" type: "Input" top: "data" '
            f'input_param {{ shape {{ {dims} }} }} }}\n')


def _conv_f(name, bottom, n, k=1, pad=0, group=1, filler="msra", layer="Convolution"):
    return f"""layer {{ name: "{name}" type: "{layer}" bottom: "{bottom}" top: "{name}"
  convolution_param {{ num_output: {n} kernel_size: {k} pad: {pad} group: {group}
    weight_filler {{ type: "{filler}" }} bias_filler {{ type: "gaussian" std: 0.1 }} }} }}
"""


# Grouped convolutions: a (1x1, 8) -> g (3x3, 8 -> 8, group 4) -> d (Deconvolution 2x2,
# 8 -> 6, group 2) -> c (1x1, 6) -> global pooling -> fc.
GROUPED = ('name: "grouped"\n' + _input((2, 8, 5, 5))
           + _conv_f("a", "data", 8) + _bn_scale("a", "a")
           + _conv_f("g", "a", 8, k=3, pad=1, group=4)
           + 'layer { name: "g_relu" type: "ReLU" bottom: "g" top: "g" }\n'
           + _conv_f("d", "g", 6, k=2, group=2, layer="Deconvolution")
           + _conv_f("c", "d", 6)
           + 'layer { name: "pool" type: "Pooling" bottom: "c" top: "pool" '
             'pooling_param { pool: AVE global_pooling: true } }\n'
           + 'layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" '
             'inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }\n')


def resnext_block(channels=64, width=64, group=32, size=6):
    """A ResNeXt bottleneck as in ResNeXt-50 (1x1 - grouped 3x3 - 1x1, BatchNorm + Scale,
    identity shortcut by Eltwise), small; group 32 with 2 channels per group."""
    return ('name: "resnext"\n' + _input((2, channels, size, size))
            + _conv_f("a", "data", width) + _bn_scale("a", "a")
            + _conv_f("b", "a", width, k=3, pad=1, group=group) + _bn_scale("b", "b")
            + _conv_f("c", "b", channels) + _bn_scale("c", "c")
            + 'layer { name: "add" type: "Eltwise" bottom: "data" bottom: "c" top: "add" }\n'
            + 'layer { name: "pool" type: "Pooling" bottom: "add" top: "pool" '
              'pooling_param { pool: AVE global_pooling: true } }\n'
            + 'layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" '
              'inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }\n')


# A 1x1 and a 3x3 branch (16 filters each) joined by a Concat and coupled to a residual
# through an Eltwise: the case where raw L1 sums took 15 of the 1x1 branch's 16 filters.
CONCAT = ('name: "concat"\n' + _input((2, 8, 6, 6))
          + _conv_f("stem", "data", 32) + _bn_scale("stem", "stem")
          + _conv_f("b1", "stem", 16) + _conv_f("b3", "stem", 16, k=3, pad=1)
          + 'layer { name: "cat" type: "Concat" bottom: "b1" bottom: "b3" top: "cat" }\n'
          + 'layer { name: "res" type: "Eltwise" bottom: "stem" bottom: "cat" top: "res" }\n'
          + _conv_f("head", "res", 4)
          + 'layer { name: "pool" type: "Pooling" bottom: "head" top: "pool" '
            'pooling_param { pool: AVE global_pooling: true } }\n')


def net_param(text):
    return parse_text(text, caffe_pb2.NetParameter())


def build(text, seed=3):
    """A TEST-phase net with random weights and BatchNorm statistics."""
    caffe_lite.set_random_seed(seed)
    net = caffe_lite.Net(net_param(text), caffe_lite.TEST)
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        if layer.type == "BatchNorm":
            c = layer.blobs[0].count
            layer.blobs[0].data[...] = rng.standard_normal(c)
            layer.blobs[1].data[...] = rng.uniform(0.5, 2.0, c)
            layer.blobs[2].data[...] = 1.0
    return net


def forward(net, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(net.blobs["data"].shape).astype(np.float32)
    return {k: v.copy() for k, v in net.forward(data=x).items()}


# A regression MLP on random DummyData: what the solver / CLI tests train.
MLP_NET = """name: "mlp"
layer { name: "data" type: "DummyData" top: "data" top: "target"
  dummy_data_param { shape { dim: 8 dim: 6 } shape { dim: 8 dim: 3 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.5 }
    bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip2" bottom: "target" top: "loss" }
"""


def mlp_solver(tmp_path, max_iter=30, snapshot=0, extra=""):
    """Write the MLP net and an SGD solver for it into tmp_path; returns the solver path."""
    (tmp_path / "snap").mkdir(parents=True, exist_ok=True)  # the CLI creates no directories
    net = tmp_path / "mlp.prototxt"
    net.write_text(MLP_NET)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f"""net: "{net}"
base_lr: 0.05 momentum: 0.9 weight_decay: 0.001 lr_policy: "fixed"
max_iter: {max_iter} display: 0 random_seed: 7 solver_mode: CPU
snapshot: {snapshot} snapshot_prefix: "{tmp_path / 'snap' / 'mlp'}"
snapshot_after_train: false
{extra}""")
    return solver


import logging  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def restore_logging():
    """cli.main() installs a log handler on the (captured) stderr of the test that runs it;
    drop it afterwards so later tests do not log into a closed stream."""
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    root.handlers[:] = before
