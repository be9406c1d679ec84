"""HDF5Data, MemoryData (with net.set_input_arrays) and DummyData."""
import h5py
import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.blob import Blob
from caffe_lite.errors import CaffeLiteError, DataError, LayerSetupError
from caffe_lite.net import Net
from caffe_lite.testing import layer_from_text


def setup(text, ntop):
    layer = layer_from_text(text)
    top = [Blob() for _ in range(ntop)]
    layer.setup([], top)
    return layer, top


# --- HDF5Data ---------------------------------------------------------------------------------

@pytest.fixture
def h5files(tmp_path):
    """Two files: rows of data 2 x 2 (value = global row index) and label = row index."""
    paths = []
    start = 0
    for i, n in enumerate((5, 3)):
        p = tmp_path / f"part{i}.h5"
        rows = np.arange(start, start + n)
        with h5py.File(p, "w") as f:
            f["data"] = (rows[:, None, None] * np.ones((1, 2, 2))).astype(np.float64)
            f["label"] = rows.astype(np.float32)
            f["ints"] = rows.astype(np.int32)[:, None]
            f["names"] = np.array([b"a"] * n)
        paths.append(p)
        start += n
    lst = tmp_path / "h5list.txt"
    lst.write_text("\n".join(str(p) for p in paths) + "\n")
    return lst, paths


def h5_text(lst, batch, extra="", tops=("data", "label")):
    t = " ".join(f'top: "{n}"' for n in tops)
    return (f'name: "h5" type: "HDF5Data" {t} hdf5_data_param {{ source: "{lst}" '
            f'batch_size: {batch} {extra} }}')


def test_hdf5_rows_in_order_across_files(h5files):
    lst, _ = h5files
    layer, top = setup(h5_text(lst, 3), 2)
    assert top[0].shape == (3, 2, 2) and top[1].shape == (3,)
    seen = []
    for _ in range(4):
        layer.forward([], top)
        np.testing.assert_array_equal(top[0].data, top[1].data[:, None, None] * np.ones((2, 2)))
        seen.extend(top[1].data.tolist())
    assert seen == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]


def test_hdf5_shuffle_is_seeded_and_covers_every_row(h5files):
    lst, _ = h5files
    runs = []
    for _ in range(2):
        caffe.set_random_seed(5)
        layer, top = setup(h5_text(lst, 4, "shuffle: true"), 2)
        got = []
        for _ in range(4):
            layer.forward([], top)
            got.extend(top[1].data.tolist())
        runs.append(got)
    assert runs[0] == runs[1]
    # each epoch holds every row once; rows come file by file
    assert sorted(runs[0][:8]) == list(range(8)) and sorted(runs[0][8:]) == list(range(8))
    assert runs[0][:8] != list(range(8))
    first = set(runs[0][:5]) if runs[0][0] < 5 else set(runs[0][:3])
    assert first in ({0, 1, 2, 3, 4}, {5, 6, 7})


def test_hdf5_integer_dataset_and_relative_names(h5files, tmp_path):
    lst, paths = h5files
    rel = tmp_path / "rel.txt"
    rel.write_text(" ".join(p.name for p in paths))  # whitespace-separated, relative names
    layer, top = setup(h5_text(rel, 2, tops=("ints",)), 1)
    layer.forward([], top)
    assert top[0].shape == (2, 1)
    np.testing.assert_array_equal(top[0].data, [[0], [1]])


def test_hdf5_errors(h5files, tmp_path):
    lst, _ = h5files
    with pytest.raises(DataError, match=r"layer 'h5' \(HDF5Data\): HDF5 file '.*part0.h5' has no "
                                        r"dataset 'nope'"):
        setup(h5_text(lst, 2, tops=("data", "nope")), 2)
    with pytest.raises(DataError, match="unsupported type"):
        setup(h5_text(lst, 2, tops=("names",)), 1)
    with pytest.raises(DataError, match="does not transform data"):
        setup(h5_text(lst, 2) + " transform_param { scale: 2 }", 2)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(DataError, match="at least 1 HDF5 filename"):
        setup(h5_text(empty, 2), 2)
    with pytest.raises(DataError, match="does not exist"):
        setup(h5_text(tmp_path / "none.txt", 2), 2)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    jl = tmp_path / "junk.txt"
    jl.write_text(str(junk))
    with pytest.raises(DataError, match="cannot read HDF5 file"):
        setup(h5_text(jl, 2), 2)
    with h5py.File(tmp_path / "mismatch.h5", "w") as f:
        f["data"] = np.zeros((4, 2))
        f["label"] = np.zeros(3)
    ml = tmp_path / "m.txt"
    ml.write_text(str(tmp_path / "mismatch.h5"))
    with pytest.raises(DataError, match="'label' has 3 rows but 'data' has 4"):
        setup(h5_text(ml, 2), 2)


# --- MemoryData -------------------------------------------------------------------------------

MEMORY_NET = """
name: "mem"
layer { name: "input" type: "MemoryData" top: "data" top: "label"
        memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_memory_data_via_set_input_arrays():
    net = Net(MEMORY_NET, caffe.TRAIN)
    data = np.arange(6 * 6, dtype=np.float32).reshape(6, 1, 2, 3)
    labels = np.array([0, 1, 2, 0, 1, 2], np.float32)
    net.set_input_arrays(data, labels)
    for b in (0, 1, 2, 0):
        net.forward()
        np.testing.assert_array_equal(net.blobs["data"].data, data[2 * b:2 * b + 2])
        np.testing.assert_array_equal(net.blobs["label"].data, labels[2 * b:2 * b + 2])
    net.backward()
    net.set_input_arrays(data[:2], np.array([[[[1]]], [[[2]]]], np.float32))  # (N,1,1,1) labels
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, [1, 2])


def test_memory_data_checks():
    net = Net(MEMORY_NET, caffe.TRAIN)
    with pytest.raises(DataError, match="has no data: call net.set_input_arrays"):
        net.forward()
    good = np.zeros((4, 1, 2, 3), np.float32)
    lab = np.zeros(4, np.float32)
    with pytest.raises(DataError, match="C-contiguous 4-D float32 array, got float64"):
        net.set_input_arrays(good.astype(np.float64), lab)
    with pytest.raises(DataError, match="not C-contiguous"):
        net.set_input_arrays(np.zeros((4, 1, 3, 2), np.float32).transpose(0, 1, 3, 2), lab)
    with pytest.raises(DataError, match=r"needs N x 1 x 2 x 3"):
        net.set_input_arrays(np.zeros((4, 1, 3, 2), np.float32), lab)
    with pytest.raises(DataError, match="expected 4 labels"):
        net.set_input_arrays(good, np.zeros(3, np.float32))
    with pytest.raises(DataError, match=r"multiple of batch_size \(2\)"):
        net.set_input_arrays(good[:3], lab[:3])
    with pytest.raises(CaffeLiteError, match="no MemoryData layer named 'x'"):
        net.set_input_arrays(good, lab, layer="x")
    with pytest.raises(LayerSetupError, match="must be specified and positive"):
        setup('type: "MemoryData" top: "a" top: "b" memory_data_param { batch_size: 2 }', 2)


# --- DummyData --------------------------------------------------------------------------------

def test_dummy_data_constant_and_refilled():
    layer, top = setup('type: "DummyData" top: "a" top: "b" top: "c" dummy_data_param { '
                       'shape { dim: 2 dim: 3 } shape { dim: 4 } shape { dim: 1 dim: 2 } '
                       'data_filler { type: "constant" value: 7 } '
                       'data_filler { type: "gaussian" std: 1 } '
                       'data_filler { type: "constant" } }', 3)
    assert [t.shape for t in top] == [(2, 3), (4,), (1, 2)]
    np.testing.assert_array_equal(top[0].data, 7)
    np.testing.assert_array_equal(top[2].data, 0)
    layer.forward([], top)
    first = top[1].data.copy()
    assert np.abs(first).sum() > 0
    top[0].data[...] = 1  # constant tops are not refilled (as in Caffe)
    layer.forward([], top)
    assert not np.array_equal(first, top[1].data)
    np.testing.assert_array_equal(top[0].data, 1)


def test_dummy_data_legacy_shape_and_defaults():
    layer, top = setup('type: "DummyData" top: "a" top: "b" dummy_data_param { num: 5 '
                       'channels: 2 channels: 3 height: 4 width: 1 }', 2)
    assert top[0].shape == (5, 2, 4, 1) and top[1].shape == (5, 3, 4, 1)
    layer.forward([], top)
    np.testing.assert_array_equal(top[1].data, 0)


def test_dummy_data_errors():
    with pytest.raises(LayerSetupError, match="number of data fillers must be 0, 1 or"):
        setup('type: "DummyData" top: "a" top: "b" top: "c" dummy_data_param { '
              'shape { dim: 1 } data_filler { } data_filler { } }', 3)
    with pytest.raises(LayerSetupError, match="both shape and legacy"):
        setup('type: "DummyData" top: "a" dummy_data_param { num: 1 channels: 1 height: 1 '
              'width: 1 shape { dim: 1 } }', 1)
    with pytest.raises(LayerSetupError, match="'height' once, or once per top"):
        setup('type: "DummyData" top: "a" top: "b" top: "c" dummy_data_param { num: 1 '
              'channels: 1 height: 1 height: 2 width: 1 }', 3)
    with pytest.raises(LayerSetupError, match="'shape' once, or once per top"):
        setup('type: "DummyData" top: "a" top: "b" top: "c" dummy_data_param { '
              'shape { dim: 1 } shape { dim: 2 } }', 3)
