"""ONNX export, layer by layer: every mapped layer type (and its awkward configurations) runs in
ONNX Runtime to caffe-lite's numbers at the lowest, default and highest opset; the tricky
mappings are also checked against hand-computed values."""
import numpy as np
import pytest

import caffe_lite
from caffe_lite.errors import CaffeLiteError
from caffe_lite.io import onnx as onnx_io
from caffe_lite.io import parse_text
from caffe_lite.proto import caffe_pb2

from onnx_util import compare, need_onnx, net_from_text, random_inputs, run_onnx

onnx, ort = need_onnx()


def _net(body, shape=(2, 3, 7, 9), extra_inputs=()):
    """Input 'data' of `shape` (and named extra inputs), then `body`."""
    text = ""
    for name, s in (("data", shape),) + tuple(extra_inputs):
        dims = " ".join(f"dim: {d}" for d in s)
        text += (f'layer {{ name: "{name}" type: "Input" top: "{name}" '
                 f'input_param {{ shape {{ {dims} }} }} }}\n')
    return text + body


def _conv(name, bottom, n, extra="", t="Convolution", top=None):
    return (f'layer {{ name: "{name}" type: "{t}" bottom: "{bottom}" top: "{top or name}" '
            f'convolution_param {{ num_output: {n} {extra} }} }}\n')


def _layer(name, t, bottoms, tops=None, param=""):
    bs = " ".join(f'bottom: "{b}"' for b in bottoms.split())
    ts = " ".join(f'top: "{t}"' for t in (tops or name).split())
    return f'layer {{ name: "{name}" type: "{t}" {bs} {ts} {param} }}\n'


# (id, prototxt, input is positive)
CASES = [
    ("conv_pad_stride", _net(_conv("c", "data", 4, "kernel_size: 3 stride: 2 pad: 1")), False),
    ("conv_hw_no_bias", _net(_conv("c", "data", 5, "kernel_h: 3 kernel_w: 2 stride_h: 2 "
                                   "stride_w: 1 pad_h: 0 pad_w: 1 bias_term: false")), False),
    ("conv_dilation", _net(_conv("c", "data", 4, "kernel_size: 3 dilation: 2 pad: 2")), False),
    ("conv_group", _net(_conv("c", "data", 6, "kernel_size: 3 group: 3"), (2, 6, 7, 9)), False),
    ("conv_depthwise", _net(_conv("c", "data", 6, "kernel_size: 3 pad: 1 stride: 2 group: 6"),
                            (2, 6, 7, 9)), False),
    ("conv_depthwise_multiplier", _net(_conv("c", "data", 12, "kernel_size: 3 pad: 1 "
                                             "group: 6"), (2, 6, 7, 9)), False),
    ("depthwise_fork_layer", _net(_conv("c", "data", 6, "kernel_size: 3 pad: 1 group: 6",
                                        t="DepthwiseConvolution"), (2, 6, 7, 9)), False),
    ("conv_depthwise_alias", _net(_conv("c", "data", 6, "kernel_size: 3 pad: 1 group: 6",
                                        t="ConvolutionDepthwise"), (2, 6, 7, 9)), False),
    ("conv_input_smaller_than_kernel", _net(_conv("c", "data", 2, "kernel_size: 5 stride: 3"),
                                            (1, 2, 4, 4)), False),
    ("conv_1d", _net(_conv("c", "data", 4, "kernel_size: 3 pad: 1"), (2, 3, 11)), False),
    ("conv_3d", _net(_conv("c", "data", 2, "kernel_size: 3 pad: 1 stride: 2"), (1, 2, 5, 6, 7)),
     False),
    ("conv_axis_2", _net(_conv("c", "data", 4, "kernel_size: 3 axis: 2"), (2, 3, 3, 7, 9)),
     False),
    ("conv_two_bottoms", _net(_layer("c", "Convolution", "data data2", "c1 c2",
                                     "convolution_param { num_output: 4 kernel_size: 3 }"),
                              extra_inputs=[("data2", (2, 3, 7, 9))]), False),
    ("deconv", _net(_conv("d", "data", 4, "kernel_size: 4 stride: 2 pad: 1",
                          t="Deconvolution")), False),
    ("deconv_group_dilation", _net(_conv("d", "data", 6, "kernel_size: 3 stride: 2 pad: 1 "
                                         "group: 3 dilation: 2", t="Deconvolution"),
                                   (2, 6, 4, 5)), False),
    ("ip", _net(_layer("ip", "InnerProduct", "data", None,
                       "inner_product_param { num_output: 5 }")), False),
    ("ip_axis2_transpose", _net(_layer("ip", "InnerProduct", "data", None,
                                       "inner_product_param { num_output: 5 axis: 2 "
                                       "transpose: true bias_term: false }")), False),
    ("ip_2d", _net(_layer("ip", "InnerProduct", "data", None,
                          "inner_product_param { num_output: 3 }"), (4, 6)), False),
    ("pool_max_ceil", _net(_layer("p", "Pooling", "data", None,
                                  "pooling_param { pool: MAX kernel_size: 3 stride: 2 }")),
     False),
    ("pool_max_pad_ceil", _net(_layer("p", "Pooling", "data", None, "pooling_param { pool: MAX "
                                      "kernel_size: 3 stride: 2 pad: 1 }"), (2, 3, 8, 10)),
     False),
    ("pool_max_floor", _net(_layer("p", "Pooling", "data", None, "pooling_param { pool: MAX "
                                   "kernel_size: 2 stride: 2 round_mode: FLOOR }")), False),
    ("pool_max_mask_top", _net(_layer("p", "Pooling", "data", "p mask", "pooling_param { "
                                      "pool: MAX kernel_size: 3 stride: 2 pad: 1 }")), False),
    ("pool_ave_ceil", _net(_layer("p", "Pooling", "data", None, "pooling_param { pool: AVE "
                                  "kernel_size: 3 stride: 2 }")), False),
    ("pool_ave_pad", _net(_layer("p", "Pooling", "data", None, "pooling_param { pool: AVE "
                                 "kernel_size: 3 stride: 1 pad: 1 }")), False),
    ("pool_ave_pad_past", _net(_layer("p", "Pooling", "data", None, "pooling_param { pool: AVE "
                                      "kernel_size: 3 stride: 2 pad: 1 }"), (2, 3, 8, 10)),
     False),
    ("pool_ave_hw", _net(_layer("p", "Pooling", "data", None, "pooling_param { pool: AVE "
                                "kernel_h: 2 kernel_w: 4 stride_h: 3 stride_w: 2 pad_h: 1 "
                                "pad_w: 2 }")), False),
    ("pool_global_ave", _net(_layer("p", "Pooling", "data", None,
                                    "pooling_param { pool: AVE global_pooling: true }")), False),
    ("pool_global_max", _net(_layer("p", "Pooling", "data", None,
                                    "pooling_param { pool: MAX global_pooling: true }")), False),
    ("pool_stochastic_test", _net(_layer("p", "Pooling", "data", None, "pooling_param { pool: "
                                         "STOCHASTIC kernel_size: 3 stride: 2 }")), True),
    ("batchnorm_scale", _net(_layer("bn", "BatchNorm", "data", "data")
                             + _layer("sc", "Scale", "data", "data",
                                      "scale_param { bias_term: true }")), False),
    ("batchnorm_alone_2d", _net(_layer("bn", "BatchNorm", "data"), (5, 4)), False),
    ("batchnorm_batch_stats", _net(_layer("bn", "BatchNorm", "data", None,
                                          "batch_norm_param { use_global_stats: false }")),
     False),
    ("scale_no_bias_axis0", _net(_layer("sc", "Scale", "data", None,
                                        "scale_param { axis: 0 num_axes: 2 }")), False),
    ("scale_scalar", _net(_layer("sc", "Scale", "data", None, "scale_param { num_axes: 0 "
                                 "bias_term: true }")), False),
    ("scale_bottom", _net(_layer("sc", "Scale", "data s", None, "scale_param { axis: 1 }"),
                          extra_inputs=[("s", (3, 7))]), False),
    ("scale_bottom_bias", _net(_layer("sc", "Scale", "data s", None,
                                      "scale_param { axis: 0 bias_term: true }"),
                               extra_inputs=[("s", (2, 3))]), False),
    ("bias", _net(_layer("b", "Bias", "data", None, "bias_param { axis: 1 num_axes: 2 }")),
     False),
    ("bias_bottom", _net(_layer("b", "Bias", "data b2"), extra_inputs=[("b2", (3,))]), False),
    ("relu", _net(_layer("r", "ReLU", "data")), False),
    ("relu_leaky_in_place", _net(_layer("r", "ReLU", "data", "data",
                                        "relu_param { negative_slope: 0.2 }")), False),
    ("prelu", _net(_layer("r", "PReLU", "data")), False),
    ("prelu_shared_2d", _net(_layer("r", "PReLU", "data", None,
                                    "prelu_param { channel_shared: true }"), (4, 5)), False),
    ("elu", _net(_layer("e", "ELU", "data", None, "elu_param { alpha: 0.7 }")), False),
    ("sigmoid", _net(_layer("s", "Sigmoid", "data")), False),
    ("tanh", _net(_layer("t", "TanH", "data")), False),
    ("absval", _net(_layer("a", "AbsVal", "data")), False),
    ("power", _net(_layer("p", "Power", "data", None,
                          "power_param { power: 1.5 scale: 0.5 shift: 0.25 }")), True),
    ("power_square", _net(_layer("p", "Power", "data", None,
                                 "power_param { power: 2 shift: -1 }")), False),
    ("power_affine", _net(_layer("p", "Power", "data", None,
                                 "power_param { scale: -2 shift: 3 }")), False),
    ("power_identity", _net(_layer("p", "Power", "data")), False),
    ("power_constant", _net(_layer("p", "Power", "data", None,
                                   "power_param { power: 2 scale: 0 shift: 3 }")), False),
    ("exp", _net(_layer("e", "Exp", "data", None, "exp_param { base: 2 scale: 0.5 "
                        "shift: 0.3 }")), False),
    ("exp_natural", _net(_layer("e", "Exp", "data")), False),
    ("log", _net(_layer("l", "Log", "data", None, "log_param { base: 10 scale: 2 shift: 1 }")),
     True),
    ("log_natural", _net(_layer("l", "Log", "data")), True),
    ("bnll", _net(_layer("b", "BNLL", "data")), False),
    ("threshold", _net(_layer("t", "Threshold", "data", None,
                              "threshold_param { threshold: 0.3 }")), False),
    ("clip", _net(_layer("c", "Clip", "data", None, "clip_param { min: -0.5 max: 0.8 }")),
     False),
    ("swish", _net(_layer("s", "Swish", "data", None, "swish_param { beta: 1.5 }")), False),
    ("swish_beta1", _net(_layer("s", "Swish", "data")), False),
    ("dropout", _net(_layer("d", "Dropout", "data", "data")
                     + _layer("r", "ReLU", "data", "out")), False),
    ("eltwise_sum_coeff", _net(_layer("e", "Eltwise", "data d2 d3", None, "eltwise_param { "
                                      "coeff: 1 coeff: -0.5 coeff: 2 }"),
                               extra_inputs=[("d2", (2, 3, 7, 9)), ("d3", (2, 3, 7, 9))]),
     False),
    ("eltwise_sum", _net(_layer("e", "Eltwise", "data d2"), extra_inputs=[("d2", (2, 3, 7, 9))]),
     False),
    ("eltwise_prod", _net(_layer("e", "Eltwise", "data d2 d3", None,
                                 "eltwise_param { operation: PROD }"),
                          extra_inputs=[("d2", (2, 3, 7, 9)), ("d3", (2, 3, 7, 9))]), False),
    ("eltwise_max", _net(_layer("e", "Eltwise", "data d2 d3", None,
                                "eltwise_param { operation: MAX }"),
                         extra_inputs=[("d2", (2, 3, 7, 9)), ("d3", (2, 3, 7, 9))]), False),
    ("concat", _net(_layer("c", "Concat", "data d2", None, "concat_param { axis: 2 }"),
                    extra_inputs=[("d2", (2, 3, 4, 9))]), False),
    ("concat_legacy_dim", _net(_layer("c", "Concat", "data d2", None,
                                      "concat_param { concat_dim: 1 }"),
                               extra_inputs=[("d2", (2, 5, 7, 9))]), False),
    ("slice_points", _net(_layer("s", "Slice", "data", "a b c",
                                 "slice_param { axis: 3 slice_point: 2 slice_point: 7 }")),
     False),
    ("slice_equal", _net(_layer("s", "Slice", "data", "a b c", "slice_param { axis: 1 }")),
     False),
    ("split", _net(_layer("s", "Split", "data", "a b") + _layer("r", "ReLU", "a", "ra")
                   + _layer("t", "TanH", "b", "tb")), False),
    ("flatten", _net(_layer("f", "Flatten", "data")), False),
    ("flatten_axes", _net(_layer("f", "Flatten", "data", None,
                                 "flatten_param { axis: 2 end_axis: -1 }")), False),
    ("reshape", _net(_layer("r", "Reshape", "data", None,
                            "reshape_param { shape { dim: 0 dim: -1 dim: 3 } }")), False),
    ("reshape_axis", _net(_layer("r", "Reshape", "data", None, "reshape_param { axis: 2 "
                                 "num_axes: 1 shape { dim: 7 dim: 1 } }")), False),
    ("permute", _net(_layer("p", "Permute", "data", None,
                            "permute_param { order: 0 order: 2 order: 3 order: 1 }")), False),
    ("softmax", _net(_layer("s", "Softmax", "data")), False),
    ("softmax_axis", _net(_layer("s", "Softmax", "data", None, "softmax_param { axis: -1 }")),
     False),
    ("lrn_across", _net(_layer("n", "LRN", "data", None, "lrn_param { local_size: 3 "
                               "alpha: 0.5 beta: 0.75 k: 2 }"), (2, 6, 5, 4)), False),
    ("lrn_within", _net(_layer("n", "LRN", "data", None, "lrn_param { local_size: 3 "
                               "alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL }")), False),
    ("crop", _net(_layer("c", "Crop", "data ref", None, "crop_param { axis: 2 offset: 1 "
                         "offset: 3 }"), extra_inputs=[("ref", (2, 3, 4, 5))]), False),
    ("crop_default_axis_one_offset", _net(_layer("c", "Crop", "data ref", None,
                                                 "crop_param { offset: 2 }"),
                                          extra_inputs=[("ref", (1, 1, 5, 6))]), False),
    ("argmax", _net(_layer("a", "ArgMax", "data", None,
                           "argmax_param { top_k: 3 out_max_val: true }")), False),
    ("argmax_axis", _net(_layer("a", "ArgMax", "data", None,
                                "argmax_param { axis: 1 top_k: 2 }")), False),
    ("argmax_axis_values", _net(_layer("a", "ArgMax", "data", None,
                                       "argmax_param { axis: 3 out_max_val: true }")), False),
]


@pytest.mark.parametrize("opset", [onnx_io.MIN_OPSET, onnx_io.DEFAULT_OPSET, onnx_io.MAX_OPSET])
@pytest.mark.parametrize("text,positive", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_layer_matches_onnx_runtime(text, positive, opset):
    net = net_from_text(text)
    feeds = random_inputs(net, positive=positive)
    export = onnx_io.to_onnx(net, opset=opset)
    assert export.model.opset_import[0].version == opset
    compare(net, export, feeds)


def test_every_opset_in_the_range_runs():
    """A net of the layers whose ONNX form depends on the opset (ReduceMean for batch
    statistics changes at 18; Split, Slice, Pad, TopK take tensor inputs) at each opset."""
    text = _net(_conv("c", "data", 4, "kernel_size: 3 pad: 1")
                + _layer("bn", "BatchNorm", "c", None, "batch_norm_param { use_global_stats: "
                         "false }")
                + _layer("p", "Pooling", "bn", None, "pooling_param { pool: AVE kernel_size: "
                         "3 stride: 2 pad: 1 }")
                + _layer("s", "Slice", "p", "a b", "slice_param { slice_point: 2 }")
                + _layer("k", "Power", "b", None, "power_param { scale: 0 shift: 2 power: 3 }")
                + _layer("e", "Eltwise", "a k", None, "eltwise_param { coeff: 1 coeff: 0.5 }")
                + _layer("sm", "Softmax", "e", None)
                + _layer("cat", "Concat", "sm b", None)
                + _layer("arg", "ArgMax", "cat", None, "argmax_param { top_k: 2 }")
                + _layer("cl", "Clip", "cat", None, "clip_param { min: 0 max: 0.5 }"),
                (2, 3, 8, 10))
    net = net_from_text(text)
    feeds = random_inputs(net)
    for opset in range(onnx_io.MIN_OPSET, onnx_io.MAX_OPSET + 1):
        export = onnx_io.to_onnx(net, opset=opset)
        assert sorted(export.outputs) == ["arg", "cl"]
        compare(net, export, feeds)


# --- hand-checked mappings -------------------------------------------------------------------
def _export_run(text, feeds, **kw):
    net = net_from_text(text)
    export = onnx_io.to_onnx(net, **kw)
    return net, export, run_onnx(export.model, feeds)


def _nodes(export, op):
    return [n for n in export.model.graph.node if n.op_type == op]


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_ceil_pooling_gets_explicit_end_pads():
    """5 wide, kernel 2, stride 2: Caffe's ceil gives 3 outputs (the last window holds only
    column 4); the node pads one column at the end instead of relying on ceil_mode."""
    x = np.arange(2 * 5, dtype=np.float32).reshape(1, 1, 2, 5)
    x[0, 0, 1, 4] = -7  # the last window's maximum is in row 0
    net, export, got = _export_run(
        _net(_layer("p", "Pooling", "data", None,
                     "pooling_param { pool: MAX kernel_size: 2 stride: 2 }"), (1, 1, 2, 5)),
        {"data": x})
    (node,) = _nodes(export, "MaxPool")
    assert _attrs(node)["pads"] == [0, 0, 0, 1]
    assert _attrs(node).get("ceil_mode", 0) == 0
    np.testing.assert_array_equal(got["p"], [[[[6, 8, 4]]]])


def test_ceil_pooling_drops_a_window_that_starts_in_the_padding():
    """4 wide, kernel 2, stride 2, pad 1: ceil((4 + 2 - 2) / 2) + 1 = 3, and the third window
    would start at column 3 inside the input, so Caffe keeps 3; 3 wide gives 3 - 1 = 2 since
    the third window would start in the padding."""
    for width, want in ((4, [[[[0, 2, 3]]]]), (3, [[[[0, 2]]]])):
        x = np.arange(width, dtype=np.float32).reshape(1, 1, 1, width)
        net, export, got = _export_run(
            _net(_layer("p", "Pooling", "data", None, "pooling_param { pool: MAX kernel_size: 2 "
                        "stride: 2 pad: 1 }"), (1, 1, 1, width)), {"data": x})
        np.testing.assert_array_equal(got["p"], want)
        assert got["p"].shape == net.blobs["p"].shape


def test_average_pooling_divides_like_caffe():
    """Width 5, kernel 3, stride 2, pad 1: Caffe's windows start at -1, 1, 3 and end at
    min(start + 3, 5 + 1) = 2, 4, 6; they divide by 3, 3, 3 (the pad counts) and sum the
    inputs inside: 0+1, 1+2+3, 3+4 with x = 0..4."""
    x = np.arange(5, dtype=np.float32).reshape(1, 1, 1, 5)
    text = _net(_layer("p", "Pooling", "data", None, "pooling_param { pool: AVE kernel_h: 1 "
                       "kernel_w: 3 stride: 2 pad_h: 0 pad_w: 1 }"), (1, 1, 1, 5))
    net, export, got = _export_run(text, {"data": x})
    np.testing.assert_allclose(got["p"], [[[[1 / 3, 6 / 3, 7 / 3]]]], rtol=1e-6)


def test_average_pooling_past_the_pad_counts_only_the_padded_input():
    """Width 6, kernel 3, stride 2, pad 1: ceil gives 4 windows starting at -1, 1, 3, 5; the
    last spans columns 5..7 but Caffe clips it at 6 + 1 = 7, so it divides by 2 (column 5 and
    the pad column 6), not by 3 and not by 1."""
    x = np.arange(6, dtype=np.float32).reshape(1, 1, 1, 6) + 1
    text = _net(_layer("p", "Pooling", "data", None, "pooling_param { pool: AVE kernel_h: 1 "
                       "kernel_w: 3 stride: 2 pad_h: 0 pad_w: 1 }"), (1, 1, 1, 6))
    net, export, got = _export_run(text, {"data": x})
    want = [(1 + 2) / 3, (2 + 3 + 4) / 3, (4 + 5 + 6) / 3, 6 / 2]
    np.testing.assert_allclose(got["p"][0, 0, 0], want, rtol=1e-6)
    net.forward(data=x)
    np.testing.assert_allclose(net.blobs["p"].data[0, 0, 0], want, rtol=1e-6)
    assert [n.op_type for n in export.model.graph.node] == ["Pad", "AveragePool"]


def test_batchnorm_and_scale_fold_into_one_node_with_caffes_statistics():
    """Caffe stores running sums and a scale factor: mean = blobs[0] / blobs[2]; the folded
    node's scale and B are the Scale layer's."""
    text = _net(_layer("bn", "BatchNorm", "data", "data", "batch_norm_param { eps: 0.001 }")
                + _layer("sc", "Scale", "data", "data", "scale_param { bias_term: true }"),
                (1, 2, 1, 2))
    net = caffe_lite.Net(parse_text(text, caffe_pb2.NetParameter()), caffe_lite.TEST)
    bn, sc = net.layers[1], net.layers[2]
    bn.blobs[0].data[...] = [4, -2]
    bn.blobs[1].data[...] = [8, 2]
    bn.blobs[2].data[...] = 4          # mean (1, -0.5), variance (2, 0.5)
    sc.blobs[0].data[...] = [3, -1]
    sc.blobs[1].data[...] = [0.5, 2]
    export = onnx_io.to_onnx(net)
    (node,) = export.model.graph.node
    assert node.op_type == "BatchNormalization"
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in export.model.graph.initializer}
    scale, b, mean, var = (inits[n] for n in node.input[1:])
    np.testing.assert_array_equal(mean, [1, -0.5])
    np.testing.assert_array_equal(var, [2, 0.5])
    np.testing.assert_array_equal(scale, [3, -1])
    np.testing.assert_array_equal(b, [0.5, 2])
    assert _attrs(node)["epsilon"] == pytest.approx(0.001)
    x = np.array([[[[1, 3]], [[0.5, -0.5]]]], np.float32)
    assert export.output_blobs == {"data_1": "data"}  # the input keeps the name "data"
    got = run_onnx(export.model, {"data": x})["data_1"]
    want = [[[[0.5, 3 * 2 / np.sqrt(2.001) + 0.5]],
             [[-1 * 1 / np.sqrt(0.501) + 2, 2]]]]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_batchnorm_with_a_zero_scale_factor_uses_zero_statistics():
    """An untrained BatchNorm (all blobs 0): Caffe uses mean 0 and variance 0, so y = x /
    sqrt(eps)."""
    text = _net(_layer("bn", "BatchNorm", "data", None, "batch_norm_param { eps: 0.01 }"),
                (1, 2, 1, 2))
    net = caffe_lite.Net(parse_text(text, caffe_pb2.NetParameter()), caffe_lite.TEST)
    x = np.array([[[[1, -2]], [[3, 0.5]]]], np.float32)
    got = run_onnx(onnx_io.to_onnx(net).model, {"data": x})["bn"]
    np.testing.assert_allclose(got, x * 10, rtol=1e-5)


def test_batchnorm_output_used_elsewhere_is_not_folded():
    text = _net(_layer("bn", "BatchNorm", "data", "bn")
                + _layer("sc", "Scale", "bn", "sc", "scale_param { bias_term: true }")
                + _layer("e", "Eltwise", "bn sc", "e"))
    net = net_from_text(text)
    export = onnx_io.to_onnx(net)
    assert [n.op_type for n in export.model.graph.node] == [
        "BatchNormalization", "Mul", "Add", "Add"]
    compare(net, export, random_inputs(net))


def test_eltwise_sum_coefficients():
    a = np.full((1, 1, 1, 2), 2, np.float32)
    b = np.array([[[[1, -4]]]], np.float32)
    text = _net(_layer("e", "Eltwise", "data b", None,
                       "eltwise_param { coeff: 0.5 coeff: -3 }"), (1, 1, 1, 2),
                extra_inputs=[("b", (1, 1, 1, 2))])
    net, export, got = _export_run(text, {"data": a, "b": b})
    np.testing.assert_allclose(got["e"], [[[[1 - 3, 1 + 12]]]])


def test_crop_offsets():
    x = np.arange(4 * 5, dtype=np.float32).reshape(1, 1, 4, 5)
    text = _net(_layer("c", "Crop", "data ref", None, "crop_param { axis: 2 offset: 1 "
                       "offset: 2 }"), (1, 1, 4, 5), extra_inputs=[("ref", (1, 1, 2, 3))])
    net, export, got = _export_run(text, {"data": x, "ref": np.zeros((1, 1, 2, 3), np.float32)})
    np.testing.assert_array_equal(got["c"], [[[[7, 8, 9], [12, 13, 14]]]])
    # The reference blob only gives a shape: it is not an input of the exported graph.
    assert [i.name for i in export.model.graph.input] == ["data"]


def test_slice_points():
    x = np.arange(6, dtype=np.float32).reshape(1, 6)
    text = _net(_layer("s", "Slice", "data", "a b c",
                       "slice_param { axis: 1 slice_point: 1 slice_point: 4 }"), (1, 6))
    net, export, got = _export_run(text, {"data": x})
    np.testing.assert_array_equal(got["a"], [[0]])
    np.testing.assert_array_equal(got["b"], [[1, 2, 3]])
    np.testing.assert_array_equal(got["c"], [[4, 5]])


def test_deconvolution_by_hand():
    """1 -> 1 channel, kernel 2, stride 2: each input value stamps the kernel times itself
    into its own 2x2 block; pad 1 then trims a ring."""
    w = np.array([[1, 2], [3, 4]], np.float32)
    x = np.array([[[[1, -1], [2, 0.5]]]], np.float32)
    stamp = np.block([[x[0, 0, i, j] * w for j in range(2)] for i in range(2)])
    for pad, want in ((0, stamp), (1, stamp[1:-1, 1:-1])):
        text = _net(_conv("d", "data", 1, f"kernel_size: 2 stride: 2 pad: {pad} "
                          "bias_term: false", t="Deconvolution"), (1, 1, 2, 2))
        net = net_from_text(text)
        net.params["d"][0].data[...] = w
        got = run_onnx(onnx_io.to_onnx(net).model, {"data": x})["d"]
        np.testing.assert_allclose(got[0, 0], want)


def test_inner_product_axis_by_hand():
    """axis 2 of (1, 2, 3): each of the 2 rows (length 3) times W (2 x 3) plus b."""
    x = np.array([[[1, 2, 3], [0, -1, 1]]], np.float32)
    text = _net(_layer("ip", "InnerProduct", "data", None,
                       "inner_product_param { num_output: 2 axis: 2 }"), (1, 2, 3))
    net = net_from_text(text)
    net.params["ip"][0].data[...] = [[1, 0, 1], [2, 1, 0]]
    net.params["ip"][1].data[...] = [10, 20]
    got = run_onnx(onnx_io.to_onnx(net).model, {"data": x})["ip"]
    np.testing.assert_array_equal(got, [[[14, 24], [11, 19]]])


def test_argmax_ties_go_to_the_larger_index_as_in_caffe():
    x = np.array([[1, 3, 3, 2, 3]], np.float32)
    text = _net(_layer("a", "ArgMax", "data", None, "argmax_param { top_k: 4 }"), (1, 5))
    net, export, got = _export_run(text, {"data": x})
    np.testing.assert_array_equal(got["a"], [[[4, 2, 1, 3]]])
    net.forward(data=x)
    np.testing.assert_array_equal(net.blobs["a"].data, got["a"])


def test_max_pooling_mask_top_is_caffes_index():
    x = np.array([[[[1, 5, 2], [7, 0, 3]]], [[[0, 0, 9], [8, 1, 1]]]], np.float32)
    text = _net(_layer("p", "Pooling", "data", "p mask", "pooling_param { pool: MAX "
                       "kernel_size: 2 stride: 2 }"), (2, 1, 2, 3))
    net, export, got = _export_run(text, {"data": x})
    np.testing.assert_array_equal(got["mask"], [[[[3, 5]]], [[[3, 2]]]])  # h * W + w


def test_power_constant_and_identity_forms():
    x = np.array([[1, -2, 3]], np.float32)
    for param, want in (("power: 0", [[1, 1, 1]]), ("power: 3 scale: 0 shift: 2", [[8, 8, 8]]),
                        ("", x)):
        text = _net(_layer("p", "Power", "data", None, f"power_param {{ {param} }}"), (1, 3))
        net, export, got = _export_run(text, {"data": x})
        np.testing.assert_array_equal(got["p"], want)


# --- what is refused -------------------------------------------------------------------------
def test_opset_outside_the_range_is_refused():
    net = net_from_text(_net(_layer("r", "ReLU", "data")))
    for opset in (onnx_io.MIN_OPSET - 1, onnx_io.MAX_OPSET + 1):
        with pytest.raises(CaffeLiteError, match=f"opset {opset} is not supported"):
            onnx_io.to_onnx(net, opset=opset)


def test_train_phase_net_is_refused():
    net = net_from_text(_net(_layer("r", "ReLU", "data")), phase=caffe_lite.TRAIN)
    with pytest.raises(CaffeLiteError, match="TRAIN phase"):
        onnx_io.to_onnx(net)


def test_unknown_output_name_is_refused():
    net = net_from_text(_net(_layer("r", "ReLU", "data", "r")))
    with pytest.raises(CaffeLiteError, match="no blob named 'nope'"):
        onnx_io.to_onnx(net, outputs=["nope"])


def test_requested_outputs_and_dead_layers():
    """Asking for an inner blob keeps only what it needs; an input no output reads is gone."""
    text = _net(_layer("r", "ReLU", "data", "r") + _layer("t", "TanH", "r", "t")
                + _layer("s", "Sigmoid", "d2", "s"), extra_inputs=[("d2", (1, 2))])
    net = net_from_text(text)
    export = onnx_io.to_onnx(net, outputs=["r"])
    assert list(export.outputs) == ["r"]
    assert [n.op_type for n in export.model.graph.node] == ["Relu"]
    assert list(export.inputs) == ["data"]
    default = onnx_io.to_onnx(net)
    assert sorted(default.outputs) == ["s", "t"]


def test_shared_weights_are_one_initializer():
    shared = ('convolution_param { num_output: 3 kernel_size: 1 } '
              'param { name: "w" } param { name: "b" }')
    text = _net(_layer("c1", "Convolution", "data", "c1", shared)
                + _layer("c2", "Convolution", "c1", "c2", shared))
    net = net_from_text(text)
    export = onnx_io.to_onnx(net)
    convs = _nodes(export, "Conv")
    assert len(convs) == 2 and convs[0].input[1:] == convs[1].input[1:]
    assert len(export.model.graph.initializer) == 2
    compare(net, export)


def test_checker_rejects_shapes_that_disagree_with_caffe_lite(monkeypatch):
    """Each export passes ONNX's shape inference in strict mode: a MaxPool without the ceil
    padding (2x2 outputs where Caffe has 3x3) is caught before anything is written."""
    from caffe_lite.io.onnx import converters
    original = converters.CONVERTERS["Pooling"]

    def floor_pooling(g, site):
        out = original(g, site)
        g.nodes[-1].attrs["pads"] = [0, 0, 0, 0]
        return out
    monkeypatch.setitem(converters.CONVERTERS, "Pooling", floor_pooling)
    net = net_from_text(_net(_layer("p", "Pooling", "data", None, "pooling_param { pool: MAX "
                                    "kernel_size: 2 stride: 2 }"), (1, 2, 5, 5)))
    with pytest.raises(CaffeLiteError, match="does not pass onnx.checker.*differ"):
        onnx_io.to_onnx(net)
