"""LMDB: convert-mnist (keys and bytes as Caffe writes them), the Data layer (prefetch, wrap,
rand_skip, determinism, errors), and BVLC's LeNet prototxt reading converted MNIST."""
import gc
import os
import threading
import time

import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite.blob import Blob
from caffe_lite.cli import main as cli
from caffe_lite.errors import DataError
from caffe_lite.io import array_to_datum
from caffe_lite.net import Net
from caffe_lite.proto import caffe_pb2
from caffe_lite.testing import layer_from_text

from data_util import restore_logging  # noqa: F401  (autouse fixture)
from data_util import (caffe_datum_bytes, data_layer_text, datum_lmdb, idx_subset,
                       lenet_with_sources, read_lmdb, write_lmdb)

SCALE = np.float32(0.00390625)


def setup_layer(text, phase=caffe_pb2.TRAIN, ntop=2):
    layer = layer_from_text(text, phase)
    top = [Blob() for _ in range(ntop)]
    layer.setup([], top)
    return layer, top


def batches(layer, top, n):
    out = []
    for _ in range(n):
        layer.forward([], top)
        out.append((top[0].data.copy(), top[1].data.copy() if len(top) > 1 else None))
    return out


# --- convert-mnist --------------------------------------------------------------------------

def test_convert_mnist_writes_caffe_keys_and_datums(mnist_dir, tmp_path, capsys):
    ip, lp, imgs, labs = idx_subset(mnist_dir, tmp_path, "t10k", 300)
    out = tmp_path / "mnist_lmdb"
    assert cli(["convert-mnist", str(ip), str(lp), str(out)]) == 0
    assert "wrote 300 items" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["data.mdb", "lock.mdb"]
    items = read_lmdb(out)
    assert [k for k, _ in items] == [b"%08d" % i for i in range(300)]
    for i in (0, 1, 299):
        # byte-for-byte what convert_mnist_data writes
        assert items[i][1] == caffe_datum_bytes(1, 28, 28, imgs[i].tobytes(), int(labs[i]))


def test_convert_mnist_uncompressed_and_errors(mnist_dir, tmp_path, capsys):
    ip, lp, imgs, labs = idx_subset(mnist_dir, tmp_path, "train5k", 50, gz=False)
    out = tmp_path / "db"
    assert cli(["convert-mnist", str(ip), str(lp), str(out)]) == 0
    before = (out / "data.mdb").stat().st_mtime_ns
    capsys.readouterr()
    # an existing OUT_DB is an error, one line, never touched
    assert cli(["convert-mnist", str(ip), str(lp), str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already exists" in err and str(out) in err
    assert (out / "data.mdb").stat().st_mtime_ns == before
    # images and labels swapped: wrong magic, names the file
    assert cli(["convert-mnist", str(lp), str(ip), str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert str(lp) in err and "magic 2049" in err and "expected 2051" in err
    assert not (tmp_path / "x").exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # no temp left over


def test_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch):
    from caffe_lite.data import convert as conv
    imgs = np.zeros((2500, 4, 4), np.uint8)
    from caffe_lite.data.mnist import write_idx_images, write_idx_labels
    write_idx_images(tmp_path / "i", imgs)
    write_idx_labels(tmp_path / "l", np.zeros(2500, np.uint8))
    calls = {"n": 0}
    real = conv.DBWriter.commit

    def failing_commit(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self)
    monkeypatch.setattr(conv.DBWriter, "commit", failing_commit)
    with pytest.raises(KeyboardInterrupt):
        conv.convert_mnist(tmp_path / "i", tmp_path / "l", tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["i", "l"]


# --- Data layer -----------------------------------------------------------------------------

@pytest.fixture
def ten_db(tmp_path):
    """10 records, 1 x 2 x 3, pixel values = 10 * index + position, label = index."""
    arrays = [(np.arange(6).reshape(1, 2, 3) + 10 * i).astype(np.uint8) for i in range(10)]
    path = tmp_path / "ten_lmdb"
    datum_lmdb(path, arrays)
    return path, np.stack(arrays)


def test_data_layer_reads_in_key_order_and_wraps(ten_db):
    path, arrays = ten_db
    layer, top = setup_layer(data_layer_text(path, 4, "scale: 0.5"))
    assert top[0].shape == (4, 1, 2, 3) and top[1].shape == (4,)
    got = batches(layer, top, 3)
    order = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    labels = np.concatenate([lab for _, lab in got])
    np.testing.assert_array_equal(labels, np.float32(order))
    data = np.concatenate([d for d, _ in got])
    np.testing.assert_array_equal(data, arrays[order].astype(np.float32) * np.float32(0.5))
    layer.close()


def test_two_layers_share_one_lmdb(ten_db):
    """A TRAIN and a TEST net may read the same database in one process."""
    path, arrays = ten_db
    a, ta = setup_layer(data_layer_text(path, 3))
    b, tb = setup_layer(data_layer_text(path, 4), caffe_pb2.TEST)
    a.forward([], ta)
    a.close()
    b.forward([], tb)
    b.forward([], tb)
    np.testing.assert_array_equal(tb[1].data, [4, 5, 6, 7])
    b.close()
    c, tc = setup_layer(data_layer_text(path, 2))  # reopened after both closed
    c.forward([], tc)
    np.testing.assert_array_equal(tc[0].data, arrays[:2])
    c.close()


def test_data_layer_single_top(ten_db):
    path, arrays = ten_db
    layer, top = setup_layer(data_layer_text(path, 3, tops=1), ntop=1)
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data, arrays[:3])
    layer.close()


def test_rand_skip_is_seeded_and_bounded(ten_db):
    path, arrays = ten_db
    starts = []
    for seed in (1, 1, 2, 3, 4, 5):
        caffe.set_random_seed(seed)
        layer, top = setup_layer(data_layer_text(path, 2, extra="rand_skip: 7"))
        assert 0 <= layer.source.skip < 7
        layer.forward([], top)
        start = int(top[1].data[0])
        assert start == layer.source.skip
        np.testing.assert_array_equal(top[0].data[0], arrays[start])
        starts.append(start)
        layer.close()
    assert starts[0] == starts[1]
    assert len(set(starts)) > 1


def test_prefetch_does_not_make_results_depend_on_timing(ten_db):
    path, _ = ten_db
    text = data_layer_text(path, 6, "crop_size: 2 mirror: true")
    runs = []
    for delay in (0.0, 0.02):
        caffe.set_random_seed(7)
        layer, top = setup_layer(text)
        got = []
        for _ in range(5):
            time.sleep(delay)
            layer.forward([], top)
            got.append(top[0].data.copy())
        runs.append(got)
        layer.close()
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(runs[0][0], g) for g in runs[0][1:])


def test_encoded_and_float_datums(tmp_path):
    from caffe_lite.data.images import encode_image
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 5, 4, 3)).astype(np.uint8)  # H x W x BGR
    recs = []
    for i, im in enumerate(imgs):
        d = caffe_pb2.Datum(data=encode_image(im, "png"), label=i, encoded=True)
        recs.append((b"%08d" % i, d.SerializeToString()))
    write_lmdb(tmp_path / "enc", recs)
    layer, top = setup_layer(data_layer_text(tmp_path / "enc", 3))
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data, imgs.transpose(0, 3, 1, 2).astype(np.float32))
    layer.close()
    # force_gray on encoded data
    layer, top = setup_layer(data_layer_text(tmp_path / "enc", 3, "force_gray: true"))
    assert top[0].shape == (3, 1, 5, 4)
    layer.close()
    # float_data Datums
    f = rng.normal(0, 1, (4, 2, 3, 3)).astype(np.float32)
    write_lmdb(tmp_path / "flt", [(b"%08d" % i, array_to_datum(a, i).SerializeToString())
                                  for i, a in enumerate(f)])
    layer, top = setup_layer(data_layer_text(tmp_path / "flt", 4, "scale: 2"))
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data, f * 2)
    layer.close()


def test_data_layer_source_errors(tmp_path, ten_db):
    path, _ = ten_db
    with pytest.raises(DataError, match=r"layer 'data' \(Data\): LMDB source '.*nowhere' does "
                                        r"not exist"):
        setup_layer(data_layer_text(tmp_path / "nowhere"))
    empty = tmp_path / "empty_lmdb"
    write_lmdb(empty, [])
    with pytest.raises(DataError, match=r"layer 'data' \(Data\): LMDB '.*empty_lmdb' is empty"):
        setup_layer(data_layer_text(empty))
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not an LMDB"):
        setup_layer(data_layer_text(tmp_path / "plain"))
    leveldb = tmp_path / "ldb"
    leveldb.mkdir()
    (leveldb / "CURRENT").write_text("MANIFEST-000001\n")
    text = data_layer_text(leveldb).replace("backend: LMDB", "")
    with pytest.raises(DataError, match=r"LEVELDB backend, which caffe-lite does not support; "
                                        r"convert it to LMDB"):
        setup_layer(text)
    with pytest.raises(DataError, match="LEVELDB"):
        setup_layer(data_layer_text(path).replace("backend: LMDB", "backend: LEVELDB"))
    with pytest.raises(DataError, match="batch_size must be positive"):
        setup_layer(data_layer_text(path, 0))


def test_unset_backend_reads_an_lmdb(ten_db):
    path, arrays = ten_db
    layer, top = setup_layer(data_layer_text(path, 2).replace("backend: LMDB", ""))
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data, arrays[:2])
    layer.close()


def test_corrupt_record_raises_in_main_thread_naming_key(tmp_path):
    good = array_to_datum(np.zeros((1, 2, 2), np.uint8), 1).SerializeToString()
    write_lmdb(tmp_path / "bad", [(b"%08d" % i, good) for i in range(3)] +
               [(b"00000003", b"\x22\x09abc")] +  # data field claims 9 bytes, holds 3
               [(b"%08d" % i, good) for i in range(4, 8)])
    layer, top = setup_layer(data_layer_text(tmp_path / "bad", 2))
    layer.forward([], top)  # records 0, 1 are fine
    with pytest.raises(DataError, match=r"layer 'data' \(Data\): LMDB '.*bad' key '00000003': "
                                        r"not a valid Caffe Datum"):
        layer.forward([], top)
    with pytest.raises(DataError, match="00000003"):  # stays failed
        layer.forward([], top)
    layer.close()


def test_mean_file_that_does_not_fit_names_both_shapes(ten_db, tmp_path):
    path, _ = ten_db
    proto = caffe_pb2.BlobProto(num=1, channels=3, height=2, width=3)
    proto.data.extend([0.0] * 18)
    (tmp_path / "m.binaryproto").write_bytes(proto.SerializeToString())
    with pytest.raises(DataError, match=r"layer 'data' \(Data\): mean_file '.*m.binaryproto' has "
                                        r"shape 3x2x3 but the input data is 1x2x3"):
        setup_layer(data_layer_text(path, 2, f'mean_file: "{tmp_path}/m.binaryproto"'))


def test_close_and_garbage_collection_stop_the_thread(ten_db):
    path, _ = ten_db

    def count():
        return sum(t.name.startswith("caffe-lite layer 'data'") for t in threading.enumerate())
    base = count()
    layer, top = setup_layer(data_layer_text(path, 2))
    assert count() == base + 1
    layer.close()
    assert count() == base
    with pytest.raises(DataError, match="closed"):
        layer.forward([], top)
    layer, top = setup_layer(data_layer_text(path, 2))
    layer.forward([], top)
    del layer
    gc.collect()
    deadline = time.time() + 5
    while count() > base and time.time() < deadline:
        time.sleep(0.01)
    assert count() == base


# --- LeNet from BVLC's prototxt ---------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist_lmdbs(tmp_path_factory):
    from conftest import MNIST
    if not MNIST.exists():
        pytest.skip(f"{MNIST} is absent (the shared data directory ../shared is needed)")
    d = tmp_path_factory.mktemp("mnist")
    from caffe_lite.data.convert import convert_mnist
    convert_mnist(MNIST / "train5k-images-idx3-ubyte.gz", MNIST / "train5k-labels-idx1-ubyte.gz",
                  d / "mnist_train_lmdb")
    convert_mnist(MNIST / "t10k-images-idx3-ubyte.gz", MNIST / "t10k-labels-idx1-ubyte.gz",
                  d / "mnist_test_lmdb")
    return d / "mnist_train_lmdb", d / "mnist_test_lmdb"


def test_bvlc_lenet_runs_on_converted_mnist(mnist_dir, models_dir, tmp_path, mnist_lmdbs):
    from caffe_lite.data.mnist import read_idx_images, read_idx_labels
    train_db, test_db = mnist_lmdbs
    proto = lenet_with_sources(models_dir, tmp_path, train_db, test_db)
    tr_imgs = read_idx_images(mnist_dir / "train5k-images-idx3-ubyte.gz")
    tr_labs = read_idx_labels(mnist_dir / "train5k-labels-idx1-ubyte.gz")
    te_imgs = read_idx_images(mnist_dir / "t10k-images-idx3-ubyte.gz")
    te_labs = read_idx_labels(mnist_dir / "t10k-labels-idx1-ubyte.gz")

    net = Net(str(proto), caffe.TRAIN)
    assert net.blobs["data"].shape == (64, 1, 28, 28) and net.blobs["label"].shape == (64,)
    for b in range(2):
        loss = net.forward_backward()
        sl = slice(64 * b, 64 * (b + 1))
        np.testing.assert_array_equal(net.blobs["data"].data[:, 0], tr_imgs[sl] * SCALE)
        np.testing.assert_array_equal(net.blobs["label"].data, tr_labs[sl])
        assert np.isfinite(loss) and 1.5 < loss < 3.5
    assert np.abs(net.params["conv1"][0].diff).sum() > 0
    net.layer_dict["mnist"].close()

    test = Net(str(proto), caffe.TEST)
    out = test.forward()
    assert set(out) == {"accuracy", "loss"}
    assert test.blobs["data"].shape == (100, 1, 28, 28)
    np.testing.assert_array_equal(test.blobs["data"].data[:, 0], te_imgs[:100] * SCALE)
    np.testing.assert_array_equal(test.blobs["label"].data, te_labs[:100])
    test.layer_dict["mnist"].close()


def test_caffe_written_lmdb_is_readable(tmp_path, mnist_dir):
    """An LMDB written record by record with Caffe's exact bytes reads back through the
    Data layer (what BVLC's convert_mnist_data writes, reproduced by hand)."""
    from caffe_lite.data.mnist import read_idx_images
    imgs = read_idx_images(mnist_dir / "t10k-images-idx3-ubyte.gz")[:5]
    write_lmdb(tmp_path / "caffe_lmdb", [
        (b"%08d" % i, caffe_datum_bytes(1, 28, 28, imgs[i].tobytes(), 9 - i))
        for i in range(5)])
    (tmp_path / "caffe_lmdb" / "lock.mdb").unlink()  # a copied LMDB often has no lock file
    layer, top = setup_layer(data_layer_text(tmp_path / "caffe_lmdb", 5, "scale: 0.00390625"))
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data[:, 0], imgs * SCALE)
    np.testing.assert_array_equal(top[1].data, [9, 8, 7, 6, 5])
    assert not (tmp_path / "caffe_lmdb" / "lock.mdb").exists()
    layer.close()
