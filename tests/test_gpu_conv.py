"""The GEMM convolution's weight-gradient forms (layers/cuda/conv.py): the plan chosen per
shape (plain Python), and the per-image form against the CPU layer (marked `gpu`; on machines
without a GPU test_gpu_emulated.py runs them on the CPU emulator)."""
import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.backend import gpu as gpu_backend
from caffe_lite.blob import Blob
from caffe_lite.layers.cuda import conv as cuda_conv
from caffe_lite.testing import layer_from_text


def _plan(n, cin, hw, cout, k=1, stride=1, group=1):
    out = (hw + 2 * (k // 2) - k) // stride + 1
    return cuda_conv.weight_gradient_plan(n, cin, hw * hw, cout, out * out, cin * k * k, group,
                                          k == 1 and stride == 1)


def test_weight_gradient_plans_for_mobilenet_at_batch_64():
    # early layers: large planes, few channels -> partial gradients per image and per part of
    # the plane (enough thread blocks), no transposed copies of x and dy
    assert _plan(64, 3, 224, 32, k=3, stride=2) == ("per_image", 5)      # conv1
    assert _plan(64, 32, 112, 64) == ("per_image", 5)                      # conv2/sep
    assert _plan(64, 128, 56, 128) == ("per_image", 5)                     # conv4/sep
    assert _plan(64, 256, 28, 256) == ("per_image", 2)                     # conv6/sep
    # late layers: small planes, many channels -> the transposed form, its long inner
    # dimension split so that 16 or 64 output tiles still fill the GPU
    assert _plan(64, 512, 14, 512) == ("transposed", 17)                   # conv8..12/sep
    assert _plan(64, 1024, 7, 1024) == ("transposed", 5)                   # conv14/sep
    assert _plan(64, 1024, 1, 1000) == ("transposed", 1)                   # fc7


def test_the_plan_weighs_products_and_traffic():
    opts = cuda_conv.weight_gradient_options(64, 32, 112 * 112, 64, 112 * 112, 32, 1, True)
    parts, count, k, blocks, seconds, extra = opts["transposed"]
    # the whole sum over 64 x 12544 positions in slices, enough blocks for the SMs
    assert parts * k >= 64 * 112 * 112 and blocks >= cuda_conv.SMS
    # the transposed copies of x (32 channels) and dy (64) cost more than the partials
    assert extra > 8 * 64 * (32 + 64) * 112 * 112 > opts["per_image"][5]


FILL = 'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "uniform" min: -1 max: 1 }'
CASES = [
    ("num_output: 4 kernel_size: 1", (2, 3, 12, 12)),                  # 1x1: x itself
    ("num_output: 3 kernel_size: 3 pad: 1", (2, 2, 10, 10)),           # columns per image
    ("num_output: 4 kernel_size: 1 group: 2", (2, 4, 12, 12)),         # groups
    ("num_output: 2 kernel_size: 1", (2, 2, 48, 48)),                  # two parts per image
    ("num_output: 3 kernel_size: 3 stride: 2 pad: 1", (3, 2, 9, 8)),   # uneven parts / chunk
]


FORCED = [("transposed", 1), ("transposed", 3), ("per_image", 2)]
CASES += [(p, s, f) for p, s in (("num_output: 4 kernel_size: 1", (2, 3, 5, 5)),
                                 ("num_output: 4 kernel_size: 3 pad: 1 group: 2",
                                  (2, 4, 5, 7))) for f in FORCED]


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_weight_gradient_forms_match_the_cpu(monkeypatch, case):
    ok, reason = gpu_backend.available()
    if not ok:
        pytest.skip(f"needs PyCUDA and a CUDA device: {reason}")
    param, shape = case[:2]
    forced = case[2] if len(case) > 2 else None
    forms = []
    orig = cuda_conv.weight_gradient_plan

    def spy(*a):
        forms.append(forced or orig(*a))
        return forms[-1]
    monkeypatch.setattr(cuda_conv, "weight_gradient_plan", spy)
    if shape[2] == 9:
        monkeypatch.setattr(cuda_conv, "COL_BUFFER_FLOATS", 2 * 18 * 25 + 3 * 25)  # chunks of 2
    text = f'type: "Convolution" convolution_param {{ {param} {FILL} }}'
    results = {}
    for device in ("cpu", "gpu"):
        caffe.set_mode_cpu()
        caffe.set_random_seed(4)
        layer = layer_from_text(text)
        g = np.random.default_rng(4)
        x = Blob.from_array(g.standard_normal(shape).astype(np.float32))
        y = Blob()
        layer.setup([x], [y])
        y.diff[...] = g.standard_normal(y.shape)
        if device == "gpu":
            caffe.set_mode_gpu()
        layer.forward([x], [y])
        for b in layer.blobs:
            b.diff[...] = 0.5
        layer.backward([y], [True], [x])
        results[device] = [b.cpu_diff.copy() for b in layer.blobs] + [x.cpu_diff.copy()]
        caffe.set_mode_cpu()
    assert forms and all(f[0] == (forced or ("per_image",))[0] for f in forms)
    if shape[2] == 48:
        assert forms[0][1] == 9     # 2304 positions in slices of 256
    for a, b in zip(results["gpu"], results["cpu"]):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)
