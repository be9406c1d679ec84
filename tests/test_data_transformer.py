"""DataTransformer against a per-pixel loop written from Caffe's formula."""
import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.data.transformer import DataTransformer
from caffe_lite.errors import CaffeLiteError, DataError
from caffe_lite.io import parse_text
from caffe_lite.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def tparam(text):
    return parse_text(text, caffe_pb2.TransformationParameter())


def naive(batch, crop, scale, mirror, h_off, w_off, mean=None, mean_values=None):
    """Caffe's DataTransformer::Transform, one pixel at a time."""
    n, c, h, w = batch.shape
    oh = ow = crop if crop else None
    oh, ow = (oh or h), (ow or w)
    out = np.zeros((n, c, oh, ow), np.float32)
    for i in range(n):
        ho = h_off if np.isscalar(h_off) else h_off[i]
        wo = w_off if np.isscalar(w_off) else w_off[i]
        mir = mirror is not None and mirror[i]
        for ch in range(c):
            for y in range(oh):
                for x in range(ow):
                    v = np.float32(batch[i, ch, ho + y, wo + x])
                    if mean is not None:
                        v = v - np.float32(mean[ch, ho + y, wo + x])
                    elif mean_values is not None:
                        mv = mean_values[0] if len(mean_values) == 1 else mean_values[ch]
                        v = v - np.float32(mv)
                    out[i, ch, y, (ow - 1 - x) if mir else x] = v * np.float32(scale)
    return out


@pytest.fixture
def batch():
    return np.random.default_rng(3).integers(0, 256, (5, 3, 7, 6)).astype(np.uint8)


def test_scale_only_is_pixel_times_scale(batch):
    t = DataTransformer(tparam("scale: 0.00390625"), TRAIN)
    out = t.transform(batch)
    assert out.dtype == np.float32 and out.shape == batch.shape
    np.testing.assert_array_equal(out, batch.astype(np.float32) * np.float32(0.00390625))
    assert t.rng is None  # no randomness needed, none drawn


def test_train_random_crop_mirror_mean_values(batch):
    t = DataTransformer(tparam("crop_size: 4 mirror: true scale: 0.5 mean_value: 10 "
                               "mean_value: 20 mean_value: 30"), TRAIN)
    out = t.transform(batch)
    mirror, h_off, w_off = t.last
    assert out.shape == (5, 3, 4, 4)
    assert h_off.min() >= 0 and h_off.max() <= 3 and w_off.max() <= 2
    np.testing.assert_array_equal(out, naive(batch, 4, 0.5, mirror, h_off, w_off,
                                             mean_values=[10, 20, 30]))


def test_offsets_and_mirror_cover_their_ranges():
    t = DataTransformer(tparam("crop_size: 2 mirror: true"), TRAIN)
    b = np.zeros((400, 1, 5, 4), np.uint8)
    t.transform(b)
    mirror, h_off, w_off = t.last
    assert set(h_off) == {0, 1, 2, 3} and set(w_off) == {0, 1, 2}
    assert 100 < mirror.sum() < 300


def test_test_phase_centre_crop_with_mean_file(batch, tmp_path):
    mean = np.random.default_rng(1).uniform(0, 255, (3, 7, 6)).astype(np.float32)
    proto = caffe_pb2.BlobProto(num=1, channels=3, height=7, width=6)
    proto.data.extend(mean.ravel().tolist())
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(proto.SerializeToString())
    t = DataTransformer(tparam(f'crop_size: 4 mean_file: "{path}" scale: 2'), TEST)
    out = t.transform(batch)
    assert t.last[1:] == (1, 1)  # (7-4)//2, (6-4)//2
    np.testing.assert_array_equal(out, naive(batch, 4, 2.0, None, 1, 1, mean=mean))


def test_train_crop_mirror_mean_file_float_input(tmp_path):
    """float_data Datums go through the same arithmetic."""
    b = np.random.default_rng(5).normal(0, 50, (4, 2, 6, 6)).astype(np.float32)
    mean = np.random.default_rng(6).normal(0, 5, (2, 6, 6)).astype(np.float32)
    proto = caffe_pb2.BlobProto()
    proto.shape.dim.extend([1, 2, 6, 6])
    proto.data.extend(mean.ravel().tolist())
    path = tmp_path / "m.binaryproto"
    path.write_bytes(proto.SerializeToString())
    t = DataTransformer(tparam(f'crop_size: 3 mirror: true mean_file: "{path}"'), TRAIN)
    out = t.transform(b)
    np.testing.assert_array_equal(out, naive(b, 3, 1.0, *t.last, mean=mean))


def test_mirror_applies_in_test_phase_too_as_in_caffe(batch):
    t = DataTransformer(tparam("mirror: true"), TEST)
    out = t.transform(batch)
    mirror = t.last[0]
    assert mirror is not None
    np.testing.assert_array_equal(out, naive(batch, 0, 1.0, mirror, 0, 0))


def test_single_mean_value_applies_to_all_channels(batch):
    t = DataTransformer(tparam("mean_value: 100"), TRAIN)
    np.testing.assert_array_equal(t.transform(batch), batch.astype(np.float32) - 100)


def test_same_seed_same_draws(batch):
    outs = []
    for _ in range(2):
        caffe.set_random_seed(42)
        t = DataTransformer(tparam("crop_size: 3 mirror: true"), TRAIN)
        outs.append([t.transform(batch) for _ in range(3)])
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(outs[0][0], outs[0][1])


def test_errors(tmp_path, batch):
    with pytest.raises(DataError, match="mean_file and mean_value"):
        DataTransformer(tparam('mean_file: "x" mean_value: 1'), TRAIN)
    with pytest.raises(DataError, match="force_color and force_gray"):
        DataTransformer(tparam("force_color: true force_gray: true"), TRAIN)
    with pytest.raises(DataError, match="mean_file '.*nope.binaryproto' does not exist"):
        DataTransformer(tparam(f'mean_file: "{tmp_path}/nope.binaryproto"'), TRAIN)
    with pytest.raises(DataError, match=r"crop_size 8 is larger than the input image "
                                        r"\(3 x 7 x 6\)"):
        DataTransformer(tparam("crop_size: 8"), TRAIN).transform(batch)
    with pytest.raises(DataError, match=r"either 1 mean_value or as many as channels \(3\)"):
        DataTransformer(tparam("mean_value: 1 mean_value: 2"), TRAIN).transform(batch)
    proto = caffe_pb2.BlobProto(num=1, channels=3, height=8, width=8)
    proto.data.extend([0.0] * 192)
    path = tmp_path / "m.binaryproto"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(DataError, match=r"has shape 3x8x8 but the input data is 3x7x6"):
        DataTransformer(tparam(f'crop_size: 4 mean_file: "{path}"'), TRAIN).transform(batch)
    garbage = tmp_path / "g.binaryproto"
    garbage.write_bytes(b"\xff\xff\xff")
    with pytest.raises(CaffeLiteError, match="g.binaryproto"):
        DataTransformer(tparam(f'mean_file: "{garbage}"'), TRAIN)

