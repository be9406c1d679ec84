"""The GPU depthwise kernels (layers/kernels/depthwise.cu, planned in cuda/depthwise.py).

Tile plans are checked in plain Python (every MobileNet-v1 depthwise shape gets a tiled plan
that fits shared memory); the kernels run against the CPU layer (marked `gpu`; on machines
without a GPU test_gpu_emulated.py runs them on the CPU emulator), with the planner's limits
lowered so small shapes exercise every unit layout: bands of rows, several small planes per
unit, a backward-filter block walking several units, and the direct kernels."""
import pathlib
import re

import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.backend import gpu as gpu_backend
from caffe_lite.blob import Blob
from caffe_lite.layers.cuda import depthwise as dw
from caffe_lite.testing import layer_from_text

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE = ROOT / "caffe_lite" / "layers" / "kernels" / "depthwise.cu"

# (channels, input size, stride) of MobileNet-v1's 13 depthwise layers (224 x 224 input)
MOBILENET = [(32, 112, 1), (64, 112, 2), (128, 56, 1), (128, 56, 2), (256, 28, 1),
             (256, 28, 2), (512, 14, 1), (512, 14, 1), (512, 14, 1), (512, 14, 1),
             (512, 14, 1), (512, 14, 2), (1024, 7, 1)]


def geometry(n, c, h, w, k=3, s=1, p=1, m=1, d=1):
    oh = (h + 2 * p - (d * (k - 1) + 1)) // s + 1
    ow = (w + 2 * p - (d * (k - 1) + 1)) // s + 1
    return dict(N=n, C=c, M=m, H=h, W=w, OH=oh, OW=ow, KH=k, KW=k, SH=s, SW=s, PH=p, PW=p,
                DH=d, DW=d)


def test_python_constants_match_the_kernels():
    text = SOURCE.read_text()
    assert int(re.search(r"#define DW_R (\d+)", text).group(1)) == dw.DW_R
    assert int(re.search(r"#define DW_SMEM (\d+)", text).group(1)) == dw.SMEM_FLOATS
    assert int(re.search(r"#define CL_THREADS (\d+)", text).group(1)) == dw.FILTER_THREADS
    for name in dw.TILED.values():
        for kind in ("forward", "backward_data", "filter"):
            assert f"dw_{kind}_##NAME" in text and f"{name})" in text


def _check_plan(g, plan, direction):
    assert plan is not None, (g, direction)
    assert plan.TH % dw.DW_R == 0 and plan.RS % 4 == 0 and plan.PB >= 1
    height = g["H"] if direction == "backward_data" else g["OH"]
    assert plan.bands * plan.TH >= height > (plan.bands - 1) * plan.TH
    if direction == "backward_data":
        owlo, tr = plan.extra
        rows = g["M"] * tr
        assert (plan.shift - owlo) % 4 == 0
        assert plan.RS >= plan.shift + (g["W"] - 1 + g["PW"]) // g["SW"] - owlo + 1
        width = g["W"]
    else:
        rows = (plan.TH - 1) * g["SH"] + g["KH"]
        assert (plan.shift + g["PW"]) % 4 == 0
        assert plan.RS >= plan.shift + (g["OW"] - 1) * g["SW"] + g["KW"]
        width = g["OW"]
    assert plan.PB * rows * plan.RS <= dw.SMEM_FLOATS
    items = plan.PB * plan.TH // dw.DW_R * width
    assert items <= dw.TARGET_ITEMS or plan.TH == dw.DW_R
    assert 64 <= plan.threads <= 256 and plan.threads % 32 == 0


@pytest.mark.parametrize("batch", [1, 8, 64])
@pytest.mark.parametrize("c,size,stride", sorted(set(MOBILENET)))
def test_every_mobilenet_shape_gets_a_tiled_plan(batch, c, size, stride):
    g = geometry(batch, c, size, size, s=stride)
    assert dw.tiled_name(g) == f"k3s{stride}"
    _check_plan(g, dw.plan_forward(g), "forward")
    _check_plan(g, dw.plan_backward_data(g), "backward_data")
    f = dw.plan_filter(g)
    _check_plan(dict(g, N=g["N"]), f, "filter")
    splits = f.extra[0]
    assert 1 <= splits <= f.units
    if batch == 64:
        # enough blocks to fill an H200 (132 SMs) several times over
        assert dw.plan_forward(g).units >= 4 * 132
        assert splits * c >= 4 * 132


def test_plans_for_unusual_shapes():
    g = geometry(2, 3, 5000, 5000)            # rows too wide for one shared-memory tile
    assert dw.plan_forward(g) is None and dw.plan_backward_data(g) is None
    assert dw.tiled_name(geometry(2, 3, 8, 8, k=3, d=2)) is None     # dilation: direct
    assert dw.tiled_name(geometry(2, 3, 8, 8, k=7)) is None          # 7x7: direct
    g = geometry(2, 3, 9, 9, k=5, s=2, p=2, m=3)
    for plan, direction in ((dw.plan_forward(g), "forward"),
                            (dw.plan_backward_data(g), "backward_data")):
        _check_plan(g, plan, direction)


# --- the kernels against the CPU layer ----------------------------------------------------------
FILL = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "uniform" min: -1 max: 1 }'


def _run(text, shape, device, seed=3, masked=False):
    caffe.set_mode_cpu()
    caffe.set_random_seed(seed)
    layer = layer_from_text(text)
    rng = np.random.default_rng(seed)
    x = Blob.from_array(rng.standard_normal(shape).astype(np.float32))
    y = Blob()
    layer.setup([x], [y])
    if masked:
        w = layer.blobs[0]
        w.mask = (rng.uniform(size=w.shape) > 0.3).astype(np.float32)
        w.data[...] = w.cpu_data * w.mask
    dy = rng.standard_normal(y.shape).astype(np.float32)
    if device == "gpu":
        caffe.set_mode_gpu()
    out = []
    for k in range(2):
        layer.forward([x], [y])
        y.diff[...] = dy * (k + 1)
        x.diff[...] = 7.25
        for b in layer.blobs:
            b.diff[...] = 0.5
        layer.backward([y], [True], [x])
        out += [y.cpu_data.copy(), x.cpu_diff.copy()] + [b.cpu_diff.copy() for b in layer.blobs]
    caffe.set_mode_cpu()
    return out


def _compare(text, shape, **kw):
    gpu = _run(text, shape, "gpu", **kw)
    cpu = _run(text, shape, "cpu", **kw)
    for i, (a, b) in enumerate(zip(gpu, cpu)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=5e-5, err_msg=f"{text} result {i}")
    return gpu


def _need_gpu():
    ok, reason = gpu_backend.available()
    if not ok:
        pytest.skip(f"needs PyCUDA and a CUDA device: {reason}")


CASES = [
    # (convolution_param, input shape)
    ("num_output: 4 group: 4 kernel_size: 3 pad: 1", (2, 4, 9, 8)),            # W % 4 == 0
    ("num_output: 3 group: 3 kernel_size: 3 pad: 1", (2, 3, 7, 7)),            # scalar loads
    ("num_output: 4 group: 4 kernel_size: 3 stride: 2 pad: 1", (2, 4, 12, 12)),
    ("num_output: 3 group: 3 kernel_size: 3 stride: 2 pad: 1", (2, 3, 7, 9)),
    ("num_output: 2 group: 2 kernel_size: 3 stride: 2", (1, 2, 8, 8)),          # unused column
    ("num_output: 2 group: 2 kernel_size: 3", (2, 2, 6, 5)),                    # no padding
    ("num_output: 2 group: 2 kernel_size: 3 pad: 2", (1, 2, 5, 6)),             # wide padding
    ("num_output: 6 group: 3 kernel_size: 3 pad: 1", (2, 3, 6, 8)),             # multiplier 2
    ("num_output: 6 group: 2 kernel_size: 3 stride: 2 pad: 1", (1, 2, 7, 8)),   # multiplier 3
    ("num_output: 2 group: 2 kernel_size: 5 pad: 2", (2, 2, 9, 8)),
    ("num_output: 4 group: 2 kernel_size: 5 stride: 2 pad: 2", (1, 2, 11, 12)),
    ("num_output: 3 group: 3 kernel_size: 3 pad: 1 bias_term: false", (1, 3, 4, 4)),
]

# planner limits: as shipped; bands of rows; one plane per unit; filter blocks walking units
LIMITS = {"default": {}, "bands": {"TARGET_ITEMS": 4},
          "one_plane": {"TARGET_ITEMS": 8, "FILTER_BLOCKS": 1},
          "direct": {"SMEM_FLOATS": 0}}


# every case with every planner variation as a Convolution with group; the fork's type once
VARIANTS = [(limits, "Convolution", p, s) for limits in LIMITS for p, s in CASES] + \
    [("default", "DepthwiseConvolution", p, s) for p, s in CASES]


@pytest.mark.gpu
@pytest.mark.parametrize("limits,typ,param,shape", VARIANTS,
                         ids=[f"{lim}-{t}-{p}" for lim, t, p, _ in VARIANTS])
def test_depthwise_kernels_match_the_cpu(monkeypatch, limits, typ, param, shape):
    _need_gpu()
    for k, v in LIMITS[limits].items():
        monkeypatch.setattr(dw, k, v)
    _compare(f'type: "{typ}" convolution_param {{ {param} {FILL} }}', shape,
             masked=limits == "default")


@pytest.mark.gpu
def test_tiled_kernels_run_and_filter_is_bit_deterministic(monkeypatch):
    _need_gpu()
    from caffe_lite.layers.cuda import conv as cuda_conv
    used = []
    orig = dw.DepthwiseGpu.reshape

    def spy(self, *a):
        orig(self, *a)
        used.append((self.fwd is not None, self.bwd is not None, self.flt is not None))
    monkeypatch.setattr(dw.DepthwiseGpu, "reshape", spy)
    monkeypatch.setattr(dw, "FILTER_BLOCKS", 3)
    text = f'type: "Convolution" convolution_param {{ num_output: 4 group: 4 kernel_size: 3 ' \
           f'pad: 1 {FILL} }}'
    a = _run(text, (3, 4, 10, 12), "gpu")
    b = _run(text, (3, 4, 10, 12), "gpu")
    assert used and all(u == (True, True, True) for u in used)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert cuda_conv.DepthwiseGpu is dw.DepthwiseGpu


@pytest.mark.gpu
def test_mobilenet_like_block_at_batch_8():
    """One of MobileNet's stride-2 depthwise layers with its real channel count and a
    reduced plane: units of several planes, float4 rows, filter splits over images."""
    _need_gpu()
    _compare(f'type: "Convolution" convolution_param {{ num_output: 64 group: 64 '
             f'kernel_size: 3 stride: 2 pad: 1 bias_term: false {FILL} }}', (8, 64, 8, 8))
