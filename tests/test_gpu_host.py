"""Host work per GPU step: no device allocation, no transfer and no synchronisation inside a
training step but the one read-back of the loss after the backward pass; a layer's shape
logic runs again only when its blobs changed.

Marked `gpu`.  The allocation and transfer counts come from the CPU emulator's stand-in for
PyCUDA (tests/gpu_emu), which counts them; on a real device those tests skip (the others run
there too)."""
import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.backend import gpu as gpu_backend
from caffe_lite.solvers import get_solver

pytestmark = pytest.mark.gpu

NET = """
  name: "small" force_backward: true
  layer { name: "in" type: "Input" top: "data" top: "label"
          input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
  layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
          convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 bias_term: false
                              weight_filler { type: "msra" } } }
  layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
  layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
  layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
  layer { name: "dw" type: "Convolution" bottom: "conv" top: "dw"
          convolution_param { num_output: 4 group: 4 kernel_size: 3 pad: 1 bias_term: false
                              weight_filler { type: "msra" } } }
  layer { name: "pool" type: "Pooling" bottom: "dw" top: "pool"
          pooling_param { pool: AVE global_pooling: true } }
  layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
          inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
  layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


@pytest.fixture(autouse=True)
def _need_gpu():
    ok, reason = gpu_backend.available()
    if not ok:
        pytest.skip(f"needs PyCUDA and a CUDA device: {reason}")
    yield
    caffe.set_mode_cpu()


def _emulator():
    import pycuda
    if not getattr(pycuda, "EMULATED", False):
        pytest.skip("counts come from the CPU emulator's PyCUDA stand-in")
    from pycuda import driver
    import emu_memory
    return driver, emu_memory


def _solver(net=NET):
    caffe.set_mode_cpu()
    s = get_solver('type: "SGD" base_lr: 0.1 momentum: 0.9 weight_decay: 1e-4 lr_policy: "fixed" '
                   f'display: 0 random_seed: 2 net_param {{ {net} }}')
    g = np.random.default_rng(1)
    s.net.blobs["data"].data[...] = g.standard_normal(s.net.blobs["data"].shape)
    s.net.blobs["label"].data[...] = g.integers(0, 5, 2)
    # one pruned weight: masks are applied on the device as well
    w = s.net.params["conv"][0]
    w.data[0, 0, 0, 0] = 0
    s.net.init_masks_from_weights()
    return s


def test_a_training_step_allocates_nothing_and_reads_back_once_at_the_end():
    driver, memory = _emulator()
    s = _solver()
    caffe.set_mode_gpu()
    s.step(2)  # the first steps allocate and upload what the net keeps on the device
    driver.stats.clear()
    driver.events.clear()
    driver.trace = True
    marks = []
    orig = driver.count

    def count(kind):
        marks.append((kind, memory.launches))
        orig(kind)
    driver.count = count
    try:
        before = memory.launches
        loss = s.net.forward_backward()
        after = memory.launches
    finally:
        driver.count = orig
        driver.trace = False
    assert dict(driver.stats) == {"dtoh": 1}, driver.events
    # ... and the read-back (the loss) comes after every kernel of the step was queued
    assert marks == [("dtoh", after)] and after > before
    assert np.isfinite(loss)
    driver.stats.clear()
    s.step(1)   # the update: kernels only
    assert dict(driver.stats) == {"dtoh": 1}
    assert s.net.params["conv"][0].data[0, 0, 0, 0] == 0


def test_gpu_loss_matches_the_cpu_with_deferred_and_immediate_losses():
    """Two losses: one whose top a later layer reads (read back at once), one at the end
    (read back after backward); the total is summed in layer order either way."""
    net = NET.replace('top: "loss" }', 'top: "loss" }\n  layer { name: "loss2" type: '
                      '"EuclideanLoss" bottom: "ip" bottom: "ip2" top: "loss2" loss_weight: 0.5 }')
    net = net.replace('layer { name: "loss"', 'layer { name: "ip2" type: "InnerProduct" '
                      'bottom: "pool" top: "ip2" inner_product_param { num_output: 5 '
                      'weight_filler { type: "xavier" } } }\n  layer { name: "loss"')
    net = net.replace('top: "loss" }', 'top: "loss" loss_weight: 2 }', 1)
    net += ('  layer { name: "copy" type: "Power" bottom: "loss2" top: "loss2_copy" }\n')
    losses = {}
    for device in ("cpu", "gpu"):
        s = _solver(net)
        if device == "gpu":
            caffe.set_mode_gpu()
        assert s.net._deferrable_losses() == {s.net.layer_names.index("loss")}
        losses[device] = [s.net.forward_backward() for _ in range(2)]
        caffe.set_mode_cpu()
    np.testing.assert_allclose(losses["gpu"], losses["cpu"], rtol=1e-5)


def test_layers_reshape_again_when_their_input_changes_shape():
    outs = {}
    for device in ("cpu", "gpu"):
        s = _solver()
        net = s.net
        if device == "gpu":
            caffe.set_mode_gpu()
        got = []
        for batch in (2, 3, 3, 2):
            g = np.random.default_rng(batch)
            net.blobs["data"].reshape(batch, 3, 8, 8)
            net.blobs["label"].reshape(batch)
            net.blobs["data"].data[...] = g.standard_normal((batch, 3, 8, 8))
            net.blobs["label"].data[...] = g.integers(0, 5, batch)
            got.append(net.forward_backward())
            got.append(net.blobs["ip"].data.copy())
            got.append(net.blobs["data"].diff.copy())
        outs[device] = got
        caffe.set_mode_cpu()
    for a, b in zip(outs["gpu"], outs["cpu"]):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_reshape_is_skipped_only_while_nothing_changed(monkeypatch):
    s = _solver()
    net = s.net
    caffe.set_mode_gpu()
    calls = []
    conv = net.layer_dict["conv"]
    orig = type(conv).reshape
    monkeypatch.setattr(type(conv), "reshape",
                        lambda self, b, t: (calls.append(self.name), orig(self, b, t))[1])
    net.forward_backward()
    net.forward_backward()
    assert calls.count("conv") == 1 and calls.count("dw") == 1
    net.blobs["data"].reshape(3, 3, 8, 8)
    net.blobs["label"].reshape(3)
    net.forward_backward()
    assert calls.count("conv") == 2 and net.blobs["conv"].shape == (3, 4, 4, 4)
