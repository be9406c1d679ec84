"""Classifier and Detector against the same pipeline written out in numpy: resize, crop
(10-crop oversampling or center), pycaffe's preprocessing, batched forward with padding, the
average over crops; Detector's windows and context padding."""
import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.io import oversample, resize_image

DEPLOY = """name: 'tiny'
input: 'data' input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
        inner_product_param { num_output: 4 weight_filler { type: 'gaussian' std: 0.05 } } }
layer { name: 'prob' type: 'Softmax' bottom: 'ip' top: 'prob' }
"""
MEAN = np.array([0.1, 0.2, 0.3], np.float32)


@pytest.fixture
def model(tmp_path):
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(DEPLOY)
    net = caffe.Net(str(deploy), caffe.TEST)
    net.params["ip"][1].data[...] = [0.1, -0.2, 0.3, 0]
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    return str(deploy), str(weights), net.params["ip"][0].data.copy(), \
        net.params["ip"][1].data.copy()


def reference(w, b, crops):
    """pycaffe's preprocessing (transpose, BGR swap, * 255, - mean, * 0.5) and the net."""
    x = crops.transpose(0, 3, 1, 2)[:, ::-1] * np.float32(255)
    x = (x - MEAN[:, None, None]) * np.float32(0.5)
    logits = x.reshape(len(x), -1) @ w.T + b
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_classifier_predict(model):
    deploy, weights, w, b = model
    clf = caffe.Classifier(deploy, weights, image_dims=(10, 10), mean=MEAN, raw_scale=255,
                           channel_swap=(2, 1, 0), input_scale=0.5)
    images = [np.random.default_rng(i).uniform(size=(12 + i, 9 + 2 * i, 3)).astype(np.float32)
              for i in range(3)]                     # 3 images: the last batch of 2 is padded
    resized = np.stack([resize_image(im, (10, 10)) for im in images])
    want = reference(w, b, oversample(resized, (8, 8))).reshape(3, 10, 4).mean(1)
    got = clf.predict(images)
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    center = clf.predict(images, oversample=False)
    np.testing.assert_allclose(center, reference(w, b, resized[:, 1:9, 1:9]), rtol=1e-4,
                               atol=1e-6)
    assert isinstance(clf, caffe.Net) and clf.crop_dims.tolist() == [8, 8]


def test_forward_all_pads_the_last_batch(model):
    deploy, weights, w, b = model
    net = caffe.Net(deploy, caffe.TEST, weights=weights)
    x = np.random.default_rng(1).normal(size=(5, 3, 8, 8)).astype(np.float32)
    out = net.forward_all(data=x, blobs=["ip"])
    assert sorted(out) == ["ip", "prob"] and out["prob"].shape == (5, 4)
    np.testing.assert_allclose(out["ip"], x.reshape(5, -1) @ w.T + b, rtol=1e-4, atol=1e-5)
    assert net.blobs["data"].shape == (2, 3, 8, 8)   # batches of the net's size
    outs, diffs = net.forward_backward_all(data=x, prob=np.ones((5, 4), np.float32))
    assert outs["prob"].shape == (5, 4) and diffs["data"].shape == (5, 3, 8, 8)


@pytest.fixture
def image_file(tmp_path):
    from PIL import Image
    rgb = (np.random.default_rng(3).uniform(size=(20, 16, 3)) * 255).astype(np.uint8)
    path = tmp_path / "im.png"
    Image.fromarray(rgb).save(path)
    return str(path), rgb.astype(np.float32) / 255


def test_detector_windows(model, image_file):
    deploy, weights, w, b = model
    path, im = image_file
    det = caffe.Detector(deploy, weights, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0),
                         input_scale=0.5)
    windows = [np.array([0, 0, 10, 8]), np.array([5, 4, 20, 16]), np.array([2, 3, 9, 12])]
    dets = det.detect_windows([(path, windows)])
    crops = np.stack([resize_image(im[y0:y1, x0:x1], (8, 8)) for y0, x0, y1, x1 in windows])
    want = reference(w, b, crops)
    assert [d["filename"] for d in dets] == [path] * 3
    assert all(d["window"] is win for d, win in zip(dets, windows))
    np.testing.assert_allclose(np.stack([d["prediction"] for d in dets]), want, rtol=1e-4,
                               atol=1e-6)
    with pytest.raises(ImportError, match="selective_search_ijcv_with_python"):
        det.detect_selective_search([path])


def test_detector_context_pad_fills_outside_with_the_mean(model, image_file):
    deploy, weights, _, _ = model
    _, im = image_file
    det = caffe.Detector(deploy, weights, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0),
                         context_pad=2)
    # the mean in image space: RGB order, divided by raw_scale
    np.testing.assert_allclose(det.crop_mean.reshape(-1), MEAN[::-1] / 255)
    crop = det.crop(im, np.array([0, 0, 7, 7]))   # at the corner: context above and left
    assert crop.shape == (8, 8, 3)
    # an 8 px window with 2 of the input's 8 px as context: the box grows by 8 / (8 - 4) = 2
    # to [-4, 12], 17 px warped to 8; its 4 px outside the image become round(4 * 8 / 17) = 2
    # input pixels of mean
    np.testing.assert_allclose(crop[:2, :, :], np.broadcast_to(det.crop_mean, (2, 8, 3)))
    np.testing.assert_allclose(crop[:, :2, :], np.broadcast_to(det.crop_mean, (8, 2, 3)))
    assert not np.allclose(crop[2:, 2:], det.crop_mean)
