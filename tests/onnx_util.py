"""Helpers for the ONNX export tests: random weights, running a model in ONNX Runtime, and the
comparison the checks use (within 1e-4 of the blob's largest magnitude)."""
import numpy as np
import pytest

import caffe_lite
from caffe_lite.io import parse_text
from caffe_lite.proto import caffe_pb2

RTOL = 1e-4


def need_onnx():
    """(onnx, onnxruntime), or skip the calling module when either is absent."""
    why = "needs onnx and onnxruntime (pip install 'caffe-lite[onnx]')"
    return pytest.importorskip("onnx", reason=why), pytest.importorskip("onnxruntime",
                                                                        reason=why)


def randomize(net, seed=0):
    """Random weights for every layer: weights ~ N(0, 1 / fan_in), biases and shifts
    N(0, 0.1), Scale factors U(0.5, 1.5), PReLU slopes U(0, 0.5), and BatchNorm sums with a
    scale-factor blob of 2 (the statistics are the sums / 2)."""
    rng = np.random.default_rng(seed)

    def normal(shape, std):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    for layer in net.layers:
        blobs = layer.blobs
        if layer.type == "BatchNorm":
            c = blobs[0].shape
            blobs[0].data[...] = normal(c, 0.4)
            blobs[1].data[...] = rng.uniform(1.0, 4.0, c)
            blobs[2].data[...] = 2.0
            continue
        for i, b in enumerate(blobs):
            if i == 0 and layer.prunable:
                fan_in = layer.K if layer.type == "InnerProduct" else b.count // b.shape[0]
                b.data[...] = normal(b.shape, 1 / np.sqrt(fan_in))
            elif i == 0 and layer.type == "Scale":
                b.data[...] = rng.uniform(0.5, 1.5, b.shape)
            elif layer.type == "PReLU":
                b.data[...] = rng.uniform(0, 0.5, b.shape)
            else:
                b.data[...] = normal(b.shape, 0.1)
    return net


def net_from_text(text, phase=caffe_lite.TEST, seed=0, **kw):
    param = parse_text(text, caffe_pb2.NetParameter())
    return randomize(caffe_lite.Net(param, phase, **kw), seed)


def random_inputs(net, seed=1, positive=False, names=None):
    """Normal random arrays (absolute values if `positive`) for the net's inputs, or for the
    blobs `names` ({name: shape})."""
    rng = np.random.default_rng(seed)
    names = names or {n: net.blobs[n].shape for n in net.inputs}
    out = {}
    for name, shape in names.items():
        x = rng.standard_normal(shape, dtype=np.float32)
        out[name] = np.abs(x) if positive else x
    return out


def forward_from(net, feeds):
    """Set the blobs in `feeds` and run the layers after the data layers (which would refill
    DummyData or read an LMDB)."""
    for name, value in feeds.items():
        net.blobs[name].data[...] = value
    first = next(i for i, bottoms in enumerate(net.bottom_ids) if bottoms)
    net.forward_from_to(first)


def run_onnx(model, feeds):
    """{output name: array} from ONNX Runtime (CPU) for `model` (ModelProto or bytes)."""
    import onnxruntime as ort
    data = model if isinstance(model, bytes) else model.SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in wanted})))


def assert_close(got, ref, what="", rtol=RTOL):
    """|got - ref| <= rtol * max|ref| everywhere, and the shapes agree."""
    ref = np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * max(scale, 1e-30),
                               err_msg=what)


def compare(net, export, feeds=None, positive=False):
    """Run `net` on `feeds` (default: random arrays for the export's inputs) and check each
    exported output against its blob."""
    feeds = feeds or random_inputs(net, names=export.inputs, positive=positive)
    forward_from(net, feeds)
    got = run_onnx(export.data, feeds)
    assert set(got) == set(export.outputs)
    for name, value in got.items():
        assert_close(value, net.blobs[export.output_blobs[name]].data, name)
    return got
