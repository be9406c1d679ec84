"""Helpers for the data-pipeline tests: hand-made protobuf wire bytes, small LMDBs, LeNet."""
import struct

import logging

import lmdb
import numpy as np
import pytest
from google.protobuf import text_format

from caffe_lite.io import load_message
from caffe_lite.proto import caffe_pb2


@pytest.fixture(autouse=True)
def restore_logging():
    """cli.main() installs a log handler on the (captured) stderr of the test that runs it;
    drop it afterwards so later tests do not log into a closed stream."""
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    root.handlers[:] = before


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tag(field, wire_type):
    return varint(field << 3 | wire_type)


def caffe_datum_bytes(channels=None, height=None, width=None, data=None, label=None,
                      float_data=None, encoded=None, packed_floats=False):
    """A Datum serialized the way Caffe's C++ protobuf does (fields in number order; proto2
    repeated floats unpacked unless packed_floats)."""
    out = b""
    for num, v in ((1, channels), (2, height), (3, width)):
        if v is not None:
            out += tag(num, 0) + varint(v)
    if data is not None:
        out += tag(4, 2) + varint(len(data)) + bytes(data)
    if label is not None:
        out += tag(5, 0) + varint(label & 0xFFFFFFFFFFFFFFFF if label < 0 else label)
    if float_data is not None:
        if packed_floats:
            payload = b"".join(struct.pack("<f", f) for f in float_data)
            out += tag(6, 2) + varint(len(payload)) + payload
        else:
            out += b"".join(tag(6, 5) + struct.pack("<f", f) for f in float_data)
    if encoded is not None:
        out += tag(7, 0) + varint(int(encoded))
    return out


def write_lmdb(path, records):
    """Write (key, value) byte records straight with the lmdb package (as Caffe's db_lmdb
    does: a directory with data.mdb)."""
    env = lmdb.open(str(path), map_size=1 << 26, subdir=True)
    with env.begin(write=True) as txn:
        for k, v in records:
            txn.put(k if isinstance(k, bytes) else k.encode(), v)
    env.close()


def read_lmdb(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        items = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    env.close()
    return items


def datum_lmdb(path, arrays, labels=None):
    """An LMDB of raw uint8 (or float) Datums keyed %08d."""
    from caffe_lite.io import array_to_datum
    labels = range(len(arrays)) if labels is None else labels
    write_lmdb(path, [(b"%08d" % i, array_to_datum(a, int(lab)).SerializeToString())
                      for i, (a, lab) in enumerate(zip(arrays, labels))])


def data_layer_text(source, batch_size=4, transform="", extra="", name="data", tops=2):
    top = 'top: "data" ' + ('top: "label"' if tops == 2 else "")
    return (f'name: "{name}" type: "Data" {top} transform_param {{ {transform} }} '
            f'data_param {{ source: "{source}" batch_size: {batch_size} backend: LMDB {extra} }}')


def lenet_with_sources(models_dir, tmp_path, train_db, test_db):
    """A copy of BVLC's lenet_train_test.prototxt with its LMDB sources pointed elsewhere."""
    src = models_dir / "bvlc_mnist" / "lenet_train_test.prototxt"
    param, _ = load_message(str(src), caffe_pb2.NetParameter)
    for layer in param.layer:
        if layer.type == "Data":
            train = any(r.phase == caffe_pb2.TRAIN for r in layer.include)
            layer.data_param.source = str(train_db if train else test_db)
    out = tmp_path / "lenet_train_test.prototxt"
    out.write_text(text_format.MessageToString(param))
    return out


def idx_subset(mnist_dir, tmp_path, prefix, n, gz=True):
    """The first n images / labels of an MNIST idx pair, written to tmp_path."""
    from caffe_lite.data.mnist import (read_idx_images, read_idx_labels, write_idx_images,
                                       write_idx_labels)
    imgs = read_idx_images(mnist_dir / f"{prefix}-images-idx3-ubyte.gz")[:n]
    labs = read_idx_labels(mnist_dir / f"{prefix}-labels-idx1-ubyte.gz")[:n]
    ext = ".gz" if gz else ""
    ip, lp = tmp_path / f"{prefix}{n}-images{ext}", tmp_path / f"{prefix}{n}-labels{ext}"
    write_idx_images(ip, imgs)
    write_idx_labels(lp, labs)
    return ip, lp, np.array(imgs), np.array(labs)
