"""SSD nets against OpenCV's dnn module (readNetFromCaffe implements the SSD fork's PriorBox,
Normalize and DetectionOutput independently): the MobileNet-SSD deploy structure in
examples/ssd with random weights, and a small two-head SSD over the layers' options.

Detections must be equal: the same count, labels, and scores and boxes to float32 rounding.
OpenCV lists them in another order (and pads its top to keep_top_k rows with zeros); the rows
are compared sorted by (image, label, score).  OpenCV ignores nms_param.eta (adaptive NMS is
checked by hand in test_layers_detection.py)."""
import pathlib

import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.layers import bbox

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (the test extra) is absent")

ROOT = pathlib.Path(__file__).resolve().parents[1]
MOBILENET_SSD = ROOT / "examples" / "ssd" / "mobilenet_ssd_deploy.prototxt"


def random_weights(net, seed, conf_gain=1.0):
    """He-scaled Gaussian weights, small biases; the confidence heads' weights times
    conf_gain (a wider spread of class scores gives detections above the threshold)."""
    g = np.random.default_rng(seed)
    for name, ps in net.params.items():
        w = ps[0].data
        std = np.sqrt(2.0 / max(w[0].size, 1)) if w.ndim > 1 else 0.5
        if "mbox_conf" in name:
            std *= conf_gain
        w[...] = g.normal(1.0 if w.ndim <= 1 else 0.0, std, w.shape)
        if len(ps) > 1:
            ps[1].data[...] = g.normal(0, 0.05, ps[1].data.shape)
    return g


def save_for_opencv(net, path):
    """net.save, except that a channel_shared Normalize scale is written with shape [1]:
    OpenCV cannot hold the fork's 0-axis blob (caffe-lite reads both)."""
    net.save(str(path))
    p = caffe.caffe_pb2.NetParameter()
    p.ParseFromString(path.read_bytes())
    for lp in p.layer:
        if lp.type == "Normalize" and len(lp.blobs[0].shape.dim) == 0:
            lp.blobs[0].shape.dim.append(1)
    path.write_bytes(p.SerializeToString())


def opencv_detections(prototxt, caffemodel, x, out="detection_out"):
    cv = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    cv.setInput(x)
    return cv.forward(out)


def canonical(det):
    """Detection rows sorted by (image, label, score); OpenCV's zero padding dropped."""
    det = det.reshape(-1, 7)
    det = det[det[:, 2] > 0]
    return det[np.lexsort((det[:, 2], det[:, 1], det[:, 0]))]


def assert_fork_order(det):
    """Images in order, labels ascending within an image, scores descending within a label."""
    key = det[:, 0] * 1000 + det[:, 1]
    assert np.all(np.diff(key) >= 0)
    same = np.diff(key) == 0
    assert np.all(np.diff(det[:, 2])[same] <= 0)


def assert_same_detections(ours, ref):
    assert_fork_order(ours.reshape(-1, 7))
    a, b = canonical(ours), canonical(ref)
    assert a.shape == b.shape, f"{a.shape[0]} detections here, {b.shape[0]} in OpenCV"
    np.testing.assert_array_equal(a[:, :2], b[:, :2])
    np.testing.assert_allclose(a[:, 2:], b[:, 2:], rtol=1e-5, atol=2e-6)


# ------------------------------------------------------------------------------ MobileNet-SSD
@pytest.fixture(scope="module")
def mobilenet_ssd(tmp_path_factory):
    d = tmp_path_factory.mktemp("mssd")
    text = MOBILENET_SSD.read_text()
    net = caffe.Net(str(MOBILENET_SSD), caffe.TEST)
    g = random_weights(net, seed=1, conf_gain=3.0)
    weights = d / "mobilenet_ssd.caffemodel"
    net.save(str(weights))
    x = g.uniform(-1, 1, (1, 3, 300, 300)).astype(np.float32)
    # the same net keeping every detection NMS leaves (OpenCV needs keep_top_k > 0)
    all_kept = d / "all_kept.prototxt"
    all_kept.write_text(text.replace("keep_top_k: 100", "keep_top_k: 1000"))
    return net, weights, x, all_kept


def test_mobilenet_ssd_structure(mobilenet_ssd):
    net = mobilenet_ssd[0]
    assert net.blobs["mbox_priorbox"].shape == (1, 2, 1917 * 4)
    assert net.blobs["mbox_loc"].shape == (1, 1917 * 4)
    assert net.blobs["mbox_conf_flatten"].shape == (1, 1917 * 21)
    assert net.params["conv1/dw"][0].shape == (32, 1, 3, 3)      # depthwise, group 32
    assert net.blobs["conv17_2"].shape == (1, 128, 1, 1)


def test_mobilenet_ssd_matches_opencv(mobilenet_ssd):
    net, weights, x, all_kept = mobilenet_ssd
    out = net.forward(data=x)
    # the intermediate blobs first: priors, locations, class probabilities
    for name in ("mbox_priorbox", "mbox_loc", "mbox_conf_flatten"):
        ref = opencv_detections(MOBILENET_SSD, weights, x, out=name)
        np.testing.assert_allclose(net.blobs[name].data, ref.reshape(net.blobs[name].shape),
                                   rtol=1e-4, atol=1e-5, err_msg=name)
    det = out["detection_out"]
    assert det.shape == (1, 1, 100, 7)          # keep_top_k 100 of ...
    assert_same_detections(det, opencv_detections(MOBILENET_SSD, weights, x))

    every = caffe.Net(str(all_kept), caffe.TEST, weights=str(weights))
    det_all = every.forward(data=x)["detection_out"]
    assert_same_detections(det_all, opencv_detections(all_kept, weights, x))
    # ... the boxes NMS kept, fewer than the candidates above the threshold in each class
    conf = net.blobs["mbox_conf_flatten"].data.reshape(1917, 21)
    candidates = sum(len(bbox.max_score_index(conf[:, c], 0.25, 100)) for c in range(1, 21))
    kept = det_all.shape[2]
    assert 100 < kept < candidates and candidates - kept > 50, (kept, candidates)
    assert len(np.unique(det[0, 0, :, 1])) >= 4       # several classes


# ------------------------------------------------------------------------------ a small SSD
def small_ssd(prior_a, prior_b, det, norm="across_spatial: false channel_shared: false",
              classes=4):
    """Two heads over a 24 x 40 input: conv1 (12 x 20) through Normalize, conv2 (6 x 10)."""
    def head(name, n):
        return "".join(f"""
layer {{ name: "{name}_{k}" type: "Convolution" bottom: "{name}" top: "{name}_{k}"
        convolution_param {{ num_output: {n * m} kernel_size: 3 pad: 1 }} }}
layer {{ name: "{name}_{k}_perm" type: "Permute" bottom: "{name}_{k}" top: "{name}_{k}_perm"
        permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "{name}_{k}_flat" type: "Flatten" bottom: "{name}_{k}_perm"
        top: "{name}_{k}_flat" flatten_param {{ axis: 1 }} }}""" for k, m in (
            ("loc", 4 * det.get("loc_classes", 1)), ("conf", classes)))
    pa, pb = prior_a, prior_b
    return f"""name: "small_ssd"
input: "data" input_shape {{ dim: 2 dim: 3 dim: 24 dim: 40 }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param {{ num_output: 8 kernel_size: 3 stride: 2 pad: 1 }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "norm1" type: "Normalize" bottom: "conv1" top: "norm1"
        norm_param {{ {norm} scale_filler {{ type: "constant" value: 20 }} }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param {{ num_output: 8 kernel_size: 3 stride: 2 pad: 1 }} }}
{head("norm1", pa["n"])}
{head("conv2", pb["n"])}
layer {{ name: "norm1_prior" type: "PriorBox" bottom: "norm1" bottom: "data" top: "norm1_prior"
        prior_box_param {{ {pa["text"]} }} }}
layer {{ name: "conv2_prior" type: "PriorBox" bottom: "conv2" bottom: "data" top: "conv2_prior"
        prior_box_param {{ {pb["text"]} }} }}
layer {{ name: "mbox_loc" type: "Concat" bottom: "norm1_loc_flat" bottom: "conv2_loc_flat"
        top: "mbox_loc" concat_param {{ axis: 1 }} }}
layer {{ name: "mbox_conf" type: "Concat" bottom: "norm1_conf_flat" bottom: "conv2_conf_flat"
        top: "mbox_conf" concat_param {{ axis: 1 }} }}
layer {{ name: "mbox_prior" type: "Concat" bottom: "norm1_prior" bottom: "conv2_prior"
        top: "mbox_prior" concat_param {{ axis: 2 }} }}
layer {{ name: "conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "conf_reshape"
        reshape_param {{ shape {{ dim: 0 dim: -1 dim: {classes} }} }} }}
layer {{ name: "conf_softmax" type: "Softmax" bottom: "conf_reshape" top: "conf_softmax"
        softmax_param {{ axis: 2 }} }}
layer {{ name: "conf_flat" type: "Flatten" bottom: "conf_softmax" top: "conf_flat" }}
layer {{ name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc"
        bottom: "conf_flat" bottom: "mbox_prior" top: "detection_out"
        detection_output_param {{ num_classes: {classes} {det["text"]} }} }}
"""


PRIOR_A = dict(n=6, text="min_size: 4 min_size: 8 max_size: 7 max_size: 12 aspect_ratio: 2 "
                         "flip: false clip: true variance: 0.1 variance: 0.1 variance: 0.2 "
                         "variance: 0.2")
PRIOR_B = dict(n=6, text="min_size: 10 max_size: 20 aspect_ratio: 2 aspect_ratio: 0.5 "
                         "aspect_ratio: 3 flip: true clip: false step_h: 5 step_w: 4.5 "
                         "offset: 0.25 variance: 0.15")
# OpenCV wants share_location and background_label_id written out.  It reads no variances
# with variance_encoded_in_target and ignores img_h / img_w; those are checked by hand only.
DET = "nms_param { nms_threshold: 0.45 top_k: 60 } keep_top_k: 80 confidence_threshold: 0.3"
CASES = {
    "center_size": dict(text=f"{DET} share_location: true background_label_id: 0 "
                             "code_type: CENTER_SIZE"),
    "corner": dict(text=f"{DET} share_location: true background_label_id: 0 code_type: CORNER"),
    "per_class_boxes": dict(text=f"{DET} share_location: false background_label_id: 0 "
                                 "code_type: CENTER_SIZE", loc_classes=4),
    "background_2": dict(text=f"{DET} share_location: true background_label_id: 2 "
                              "code_type: CENTER_SIZE"),
    "all_nms_kept": dict(text="nms_param { nms_threshold: 0.45 top_k: 60 } keep_top_k: 400 "
                              "confidence_threshold: 0.3 share_location: true "
                              "background_label_id: 0 code_type: CENTER_SIZE"),
    "few_kept": dict(text="nms_param { nms_threshold: 0.3 top_k: 10 } keep_top_k: 7 "
                          "confidence_threshold: 0.5 code_type: CENTER_SIZE share_location: true "
                          "background_label_id: 0"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_small_ssd_matches_opencv(case, tmp_path):
    det = CASES[case]
    proto = tmp_path / "small_ssd.prototxt"
    proto.write_text(small_ssd(PRIOR_A, PRIOR_B, det))
    net = caffe.Net(str(proto), caffe.TEST)
    g = random_weights(net, seed=7, conf_gain=2.0)
    weights = tmp_path / "small_ssd.caffemodel"
    net.save(str(weights))
    x = g.uniform(-1, 1, (2, 3, 24, 40)).astype(np.float32)
    out = net.forward(data=x)["detection_out"]
    for name in ("norm1", "mbox_prior"):
        np.testing.assert_allclose(net.blobs[name].data,
                                   opencv_detections(proto, weights, x, out=name),
                                   rtol=1e-5, atol=1e-6, err_msg=name)
    assert out.shape[2] >= 5 and set(out[0, 0, :, 0]) == {0, 1}    # both images detect
    assert_same_detections(out, opencv_detections(proto, weights, x))


# (OpenCV refuses a per-channel scale with across_spatial: true)
@pytest.mark.parametrize("norm", ["across_spatial: true channel_shared: true",
                                  "across_spatial: false channel_shared: true"])
def test_normalize_matches_opencv(norm, tmp_path):
    proto = tmp_path / "norm.prototxt"
    proto.write_text(small_ssd(PRIOR_A, PRIOR_B, CASES["center_size"], norm=norm))
    net = caffe.Net(str(proto), caffe.TEST)
    g = random_weights(net, seed=3)
    weights = tmp_path / "norm.caffemodel"
    save_for_opencv(net, weights)
    net.copy_from(str(weights))                       # the [1] scale reads back here too
    x = g.uniform(-1, 1, (2, 3, 24, 40)).astype(np.float32)
    net.forward(data=x)
    np.testing.assert_allclose(net.blobs["norm1"].data,
                               opencv_detections(proto, weights, x, out="norm1"),
                               rtol=1e-5, atol=1e-6)
