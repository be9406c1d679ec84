"""caffe_lite.io's pycaffe image helpers: load_image, resize_image, oversample, Transformer."""
import numpy as np
import pytest
from PIL import Image

from caffe_lite import io as cio
from caffe_lite.errors import CaffeLiteError, DataError
from caffe_lite.io.image import TransformerError


@pytest.fixture
def rgb_png(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (4, 5, 3)).astype(np.uint8)
    p = tmp_path / "x.png"
    Image.fromarray(a).save(p)
    return p, a


def test_load_image_color_and_gray(rgb_png, tmp_path):
    p, a = rgb_png
    im = cio.load_image(str(p))
    assert im.dtype == np.float32 and im.shape == (4, 5, 3)
    np.testing.assert_allclose(im, a / 255.0, rtol=1e-6)  # RGB order, [0, 1]
    g = cio.load_image(str(p), color=False)
    assert g.shape == (4, 5, 1)
    lum = (a / 255.0) @ np.array([0.2125, 0.7154, 0.0721])
    np.testing.assert_allclose(g[:, :, 0], lum, rtol=1e-5)
    gp = tmp_path / "g.png"
    Image.fromarray(a[:, :, 0], "L").save(gp)
    tiled = cio.load_image(str(gp))
    assert tiled.shape == (4, 5, 3)
    np.testing.assert_allclose(tiled[:, :, 2], a[:, :, 0] / 255.0, rtol=1e-6)
    rgba = tmp_path / "a.png"
    Image.fromarray(np.dstack([a, np.full((4, 5), 9, np.uint8)]), "RGBA").save(rgba)
    assert cio.load_image(str(rgba)).shape == (4, 5, 3)
    with pytest.raises(DataError, match="no such image file"):
        cio.load_image(str(tmp_path / "missing.png"))
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="bad.png: cannot decode"):
        cio.load_image(str(tmp_path / "bad.png"))


def test_resize_image_orders():
    im = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)
    up = cio.resize_image(im, (4, 4))
    assert up.shape == (4, 4, 3) and up.dtype == np.float32
    # pixel-centre bilinear: output row 1 samples source row 0.25
    np.testing.assert_allclose(up[1, 0], im[0, 0] * 0.75 + im[1, 0] * 0.25)
    np.testing.assert_allclose(up[0, 0], im[0, 0])  # clamped at the border
    near = cio.resize_image(im, (4, 4), interp_order=0)
    np.testing.assert_array_equal(near[:2, :2], np.broadcast_to(im[0, 0], (2, 2, 3)))
    np.testing.assert_array_equal(near[3, 3], im[1, 1])
    down = cio.resize_image(np.ones((8, 8, 1), np.float32) * 3, (2, 2))
    np.testing.assert_allclose(down, 3)
    with pytest.raises(DataError, match="H x W x K"):
        cio.resize_image(np.zeros((3, 3)), (2, 2))


def test_resize_image_spline_orders_use_scipy():
    im = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    try:
        import scipy  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="needs scipy"):
            cio.resize_image(im, (4, 6), interp_order=3)
        return
    cubic = cio.resize_image(im, (4, 6), interp_order=3)
    assert cubic.shape == (4, 6, 3) and cubic.dtype == np.float32


def test_oversample_ten_crops():
    ims = np.random.default_rng(1).random((2, 6, 7, 3)).astype(np.float32)
    crops = cio.oversample(ims, (4, 4))
    assert crops.shape == (20, 4, 4, 3)
    np.testing.assert_array_equal(crops[0], ims[0, :4, :4])
    np.testing.assert_array_equal(crops[3], ims[0, 2:, 3:])
    np.testing.assert_array_equal(crops[4], ims[0, 1:5, 1:5])  # int(3 - 2), int(3.5 - 2)
    np.testing.assert_array_equal(crops[5], ims[0, :4, :4][:, ::-1])
    np.testing.assert_array_equal(crops[10], ims[1, :4, :4])


def test_transformer_preprocess_deprocess():
    t = cio.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([104, 117, 123], np.float32))
    t.set_input_scale("data", 0.5)
    im = np.random.default_rng(2).random((4, 5, 3)).astype(np.float32)
    x = t.preprocess("data", im)
    assert x.shape == (3, 4, 5) and x.dtype == np.float32
    want = (im.transpose(2, 0, 1)[::-1] * 255 - np.array([104, 117, 123])[:, None, None]) * 0.5
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(t.deprocess("data", x), im, rtol=1e-5, atol=1e-5)
    # input of another size is resized to the net's H x W first
    assert t.preprocess("data", np.zeros((8, 10, 3), np.float32)).shape == (3, 4, 5)
    # a full mean array
    t.set_mean("data", np.ones((3, 4, 5), np.float32))
    np.testing.assert_allclose(t.preprocess("data", np.zeros((4, 5, 3), np.float32)), -0.5)


def test_transformer_errors():
    t = cio.Transformer({"data": (1, 3, 4, 5)})
    with pytest.raises(TransformerError, match="not one of the net inputs"):
        t.preprocess("image", np.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match="same number of dimensions as the input"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(CaffeLiteError, match="input channels"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(TransformerError, match="incompatible with input channels"):
        t.set_mean("data", np.zeros(2))
    with pytest.raises(TransformerError, match=r"incompatible with input shape \(3, 4, 5\)"):
        t.set_mean("data", np.zeros((3, 5, 4)))
