"""The SSD fork's layers against hand-computed values: PriorBox, box decoding for each code
type, NMS (with the adaptive eta), DetectionOutput (keep_top_k, per-class locations, the
no-detection placeholder) and Normalize (forward values, finite-difference gradients); the
fork's proto fields and the refusal of its training layers."""
import math
import pathlib

import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.blob import Blob
from caffe_lite.data.transformer import DataTransformer
from caffe_lite.errors import DataError, LayerSetupError, UnknownLayerTypeError
from caffe_lite.io.prototxt import parse_text
from caffe_lite.layers import bbox
from caffe_lite.proto import caffe_pb2
from caffe_lite.testing import blob, check_gradient, forward, layer_from_text

F = np.float32


def priors_of(text, feat_shape, img_shape):
    layer = layer_from_text(f'type: "PriorBox" prior_box_param {{ {text} }}')
    top = forward(layer, [Blob(*feat_shape), Blob(*img_shape)])
    return top[0].data.reshape(2, -1, 4), layer


# ---------------------------------------------------------------------------------- PriorBox
def test_priorbox_hand_computed_boxes():
    # 2 x 2 feature map over an 8 x 8 image: step 4, cell centres 2 and 6.
    out, layer = priors_of("min_size: 4 max_size: 9 aspect_ratio: 2 flip: true "
                           "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2",
                           (1, 3, 2, 2), (1, 3, 8, 8))
    assert layer.num_priors == 4
    assert out.shape == (2, 2 * 2 * 4, 4)
    r2 = math.sqrt(2)
    cell00 = [
        [0, 0, 4 / 8, 4 / 8],                           # min_size square, side 4
        [-1 / 8, -1 / 8, 5 / 8, 5 / 8],                 # sqrt(4 * 9) = 6
        [(2 - 2 * r2) / 8, (2 - r2) / 8, (2 + 2 * r2) / 8, (2 + r2) / 8],   # 4 r2 x 4 / r2
        [(2 - r2) / 8, (2 - 2 * r2) / 8, (2 + r2) / 8, (2 + 2 * r2) / 8],   # flipped: 1/2
    ]
    np.testing.assert_allclose(out[0, :4], cell00, rtol=0, atol=1e-7)
    # cells in row-major order: (h, w) = (0, 1) is centred at x = 6, (1, 0) at y = 6
    np.testing.assert_allclose(out[0, 4], [4 / 8, 0, 1, 4 / 8], atol=1e-7)
    np.testing.assert_allclose(out[0, 8], [0, 4 / 8, 4 / 8, 1], atol=1e-7)
    np.testing.assert_allclose(out[0, 12], [4 / 8, 4 / 8, 1, 1], atol=1e-7)
    np.testing.assert_array_equal(out[1], np.tile(F([0.1, 0.1, 0.2, 0.2]), (16, 1)))


def test_priorbox_clip_and_explicit_geometry():
    out, _ = priors_of("min_size: 4 max_size: 9 clip: true", (1, 3, 2, 2), (1, 3, 8, 8))
    np.testing.assert_allclose(out[0, 1], [0, 0, 5 / 8, 5 / 8], atol=1e-7)
    assert out[0].min() == 0 and out[0].max() == 1
    # img_h / img_w and step_h / step_w override bottom[1] and the feature map; offset 0.25
    # puts the centres at x = 0.25 * 8, 1.25 * 8 and y = 0.25 * 6.  One variance for all.
    out, _ = priors_of("min_size: 2 img_h: 10 img_w: 20 step_h: 6 step_w: 8 offset: 0.25 "
                       "variance: 0.1", (1, 1, 1, 2), (1, 1, 99, 7))
    np.testing.assert_allclose(out[0], [[1 / 20, 0.5 / 10, 3 / 20, 2.5 / 10],
                                        [9 / 20, 0.5 / 10, 11 / 20, 2.5 / 10]], atol=1e-7)
    np.testing.assert_allclose(out[1], 0.1, rtol=1e-7)
    # img_size and step give both sides; no variance means 0.1
    a, _ = priors_of("min_size: 2 img_size: 10 step: 4", (1, 1, 2, 3), (1, 1, 5, 5))
    b, _ = priors_of("min_size: 2 img_h: 10 img_w: 10 step_h: 4 step_w: 4",
                     (1, 1, 2, 3), (1, 1, 5, 5))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a[1], 0.1, rtol=1e-7)


def test_priorbox_sizes_are_read_as_integers_and_ratios_deduplicated():
    # The fork stores min_size / max_size in ints: 4.9 is 4.
    a, _ = priors_of("min_size: 4.9 max_size: 9.5", (1, 1, 2, 2), (1, 1, 8, 8))
    b, _ = priors_of("min_size: 4 max_size: 9", (1, 1, 2, 2), (1, 1, 8, 8))
    np.testing.assert_array_equal(a, b)
    # 1 and repeats are ignored; 0.5 is already there as the flip of 2.
    _, layer = priors_of("min_size: 4 aspect_ratio: 1 aspect_ratio: 2 aspect_ratio: 2 "
                         "aspect_ratio: 0.5 aspect_ratio: 3", (1, 1, 1, 1), (1, 1, 8, 8))
    np.testing.assert_allclose(layer.aspect_ratios, [1, 2, 0.5, 3, 1 / 3], rtol=1e-7)
    _, layer = priors_of("min_size: 4 min_size: 6 aspect_ratio: 3 flip: false",
                         (1, 1, 1, 1), (1, 1, 8, 8))
    assert layer.num_priors == 4   # per min_size: the square and ratio 3
    np.testing.assert_allclose(layer.box_dims, [[4, 4], [4 * math.sqrt(3), 4 / math.sqrt(3)],
                                                [6, 6], [6 * math.sqrt(3), 6 / math.sqrt(3)]],
                               rtol=1e-6)


@pytest.mark.parametrize("text,match", [
    ("flip: true", "must provide min_size"),
    ("min_size: 0", "min_size must be positive"),
    ("min_size: 4 max_size: 4", "max_size must be greater than min_size"),
    ("min_size: 4 min_size: 5 max_size: 9", "as many max_size as min_size"),
    ("min_size: 4 variance: 0.1 variance: 0.2", "1 or 4 variance values"),
    ("min_size: 4 variance: 0", "variance must be positive"),
    ("min_size: 4 img_size: 8 img_h: 8 img_w: 8", "either img_size or img_h/img_w"),
    ("min_size: 4 img_h: 8", "img_h and img_w should be larger than 0"),
    ("min_size: 4 step: 2 step_w: 2 step_h: 2", "either step or step_h/step_w"),
    ("min_size: 4 aspect_ratio: -2", "aspect_ratio must be positive"),
])
def test_priorbox_errors(text, match):
    with pytest.raises(LayerSetupError, match=match):
        priors_of(text, (1, 1, 2, 2), (1, 1, 8, 8))


def test_priorbox_has_zero_gradient():
    layer = layer_from_text('type: "PriorBox" prior_box_param { min_size: 4 }')
    bottom = [blob((1, 2, 2, 2), seed=0), blob((1, 2, 8, 8), seed=1)]
    top = forward(layer, bottom)
    for b in bottom:
        b.diff[...] = 7
    top[0].diff[...] = 1
    layer.backward(top, [True, False], bottom)
    assert np.all(bottom[0].diff == 0) and np.all(bottom[1].diff == 7)


# ---------------------------------------------------------------------------------- decode
PRIOR = F([[0.1, 0.2, 0.5, 0.6]])           # 0.4 x 0.4, centre (0.3, 0.4)
VAR = F([[0.1, 0.1, 0.2, 0.2]])
LOC = F([[1.0, -2.0, 0.5, -1.0]])


@pytest.mark.parametrize("code,in_target,expect", [
    (bbox.CORNER, False, [0.1 + 0.1, 0.2 - 0.2, 0.5 + 0.1, 0.6 - 0.2]),
    (bbox.CORNER, True, [0.1 + 1, 0.2 - 2, 0.5 + 0.5, 0.6 - 1]),
    # offsets times the prior's width / height (0.4)
    (bbox.CORNER_SIZE, False, [0.1 + 0.04, 0.2 - 0.08, 0.5 + 0.04, 0.6 - 0.08]),
    (bbox.CORNER_SIZE, True, [0.1 + 0.4, 0.2 - 0.8, 0.5 + 0.2, 0.6 - 0.4]),
    # centre (0.3 + 0.1 * 1 * 0.4, 0.4 - 0.1 * 2 * 0.4), size 0.4 * (e^0.1, e^-0.2)
    (bbox.CENTER_SIZE, False, [0.34 - 0.2 * math.exp(0.1), 0.32 - 0.2 * math.exp(-0.2),
                               0.34 + 0.2 * math.exp(0.1), 0.32 + 0.2 * math.exp(-0.2)]),
    # centre (0.3 + 0.4, 0.4 - 0.8), size 0.4 * (e^0.5, e^-1)
    (bbox.CENTER_SIZE, True, [0.7 - 0.2 * math.exp(0.5), -0.4 - 0.2 * math.exp(-1),
                              0.7 + 0.2 * math.exp(0.5), -0.4 + 0.2 * math.exp(-1)]),
])
def test_decode_each_code_type(code, in_target, expect):
    out = bbox.decode(PRIOR, VAR, LOC, code, in_target)
    assert out.dtype == F and out.shape == (1, 4)
    np.testing.assert_allclose(out[0], expect, rtol=0, atol=2e-7)


def test_decode_broadcasts_over_images_and_classes():
    loc = np.stack([LOC * 0, LOC]).reshape(2, 1, 1, 4)       # [images, classes, priors, 4]
    out = bbox.decode(PRIOR, VAR, loc, bbox.CENTER_SIZE, False)
    np.testing.assert_allclose(out[0, 0, 0], PRIOR[0], atol=1e-7)
    np.testing.assert_array_equal(out[1, 0], bbox.decode(PRIOR, VAR, LOC, bbox.CENTER_SIZE, False))


# ---------------------------------------------------------------------------------- NMS
#  A [0,0,1,1]; B its top 80 % (IoU .8); C shifted right by .5 (IoU 1/3 with A, .2857 with
#  B); D shifted by .05 (IoU .905 with A); E far away; F = A; H shifted by .7 (IoU .176 with
#  A, .667 with C).
BOXES = F([[0, 0, 1, 1], [0, 0, 1, 0.8], [0.5, 0, 1.5, 1], [0.05, 0, 1.05, 1],
           [3, 3, 4, 4], [0, 0, 1, 1], [0.7, 0, 1.7, 1]])
SCORES = F([0.9, 0.8, 0.7, 0.6, 0.2, 0.1, 0.16])
A, B, C, D, E, Fb, H = range(7)


def test_overlap_values():
    iou = bbox.overlap(BOXES[A], bbox.box_size(BOXES[A]), BOXES, bbox.box_size(BOXES))
    np.testing.assert_allclose(iou, [1, 0.8, 1 / 3, 0.95 / 1.05, 0, 1, 0.3 / 1.7], rtol=1e-6)
    touching = F([[1, 0, 2, 1]])
    assert bbox.overlap(BOXES[A], F(1), touching, bbox.box_size(touching))[0] == 0
    inverted = F([[0.8, 0.8, 0.2, 0.2]])
    assert bbox.box_size(inverted)[0] == 0


@pytest.mark.parametrize("kwargs,kept", [
    # B (.8) and D (.905) overlap A; H overlaps C by .667
    (dict(score_threshold=0.15, nms_threshold=0.5), [A, C, E]),
    (dict(score_threshold=0.15, nms_threshold=0.6), [A, C, E]),
    # the scores must be strictly above the threshold: C's .7 is not
    (dict(score_threshold=0.7, nms_threshold=0.5), [A]),
    # top_k limits the candidates (A, B) before NMS, not the boxes kept
    (dict(score_threshold=0.15, nms_threshold=0.5, top_k=2), [A]),
    (dict(score_threshold=0.15, nms_threshold=0.85), [A, B, C, E, H]),
    # eta .9: .85 -> .765 after A, so B (.8) goes; -> .6885 after C; -> .6197 after E, so H
    # (.667 with C) goes too
    (dict(score_threshold=0.15, nms_threshold=0.85, eta=0.9), [A, C, E]),
    # eta .5: .6 -> .3 after A, so C (1/3) goes; .3 is below .5 and stays, so H (.176) is kept
    (dict(score_threshold=0.15, nms_threshold=0.6, eta=0.5), [A, E, H]),
    (dict(score_threshold=-1.0, nms_threshold=0.99), [A, B, C, D, E, H]),  # F = A: IoU 1
])
def test_nms(kwargs, kept):
    assert bbox.nms(BOXES, SCORES, **kwargs) == kept


def test_nms_ties_keep_index_order():
    boxes = F([[0, 0, 1, 1], [2, 2, 3, 3], [0, 0, 1, 1]])
    assert bbox.nms(boxes, F([0.5, 0.5, 0.5]), 0.0, 0.5) == [0, 1]
    assert bbox.max_score_index(F([0.3, 0.5, 0.3, 0.5]), 0.0, -1).tolist() == [1, 3, 0, 2]
    scores = np.tile(F([0.25, 0.75]), 50)
    assert bbox.max_score_index(scores, 0.0, -1).tolist() == \
        list(range(1, 100, 2)) + list(range(0, 100, 2))


def test_nms_keeps_an_overlap_equal_to_the_threshold():
    boxes = F([[0, 0, 1, 1], [0, 0, 1, 0.5]])          # IoU exactly 0.5
    assert bbox.nms(boxes, F([0.9, 0.8]), 0.0, 0.5) == [0, 1]
    assert bbox.nms(boxes, F([0.9, 0.8]), 0.0, 0.49) == [0]
    # boxes overflowed to infinity overlap by NaN, which is not <= the threshold: suppressed
    inf = F([[-np.inf, -np.inf, np.inf, np.inf]] * 2)
    with np.errstate(invalid="ignore"):
        assert bbox.nms(inf, F([0.9, 0.8]), 0.0, 0.5) == [0]
        assert bbox.nms(inf, F([0.9, 0.8]), 0.0, 0.7, eta=0.9) == [0]


# ---------------------------------------------------------------------------------- DetectionOutput
PRIORS3 = F([[0, 0, 0.5, 0.5], [0.1, 0, 0.6, 0.5], [0.5, 0.5, 1, 1]])   # IoU(P0, P1) = 2/3
CONF3 = F([[0.1, 0.6, 0.3], [0.2, 0.7, 0.1], [0.5, 0.2, 0.3]])          # [prior, class]


def detection_out(params, loc, conf, priors=PRIORS3, var=0.1):
    p = np.concatenate([priors.reshape(-1), np.full(priors.size, var, F)]).reshape(1, 2, -1)
    layer = layer_from_text(f'type: "DetectionOutput" detection_output_param {{ {params} }}',
                            caffe_pb2.TEST)
    n = conf.shape[0]
    return forward(layer, [blob(loc.reshape(n, -1)), blob(conf.reshape(n, -1)), blob(p)])[0]


BASE = "num_classes: 3 nms_param { nms_threshold: 0.5 } confidence_threshold: 0.25"


@pytest.mark.parametrize("code", ["CORNER", "CENTER_SIZE", "CORNER_SIZE"])
def test_detection_output_rows(code):
    # zero offsets decode to the priors themselves, whatever the code type
    top = detection_out(f"{BASE} code_type: {code}", np.zeros((1, 3, 4), F), CONF3[None])
    assert top.shape == (1, 1, 3, 7)
    # class 1: P1 (.7) kept, P0 (.6) suppressed (IoU 2/3); class 2: P0 and P2 tie at .3 and
    # both stay (no overlap), in index order.  Background (class 0) is skipped.
    want = [[0, 1, 0.7, *PRIORS3[1]], [0, 2, 0.3, *PRIORS3[0]], [0, 2, 0.3, *PRIORS3[2]]]
    np.testing.assert_allclose(top.data[0, 0], want, rtol=0, atol=1e-7)


def test_detection_output_keep_top_k_and_background():
    top = detection_out(f"{BASE} keep_top_k: 2", np.zeros((1, 3, 4), F), CONF3[None])
    np.testing.assert_allclose(top.data[0, 0], [[0, 1, 0.7, *PRIORS3[1]],
                                                [0, 2, 0.3, *PRIORS3[0]]], atol=1e-7)
    top = detection_out(f"{BASE} keep_top_k: 0", np.zeros((1, 3, 4), F), CONF3[None])
    np.testing.assert_array_equal(top.data, [[[[0, -1, -1, -1, -1, -1, -1]]]])
    # keep_top_k re-sorts by score and keeps the rows grouped by class
    top = detection_out(f"{BASE} keep_top_k: 2 background_label_id: 2",
                        np.zeros((1, 3, 4), F), CONF3[None])
    np.testing.assert_allclose(top.data[0, 0, :, :3], [[0, 0, 0.5], [0, 1, 0.7]], atol=1e-7)
    # background_label_id -1: every class is a class (here class 0 keeps P2 at .5)
    top = detection_out(f"{BASE} background_label_id: -1", np.zeros((1, 3, 4), F), CONF3[None])
    np.testing.assert_allclose(top.data[0, 0, :, :3],
                               [[0, 0, 0.5], [0, 1, 0.7], [0, 2, 0.3], [0, 2, 0.3]], atol=1e-7)


def test_detection_output_batches_and_the_no_detection_placeholder():
    bg_only = F([[0.9, 0.05, 0.05]] * 3)
    top = detection_out(BASE, np.zeros((2, 3, 4), F), np.stack([bg_only, CONF3]))
    np.testing.assert_allclose(top.data[0, 0, :, :3], [[1, 1, 0.7], [1, 2, 0.3], [1, 2, 0.3]],
                               atol=1e-7)
    # no detection in any image: the fork's one placeholder row per image
    top = detection_out(BASE, np.zeros((2, 3, 4), F), np.stack([bg_only, bg_only]))
    np.testing.assert_array_equal(top.data, [[[[0, -1, -1, -1, -1, -1, -1],
                                               [1, -1, -1, -1, -1, -1, -1]]]])


def test_detection_output_per_class_locations():
    # share_location: false gives a box per prior and class: class 2 moves P2 onto P0
    # (CORNER, offsets times variance 0.1), which NMS then suppresses.
    loc = np.zeros((1, 3, 3, 4), F)
    loc[0, 2, 2] = -5.0
    loc[0, 1, 0] = 3.0          # the background's boxes are never used
    top = detection_out(f"{BASE} share_location: false", loc, CONF3[None])
    np.testing.assert_allclose(top.data[0, 0], [[0, 1, 0.7, *PRIORS3[1]],
                                                [0, 2, 0.3, *PRIORS3[0]]], atol=1e-7)


def test_detection_output_variance_encoded_in_target():
    loc = np.zeros((1, 3, 4), F)
    loc[0, 1] = [0.1, 0.0, 0.1, 0.0]
    top = detection_out(f"{BASE} variance_encoded_in_target: true", loc, CONF3[None], var=7.0)
    np.testing.assert_allclose(top.data[0, 0, 0, 3:], PRIORS3[1] + [0.1, 0, 0.1, 0], atol=1e-7)


def test_detection_output_ignores_result_files_with_a_warning(caplog):
    # VGG-SSD's deploy.prototxt carries the fork's evaluation output settings
    save = ('save_output_param { output_directory: "/nonexistent/VOC2007/Main" '
            'output_name_prefix: "comp4_det_test_" output_format: "VOC" '
            'label_map_file: "data/VOC0712/labelmap_voc.prototxt" '
            'name_size_file: "data/VOC0712/test_name_size.txt" num_test_image: 4952 }')
    with caplog.at_level("WARNING", logger="caffe_lite"):
        top = detection_out(f"{BASE} {save} visualize: true", np.zeros((1, 3, 4), F),
                            CONF3[None])
    assert "save_output_param is ignored" in caplog.text and "visualize is ignored" in caplog.text
    assert top.shape == (1, 1, 3, 7)


def test_detection_output_errors():
    with pytest.raises(LayerSetupError, match="num_classes"):
        detection_out("nms_param { nms_threshold: 0.5 }", np.zeros((1, 3, 4), F), CONF3[None])
    with pytest.raises(LayerSetupError, match="eta"):
        detection_out(f"{BASE} nms_param {{ eta: 1.5 }}", np.zeros((1, 3, 4), F), CONF3[None])
    with pytest.raises(LayerSetupError, match="location predictions"):
        detection_out(BASE, np.zeros((1, 3, 8), F), CONF3[None])
    with pytest.raises(LayerSetupError, match="confidence predictions"):
        detection_out(BASE, np.zeros((1, 3, 4), F), np.zeros((1, 3, 4), F))
    with pytest.raises(LayerSetupError, match="no positive width"):
        detection_out(f"{BASE} code_type: CENTER_SIZE", np.zeros((1, 3, 4), F), CONF3[None],
                      priors=F([[0, 0, 0, 0.5], [0, 0, 1, 1], [0, 0, 1, 1]]))


# ---------------------------------------------------------------------------------- Normalize
X = F([[[[3, 0]], [[4, 5]]]])          # 2 channels at 2 positions: norms 5 and 5 per position


@pytest.mark.parametrize("params,expect", [
    ("across_spatial: false", [[0.6, 0], [0.8, 1]]),
    ("across_spatial: true", [[3 / math.sqrt(50), 0], [4 / math.sqrt(50), 5 / math.sqrt(50)]]),
    ("across_spatial: false channel_shared: false scale_filler { type: 'constant' value: 2 }",
     [[1.2, 0], [1.6, 2]]),
    ("across_spatial: false scale_filler { type: 'constant' value: 20 }", [[12, 0], [16, 20]]),
])
def test_normalize_forward(params, expect):
    top = forward(layer_from_text(f'type: "Normalize" norm_param {{ {params} }}'), [blob(X)])
    np.testing.assert_allclose(top[0].data[0, :, 0], expect, rtol=1e-6)


def test_normalize_per_channel_scale_across_spatial():
    layer = layer_from_text('type: "Normalize" norm_param { channel_shared: false }')
    x = blob(X)
    layer.setup([x], [Blob()])
    layer.blobs[0].data[...] = [2, 3]
    top = Blob()
    layer.setup([x], [top])
    layer.forward([x], [top])
    n = math.sqrt(50)
    np.testing.assert_allclose(top.data[0, :, 0], [[6 / n, 0], [12 / n, 15 / n]], rtol=1e-6)


def test_normalize_scale_blob_and_eps():
    layer = layer_from_text('type: "Normalize" norm_param { channel_shared: false }')
    forward(layer, [blob((2, 3, 4, 5), seed=0)])
    assert layer.blobs[0].shape == (3,) and np.all(layer.blobs[0].data == 1)
    layer = layer_from_text('type: "Normalize"')
    forward(layer, [blob((2, 3, 4, 5), seed=0)])
    assert layer.blobs[0].shape == () and layer.blobs[0].data == 1
    # eps joins the sum of squares: 0 stays 0; 1 / sqrt(1 + 3) = 0.5
    top = forward(layer_from_text('type: "Normalize" norm_param { eps: 3 }'),
                  [blob(F([[[[1.0]], [[0.0]]]]))])
    np.testing.assert_allclose(top[0].data.ravel(), [0.5, 0], rtol=1e-6)
    with pytest.raises(LayerSetupError, match="number of axes"):
        forward(layer_from_text('type: "Normalize"'), [blob((5,), seed=0)])


@pytest.mark.parametrize("across", ["true", "false"])
@pytest.mark.parametrize("shared", ["true", "false"])
def test_normalize_gradient(across, shared):
    text = (f'type: "Normalize" norm_param {{ across_spatial: {across} channel_shared: {shared} '
            f'scale_filler {{ type: "gaussian" mean: 1 std: 0.5 }} }}')
    check_gradient(layer_from_text(text), [blob((2, 3, 3, 4), seed=3)])


def test_normalize_in_place_and_2d():
    text = ('type: "Normalize" norm_param { across_spatial: false channel_shared: false '
            'scale_filler { type: "uniform" min: 0.5 max: 2 } }')
    x = blob((2, 4, 3, 3), seed=4)
    caffe.set_random_seed(1)
    ref = layer_from_text(text)
    out = forward(ref, [x])[0]
    y = blob(x.data.copy())
    caffe.set_random_seed(1)
    inplace = layer_from_text(text)
    inplace.setup([y], [y])
    inplace.forward([y], [y])
    np.testing.assert_array_equal(y.data, out.data)
    g = np.random.default_rng(0).uniform(-1, 1, out.shape).astype(F)
    out.diff[...] = g
    ref.backward([out], [True], [x])
    y.diff[...] = g
    inplace.backward([y], [True], [y])
    np.testing.assert_allclose(y.diff, x.diff, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(inplace.blobs[0].diff, ref.blobs[0].diff, rtol=1e-6)
    # a 2-D bottom is N x C with one position
    top = forward(layer_from_text('type: "Normalize" norm_param { across_spatial: false }'),
                  [blob(F([[3, 4]]))])
    np.testing.assert_allclose(top[0].data, [[0.6, 0.8]], rtol=1e-6)


# ---------------------------------------------------------------------------------- proto
def test_fork_field_numbers():
    lp = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert {n: lp[n].number for n in (
        "annotated_data_param", "multibox_loss_param", "permute_param", "prior_box_param",
        "detection_output_param", "detection_evaluate_param", "norm_param",
        "video_data_param")} == {
        "annotated_data_param": 200, "multibox_loss_param": 201, "permute_param": 202,
        "prior_box_param": 203, "detection_output_param": 204,
        "detection_evaluate_param": 205, "norm_param": 206, "video_data_param": 207}
    # wire bytes: field 206 (norm_param) holding field 3 (channel_shared) = false
    p = caffe_pb2.LayerParameter()
    p.norm_param.channel_shared = False
    assert p.SerializeToString() == b"\xf2\x0c\x02\x18\x00"
    d = caffe_pb2.DetectionOutputParameter.DESCRIPTOR.fields_by_name
    assert [d[n].number for n in ("num_classes", "share_location", "background_label_id",
                                  "nms_param", "save_output_param", "code_type", "keep_top_k",
                                  "variance_encoded_in_target", "confidence_threshold")] == \
        [1, 2, 3, 4, 5, 6, 7, 8, 9]
    pb = caffe_pb2.PriorBoxParameter()
    assert (pb.flip, pb.clip, pb.offset, caffe_pb2.NonMaximumSuppressionParameter().eta,
            caffe_pb2.NonMaximumSuppressionParameter().nms_threshold) == \
        (True, False, 0.5, 1.0, pytest.approx(0.3))
    assert caffe_pb2.PriorBoxParameter.CORNER_SIZE == 3


TRAIN_NET = """
name: "SSD training (the fork's layers)"
layer {
  name: "data" type: "AnnotatedData" top: "data" top: "label"
  include { phase: TRAIN }
  transform_param {
    mirror: true mean_value: 104 mean_value: 117 mean_value: 123
    resize_param { prob: 1 resize_mode: WARP height: 300 width: 300 interp_mode: LINEAR
                   interp_mode: AREA }
    emit_constraint { emit_type: CENTER }
    distort_param { brightness_prob: 0.5 brightness_delta: 32 }
    expand_param { prob: 0.5 max_expand_ratio: 4 }
  }
  data_param { source: "trainval_lmdb" batch_size: 32 backend: LMDB }
  annotated_data_param {
    batch_sampler { sampler { min_scale: 0.3 max_scale: 1 } max_sample: 1 max_trials: 50
                    sample_constraint { min_jaccard_overlap: 0.1 } }
    label_map_file: "labelmap_voc.prototxt"
  }
}
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 8 kernel_size: 3 } }
layer { name: "mbox_loss" type: "MultiBoxLoss" bottom: "conv" bottom: "conv" bottom: "conv"
        bottom: "label" top: "mbox_loss" propagate_down: true propagate_down: true
        propagate_down: false propagate_down: false
  loss_param { normalization: VALID }
  multibox_loss_param { loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1
    num_classes: 21 share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5
    use_prior_for_matching: true background_label_id: 0 use_difficult_gt: true
    neg_pos_ratio: 3 neg_overlap: 0.5 code_type: CENTER_SIZE ignore_cross_boundary_bbox: false
    mining_type: MAX_NEGATIVE }
}
layer { name: "eval" type: "DetectionEvaluate" bottom: "conv" bottom: "label" top: "eval"
        include { phase: TEST }
        detection_evaluate_param { num_classes: 21 background_label_id: 0
                                   overlap_threshold: 0.5 evaluate_difficult_gt: false } }
"""


def test_training_prototxts_parse_and_their_layers_are_refused(tmp_path):
    net = parse_text(TRAIN_NET, caffe_pb2.NetParameter())
    lp = net.layer[0]
    assert lp.transform_param.resize_param.interp_mode == [1, 2]
    assert lp.annotated_data_param.batch_sampler[0].sampler.min_scale == pytest.approx(0.3)
    assert net.layer[2].multibox_loss_param.code_type == caffe_pb2.PriorBoxParameter.CENTER_SIZE
    path = tmp_path / "train.prototxt"
    path.write_text(TRAIN_NET)
    with pytest.raises(UnknownLayerTypeError, match="unsupported layer type 'AnnotatedData'"):
        caffe.Net(str(path), caffe.TRAIN)
    for t in ("MultiBoxLoss", "DetectionEvaluate", "VideoData"):
        with pytest.raises(UnknownLayerTypeError, match=f"unsupported layer type '{t}'"):
            layer_from_text(f'type: "{t}"')
    # the fork's augmentation on an ordinary data layer is refused, not silently ignored
    p = caffe_pb2.TransformationParameter()
    p.expand_param.max_expand_ratio = 4
    with pytest.raises(DataError, match="expand_param is the SSD fork's data augmentation"):
        DataTransformer(p, where="layer 'data'")


def test_example_detect_script(tmp_path, capsys):
    """examples/ssd/detect.py (docs/ssd.md): MobileNet-SSD's preprocessing of an image file,
    detections printed in the image's pixels."""
    import importlib.util
    Image = pytest.importorskip("PIL.Image")
    spec = importlib.util.spec_from_file_location(
        "ssd_detect", pathlib.Path(__file__).resolve().parents[1] / "examples/ssd/detect.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    img = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "img.png")
    Image.fromarray(np.full((240, 320, 3), [10, 200, 90], np.uint8)).save(tmp_path / "c.png")
    x, size = mod.preprocess(tmp_path / "c.png", 300, 300)
    assert size == (240, 320) and x.shape == (1, 3, 300, 300)
    # BGR, (pixel - 127.5) * 0.007843
    np.testing.assert_allclose(x[0, :, 7, 9], [(90 - 127.5) * 0.007843, (200 - 127.5) * 0.007843,
                                               (10 - 127.5) * 0.007843], rtol=1e-5)
    det = mod.main(["--image", str(tmp_path / "img.png"), "--threshold", "0.5"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{len(det)} detection(s)" and len(lines) == len(det) + 1 >= 2
    assert np.all(det[:, 2] > 0.5) and np.all(np.diff(det[:, 1]) >= 0)
    name, score = lines[1].split()[:2]
    assert name == mod.VOC[int(det[0, 1])] and float(score) == pytest.approx(det[0, 2], abs=5e-4)
    # the output docs/ssd.md shows (random weights, random input: the structure runs)
    mod.main([])
    out = capsys.readouterr().out.splitlines()
    doc = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "ssd.md").read_text()
    shown = doc.split("$ python examples/ssd/detect.py\n", 1)[1].split("...\n", 1)[0]
    assert out[:len(shown.splitlines())] == shown.splitlines()


@pytest.mark.parametrize("eta", [1.0, 0.9])
def test_nms_paths_agree(eta, monkeypatch):
    """Pairwise-overlap matrix (few candidates) and kept-box overlaps (many) keep the same
    boxes, in the same order, as the direct transcription of the fork's loop."""
    g = np.random.default_rng(5)
    xy = g.uniform(0.3, 0.7, (300, 2))
    wh = g.uniform(0.2, 0.8, (300, 2))
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1).astype(F)
    scores = g.uniform(0, 1, 300).astype(F)
    sizes = bbox.box_size(boxes)
    kept, thr = [], F(0.7)                 # the fork's ApplyNMSFast, line by line
    for i in bbox.max_score_index(scores, 0.2, 250):
        keep = all(bbox.overlap(boxes[i], sizes[i], boxes[k], sizes[k]) <= thr for k in kept)
        if keep:
            kept.append(int(i))
            if eta < 1 and thr > 0.5:
                thr = F(thr * F(eta))
    assert 20 < len(kept) < 150      # eta 1: 143 kept, eta .9: 30
    assert bbox.nms(boxes, scores, 0.2, 0.7, eta, 250) == kept
    monkeypatch.setattr(bbox, "MATRIX_LIMIT", 10)
    assert bbox.nms(boxes, scores, 0.2, 0.7, eta, 250) == kept
    assert bbox.nms(boxes, scores, 2.0, 0.7, eta) == []
