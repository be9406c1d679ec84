"""GPU vs CPU for every layer with a GPU implementation: forward, backward, in place, masks.

Each case builds the same layer twice from one prototxt snippet and one seed, runs it on the
CPU and on the GPU for two passes with different inputs (so buffers kept between calls are
exercised), and compares the tops, the bottom gradients (pre-filled with garbage: they must
be overwritten, and left alone where propagate_down is false) and the parameter gradients
(pre-filled: they must accumulate).  Marked `gpu`: run with `python -m pytest -m gpu` on a
machine with PyCUDA and a CUDA device; elsewhere they skip with the reason.  On machines
without a GPU, test_gpu_emulated.py runs them on a CPU emulator of the kernels."""
import numpy as np
import pytest

import caffe_lite
from caffe_lite.blob import Blob
from caffe_lite.layers.base import gpu_impl_for
from caffe_lite.proto import caffe_pb2
from caffe_lite.testing import layer_from_text

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("need_gpu")]

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
GARBAGE = 7.25   # what bottom diffs hold before backward
PREFILL = 0.5    # what parameter diffs hold before backward (they accumulate)



def _inputs(spec, rng):
    """Arrays from a spec entry: an array as is, a shape -> uniform(-1, 1), or
    ("labels", shape, classes) / ("pos", shape) / ("uniform", shape, lo, hi)."""
    if isinstance(spec, np.ndarray):
        return spec.astype(np.float32)
    if isinstance(spec, tuple) and spec and isinstance(spec[0], str):
        kind = spec[0]
        if kind == "labels":
            return rng.integers(0, spec[2], spec[1]).astype(np.float32)
        if kind == "pos":
            return rng.uniform(0.05, 1.0, spec[1]).astype(np.float32)
        if kind == "uniform":
            return rng.uniform(spec[2], spec[3], spec[1]).astype(np.float32)
        raise ValueError(kind)
    return rng.uniform(-1, 1, spec).astype(np.float32)


def run_layer(text, specs, mode, *, phase=TRAIN, in_place=False, ntop=1, propagate=None,
              mask=False, passes=2, seed=5, params=None, no_backward=False):
    """Forward/backward `passes` times in `mode`; returns a dict of named result arrays."""
    caffe_lite.set_mode_cpu()
    layer = layer_from_text(text, phase)
    rng = np.random.default_rng(seed)
    arrays = [[_inputs(s, rng) for s in specs] for _ in range(passes)]
    bottom = [Blob(a.shape, name=f"b{i}") for i, a in enumerate(arrays[0])]
    for b, a in zip(bottom, arrays[0]):
        b.data[...] = a
    top = [bottom[0]] if in_place else [Blob(name=f"t{i}") for i in range(ntop)]
    caffe_lite.set_random_seed(seed)
    layer.setup(bottom, top)
    if params is not None:
        for b, p in zip(layer.blobs, params):
            b.data[...] = p
    if mask and layer.blobs and layer.blobs[0].has_mask:
        w = layer.blobs[0]
        m = (np.random.default_rng(seed + 1).uniform(size=w.shape) > 0.4).astype(np.float32)
        w.mask = m
        w.data[...] = w.cpu_data * m
    if mode == "gpu":
        caffe_lite.set_mode_gpu()
        assert gpu_impl_for(layer) is not None, f"{layer.type} has no GPU implementation"
    out = {}
    g = np.random.default_rng(seed + 2)
    for k in range(passes):
        for b, a in zip(bottom, arrays[k]):
            if b.shape != a.shape:
                b.reshape(a.shape)
            b.data[...] = a
        if k:
            layer.reshape(bottom, top)
        caffe_lite.set_random_seed(seed + 10 * k)
        layer.forward(bottom, top)
        for i, t in enumerate(top):
            out[f"pass{k}.top{i}"] = t.cpu_data.copy()
        if no_backward:
            continue
        for i, t in enumerate(top):
            if layer.loss(i) == 0:
                t.diff[...] = g.uniform(-1, 1, t.shape).astype(np.float32)
        prop = [True] * len(bottom) if propagate is None else list(propagate)
        if not in_place:
            for b in bottom:
                b.diff[...] = GARBAGE
        for b in layer.blobs:
            b.diff[...] = PREFILL
        layer.backward(top, prop, bottom)
        for i, b in enumerate(bottom):
            out[f"pass{k}.bottom{i}.diff"] = b.cpu_diff.copy()
        for i, b in enumerate(layer.blobs):
            out[f"pass{k}.param{i}.diff"] = b.cpu_diff.copy()
            out[f"pass{k}.param{i}.data"] = b.cpu_data.copy()
    caffe_lite.set_mode_cpu()
    return out


def compare(text, specs, rtol=2e-4, atol=2e-5, **kw):
    cpu = run_layer(text, specs, "cpu", **kw)
    gpu = run_layer(text, specs, "gpu", **kw)
    assert cpu.keys() == gpu.keys()
    for key in cpu:
        np.testing.assert_allclose(gpu[key], cpu[key], rtol=rtol, atol=atol,
                                   err_msg=f"{text!r}: {key}")
    return cpu, gpu


# --- neuron layers ------------------------------------------------------------------------------
NEURONS = [
    ('type: "ReLU"', {}),
    ('type: "ReLU" relu_param { negative_slope: 0.2 }', {}),
    ('type: "ReLU" relu_param { negative_slope: -0.3 }', {}),
    ('type: "PReLU"', {}),
    ('type: "PReLU" prelu_param { channel_shared: true filler { type: "constant" value: 0.3 } }',
     {}),
    ('type: "ELU" elu_param { alpha: 0.7 }', {}),
    ('type: "ELU" elu_param { alpha: -0.5 }', {}),
    ('type: "Sigmoid"', {}),
    ('type: "TanH"', {}),
    ('type: "AbsVal"', {}),
    ('type: "Power" power_param { power: 2 scale: 0.5 shift: 0.3 }', {}),
    ('type: "Power" power_param { power: 3 scale: 1.5 }', {}),
    ('type: "Power" power_param { power: 0.5 scale: 0.5 shift: 2 }', {}),
    ('type: "Power" power_param { power: 1 scale: 2 shift: -1 }', {}),
    ('type: "Power" power_param { power: 0 scale: 2 }', {}),
    ('type: "Exp"', {}),
    ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }', {}),
    ('type: "Log" log_param { shift: 2 }', {}),
    ('type: "Log" log_param { base: 10 scale: 0.5 shift: 1.5 }', {}),
    ('type: "BNLL"', {}),
    ('type: "Clip" clip_param { min: -0.3 max: 0.4 }', {}),
    ('type: "Swish" swish_param { beta: 1.5 }', {}),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', {}),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', {"phase": TEST}),
]


@pytest.mark.parametrize("text,kw", NEURONS, ids=[t for t, _ in NEURONS])
@pytest.mark.parametrize("in_place", [False, True], ids=["separate", "in_place"])
def test_neuron(text, kw, in_place):
    compare(text, [(2, 3, 4, 5)], in_place=in_place, **kw)


def test_neuron_no_propagate_leaves_bottom_diff():
    cpu, gpu = compare('type: "TanH"', [(2, 3, 4)], propagate=[False])
    assert (gpu["pass0.bottom0.diff"] == GARBAGE).all()


def test_threshold_forward():
    compare('type: "Threshold" threshold_param { threshold: 0.1 }', [(3, 4, 5)],
            no_backward=True)


# --- convolution family and inner product (masks included) -----------------------------------
FILL = 'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "uniform" min: -1 max: 1 }'
CONVS = [
    ("Convolution", "num_output: 4 kernel_size: 3", (2, 3, 6, 5)),
    ("Convolution", "num_output: 4 kernel_size: 3 pad: 1 stride: 2", (2, 3, 7, 6)),
    ("Convolution", "num_output: 6 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride_h: 2 "
                    "stride_w: 1 group: 3", (2, 6, 6, 5)),
    ("Convolution", "num_output: 4 kernel_size: 3 dilation: 2 pad: 2 bias_term: false",
     (2, 2, 7, 7)),
    ("Convolution", "num_output: 5 kernel_size: 1", (3, 4, 3, 5)),
    ("Convolution", "num_output: 4 kernel_size: 1 group: 2 bias_term: false", (2, 4, 3, 3)),
    ("Convolution", "num_output: 3 kernel_size: 2 stride: 2", (2, 2, 4, 4, 4)),      # 3-D
    ("Convolution", "num_output: 3 kernel_size: 3 pad: 1", (2, 2, 9)),               # 1-D
    ("Convolution", "num_output: 2 kernel_size: 2", (1, 2, 3, 3, 3, 3)),  # 4-D: the CPU code
    ("Convolution", "num_output: 8 kernel_size: 3 pad: 1 group: 4", (2, 4, 5, 6)),  # depthwise x2
    ("Convolution", "num_output: 4 kernel_size: 5 pad: 1", (1, 2, 2, 3)),           # empty output
    ("DepthwiseConvolution", "num_output: 4 kernel_size: 3 pad: 1 group: 4", (2, 4, 6, 7)),
    ("DepthwiseConvolution", "num_output: 3 kernel_size: 3 stride: 2 pad: 1 group: 3",
     (2, 3, 7, 6)),
    ("DepthwiseConvolution", "num_output: 6 kernel_size: 3 dilation: 2 pad: 1 group: 3 "
                             "bias_term: false", (2, 3, 7, 7)),
    ("ConvolutionDepthwise", "num_output: 2 kernel_h: 1 kernel_w: 3 pad_w: 1 group: 2",
     (2, 2, 3, 5)),
    ("Deconvolution", "num_output: 3 kernel_size: 3 stride: 2 pad: 1", (2, 4, 3, 4)),
    ("Deconvolution", "num_output: 4 kernel_size: 2 stride: 2 group: 2", (2, 2, 3, 3)),
    ("Deconvolution", "num_output: 3 kernel_size: 3 stride: 2 group: 3", (2, 3, 3, 3)),   # depthwise
    ("Deconvolution", "num_output: 2 kernel_size: 1", (2, 3, 2, 3)),
]


@pytest.mark.parametrize("typ,param,shape", CONVS, ids=[f"{t}-{p}" for t, p, _ in CONVS])
def test_convolution(typ, param, shape):
    text = f'type: "{typ}" convolution_param {{ {param} {FILL} }}'
    compare(text, [shape], mask=True)


def test_convolution_two_bottoms_and_no_propagate():
    text = f'type: "Convolution" convolution_param {{ num_output: 3 kernel_size: 3 {FILL} }}'
    compare(text, [(2, 2, 5, 5), (2, 2, 5, 5)], ntop=2, propagate=[True, False], mask=True)


def test_convolution_masked_weights_get_no_gradient():
    text = f'type: "Convolution" convolution_param {{ num_output: 3 kernel_size: 3 {FILL} }}'
    cpu, gpu = compare(text, [(2, 2, 5, 5)], mask=True)
    layer = layer_from_text(text)
    b = Blob((2, 2, 5, 5))
    layer.setup([b], [Blob()])
    m = (np.random.default_rng(6).uniform(size=layer.blobs[0].shape) > 0.4)
    grad = gpu["pass0.param0.diff"]
    assert (grad[~m] == 0).all() and (grad[m] != 0).any()


IPS = [
    ("num_output: 5", (3, 4, 2, 2)),
    ("num_output: 5 transpose: true", (3, 7)),
    ("num_output: 4 axis: 2 bias_term: false", (2, 3, 5)),
    ("num_output: 3 axis: -1", (2, 2, 6)),
]


@pytest.mark.parametrize("param,shape", IPS, ids=[p for p, _ in IPS])
def test_inner_product(param, shape):
    text = f'type: "InnerProduct" inner_product_param {{ {param} {FILL} }}'
    compare(text, [shape], mask=True)


# --- pooling --------------------------------------------------------------------------------------
POOLS = [
    ("pool: MAX kernel_size: 3 stride: 2", (2, 3, 7, 6), {}),
    ("pool: MAX kernel_size: 3 stride: 2 pad: 1", (2, 2, 6, 7), {}),
    ("pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0",
     (2, 2, 5, 6), {}),
    ("pool: MAX global_pooling: true", (2, 3, 4, 5), {}),
    ("pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR", (1, 2, 5, 5), {}),
    ("pool: AVE kernel_size: 3 stride: 2", (2, 3, 7, 6), {}),
    ("pool: AVE kernel_size: 3 stride: 2 pad: 1", (2, 2, 6, 7), {}),
    ("pool: AVE global_pooling: true", (2, 3, 4, 5), {}),
    ("pool: STOCHASTIC kernel_size: 3 stride: 2", (2, 2, 7, 6), {"phase": TRAIN}),
    ("pool: STOCHASTIC kernel_size: 2 stride: 1", (2, 2, 5, 5), {"phase": TEST}),
]


@pytest.mark.parametrize("param,shape,kw", POOLS, ids=[p + str(k) for p, _, k in POOLS])
def test_pooling(param, shape, kw):
    spec = ("pos", shape) if "STOCHASTIC" in param else shape
    compare(f'type: "Pooling" pooling_param {{ {param} }}', [spec], **kw)


def test_max_pooling_mask_top():
    compare('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 }',
            [(2, 2, 5, 4)], ntop=2)


# --- normalisation ------------------------------------------------------------------------------
BATCHNORMS = [
    ('type: "BatchNorm"', (3, 4, 5, 2), {}),
    ('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.9 eps: 0.001 }',
     (4, 3), {}),
    ('type: "BatchNorm" batch_norm_param { use_global_stats: true }', (2, 3, 4), {}),
    ('type: "BatchNorm"', (2, 3, 4, 4), {"phase": TEST}),
]


@pytest.mark.parametrize("text,shape,kw", BATCHNORMS, ids=[t + str(k) for t, _, k in BATCHNORMS])
@pytest.mark.parametrize("in_place", [False, True], ids=["separate", "in_place"])
def test_batch_norm(text, shape, kw, in_place):
    rng = np.random.default_rng(3)
    stats = [rng.uniform(-1, 1, shape[1]).astype(np.float32) * 3,
             rng.uniform(0.5, 2, shape[1]).astype(np.float32) * 3, np.float32([3.0])]
    compare(text, [shape], in_place=in_place, params=stats, rtol=5e-4, atol=5e-5, **kw)


LRNS = [
    'type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }',
    'type: "LRN" lrn_param { local_size: 5 alpha: 1.5 beta: 0.6 }',
    'type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL }',
]


@pytest.mark.parametrize("text", LRNS)
@pytest.mark.parametrize("in_place", [False, True], ids=["separate", "in_place"])
def test_lrn(text, in_place):
    compare(text, [(2, 6, 4, 5)], in_place=in_place)


# --- scale, bias, eltwise ---------------------------------------------------------------------
SCALES = [
    ('type: "Scale" scale_param { filler { type: "uniform" min: -1 max: 1 } }', [(2, 3, 4, 5)],
     {}),
    ('type: "Scale" scale_param { axis: 1 num_axes: 2 bias_term: true '
     'filler { type: "uniform" min: -1 max: 1 } bias_filler { type: "uniform" min: -1 max: 1 } }',
     [(2, 3, 4, 5)], {}),
    ('type: "Scale" scale_param { axis: 0 num_axes: 0 bias_term: true '
     'filler { type: "constant" value: 1.5 } }', [(2, 3)], {}),
    ('type: "Scale" scale_param { axis: 1 }', [(2, 3, 4), (3,)], {"propagate": [True, True]}),
    ('type: "Scale" scale_param { axis: 1 bias_term: true }', [(2, 3, 4), (3, 4)],
     {"propagate": [True, False]}),
    ('type: "Bias" bias_param { filler { type: "uniform" min: -1 max: 1 } }', [(2, 3, 4, 5)], {}),
    ('type: "Bias" bias_param { axis: 2 num_axes: -1 filler { type: "uniform" min: -1 max: 1 } }',
     [(2, 3, 4, 5)], {}),
    ('type: "Bias" bias_param { axis: 1 }', [(2, 3, 4), (3, 4)], {"propagate": [True, True]}),
]


@pytest.mark.parametrize("text,specs,kw", SCALES, ids=[t + str(len(s)) for t, s, _ in SCALES])
@pytest.mark.parametrize("in_place", [False, True], ids=["separate", "in_place"])
def test_scale_bias(text, specs, kw, in_place):
    compare(text, specs, in_place=in_place, **kw)


ELTWISES = [
    ("operation: PROD", 2), ("operation: PROD", 3),
    ("operation: PROD stable_prod_grad: false", 3),
    ("operation: SUM", 2), ("operation: SUM coeff: 0.5 coeff: -2 coeff: 1", 3),
    ("operation: MAX", 2), ("operation: MAX", 4),
]


@pytest.mark.parametrize("param,k", ELTWISES, ids=[f"{p}-{k}" for p, k in ELTWISES])
@pytest.mark.parametrize("in_place", [False, True], ids=["separate", "in_place"])
def test_eltwise(param, k, in_place):
    specs = [("uniform", (2, 3, 4), 0.5, 1.5)] * k if "PROD" in param else [(2, 3, 4)] * k
    compare(f'type: "Eltwise" eltwise_param {{ {param} }}', specs, in_place=in_place,
            propagate=[True] * (k - 1) + [k % 2 == 0])


def test_eltwise_max_ties_go_to_the_later_bottom():
    a = np.array([[1.0, 2.0, 3.0, 3.0]], np.float32)
    b = np.array([[1.0, 1.0, 3.0, 4.0]], np.float32)
    cpu, gpu = compare('type: "Eltwise" eltwise_param { operation: MAX }', [a, b], passes=1)
    np.testing.assert_array_equal(gpu["pass0.bottom1.diff"] != 0, [[True, False, True, True]])


# --- concat, slice, split, silence, flatten, reshape, crop, permute ------------------------------
COPIES = [
    ('type: "Concat"', [(2, 3, 4), (2, 1, 4), (2, 2, 4)], {}),
    ('type: "Concat" concat_param { axis: 0 }', [(2, 3), (1, 3)], {}),
    ('type: "Concat" concat_param { axis: -1 }', [(2, 3, 2), (2, 3, 5)], {"propagate": [False, True]}),
    ('type: "Concat"', [(2, 3, 4)], {}),
    ('type: "Slice" slice_param { axis: 1 slice_point: 1 slice_point: 3 }', [(2, 5, 3)],
     {"ntop": 3}),
    ('type: "Slice" slice_param { axis: 0 }', [(4, 3)], {"ntop": 2}),
    ('type: "Split"', [(2, 3, 4)], {"ntop": 3}),
    ('type: "Split"', [(2, 3)], {"ntop": 1}),
    ('type: "Flatten"', [(2, 3, 4, 5)], {}),
    ('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 2 } }', [(2, 3, 4)], {}),
    ('type: "Crop" crop_param { axis: 2 offset: 1 offset: 2 }', [(2, 3, 6, 7), (2, 3, 3, 4)],
     {"propagate": [True, False]}),
    ('type: "Crop" crop_param { axis: 1 offset: 1 }', [(2, 4, 5, 6), (2, 2, 3, 3)],
     {"propagate": [True, True]}),
    ('type: "Permute" permute_param { order: 0 order: 2 order: 3 order: 1 }', [(2, 3, 4, 5)],
     {}),
    ('type: "Permute" permute_param { order: 1 order: 0 }', [(3, 4, 2)], {}),
    ('type: "Permute" permute_param { order: 0 order: 1 }', [(3, 4)], {}),
]


@pytest.mark.parametrize("text,specs,kw", COPIES, ids=[t + str(s) for t, s, _ in COPIES])
def test_copy_layers(text, specs, kw):
    compare(text, specs, **kw)


def test_permute_with_many_axes_falls_back_to_the_cpu():
    order = " ".join(f"order: {o}" for o in (7, 6, 5, 4, 3, 2, 1, 0))
    compare(f'type: "Permute" permute_param {{ {order} }}', [(2, 3, 2, 3, 2, 3, 2, 3)])


def test_silence():
    compare('type: "Silence"', [(2, 3), (4,)], ntop=0, propagate=[True, False])


# --- softmax and losses ---------------------------------------------------------------------------
@pytest.mark.parametrize("axis,shape", [(1, (3, 5)), (1, (2, 4, 3, 2)), (-1, (2, 3, 6)),
                                        (0, (4, 3))])
@pytest.mark.parametrize("in_place", [False, True], ids=["separate", "in_place"])
def test_softmax(axis, shape, in_place):
    compare(f'type: "Softmax" softmax_param {{ axis: {axis} }}', [shape], in_place=in_place)


LOSSES = [
    ('type: "SoftmaxWithLoss"', [(4, 5), ("labels", (4,), 5)], 1),
    ('type: "SoftmaxWithLoss" loss_weight: 2.5', [(3, 4, 2, 3), ("labels", (3, 1, 2, 3), 4)], 1),
    ('type: "SoftmaxWithLoss" loss_param { ignore_label: 1 normalization: VALID }',
     [(6, 3), ("labels", (6,), 3)], 1),
    ('type: "SoftmaxWithLoss" loss_param { normalization: BATCH_SIZE } softmax_param { axis: 2 }',
     [(2, 3, 4), ("labels", (2, 3), 4)], 1),
    ('type: "SoftmaxWithLoss" loss_weight: 1 loss_weight: 0', [(4, 5), ("labels", (4,), 5)], 2),
    ('type: "SigmoidCrossEntropyLoss"', [(3, 4), ("uniform", (3, 4), 0, 1)], 1),
    ('type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: 0 normalization: VALID }',
     [(3, 4), ("labels", (3, 4), 2)], 1),
    ('type: "EuclideanLoss"', [(3, 4), (3, 4)], 1),
    ('type: "EuclideanLoss" loss_weight: 0.5', [(3, 2, 2), (3, 4)], 1),
    ('type: "HingeLoss"', [(4, 5), ("labels", (4,), 5)], 1),
    ('type: "HingeLoss" hinge_loss_param { norm: L2 } loss_weight: 3', [(4, 5),
                                                                        ("labels", (4,), 5)], 1),
]


@pytest.mark.parametrize("text,specs,ntop", LOSSES, ids=[t for t, _, _ in LOSSES])
def test_loss(text, specs, ntop):
    propagate = [True, "Euclidean" in text]
    compare(text, specs, ntop=ntop, propagate=propagate)


def test_softmax_loss_rejects_bad_labels_on_gpu():
    caffe_lite.set_mode_gpu()
    layer = layer_from_text('type: "SoftmaxWithLoss"')
    x, lab, top = Blob.from_array(np.zeros((2, 3), np.float32)), Blob.from_array(
        np.array([0, 3], np.float32)), Blob()
    layer.setup([x, lab], [top])
    with pytest.raises(caffe_lite.CaffeLiteError, match="outside"):
        layer.forward([x, lab], [top])


# --- layers that stay on the CPU in GPU mode ------------------------------------------------------
def test_accuracy_and_argmax_run_their_cpu_code_in_gpu_mode():
    text = 'type: "Accuracy" accuracy_param { top_k: 2 }'
    cpu = run_layer(text, [(5, 4), ("labels", (5,), 4)], "cpu", no_backward=True)
    caffe_lite.set_mode_cpu()
    layer = layer_from_text(text)
    assert gpu_impl_for(layer) is None
    rng = np.random.default_rng(5)
    bottom = [Blob.from_array(_inputs(s, rng)) for s in [(5, 4), ("labels", (5,), 4)]]
    top = [Blob()]
    layer.setup(bottom, top)
    caffe_lite.set_mode_gpu()
    layer.forward(bottom, top)
    assert float(top[0].cpu_data) == float(cpu["pass0.top0"])
