"""Convolution, Deconvolution, DepthwiseConvolution: values, gradients, shapes, masks, errors."""
import itertools

import numpy as np
import pytest

from caffe_lite.blob import Blob
from caffe_lite.errors import LayerSetupError
from caffe_lite.io.prototxt import read_text
from caffe_lite.layers import create_layer, im2col
from caffe_lite.layers.depthwise import DepthwiseEngine
from caffe_lite.layers.im2col import GemmEngine
from caffe_lite.proto import caffe_pb2
from caffe_lite.testing import blob, check_gradient, forward, layer_from_text


# --- independent references: plain loops over positions and taps ------------------------------
def conv_ref(x, w, b, stride, pad, dilation, group):
    """Caffe convolution by definition: out[n, o, p] = sum_{c in group, k} x[n, c, p*s + k*d - pad]
    * w[o, c, k] (+ b[o]), positions outside the input reading 0."""
    x = x.astype(np.float64)
    n, c = x.shape[:2]
    o, cg = w.shape[:2]
    kernel, spatial = w.shape[2:], x.shape[2:]
    og = o // group
    out_sp = [int((i + 2 * p - (d * (k - 1) + 1)) / s) + 1
              for i, p, d, k, s in zip(spatial, pad, dilation, kernel, stride)]
    y = np.zeros((n, o) + tuple(out_sp))
    for oc in range(o):
        g = oc // og
        for pos in itertools.product(*map(range, out_sp)):
            acc = np.zeros(n)
            for tap in itertools.product(*map(range, kernel)):
                idx = [q * s + t * d - p for q, s, t, d, p in zip(pos, stride, tap, dilation, pad)]
                if all(0 <= i < size for i, size in zip(idx, spatial)):
                    for ci in range(cg):
                        acc += x[(slice(None), g * cg + ci) + tuple(idx)] * w[(oc, ci) + tap]
            y[(slice(None), oc) + pos] = acc + (0 if b is None else b[oc])
    return y


def deconv_ref(x, w, b, stride, pad, dilation, group):
    """Caffe deconvolution by definition: every input value scatters x * w into the output,
    at position i*s + k*d - pad."""
    x = x.astype(np.float64)
    n, c = x.shape[:2]
    og = w.shape[1]
    o = og * group
    cg = c // group
    kernel, spatial = w.shape[2:], x.shape[2:]
    out_sp = [s * (i - 1) + d * (k - 1) + 1 - 2 * p
              for i, p, d, k, s in zip(spatial, pad, dilation, kernel, stride)]
    y = np.zeros((n, o) + tuple(out_sp))
    for ci in range(c):
        g = ci // cg
        for pos in itertools.product(*map(range, spatial)):
            for tap in itertools.product(*map(range, kernel)):
                idx = [q * s + t * d - p for q, s, t, d, p in zip(pos, stride, tap, dilation, pad)]
                if all(0 <= i < size for i, size in zip(idx, out_sp)):
                    for m in range(og):
                        y[(slice(None), g * og + m) + tuple(idx)] += (
                            x[(slice(None), ci) + pos] * w[(ci, m) + tap])
    if b is not None:
        y += b.reshape((1, -1) + (1,) * len(out_sp))
    return y


def conv_layer(params, typ="Convolution", filler='weight_filler { type: "gaussian" std: 1 } '
               'bias_filler { type: "gaussian" std: 1 }'):
    return layer_from_text(f'type: "{typ}" convolution_param {{ {params} {filler} }}')


def set_weights(layer, w, b=None):
    layer.blobs[0].data[...] = w
    if b is not None:
        layer.blobs[1].data[...] = b


X33 = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)   # [[1,2,3],[4,5,6],[7,8,9]]
K22 = np.array([1, 2, 3, 4], np.float32).reshape(1, 1, 2, 2)   # [[1,2],[3,4]]


# --- hand-computed values ----------------------------------------------------------------------
def test_conv_hand_computed_plain_and_bias():
    layer = conv_layer("num_output: 1 kernel_size: 2")
    top = forward(layer, [Blob.from_array(X33)])[0]  # sets up, then overwrite weights
    set_weights(layer, K22, [0.5])
    layer.forward([Blob.from_array(X33)], [top])
    # 1*1+2*2+4*3+5*4 = 37, 2+6+15+24 = 47, 4+10+21+32 = 67, 5+12+24+36 = 77
    np.testing.assert_array_equal(top.data, [[[[37.5, 47.5], [67.5, 77.5]]]])


def test_conv_hand_computed_pad_stride():
    layer = conv_layer("num_output: 1 kernel_size: 2 pad: 1 stride: 2 bias_term: false")
    x = Blob.from_array(X33)
    top = forward(layer, [x])[0]
    assert top.shape == (1, 1, 2, 2)             # (3 + 2 - 2) / 2 + 1 = 2
    set_weights(layer, K22)
    layer.forward([x], [top])
    # windows of the zero-padded 5x5 image at (0,0) (0,2) (2,0) (2,2):
    # [[0,0],[0,1]] -> 4; [[0,0],[2,3]] -> 6+12; [[0,4],[0,7]] -> 8+28; [[5,6],[8,9]] -> 77
    np.testing.assert_array_equal(top.data, [[[[4, 18], [36, 77]]]])


def test_conv_hand_computed_dilation():
    layer = conv_layer("num_output: 1 kernel_size: 2 dilation: 2 bias_term: false")
    x = Blob.from_array(X33)
    top = forward(layer, [x])[0]
    assert top.shape == (1, 1, 1, 1)             # extent 3
    set_weights(layer, K22)
    layer.forward([x], [top])
    assert top.data.item() == 1 * 1 + 2 * 3 + 3 * 7 + 4 * 9  # corners: 64


def test_conv_hand_computed_group_and_asymmetric_params():
    x = Blob.from_array(np.concatenate([X33, 10 * X33], axis=1))   # 1x2x3x3
    layer = conv_layer("num_output: 2 group: 2 kernel_h: 2 kernel_w: 1 stride_h: 1 stride_w: 2 "
                       "pad_h: 0 pad_w: 1 bias_term: false")
    top = forward(layer, [x])[0]
    assert top.shape == (1, 2, 2, 3)             # h: 3-2+1 = 2; w: (3+2-1)/2+1 = 3
    set_weights(layer, np.array([1, 2, -1, 1], np.float32).reshape(2, 1, 2, 1))
    layer.forward([x], [top])
    # group 0: x0[r] + 2*x0[r+1] at padded columns 0, 2, 4 (original -1, 1, 3 -> 0, col 1, 0)
    # group 1: -x1[r] + x1[r+1] = 10 * 3 at the same columns
    np.testing.assert_array_equal(top.data[0, 0], [[0, 2 + 2 * 5, 0], [0, 5 + 2 * 8, 0]])
    np.testing.assert_array_equal(top.data[0, 1], [[0, 30, 0], [0, 30, 0]])


def test_conv_output_size_truncates_like_cpp():
    # (2 - 3) / 2 + 1 is 1 in C++ (division truncates toward zero): one output that sees the
    # 2x2 image and zeros beyond it.
    layer = conv_layer("num_output: 1 kernel_size: 3 stride: 2 bias_term: false")
    x = Blob.from_array(np.array([[[[1, 2], [3, 4]]]], np.float32))
    top = forward(layer, [x])[0]
    assert top.shape == (1, 1, 1, 1)
    set_weights(layer, np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3))
    layer.forward([x], [top])
    assert top.data.item() == 1 * 1 + 2 * 2 + 3 * 4 + 4 * 5


def test_deconv_hand_computed():
    x = Blob.from_array(np.array([[[[1, 2], [3, 4]]]], np.float32))
    layer = conv_layer("num_output: 1 kernel_size: 2 bias_term: false", "Deconvolution")
    top = forward(layer, [x])[0]
    assert top.shape == (1, 1, 3, 3)             # 1*(2-1) + 2 - 0
    set_weights(layer, K22)
    layer.forward([x], [top])
    np.testing.assert_array_equal(top.data[0, 0], [[1, 4, 4], [6, 20, 16], [9, 24, 16]])
    # pad 1 crops one from each side: the centre, 1*(2-1) + 2 - 2 = 1
    layer = conv_layer("num_output: 1 kernel_size: 2 pad: 1 bias_term: false", "Deconvolution")
    top = forward(layer, [x])[0]
    set_weights(layer, K22)
    layer.forward([x], [top])
    assert top.shape == (1, 1, 1, 1) and top.data.item() == 20
    # stride 2: each input pixel stamps x * K on its own 2x2 block
    layer = conv_layer("num_output: 1 kernel_size: 2 stride: 2 bias_term: false",
                       "Deconvolution")
    top = forward(layer, [x])[0]
    set_weights(layer, K22)
    layer.forward([x], [top])
    np.testing.assert_array_equal(top.data[0, 0], np.kron([[1, 2], [3, 4]], [[1, 2], [3, 4]]))


def test_depthwise_hand_computed_multiplier():
    x = Blob.from_array(np.concatenate([X33, -X33], axis=1))        # 1x2x3x3
    layer = conv_layer("num_output: 4 group: 2 kernel_size: 2 bias_term: true",
                       "DepthwiseConvolution")
    top = forward(layer, [x])[0]
    assert top.shape == (1, 4, 2, 2) and layer.blobs[0].shape == (4, 1, 2, 2)
    w = np.stack([K22[0], np.ones((1, 2, 2)), K22[0], np.zeros((1, 2, 2))]).astype(np.float32)
    set_weights(layer, w, [0, 1, 2, 3])
    layer.forward([x], [top])
    # outputs 0, 1 read channel 0; outputs 2, 3 read channel 1 (= -channel 0)
    np.testing.assert_array_equal(top.data[0, 0], [[37, 47], [67, 77]])
    np.testing.assert_array_equal(top.data[0, 1], [[1 + 12, 1 + 16], [1 + 24, 1 + 28]])
    np.testing.assert_array_equal(top.data[0, 2], [[2 - 37, 2 - 47], [2 - 67, 2 - 77]])
    np.testing.assert_array_equal(top.data[0, 3], np.full((2, 2), 3))


# --- random cases against the loop references --------------------------------------------------
CONV_CASES = [
    # (params, input shape, stride, pad, dilation, group)
    ("num_output: 4 kernel_size: 3", (2, 3, 5, 6), (1, 1), (0, 0), (1, 1), 1),
    ("num_output: 6 group: 3 kernel_size: 3 pad: 1 stride: 2", (2, 6, 7, 6), (2, 2), (1, 1),
     (1, 1), 3),
    ("num_output: 4 group: 2 kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 1 stride_h: 2 stride_w: 1",
     (2, 4, 7, 5), (2, 1), (2, 1), (1, 1), 2),
    ("num_output: 3 kernel_size: 3 dilation: 2 pad: 2", (1, 2, 7, 7), (1, 1), (2, 2), (2, 2), 1),
    ("num_output: 2 kernel_size: 2 kernel_size: 3 dilation: 2 dilation: 1 stride: 3",
     (2, 2, 8, 7), (3, 3), (0, 0), (2, 1), 1),
    ("num_output: 5 kernel_size: 1", (2, 3, 4, 5), (1, 1), (0, 0), (1, 1), 1),          # 1x1
    ("num_output: 4 group: 2 kernel_size: 1 stride: 2", (2, 4, 5, 5), (2, 2), (0, 0), (1, 1), 2),
    ("num_output: 4 group: 2 kernel_size: 3 pad: 1 stride: 2 dilation: 2", (2, 4, 6, 7),
     (2, 2), (1, 1), (2, 2), 2),
    # 1-D and 3-D spatial
    ("num_output: 4 group: 2 kernel_size: 3 pad: 1 stride: 2 dilation: 2", (2, 4, 9), (2,),
     (1,), (2,), 2),
    ("num_output: 3 kernel_size: 2 kernel_size: 3 kernel_size: 1 pad: 1 pad: 0 pad: 1 "
     "stride: 1 stride: 2 stride: 1", (2, 2, 4, 5, 3), (1, 2, 1), (1, 0, 1), (1, 1, 1), 1),
    ("num_output: 4 group: 2 kernel_size: 1", (1, 2, 3, 2, 2), (1, 1, 1), (0, 0, 0), (1, 1, 1), 2),
]


@pytest.mark.parametrize("params,shape,stride,pad,dilation,group", CONV_CASES)
def test_conv_matches_loop_reference(params, shape, stride, pad, dilation, group):
    layer = conv_layer(params)
    x = blob(shape, seed=3)
    top = forward(layer, [x])[0]
    ref = conv_ref(x.data, layer.blobs[0].data, layer.blobs[1].data, stride, pad, dilation,
                   group)
    assert top.shape == ref.shape
    np.testing.assert_allclose(top.data, ref, rtol=1e-5, atol=1e-5)


DECONV_CASES = [
    ("num_output: 3 kernel_size: 3", (2, 2, 4, 3), (1, 1), (0, 0), (1, 1), 1),
    ("num_output: 4 group: 2 kernel_size: 3 pad: 1 stride: 2", (2, 4, 3, 4), (2, 2), (1, 1),
     (1, 1), 2),
    ("num_output: 2 kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 0 pad_w: 1 "
     "dilation: 2", (1, 3, 3, 3), (2, 1), (0, 1), (2, 2), 1),
    ("num_output: 3 group: 3 kernel_size: 4 stride: 2 pad: 1", (2, 3, 3, 3), (2, 2), (1, 1),
     (1, 1), 3),                                   # group == channels == num_output: depthwise
    ("num_output: 6 group: 3 kernel_size: 3 stride: 2", (1, 3, 3, 2), (2, 2), (0, 0), (1, 1), 3),
    ("num_output: 2 group: 2 kernel_size: 2 stride: 2", (1, 4, 2, 3), (2, 2), (0, 0), (1, 1), 2),
    ("num_output: 4 kernel_size: 1", (2, 3, 3, 2), (1, 1), (0, 0), (1, 1), 1),          # 1x1
    ("num_output: 2 kernel_size: 3 stride: 2 pad: 1", (2, 2, 4), (2,), (1,), (1,), 1),    # 1-D
    ("num_output: 2 kernel_size: 2 stride: 2", (1, 2, 2, 3, 2), (2, 2, 2), (0, 0, 0),
     (1, 1, 1), 1),                                                                    # 3-D
]


@pytest.mark.parametrize("params,shape,stride,pad,dilation,group", DECONV_CASES)
def test_deconv_matches_loop_reference(params, shape, stride, pad, dilation, group):
    layer = conv_layer(params, "Deconvolution")
    x = blob(shape, seed=4)
    top = forward(layer, [x])[0]
    ref = deconv_ref(x.data, layer.blobs[0].data, layer.blobs[1].data, stride, pad, dilation,
                     group)
    assert top.shape == ref.shape
    np.testing.assert_allclose(top.data, ref, rtol=1e-5, atol=1e-5)


DEPTHWISE_CASES = [
    ("num_output: 3 group: 3 kernel_size: 3 pad: 1", (2, 3, 5, 6), (1, 1), (1, 1), (1, 1)),
    ("num_output: 6 group: 3 kernel_size: 3 pad: 1 stride: 2", (2, 3, 7, 6), (2, 2), (1, 1),
     (1, 1)),
    ("num_output: 4 group: 4 kernel_h: 3 kernel_w: 2 pad_h: 0 pad_w: 2 stride_h: 1 stride_w: 3 "
     "dilation: 2", (1, 4, 7, 8), (1, 3), (0, 2), (2, 2)),
    ("num_output: 6 group: 2 kernel_size: 5 pad: 1 stride: 2", (2, 2, 4, 4), (2, 2), (1, 1),
     (1, 1)),                                      # kernel larger than the padded input side
    ("num_output: 4 group: 2 kernel_size: 3 pad: 2 dilation: 3", (2, 2, 9), (1,), (2,), (3,)),
    ("num_output: 2 group: 2 kernel_size: 2 pad: 1 stride: 2", (1, 2, 3, 4, 3), (2, 2, 2),
     (1, 1, 1), (1, 1, 1)),
]


@pytest.mark.parametrize("typ", ["DepthwiseConvolution", "Convolution"])
@pytest.mark.parametrize("params,shape,stride,pad,dilation", DEPTHWISE_CASES)
def test_depthwise_matches_loop_reference(typ, params, shape, stride, pad, dilation):
    layer = conv_layer(params, typ)
    x = blob(shape, seed=5)
    top = forward(layer, [x])[0]
    assert isinstance(layer.engine, DepthwiseEngine)
    ref = conv_ref(x.data, layer.blobs[0].data, layer.blobs[1].data, stride, pad, dilation,
                   shape[1])
    assert top.shape == ref.shape
    np.testing.assert_allclose(top.data, ref, rtol=1e-5, atol=1e-5)


def test_conv_channel_axis_and_multiple_bottoms():
    # axis: 2 -> num = 2*3 (axes before the channel axis), channels 4, spatial 5x5
    layer = conv_layer("num_output: 2 kernel_size: 3 pad: 1 axis: 2")
    x0, x1 = blob((2, 3, 4, 5, 5), seed=6), blob((2, 3, 4, 5, 5), seed=7)
    t0, t1 = Blob(), Blob()
    layer.setup([x0, x1], [t0, t1])
    layer.forward([x0, x1], [t0, t1])
    assert t0.shape == t1.shape == (2, 3, 2, 5, 5)
    w, b = layer.blobs[0].data, layer.blobs[1].data
    for x, t in ((x0, t0), (x1, t1)):
        ref = conv_ref(x.data.reshape(6, 4, 5, 5), w, b, (1, 1), (1, 1), (1, 1), 1)
        np.testing.assert_allclose(t.data.reshape(6, 2, 5, 5), ref, rtol=1e-5, atol=1e-5)


def test_no_spatial_axes_is_an_inner_product():
    layer = conv_layer("num_output: 3 kernel_size: 1")
    x = blob((4, 5), seed=31)
    top = forward(layer, [x])[0]
    assert top.shape == (4, 3) and layer.blobs[0].shape == (3, 5)
    np.testing.assert_allclose(top.data, x.data @ layer.blobs[0].data.T + layer.blobs[1].data,
                               rtol=1e-5, atol=1e-6)
    check_gradient(layer, [x])


def test_empty_output_is_allowed():
    # (1 - 3) / 2 + 1 = 0 rows, as in Caffe: an empty top, and empty gradients
    for params, shape, top_shape in (
            ("num_output: 2 group: 2 kernel_size: 3 stride: 2", (2, 2, 1, 5), (2, 2, 0, 2)),
            ("num_output: 2 kernel_size: 7 stride: 2", (2, 2, 4, 9), (2, 2, 0, 2))):
        layer = conv_layer(params)
        x = blob(shape, seed=32)
        top = forward(layer, [x])[0]
        assert top.shape == top_shape
        x.diff[...] = 1
        layer.backward([top], [True], [x])
        assert not x.diff.any() and not layer.blobs[0].diff.any()


def test_reuse_across_calls_and_reshape():
    """Cached padded buffers keep a zero border: a second input, and a new input size, still
    give the reference values."""
    for typ, params in (("Convolution", "num_output: 3 kernel_size: 3 pad: 2 stride: 2"),
                        ("DepthwiseConvolution", "num_output: 2 group: 2 kernel_size: 3 pad: 2")):
        layer = conv_layer(params, typ)
        x = blob((2, 2, 6, 6), seed=8, low=5, high=9)
        top = forward(layer, [x])[0]
        group = 1 if typ == "Convolution" else 2
        st = (2, 2) if typ == "Convolution" else (1, 1)
        for shape, seed in (((2, 2, 6, 6), 9), ((3, 2, 4, 7), 10)):
            x = blob(shape, seed=seed)
            layer.reshape([x], [top])
            layer.forward([x], [top])
            ref = conv_ref(x.data, layer.blobs[0].data, layer.blobs[1].data, st, (2, 2),
                           (1, 1), group)
            np.testing.assert_allclose(top.data, ref, rtol=1e-5, atol=1e-5)


def test_chunking_and_threads_do_not_change_results(monkeypatch):
    params = "num_output: 4 group: 2 kernel_size: 3 pad: 1 stride: 2"
    x = blob((5, 4, 9, 8), seed=11)
    ref_layer = conv_layer(params)
    top = forward(ref_layer, [x])[0]
    expected = top.data.copy()
    top.diff[...] = blob(top.shape, seed=12).data
    ref_layer.backward([top], [True], [x])
    dx, dw = x.diff.copy(), ref_layer.blobs[0].diff.copy()
    for threads, col_elems, block in (("1", 40, 1), ("3", 1 << 24, 50), ("2", 1000, 7)):
        monkeypatch.setenv("CAFFE_LITE_NUM_THREADS", threads)
        monkeypatch.setattr(im2col, "COL_BUFFER_ELEMENTS", col_elems)
        monkeypatch.setattr(im2col, "BLOCK_ELEMENTS", block)
        layer = conv_layer(params)
        t = forward(layer, [x])[0]
        layer.blobs[0].data[...] = ref_layer.blobs[0].data
        layer.blobs[1].data[...] = ref_layer.blobs[1].data
        layer.forward([x], [t])
        assert layer.engine.chunk < 5 or col_elems > 1000
        np.testing.assert_allclose(t.data, expected, rtol=1e-6, atol=1e-6)
        t.diff[...] = top.diff
        layer.blobs[0].diff[...] = 0
        layer.backward([t], [True], [x])
        np.testing.assert_allclose(x.diff, dx, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.blobs[0].diff, dw, rtol=1e-5, atol=1e-6)


# --- gradients ---------------------------------------------------------------------------------
@pytest.mark.parametrize("params,shape", [
    ("num_output: 3 kernel_size: 3 pad: 1 stride: 2", (2, 2, 5, 5)),
    ("num_output: 4 group: 2 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride_h: 1 stride_w: 2 "
     "dilation: 2", (2, 4, 6, 5)),
    ("num_output: 4 group: 2 kernel_size: 1", (2, 4, 3, 3)),
    ("num_output: 2 kernel_size: 3 pad: 1 stride: 2", (2, 3, 6)),                     # 1-D
    ("num_output: 2 kernel_size: 2 pad: 1", (1, 2, 3, 3, 2)),                          # 3-D
    ("num_output: 4 kernel_size: 3", (3, 2, 3, 3)),     # 1 output position: weight gradient
                                                        # as one product over all images
])
def test_conv_gradient(params, shape):
    layer = conv_layer(params)
    check_gradient(layer, [blob(shape, seed=13)], max_checks=60)


@pytest.mark.parametrize("params,shape", [
    ("num_output: 3 kernel_size: 3 pad: 1 stride: 2", (2, 2, 3, 3)),
    ("num_output: 4 group: 2 kernel_size: 2 stride: 2 dilation: 2", (2, 2, 3, 2)),
    ("num_output: 2 group: 2 kernel_size: 4 stride: 2 pad: 1", (2, 2, 3, 3)),          # depthwise
    ("num_output: 3 kernel_size: 1", (2, 2, 3, 3)),
])
def test_deconv_gradient(params, shape):
    layer = conv_layer(params, "Deconvolution")
    check_gradient(layer, [blob(shape, seed=14)], max_checks=60)


@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("typ", ["DepthwiseConvolution", "Convolution"])
def test_depthwise_gradient(typ, multiplier):
    layer = conv_layer(f"num_output: {3 * multiplier} group: 3 kernel_size: 3 pad: 1 stride: 2",
                       typ)
    check_gradient(layer, [blob((2, 3, 5, 4), seed=15)], max_checks=80)
    assert isinstance(layer.engine, DepthwiseEngine)


def test_grouped_convolution_equals_depthwise_exactly():
    """group == channels: Convolution runs the depthwise kernel, so results are bit-identical
    to DepthwiseConvolution with the same weights (and caffemodels interchange)."""
    for mult, params in ((1, "kernel_size: 3 pad: 1 stride: 2"),
                         (2, "kernel_size: 3 pad: 1 dilation: 2 bias_term: false")):
        text = f"num_output: {4 * mult} group: 4 {params}"
        conv, dw = conv_layer(text), conv_layer(text, "DepthwiseConvolution")
        x = blob((2, 4, 7, 6), seed=16)
        tc, td = forward(conv, [x])[0], forward(dw, [x])[0]
        assert [b.shape for b in conv.blobs] == [b.shape for b in dw.blobs]
        for a, b in zip(conv.blobs, dw.blobs):
            b.data[...] = a.data
        dw.forward([x], [td])
        np.testing.assert_array_equal(tc.data, td.data)
        g = blob(tc.shape, seed=17).data
        grads = []
        for layer, t in ((conv, tc), (dw, td)):
            t.diff[...] = g
            for b in layer.blobs:
                b.diff[...] = 0
            layer.backward([t], [True], [x])
            grads.append([x.diff.copy()] + [b.diff.copy() for b in layer.blobs])
        for a, b in zip(*grads):
            np.testing.assert_array_equal(a, b)
        # and both agree with the generic grouped GEMM path
        ref = conv_ref(x.data, conv.blobs[0].data, conv.blobs[1].data if len(conv.blobs) > 1
                       else None, conv.geom.stride, conv.geom.pad, conv.geom.dilation, 4)
        np.testing.assert_allclose(tc.data, ref, rtol=1e-5, atol=1e-5)
        assert isinstance(conv.engine, DepthwiseEngine)


def test_gradients_accumulate_and_bottom_is_overwritten():
    layer = conv_layer("num_output: 2 kernel_size: 3 pad: 1")
    x = blob((2, 2, 4, 4), seed=18)
    top = forward(layer, [x])[0]
    top.diff[...] = blob(top.shape, seed=19).data
    for b in layer.blobs:
        b.diff[...] = 0
    x.diff[...] = 123
    layer.backward([top], [True], [x])
    first = [x.diff.copy()] + [b.diff.copy() for b in layer.blobs]
    layer.backward([top], [True], [x])
    np.testing.assert_allclose(x.diff, first[0])                # overwritten
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * first[1], rtol=1e-6)
    np.testing.assert_allclose(layer.blobs[1].diff, 2 * first[2], rtol=1e-6)
    # param_propagate_down false: no parameter gradient; propagate_down false: bottom untouched
    layer.param_propagate_down = [False, False]
    x.diff[...] = 7
    layer.backward([top], [False], [x])
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * first[1], rtol=1e-6)
    assert (x.diff == 7).all()


# --- bilinear upsampling -----------------------------------------------------------------------
def test_bilinear_deconvolution_upsamples_a_constant():
    layer = layer_from_text('type: "Deconvolution" convolution_param { num_output: 3 group: 3 '
                            'kernel_size: 4 stride: 2 pad: 1 bias_term: false '
                            'weight_filler { type: "bilinear" } }')
    x = Blob.from_array(np.full((2, 3, 5, 6), 2.5, np.float32))
    top = forward(layer, [x])[0]
    assert top.shape == (2, 3, 10, 12) and layer.blobs[0].shape == (3, 1, 4, 4)
    np.testing.assert_allclose(top.data[:, :, 1:-1, 1:-1], 2.5, rtol=1e-6)
    assert np.all(top.data[:, :, 0, :] < 2.5)                   # edges see fewer taps
    # upsampling a ramp interpolates it linearly in the interior
    ramp = np.arange(6, dtype=np.float32)
    x.data[...] = ramp
    layer.forward([x], [top])
    np.testing.assert_allclose(top.data[0, 0, 3, 1:-1], (np.arange(1, 11) - 0.5) / 2, atol=1e-6)


# --- shapes of MobileNet layers ----------------------------------------------------------------
def _conv_chain(path, batch=1):
    net = read_text(path, caffe_pb2.NetParameter())
    shapes = {"data": (batch, 3, 224, 224)}
    layers = []
    for lp in net.layer:
        if lp.type == "Pooling":
            break
        if lp.type in ("Convolution", "DepthwiseConvolution"):
            layer = create_layer(lp)
            bottom = Blob(shapes[lp.bottom[0]])
            top = Blob()
            layer.setup([bottom], [top])
            shapes[lp.top[0]] = top.shape
            layers.append((layer, lp.bottom[0], lp.top[0]))
        else:
            shapes[lp.top[0]] = shapes[lp.bottom[0]]
    return layers, shapes


def test_mobilenet_layer_shapes_both_forms(models_dir):
    caffe_form, caffe_shapes = _conv_chain(models_dir / "mobilenet_caffe" /
                                           "mobilenet_deploy.prototxt")
    fork_form, fork_shapes = _conv_chain(models_dir / "depthwise_fork" /
                                         "depthwised_mobilenet_deploy.prototxt")
    assert len(caffe_form) == len(fork_form) == 27
    assert caffe_shapes["conv1"] == (1, 32, 112, 112)
    expected_sides = [112] * 3 + [56] * 4 + [28] * 4 + [14] * 12 + [7] * 4
    for (a, _, ta), (b, _, tb), side in zip(caffe_form, fork_form, expected_sides):
        assert [x.shape for x in a.blobs] == [x.shape for x in b.blobs]
        assert caffe_shapes[ta] == fork_shapes[tb]
        assert caffe_shapes[ta][2:] == (side, side)
        if b.type == "DepthwiseConvolution":
            assert a.group == a.channels and isinstance(a.engine, DepthwiseEngine)
            assert b.blobs[0].shape == (a.channels, 1, 3, 3)
    assert caffe_shapes[caffe_form[-1][2]] == (1, 1024, 7, 7)
    assert sum(layer.type == "DepthwiseConvolution" for layer, _, _ in fork_form) == 13


def test_mobilenet_caffe_form_and_fork_form_compute_the_same(models_dir):
    """Grouped Convolution and DepthwiseConvolution layers with the same weights: identical."""
    caffe_form, _ = _conv_chain(models_dir / "mobilenet_caffe" / "mobilenet_deploy.prototxt")
    fork_form, _ = _conv_chain(models_dir / "depthwise_fork" /
                               "depthwised_mobilenet_deploy.prototxt")
    caffe_form, fork_form = caffe_form[:8], fork_form[:8]        # down to 28x28, to stay quick
    for (a, _, _), (b, _, _) in zip(caffe_form, fork_form):
        b.blobs[0].data[...] = a.blobs[0].data
    x = blob((1, 3, 224, 224), seed=20)
    outs = []
    for chain in (caffe_form, fork_form):
        h = x
        for layer, _, _ in chain:
            top = Blob()
            layer.reshape([h], [top])
            layer.forward([h], [top])
            h = top
        outs.append(h.data)
    assert outs[0].shape == (1, 128, 28, 28) and np.abs(outs[0]).max() > 0
    np.testing.assert_array_equal(outs[0], outs[1])


# --- masks -------------------------------------------------------------------------------------
@pytest.mark.parametrize("typ,params,shape", [
    ("Convolution", "num_output: 4 group: 2 kernel_size: 3 pad: 1", (2, 4, 5, 5)),
    ("Convolution", "num_output: 4 kernel_size: 1", (2, 3, 4, 4)),
    ("Convolution", "num_output: 6 group: 3 kernel_size: 3 pad: 1 stride: 2", (2, 3, 5, 5)),
    ("Deconvolution", "num_output: 4 group: 2 kernel_size: 4 stride: 2 pad: 1", (2, 2, 3, 3)),
    ("DepthwiseConvolution", "num_output: 6 group: 3 kernel_size: 3 pad: 1", (2, 3, 5, 5)),
])
def test_masked_weights_get_zero_gradient(typ, params, shape):
    layer = conv_layer(params, typ)
    assert layer.prunable
    x = blob(shape, seed=21)
    top = forward(layer, [x])[0]
    w = layer.blobs[0]
    assert w.has_mask and not layer.blobs[1].has_mask
    mask = (np.random.default_rng(22).random(w.shape) > 0.4).astype(np.float32)
    w.mask = mask
    w.apply_mask()
    top.diff[...] = blob(top.shape, seed=23).data
    w.diff[...] = 0
    layer.backward([top], [True], [x])
    assert np.all(w.diff[mask == 0] == 0)
    assert np.count_nonzero(w.diff[mask == 1]) == np.count_nonzero(mask)


# --- parameters: defaults, loaded blobs, errors --------------------------------------------------
def test_defaults_constant_zero_filler_and_bias_term():
    layer = layer_from_text('type: "Convolution" convolution_param { num_output: 2 '
                            'kernel_size: 3 }')
    top = forward(layer, [blob((1, 2, 4, 4), seed=24)])[0]
    assert len(layer.blobs) == 2 and layer.blobs[0].shape == (2, 2, 3, 3)
    assert layer.blobs[1].shape == (2,)
    assert not layer.blobs[0].data.any() and not top.data.any()


def test_loaded_blobs_are_kept_and_checked():
    lp = caffe_pb2.LayerParameter(name="c", type="Convolution")
    lp.convolution_param.num_output = 2
    lp.convolution_param.kernel_size.append(1)
    lp.convolution_param.bias_term = False
    w = Blob.from_array(np.array([[[[2.0]]], [[[-1.0]]]], np.float32))
    lp.blobs.add().CopyFrom(w.to_proto())
    layer = create_layer(lp)
    x = Blob.from_array(np.full((1, 1, 2, 2), 3, np.float32))
    top = forward(layer, [x])[0]
    np.testing.assert_array_equal(top.data[0, :, 0, 0], [6, -3])
    lp.convolution_param.num_output = 3
    with pytest.raises(LayerSetupError, match=r"\(2, 1, 1, 1\).*\(3, 1, 1, 1\)"):
        forward(create_layer(lp), [x])
    lp.convolution_param.num_output = 2
    lp.convolution_param.bias_term = True
    with pytest.raises(LayerSetupError, match="number of weight blobs"):
        forward(create_layer(lp), [x])


@pytest.mark.parametrize("typ,params,shape,match", [
    ("Convolution", "num_output: 3 group: 2 kernel_size: 1", (1, 4, 3, 3),
     r"num_output \(3\).*group \(2\)"),
    ("Convolution", "num_output: 4 group: 2 kernel_size: 1", (1, 3, 3, 3),
     r"channels \(3\).*group \(2\)"),
    ("Convolution", "num_output: 2", (1, 1, 3, 3), "kernel_size must be specified"),
    ("Convolution", "num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3", (1, 1, 3, 3),
     "either kernel_size or kernel_h/kernel_w"),
    ("Convolution", "num_output: 2 kernel_size: 3 stride: 2 stride_h: 1", (1, 1, 3, 3),
     "either stride or stride_h/stride_w"),
    ("Convolution", "num_output: 2 kernel_size: 1 pad: 1 pad_w: 1", (1, 1, 3, 3),
     "either pad or pad_h/pad_w"),
    ("Convolution", "num_output: 2 kernel_h: 3", (1, 1, 3, 3), "filter dimensions must be"),
    ("Convolution", "num_output: 2 kernel_h: 3 kernel_w: 3", (1, 1, 3, 3, 3),
     "kernel_h & kernel_w can only be used for 2-D"),
    ("Convolution", "num_output: 2 kernel_size: 3 kernel_size: 3", (1, 1, 5, 5, 5),
     "once per spatial dimension"),
    ("Convolution", "num_output: 2 kernel_size: 0", (1, 1, 3, 3), "filter dimensions"),
    ("Convolution", "num_output: 2 kernel_size: 3 stride: 0", (1, 1, 3, 3), "stride dim"),
    ("Convolution", "kernel_size: 3", (1, 1, 3, 3), "num_output must be positive"),
    ("Convolution", "num_output: 1 kernel_size: 5", (1, 1, 2, 2), "negative output shape"),
    ("Deconvolution", "num_output: 2 kernel_size: 1 pad: 1", (1, 1, 1, 1),
     "negative output shape"),
    ("DepthwiseConvolution", "num_output: 8 group: 2 kernel_size: 3", (1, 4, 5, 5),
     r"group == input channels.*group 2 and 4 input channels"),
    ("DepthwiseConvolution", "num_output: 4 kernel_size: 3", (1, 4, 5, 5),
     r"group 1 and 4 input channels"),
    ("ConvolutionDepthwise", "num_output: 6 group: 4 kernel_size: 3", (1, 4, 5, 5),
     r"group 4 and 4 input channels|multiple of group"),
])
def test_errors(typ, params, shape, match):
    layer = conv_layer(params, typ, filler="")
    with pytest.raises(LayerSetupError, match=match) as info:
        forward(layer, [blob(shape, seed=25)])
    assert typ in str(info.value) and layer.name in str(info.value)


def test_reshape_errors_name_shapes():
    layer = conv_layer("num_output: 2 kernel_size: 3")
    forward(layer, [blob((1, 3, 5, 5), seed=26)])
    with pytest.raises(LayerSetupError, match=r"4 channels.*\(1, 4, 5, 5\).*set up with 3"):
        layer.reshape([blob((1, 4, 5, 5), seed=27)], [Blob()])
    with pytest.raises(LayerSetupError, match="num_axes may not change"):
        layer.reshape([blob((1, 3, 5), seed=27)], [Blob()])
    two = [blob((1, 3, 5, 5), seed=28), blob((1, 3, 6, 5), seed=29)]
    with pytest.raises(LayerSetupError, match="same shape"):
        layer.reshape(two, [Blob(), Blob()])


def test_registered_types():
    for typ, cls in (("Convolution", "Convolution"), ("Deconvolution", "Deconvolution"),
                     ("DepthwiseConvolution", "DepthwiseConvolution"),
                     ("ConvolutionDepthwise", "DepthwiseConvolution")):
        layer = conv_layer("num_output: 2 group: 2 kernel_size: 1", typ, filler="")
        assert type(layer).__name__ == cls and layer.type == typ and layer.prunable
    plain = conv_layer("num_output: 2 kernel_size: 3")
    forward(plain, [blob((1, 2, 4, 4), seed=30)])
    assert isinstance(plain.engine, GemmEngine)                 # group 1: im2col + GEMM


def test_geometry_pack_names_its_fields():
    """One packing of the geometry for every kernel (STYLE.md A3): fields in the order
    named, 3-D kernels' fill (0 for pad, 1 otherwise) only where asked."""
    from caffe_lite.layers.im2col import ConvGeometry
    g = ConvGeometry((3, 5), (2, 1), (1, 0), (1, 2))
    assert g.pack("kernel", "stride", "pad", "dilation") == (3, 5, 2, 1, 1, 0, 1, 2)
    assert g.pack("pad", "stride") == (1, 0, 2, 1)
    assert g.pack("input", "pad", "stride", "output", axes=3, input=(7, 9), output=(4, 3)) == \
        (1, 7, 9, 0, 1, 0, 1, 2, 1, 1, 4, 3)
    g1 = ConvGeometry((3,), (2,), (1,), (1,))
    assert g1.pack("output", "kernel", "stride", "pad", axes=2, output=(5,)) == (1, 5, 1, 3, 1, 2, 0, 1)


@pytest.mark.parametrize("text,shape,cpu,gpu", [
    ("num_output: 8 group: 8 kernel_size: 3", (1, 8, 5, 5), "depthwise", "depthwise"),
    ("num_output: 16 group: 8 kernel_size: 3", (1, 8, 5, 5), "depthwise", "depthwise"),
    ("num_output: 8 group: 2 kernel_size: 3", (1, 8, 5, 5), "gemm", "gemm"),
    ("num_output: 4 kernel_size: 3", (1, 1, 5, 5), "gemm", "depthwise"),
    ("num_output: 3 group: 3 kernel_size: 1", (1, 3, 2, 2, 2), "depthwise", "gemm"),
])
def test_one_engine_choice_for_both_devices(text, shape, cpu, gpu):
    from caffe_lite.layers.conv import select_engine
    layer = layer_from_text(f'type: "Convolution" convolution_param {{ {text} }}')
    layer.setup([blob(shape)], [Blob()])
    assert select_engine(layer, "cpu") == cpu and select_engine(layer, "gpu") == gpu
    assert type(layer.engine).__name__ == ("DepthwiseEngine" if cpu == "depthwise"
                                            else "GemmEngine")
