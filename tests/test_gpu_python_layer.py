"""A Python layer inside a GPU net: it reads and writes its blobs on the host (`.data`), the
blobs sync to and from the device around it, and its learnable, prunable parameter is updated
by the GPU solver.  GPU training must match CPU training, and the pruned entry must stay 0.

Marked `gpu` (test_gpu_emulated.py runs it on the CPU emulator of the kernels)."""
import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.solvers import get_solver

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("need_gpu")]

SOLVER = """type: "SGD" base_lr: 0.05 momentum: 0.9 weight_decay: 0.001 lr_policy: "fixed"
net_param {
  layer { name: "in" type: "Input" top: "data" top: "label"
          input_param { shape { dim: 4 dim: 2 dim: 5 dim: 5 } shape { dim: 4 } } }
  layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
          convolution_param { num_output: 3 kernel_size: 3 pad: 1
                              weight_filler { type: "gaussian" std: 0.3 } } }
  layer { name: "pyscale" type: "Python" bottom: "conv" top: "scaled"
          python_param { module: "python_layer_classes" layer: "ChannelScale" } }
  layer { name: "relu" type: "ReLU" bottom: "scaled" top: "scaled" }
  layer { name: "ip" type: "InnerProduct" bottom: "scaled" top: "ip"
          inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
  layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
}"""



def train(mode, steps=4):
    caffe.set_mode_cpu()
    caffe.set_random_seed(7)
    s = get_solver(SOLVER)
    g = np.random.default_rng(1)
    s.net.blobs["data"].data[...] = g.normal(size=(4, 2, 5, 5))
    s.net.blobs["label"].data[...] = [0, 1, 2, 1]
    w = s.net.params["pyscale"][0]
    w.data[1] = 0
    w.mask = [1, 0, 1]
    if mode == "gpu":
        caffe.set_mode_gpu()
    losses = []
    for _ in range(steps):
        s.step(1)
        losses.append(float(s.net.blobs["loss"].data))
    caffe.set_mode_cpu()
    return losses, {n: [b.data.copy() for b in ps] for n, ps in s.net.params.items()}


def test_python_layer_in_a_gpu_net_trains_as_on_the_cpu():
    cpu_losses, cpu = train("cpu")
    gpu_losses, gpu = train("gpu")
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-4)
    assert cpu_losses[-1] < cpu_losses[0]
    for name in cpu:
        for a, b in zip(cpu[name], gpu[name]):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=name)
    assert gpu["pyscale"][0][1] == 0 and gpu["pyscale"][0][0] != 1   # pruned stays 0
