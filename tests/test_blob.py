import numpy as np
import pytest

from caffe_lite.backend.memory import HEAD_AT_CPU, SYNCED, UNINITIALIZED, SyncedMemory
from caffe_lite.blob import Blob
from caffe_lite.errors import CaffeLiteError, ShapeMismatchError
from caffe_lite.io.blobproto import array_to_proto, blob_from_proto, proto_to_array, shapes_equal
from caffe_lite.proto import caffe_pb2


def test_synced_memory_head_states():
    m = SyncedMemory(4)
    assert m.head == UNINITIALIZED
    assert m.cpu().tolist() == [0, 0, 0, 0]  # first touch zero-fills, like Caffe's memset
    assert m.head == HEAD_AT_CPU
    m.mutable_cpu()[:] = 2
    assert m.head == HEAD_AT_CPU
    m.head = SYNCED
    m.cpu()
    assert m.head == SYNCED
    m.mutable_cpu()
    assert m.head == HEAD_AT_CPU


def test_shape_count_and_legacy_dims():
    b = Blob(2, 3, 4, 5)
    assert b.shape == (2, 3, 4, 5) and b.count == 120 and b.num_axes == 4
    assert (b.num, b.channels, b.height, b.width) == (2, 3, 4, 5)
    assert b.count_range(1) == 60 and b.count_range(1, 3) == 12
    assert b.canonical_axis_index(-1) == 3
    with pytest.raises(CaffeLiteError, match="axis 4 out of range"):
        b.canonical_axis_index(4)
    v = Blob((7,))
    assert (v.num, v.channels, v.height) == (7, 1, 1)
    s = Blob(())
    assert s.count == 1 and s.data.shape == ()


def test_reshape_reuses_memory_until_capacity_grows():
    b = Blob(2, 3)
    b.data[...] = np.arange(6).reshape(2, 3)
    mem = b._data.mem
    b.reshape(3, 2)
    assert b._data.mem is mem
    np.testing.assert_array_equal(b.data, np.arange(6).reshape(3, 2))
    b.reshape(4, 4)
    assert b._data.mem is not mem and b.data.shape == (4, 4)


def test_read_only_views_and_assignment():
    b = Blob(2, 2)
    with pytest.raises(ValueError):
        b.cpu_data[0, 0] = 1
    b.data = [[1, 2], [3, 4]]
    assert b.cpu_data.sum() == 10
    with pytest.raises(ShapeMismatchError, match=r"\(3,\)"):
        b.data = np.zeros(3)


def test_update_applies_mask_after_step():
    b = Blob.from_array(np.array([1.0, 2.0, 0.0, 4.0], np.float32))
    b.mask_from_data()
    np.testing.assert_array_equal(b.mask, [1, 1, 0, 1])
    b.diff[...] = [0.5, -1.0, 3.0, 1.0]
    b.update()
    np.testing.assert_array_equal(b.data, [0.5, 3.0, 0.0, 3.0])


def test_mask_diff_and_apply_mask():
    b = Blob.from_array(np.array([[1, 0], [0, 2]], np.float32)).mask_from_data()
    b.diff[...] = 7
    b.mask_diff()
    np.testing.assert_array_equal(b.diff, [[7, 0], [0, 7]])
    b.data[...] = 5
    b.apply_mask()
    np.testing.assert_array_equal(b.data, [[5, 0], [0, 5]])


def test_mask_setter_checks_shape():
    b = Blob(2, 2)
    with pytest.raises(ShapeMismatchError, match=r"\(3,\).*\(2, 2\)"):
        b.mask = np.ones(3)
    b.mask = np.array([[1, 0], [2, 0]])
    np.testing.assert_array_equal(b.mask, [[1, 0], [1, 0]])


def test_share_data_and_diff():
    a = Blob(2, 3)
    f = Blob(6)
    f.share_data(a)
    f.share_diff(a)
    f.data[...] = np.arange(6)
    f.diff[...] = 1
    np.testing.assert_array_equal(a.data.ravel(), np.arange(6))
    assert a.diff.sum() == 6
    with pytest.raises(ShapeMismatchError):
        Blob(5).share_data(a)


def test_blobproto_round_trip_and_legacy():
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    p = array_to_proto(arr)
    np.testing.assert_array_equal(proto_to_array(p), arr)
    legacy = caffe_pb2.BlobProto(num=1, channels=1, height=2, width=3, data=range(6))
    assert proto_to_array(legacy).shape == (1, 1, 2, 3)
    assert shapes_equal(legacy, (2, 3)) and not shapes_equal(legacy, (3, 2))
    b = Blob(2, 3)
    blob_from_proto(b, legacy, reshape=False)
    np.testing.assert_array_equal(b.data.ravel(), np.arange(6))
    dbl = caffe_pb2.BlobProto(double_data=[1.5, 2.5])
    dbl.shape.dim.append(2)
    np.testing.assert_array_equal(proto_to_array(dbl), [1.5, 2.5])


def test_blobproto_size_mismatch_is_reported():
    from caffe_lite.errors import ModelFileError
    p = caffe_pb2.BlobProto(data=[1, 2, 3])
    p.shape.dim.extend([2, 2])
    with pytest.raises(ModelFileError, match=r"needs 4 values but holds 3"):
        proto_to_array(p, "x.caffemodel")
    with pytest.raises(ModelFileError, match="declares no shape"):
        proto_to_array(caffe_pb2.BlobProto(data=[1, 2]))


def test_scalar_blob_round_trips_and_empty_proto_is_an_error():
    from caffe_lite.errors import ModelFileError
    p = array_to_proto(np.array(3.5, np.float32))
    q = caffe_pb2.BlobProto.FromString(p.SerializeToString())
    a = proto_to_array(q)
    assert a.shape == () and a == 3.5
    with pytest.raises(ModelFileError, match="declares no shape"):
        proto_to_array(caffe_pb2.BlobProto())


def test_text_format_writer_round_trips():
    from caffe_lite.io import parse_text, to_text
    net = caffe_pb2.NetParameter(name="n")
    lp = net.layer.add(name="bn", type="BatchNorm")
    lp.batch_norm_param.eps = 1e-5
    lp.batch_norm_param.moving_average_fraction = 0.999
    back = parse_text(to_text(net), caffe_pb2.NetParameter())
    assert back == net
