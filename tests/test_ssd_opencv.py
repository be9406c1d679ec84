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
from ssd_nets import CASES, PRIOR_A, PRIOR_B, random_weights, small_ssd

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (the test extra) is absent")

ROOT = pathlib.Path(__file__).resolve().parents[1]
MOBILENET_SSD = ROOT / "examples" / "ssd" / "mobilenet_ssd_deploy.prototxt"


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
    """OpenCV's blob `out` (or list of blobs) for input x."""
    cv = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    cv.setInput(x)
    return cv.forward(out) if isinstance(out, str) else dict(zip(out, cv.forward(out)))


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
    names = ["mbox_priorbox", "mbox_loc", "mbox_conf_flatten", "detection_out"]
    ref = opencv_detections(MOBILENET_SSD, weights, x, out=names)
    # the intermediate blobs first: priors, locations, class probabilities
    for name in names[:3]:
        np.testing.assert_allclose(net.blobs[name].data,
                                   ref[name].reshape(net.blobs[name].shape),
                                   rtol=1e-4, atol=1e-5, err_msg=name)
    det = out["detection_out"]
    assert det.shape == (1, 1, 100, 7)          # keep_top_k 100 of ...
    assert_same_detections(det, ref["detection_out"])

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
    ref = opencv_detections(proto, weights, x, out=["norm1", "mbox_prior", "detection_out"])
    for name in ("norm1", "mbox_prior"):
        np.testing.assert_allclose(net.blobs[name].data, ref[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    assert out.shape[2] >= 5 and set(out[0, 0, :, 0]) == {0, 1}    # both images detect
    assert_same_detections(out, ref["detection_out"])


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


def test_pruned_ssd_keeps_its_zeros_and_matches_opencv(tmp_path):
    """Magnitude-pruned convolutions of an SSD deploy net: an ordinary caffemodel whose zeros
    survive the round trip, and OpenCV detects what caffe-lite detects."""
    from caffe_lite import pruning
    proto = tmp_path / "small_ssd.prototxt"
    proto.write_text(small_ssd(PRIOR_A, PRIOR_B, CASES["all_nms_kept"]))
    net = caffe.Net(str(proto), caffe.TEST)
    g = random_weights(net, seed=7, conf_gain=2.0)
    pruning.prune_net(net, method="magnitude", sparsity=0.6)
    weights = tmp_path / "pruned.caffemodel"
    net.save(str(weights))
    back = caffe.Net(str(proto), caffe.TEST, weights=str(weights))
    for name, ps in back.params.items():
        if back.layer_dict[name].type == "Convolution":
            assert np.mean(ps[0].data == 0) == pytest.approx(0.6, abs=0.01), name
            np.testing.assert_array_equal(ps[0].mask, ps[0].data != 0)
    x = g.uniform(-1, 1, (2, 3, 24, 40)).astype(np.float32)
    out = back.forward(data=x)["detection_out"]
    assert out.shape[2] > 100
    assert_same_detections(out, opencv_detections(proto, weights, x))


def test_l1_filter_leaves_the_heads_inputs_alone(tmp_path):
    from caffe_lite import pruning
    proto = tmp_path / "small_ssd.prototxt"
    proto.write_text(small_ssd(PRIOR_A, PRIOR_B, CASES["center_size"]))
    net = caffe.Net(str(proto), caffe.TEST)
    random_weights(net, seed=7)
    before = {n: ps[0].data.copy() for n, ps in net.params.items()}
    pruning.prune_net(net, method="l1-filter", sparsity=0.5)
    # conv1 feeds Normalize, conv2 PriorBox, the heads Permute: nothing is removed
    for n, ps in net.params.items():
        np.testing.assert_array_equal(ps[0].data, before[n], err_msg=n)
