"""pycaffe's documented behaviour of Net, Solver, NetSpec, io and the top-level functions
(its test_net / test_solver / test_net_spec / test_io / test_layer_type_list, in pytest
form), and the built-in exception types pycaffe code catches."""
import collections
import logging

import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite import layers as L, params as P
from caffe_lite.errors import CaffeLiteError
from caffe_lite.proto import caffe_pb2

SIMPLE_NET = """name: 'testnet' force_backward: true
layer { type: 'DummyData' name: 'data' top: 'data' top: 'label'
  dummy_data_param { num: 5 channels: 2 height: 3 width: 4
    num: 5 channels: 1 height: 1 width: 1
    data_filler { type: 'gaussian' std: 1 } data_filler { type: 'constant' } } }
layer { type: 'Convolution' name: 'conv' bottom: 'data' top: 'conv'
  convolution_param { num_output: 11 kernel_size: 2 pad: 3
    weight_filler { type: 'gaussian' std: 1 } bias_filler { type: 'constant' value: 2 } }
    param { decay_mult: 1 } param { decay_mult: 0 } }
layer { type: 'InnerProduct' name: 'ip' bottom: 'conv' top: 'ip_blob'
  inner_product_param { num_output: 13
    weight_filler { type: 'gaussian' std: 2.5 } bias_filler { type: 'constant' value: -3 } } }
layer { type: 'SoftmaxWithLoss' name: 'loss' bottom: 'ip_blob' bottom: 'label' top: 'loss' }
"""


@pytest.fixture
def net_file(tmp_path):
    p = tmp_path / "net.prototxt"
    p.write_text(SIMPLE_NET)
    return str(p)


@pytest.fixture
def net(net_file):
    n = caffe.Net(net_file, caffe.TRAIN)
    n.blobs["label"].data[...] = np.random.default_rng(0).integers(13, size=(5, 1, 1, 1))
    return n


def test_names_ids_and_loss_weights(net):
    assert net.inputs == [] and net.outputs == ["loss"]
    assert net.top_names == collections.OrderedDict(
        [("data", ["data", "label"]), ("conv", ["conv"]), ("ip", ["ip_blob"]),
         ("loss", ["loss"])])
    assert net.bottom_names == collections.OrderedDict(
        [("data", []), ("conv", ["data"]), ("ip", ["conv"]), ("loss", ["ip_blob", "label"])])
    assert list(net._layer_names) == ["data", "conv", "ip", "loss"]
    assert list(net._blob_names) == ["data", "label", "conv", "ip_blob", "loss"]
    assert net._blob_loss_weights == [0, 0, 0, 0, 1]
    assert net._top_ids(3) == [4] and net._bottom_ids(3) == [3, 1] and net._bottom_ids(0) == []
    assert net._inputs == [] and net._outputs == [4]
    assert len(net._blobs) == 5 and net._blobs[2] is net.blobs["conv"]
    layer = net.layers[1]
    assert layer.type == "Convolution" and len(layer.blobs) == 2 and layer.phase == caffe.TRAIN
    b = net.blobs["data"]
    assert (b.num, b.channels, b.height, b.width, b.count) == (5, 2, 3, 4, 120)
    assert tuple(b.shape) == (5, 2, 3, 4)


def test_forward_backward_start_end_and_clear_param_diffs(net):
    net.forward()
    net.backward()
    conv_top = net.blobs["conv"].data.copy()
    net.forward(start="conv", end="conv")
    np.testing.assert_array_equal(net.blobs["conv"].data, conv_top)
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        net.forward(start="nope")
    with pytest.raises(ValueError):
        net.backward(end="nope")
    assert net.params["ip"][0].diff.any()
    net.clear_param_diffs()
    assert not any(p.diff.any() for ps in net.params.values() for p in ps)


def test_hooks_run_around_every_layer(net):
    calls = []
    net.before_forward(lambda i: calls.append(("bf", i)))
    net.after_forward(lambda i: calls.append(("af", i)))
    net.before_backward(lambda i: calls.append(("bb", i)))
    net.after_backward(lambda i: calls.append(("ab", i)))
    net.forward()
    net.backward()
    assert calls == [(w, i) for i in range(4) for w in ("bf", "af")] + \
                    [(w, i) for i in range(3, -1, -1) for w in ("bb", "ab")]
    results = []
    for hooked in (True, False):   # the same numbers with and without hooks (same data)
        if not hooked:
            net._hooks = {k: [] for k in net._hooks}
        net.clear_param_diffs()
        loss = float(net.forward(start="conv")["loss"])
        net.backward()
        results.append((loss, net.params["conv"][0].diff.copy()))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_save_legacy_constructor_and_hdf5(net, net_file, tmp_path):
    path = str(tmp_path / "w.caffemodel")
    net.save(path)
    net2 = caffe.Net(net_file, path, caffe.TRAIN)          # pycaffe's legacy form
    assert caffe.Net(network_file=net_file, phase=caffe.TEST, weights=path).phase == caffe.TEST
    h5 = str(tmp_path / "w.caffemodel.h5")
    net.save_hdf5(h5)
    net3 = caffe.Net(net_file, caffe.TRAIN)
    net3.load_hdf5(h5)
    for name in net.params:
        for a, b2, b3 in zip(net.params[name], net2.params[name], net3.params[name]):
            np.testing.assert_array_equal(a.data, b2.data)
            np.testing.assert_array_equal(a.data, b3.data)


def test_set_input_arrays_low_level_form():
    net = caffe.Net("layer { name: 'd' type: 'MemoryData' top: 'data' top: 'label' "
                    "memory_data_param { batch_size: 2 channels: 1 height: 1 width: 3 } }",
                    caffe.TEST)
    data = np.arange(12, dtype=np.float32).reshape(4, 1, 1, 3)
    net._set_input_arrays(data, np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1))
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[:2])
    np.testing.assert_array_equal(net.blobs["label"].data, [0, 1])


SOLVER = """test_iter: 10 test_interval: 10 base_lr: 0.01 momentum: 0.9
weight_decay: 0.0005 lr_policy: 'inv' gamma: 0.0001 power: 0.75
display: 100 max_iter: 100 snapshot_after_train: false"""


@pytest.fixture
def solver(net_file, tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text(f"net: '{net_file}'\n{SOLVER}\nsnapshot_prefix: '{tmp_path}/model'")
    s = caffe.SGDSolver(str(path))
    caffe.get_solver(str(path))
    for n in [s.net] + s.test_nets:
        n.blobs["label"].data[...] = np.random.default_rng(1).integers(13, size=(5, 1, 1, 1))
    return s


def test_solver_solve_apply_update_lr_and_snapshot(solver, tmp_path):
    assert solver.lr == pytest.approx(0.01)
    data = solver.net.layers[1].blobs[0].data
    data[...] = 0
    solver.net.layers[1].blobs[0].diff[...] = 1
    solver.apply_update()
    assert np.abs(data - -0.01).max() < 1e-7
    model = solver.snapshot()
    assert model.endswith("model_iter_0.caffemodel")
    assert (tmp_path / "model_iter_0.solverstate").is_file()
    assert solver.iter == 0
    solver.solve()
    assert solver.iter == 100
    assert solver.lr == pytest.approx(0.01 * (1 + 0.0001 * 100) ** -0.75)


def test_add_callback_and_share_weights(solver, net_file):
    calls = []
    solver.add_callback(lambda: calls.append("start"), lambda: calls.append("ready"))
    solver.step(2)
    assert calls == ["start", "ready", "start", "ready"]
    with pytest.raises(TypeError):
        solver.add_callback(1, 2)
    other = caffe.Net(net_file, caffe.TEST)
    solver.share_weights(other)
    assert other.params["conv"][0].data is not None
    np.testing.assert_array_equal(other.params["ip"][0].data, solver.net.params["ip"][0].data)
    solver.net.params["ip"][0].data[0, 0] = 42
    assert other.params["ip"][0].data[0, 0] == 42           # shared memory


def lenet(batch_size):
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[batch_size, 1, 28, 28]),
                                         dict(dim=[batch_size, 1, 1, 1])],
                                  transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50,
                            weight_filler=dict(type="xavier"))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    return n.to_proto()


def anon_lenet(batch_size):
    data, label = L.DummyData(shape=[dict(dim=[batch_size, 1, 28, 28]),
                                     dict(dim=[batch_size, 1, 1, 1])],
                              transform_param=dict(scale=1. / 255), ntop=2)
    conv1 = L.Convolution(data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    pool1 = L.Pooling(conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    conv2 = L.Convolution(pool1, kernel_size=5, num_output=50, weight_filler=dict(type="xavier"))
    pool2 = L.Pooling(conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    ip1 = L.InnerProduct(pool2, num_output=500, weight_filler=dict(type="xavier"))
    relu1 = L.ReLU(ip1, in_place=True)
    ip2 = L.InnerProduct(relu1, num_output=10, weight_filler=dict(type="xavier"))
    return L.SoftmaxWithLoss(ip2, label).to_proto()


@pytest.mark.parametrize("make", [lenet, anon_lenet])
def test_netspec_lenet(make):
    proto = make(50)
    assert proto.layer[6].bottom == proto.layer[6].top        # relu in place
    net = caffe.Net(str(proto), caffe.TEST)
    assert len(net.layers) == 9


def test_netspec_zero_top_layers_and_type_error():
    n = caffe.NetSpec()
    n.data, n.data2 = L.DummyData(shape=dict(dim=3), ntop=2)
    n.silence_data = L.Silence(n.data, ntop=0)
    n.silence_data2 = L.Silence(n.data2, ntop=0)
    proto = n.to_proto()
    assert [l.name for l in proto.layer] == ["data", "silence_data", "silence_data2"]
    assert len(caffe.Net(str(proto), caffe.TEST).forward()) == 0
    data = L.DummyData(ntop=2)
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top \(type is "
                                        r"<(type|class) 'tuple'>\)$"):
        L.Silence(data, ntop=0)
    L.Silence(*data, ntop=0)
    assert n.keys() == ["data", "data2", "silence_data", "silence_data2"]
    assert n["data"] is n.data and len(n.vals()) == 4
    del n["silence_data2"]
    assert "silence_data2" not in n.keys()


def test_io_blobproto_and_vectors():
    blob = caffe_pb2.BlobProto()
    blob.data.extend(list(np.zeros(100)))
    blob.num, blob.channels, blob.height, blob.width = (1, 1, 10, 10)
    assert caffe.io.blobproto_to_array(blob).shape == (1, 1, 10, 10)
    blob = caffe_pb2.BlobProto()
    blob.data.extend(list(np.zeros(100)))
    blob.shape.dim.extend([10, 10])
    assert caffe.io.blobproto_to_array(blob).shape == (10, 10)
    blob.ClearField("shape")
    with pytest.raises(ValueError):                         # no shape, 100 values
        caffe.io.blobproto_to_array(blob)
    scalar = caffe_pb2.BlobProto()
    scalar.data.append(123)
    assert caffe.io.blobproto_to_array(scalar) == 123 and \
        caffe.io.blobproto_to_array(scalar).shape == ()
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.float32(7) * np.ones(4)]
    s = caffe.io.arraylist_to_blobprotovector_str(arrays)
    assert isinstance(s, bytes)
    back = caffe.io.blobprotovector_str_to_arraylist(s)
    assert len(back) == 2 and all(np.array_equal(a, b) for a, b in zip(arrays, back))
    d1 = caffe.io.array_to_datum(np.ones((10, 10, 3)), label=1)
    d2 = caffe.io.array_to_datum(np.ones((10, 10, 3)))
    assert len(d1.SerializeToString()) > len(d2.SerializeToString())


def test_top_level_functions(caplog):
    assert {"Data", "Convolution", "InnerProduct", "Python"} <= set(caffe.layer_type_list())
    assert caffe.has_nccl() is False
    with pytest.raises(NotImplementedError, match="has_nccl"):
        caffe.NCCL(None, "uid")
    assert caffe.solver_count() == 1 and caffe.solver_rank() == 0
    caffe.set_solver_count(4)
    caffe.set_solver_rank(2)
    caffe.set_multiprocess(True)
    try:
        assert caffe.solver_count() == 4 and caffe.solver_rank() == 2
    finally:
        caffe.set_solver_count(1)
        caffe.set_solver_rank(0)
        caffe.set_multiprocess(False)
    t = caffe.Timer()
    assert t.ms == 0.0
    t.start()
    t.stop()
    first = t.ms
    assert first >= 0 and t.ms == first                     # stopped: it no longer moves
    logger = logging.getLogger("caffe_lite")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    try:
        caffe.init_log(1)
        assert logger.level == logging.WARNING and len(logger.handlers) == 1
        caffe.init_log()
        assert logger.level == logging.INFO
        logger.propagate = True
        with caplog.at_level(logging.INFO, logger="caffe_lite"):
            caffe.log("hello from a script")
        assert "hello from a script" in caplog.text
    finally:
        logger.handlers[:], logger.propagate = handlers, propagate
        logger.setLevel(level)


def test_errors_are_the_builtins_pycaffe_code_catches(tmp_path, net_file):
    with pytest.raises(FileNotFoundError) as e:
        caffe.Net(str(tmp_path / "missing.prototxt"), caffe.TEST)
    assert isinstance(e.value, RuntimeError) and isinstance(e.value, CaffeLiteError)
    with pytest.raises(IOError):
        caffe.Net(net_file, caffe.TEST, weights=str(tmp_path / "missing.caffemodel"))
    with pytest.raises(TypeError):
        caffe.Net(net_file, 1.5)
    n = caffe.NetSpec()
    with pytest.raises(KeyError):
        n["nothing"]
    assert not hasattr(n, "nothing")
    n.data = L.Input(shape=dict(dim=[1]), no_such_field=3)
    with pytest.raises(AttributeError, match="no field 'no_such_field'"):
        n.to_proto()
    b = caffe.Net(net_file, caffe.TEST).blobs["data"]
    with pytest.raises(ValueError):
        b.data = np.zeros((2, 2))
    with pytest.raises(IOError):
        caffe.io.load_image(str(tmp_path / "missing.jpg"))
    with pytest.raises(ValueError):
        caffe.io.array_to_datum(np.zeros((2, 2)))
    with pytest.raises(ValueError):
        caffe.io.Transformer({"data": (1, 3, 4, 4)}).set_mean("data", np.zeros(2))
