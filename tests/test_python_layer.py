"""Python layers (type "Python"): pycaffe's documented behaviour (its test_python_layer and
test_python_layer_with_param_str, in pytest form), gradients, learnable and prunable
parameters through the solver, snapshots, and the errors when the module cannot be used.
The layer classes are in python_layer_classes.py."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite import cli
from caffe_lite.errors import LayerSetupError, PythonLayerImportError
from caffe_lite.layers.python import PythonLayer
from caffe_lite.pruning import prunable_layers
from caffe_lite.testing import blob, check_gradient, layer_from_text

import python_layer_classes as classes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def py_layer(name, cls, bottom=(), top=(), extra=""):
    b = "".join(f" bottom: '{x}'" for x in bottom)
    t = "".join(f" top: '{x}'" for x in top)
    return (f"layer {{ type: 'Python' name: '{name}'{b}{t} {extra} python_param {{ "
            f"module: 'python_layer_classes' layer: '{cls}' }} }}\n")


THREE_TIMES_TEN = ("name: 'pythonnet' force_backward: true "
                   "input: 'data' input_shape { dim: 10 dim: 9 dim: 8 }\n"
                   + py_layer("one", "TimesTen", ["data"], ["one"])
                   + py_layer("two", "TimesTen", ["one"], ["two"])
                   + py_layer("three", "TimesTen", ["two"], ["three"]))


@pytest.fixture
def net():
    return caffe.Net(THREE_TIMES_TEN, caffe.TRAIN)


def test_python_is_a_registered_layer_type():
    assert "Python" in caffe.layer_type_list()


def test_forward_backward_and_reshape_as_pycaffe(net):
    net.blobs["data"].data[...] = 8
    net.forward()
    assert (net.blobs["three"].data == 10 ** 3 * 8).all()
    net.blobs["three"].diff[...] = 7
    net.backward()
    assert (net.blobs["data"].diff == 10 ** 3 * 7).all()
    net.blobs["data"].reshape(4, 4, 4, 4)
    net.forward()
    assert all(b.data.shape == (4, 4, 4, 4) for b in net.blobs.values())


def test_user_methods_are_bound_directly(net):
    """No wrapper between the net and the user's code: the layer's hot-path methods are the
    user's bound methods."""
    layer = net.layers[1]
    assert isinstance(layer, PythonLayer) and isinstance(layer.python, classes.TimesTen)
    assert layer.forward_cpu.__func__ is classes.TimesTen.forward
    assert layer.forward_gpu.__func__ is classes.TimesTen.forward
    assert layer.backward_cpu.__func__ is classes.TimesTen.backward
    assert layer.reshape.__func__ is classes.TimesTen.reshape
    assert layer.type == "Python" and net.layer_dict["one"] is layer


def test_exception_in_setup_propagates():
    text = ("input: 'data' input_shape { dim: 10 dim: 9 dim: 8 }\n"
            + py_layer("layer", "Raises", ["data"], ["top"]))
    with pytest.raises(RuntimeError, match="always fails"):
        caffe.Net(text, caffe.TEST)


def test_parameter_blob_learns_saves_loads_and_shares(tmp_path):
    text = ("name: 'pythonnet' force_backward: true "
            "input: 'data' input_shape { dim: 10 dim: 9 dim: 8 }\n"
            + py_layer("layer", "OneParameter", ["data"], ["top"]))
    net = caffe.Net(text, caffe.TRAIN)
    net.forward()
    net.backward()
    layer = net.layers[list(net._layer_names).index("layer")]
    assert layer.blobs[0].data[0] == 0 and layer.blobs[0].diff[0] == 1
    layer.blobs[0].data[0] += layer.blobs[0].diff[0]
    assert layer.blobs[0].data[0] == 1
    assert list(net.params) == ["layer"] and net.params["layer"][0] is layer.blobs[0]
    path = str(tmp_path / "p.caffemodel")
    net.save(path)
    layer.blobs[0].data[0] = -1
    net.copy_from(path)
    assert layer.blobs[0].data[0] == 1
    net2 = caffe.Net(text, caffe.TRAIN)
    net2.share_with(net)
    assert net2.layer_dict["layer"].blobs[0].data[0] == 1


def test_phase():
    text = py_layer("layer", "Phase", [], ["phase"])
    for phase in (caffe.TRAIN, caffe.TEST):
        assert caffe.Net(text, phase).forward()["phase"] == phase


def test_param_str():
    text = ("name: 'pythonnet' force_backward: true "
            "input: 'data' input_shape { dim: 10 dim: 9 dim: 8 }\n"
            "layer { type: 'Python' name: 'mul10' bottom: 'data' top: 'mul10' python_param { "
            "module: 'python_layer_classes' layer: 'MultiplyByParamStr' "
            "param_str: \"{'value': 10}\" } }\n"
            "layer { type: 'Python' name: 'mul2' bottom: 'mul10' top: 'mul2' python_param { "
            "module: 'python_layer_classes' layer: 'MultiplyByParamStr' "
            "param_str: \"{'value': 2}\" } }")
    net = caffe.Net(text, caffe.TRAIN)
    net.blobs["data"].data[...] = 1
    net.forward()
    assert (net.blobs["mul2"].data == 20).all()
    net.blobs["mul2"].diff[...] = 1
    net.backward()
    assert (net.blobs["data"].diff == 20).all()
    assert net.layers[1].param_str == "{'value': 10}"


def test_finite_difference_gradients_of_a_python_layer():
    layer = layer_from_text("name: 's' type: 'Python' python_param { "
                            "module: 'python_layer_classes' layer: 'ChannelScale' }")
    bottom = [blob((2, 3, 4, 5), seed=1)]
    check_gradient(layer, bottom)


SCALE_NET = """name: 'scale'
input: 'data' input_shape { dim: 4 dim: 3 dim: 2 }
input: 'target' input_shape { dim: 4 dim: 3 dim: 2 }
layer { type: 'Python' name: 'scale' bottom: 'data' top: 'y'
        param { lr_mult: 1 decay_mult: 1 }
        python_param { module: 'python_layer_classes' layer: 'ChannelScale' } }
layer { type: 'Python' name: 'loss' bottom: 'y' bottom: 'target' top: 'loss' loss_weight: 1
        python_param { module: 'python_layer_classes' layer: 'EuclideanLoss' } }
"""


def scale_solver(tmp_path, **solver):
    settings = dict(base_lr=0.1, lr_policy='"fixed"', momentum=0, weight_decay=0, display=0,
                    snapshot_prefix=f'"{tmp_path}/scale"', random_seed=3)
    settings.update(solver)
    text = "\n".join(f"{k}: {v}" for k, v in settings.items())
    from caffe_lite.proto import caffe_pb2
    from caffe_lite.io import parse_text
    p = parse_text(text, caffe_pb2.SolverParameter())
    p.net_param.CopyFrom(parse_text(SCALE_NET, caffe_pb2.NetParameter()))
    s = caffe.SGDSolver(p)
    g = np.random.default_rng(0)
    x, t = g.normal(size=(4, 3, 2)).astype(np.float32), g.normal(size=(4, 3, 2)).astype(np.float32)
    s.net.blobs["data"].data[...] = x
    s.net.blobs["target"].data[...] = t
    return s, x, t


def test_solver_updates_a_python_layer_parameter(tmp_path):
    s, x, t = scale_solver(tmp_path)
    w = s.net.params["scale"][0]
    assert s.net.learnable_params == [w]
    w0 = w.data.copy()
    np.testing.assert_array_equal(w0, [1, 2, 3])
    s.step(1)
    # L = 0.5 / N * sum((w_c x - t)^2)  ->  dL/dw_c = sum_{n,h} (w_c x - t) x / N
    grad = ((w0[None, :, None] * x - t) * x).sum(axis=(0, 2)) / x.shape[0]
    np.testing.assert_allclose(w.data, w0 - 0.1 * grad, rtol=1e-6)
    assert s.net.forward()["loss"] == pytest.approx(
        0.5 / 4 * ((w.data[None, :, None] * x - t) ** 2).sum(), rel=1e-6)


def test_prunable_python_layer_keeps_pruned_weights_at_zero(tmp_path):
    s, x, t = scale_solver(tmp_path, momentum=0.9, weight_decay=0.01,
                           regularization_type='"L2"')
    assert [n for n, _ in prunable_layers(s.net)] == ["scale"]
    w = s.net.params["scale"][0]
    assert w.has_mask
    w.data[1] = 0
    w.mask = [1, 0, 1]
    s.step(5)
    assert w.data[1] == 0 and w.data[0] != 1 and w.data[2] != 3
    assert s.history[0][1] == 0


COUNTER_NET = """
layer { type: 'Python' name: 'counter' top: 'count'
        python_param { module: 'python_layer_classes' layer: 'Counter' } }
layer { type: 'Reshape' name: 'r' bottom: 'count' top: 'x'
        reshape_param { shape { dim: 4 dim: 1 dim: 1 } } }
layer { type: 'Python' name: 'scale' bottom: 'x' top: 'y'
        python_param { module: 'python_layer_classes' layer: 'ChannelScale' } }
layer { type: 'DummyData' name: 'zeros' top: 'zeros'
        dummy_data_param { shape { dim: 4 dim: 1 dim: 1 } } }
layer { type: 'EuclideanLoss' name: 'loss' bottom: 'y' bottom: 'zeros' top: 'loss' }
"""


def test_snapshot_holds_python_parameters_and_layer_state(tmp_path):
    from caffe_lite.io import load_weights, parse_text
    from caffe_lite.proto import caffe_pb2
    param = parse_text(f'base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" display: 0 '
                       f'snapshot_prefix: "{tmp_path}/snap"', caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(parse_text(COUNTER_NET, caffe_pb2.NetParameter()))
    s = caffe.SGDSolver(param)
    s.step(3)
    model = s.snapshot()
    saved_w = s.net.params["scale"][0].data.copy()
    assert saved_w[0] != 1  # it learned
    assert s.net.layer_dict["counter"].pos == (3 * 4) % 10
    assert dict(load_weights(model))["scale"][0].tolist() == saved_w.tolist()
    s2 = caffe.SGDSolver(param)
    assert s2.net.layer_dict["counter"].pos == 0
    s2.restore(model.replace(".caffemodel", ".solverstate"))
    np.testing.assert_array_equal(s2.net.params["scale"][0].data, saved_w)
    assert s2.net.layer_dict["counter"].pos == 2  # the data layer's state, from the sidecar
    s.step(2)
    s2.step(2)   # same batches, same momentum: the same weights
    np.testing.assert_array_equal(s2.net.params["scale"][0].data, s.net.params["scale"][0].data)


def test_attributes_reach_the_user_object():
    net = caffe.Net(py_layer("counter", "Counter", [], ["count"]), caffe.TRAIN)
    layer = net.layers[0]
    net.forward()
    np.testing.assert_array_equal(net.blobs["count"].data, [0, 1, 2, 3])
    layer.pos = 8                       # sets the user object's attribute
    assert layer.python.pos == 8
    net.forward()
    np.testing.assert_array_equal(net.blobs["count"].data, [8, 9, 0, 1])
    layer.reset()                       # a method of the user's class
    net.forward()
    np.testing.assert_array_equal(net.blobs["count"].data, [0, 1, 2, 3])
    with pytest.raises(AttributeError):
        layer.no_such_attribute


def net_with_module(module, cls="L"):
    return ("input: 'data' input_shape { dim: 2 }\n"
            f"layer {{ type: 'Python' name: 'p' bottom: 'data' top: 'out' python_param {{ "
            f"module: '{module}' layer: '{cls}' }} }}")


def test_missing_module_is_an_import_error_naming_it():
    with pytest.raises(PythonLayerImportError) as e:
        caffe.Net(net_with_module("no_such_layer_module"), caffe.TEST)
    assert isinstance(e.value, ImportError) and isinstance(e.value, LayerSetupError)
    msg = str(e.value)
    assert "layer 'p' (Python)" in msg and "'no_such_layer_module'" in msg
    assert "PYTHONPATH" in msg


def test_missing_class_lists_the_module_classes():
    with pytest.raises(ImportError, match=r"module 'python_layer_classes' \(.*python_layer_"
                                          r"classes.py\) has no class 'Nope'; its Python layer "
                                          r"classes: ChannelScale, Counter,"):
        caffe.Net(net_with_module("python_layer_classes", "Nope"), caffe.TEST)


def test_module_errors_name_file_and_line(tmp_path, monkeypatch):
    (tmp_path / "broken_layer_mod.py").write_text("import numpy\ndef f(:\n    pass\n")
    (tmp_path / "raising_layer_mod.py").write_text("raise ValueError('bad config')\n")
    (tmp_path / "needs_dep_mod.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PythonLayerImportError,
                       match=r"'broken_layer_mod' raised SyntaxError \(.*broken_layer_mod.py:2\)"):
        caffe.Net(net_with_module("broken_layer_mod"), caffe.TEST)
    with pytest.raises(PythonLayerImportError, match=r"raised ValueError: bad config"):
        caffe.Net(net_with_module("raising_layer_mod"), caffe.TEST)
    with pytest.raises(PythonLayerImportError,
                       match=r"'needs_dep_mod' failed: No module named 'no_such_dependency_xyz'"):
        caffe.Net(net_with_module("needs_dep_mod"), caffe.TEST)


def test_module_in_the_working_directory_is_found(tmp_path, monkeypatch):
    (tmp_path / "cwd_layer_mod.py").write_text(textwrap.dedent("""
        import caffe_lite as caffe
        class L(caffe.Layer):
            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].shape)
            def forward(self, bottom, top):
                top[0].data[...] = bottom[0].data + 1
        """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    net = caffe.Net(net_with_module("cwd_layer_mod"), caffe.TEST)
    assert net.forward(data=np.array([1, 2], np.float32))["out"].tolist() == [2, 3]
    assert str(tmp_path) not in sys.path  # the working directory was only borrowed


def test_cli_reports_a_bad_module_in_one_line(tmp_path, capsys):
    model = tmp_path / "net.prototxt"
    model.write_text(net_with_module("no_such_layer_module"))
    assert cli.main(["time", "-model", str(model), "-iterations", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_layer_module" in err[0] and "Traceback" not in err[0]


def test_pycaffe_module_importing_caffe_runs_unchanged(tmp_path):
    """A layer module written for pycaffe (`import caffe`, `caffe.Layer`) loads when no other
    caffe is installed: caffe-lite serves its alias, and says so in its log."""
    (tmp_path / "pycaffe_style.py").write_text(textwrap.dedent("""
        import caffe
        class Double(caffe.Layer):
            def setup(self, bottom, top):
                assert self.phase == caffe.TEST
            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].data.shape)
            def forward(self, bottom, top):
                top[0].data[...] = 2 * bottom[0].data
        """))
    (tmp_path / "net.prototxt").write_text(net_with_module("pycaffe_style", "Double"))
    script = textwrap.dedent("""
        import importlib.util, logging, sys
        import numpy as np
        assert importlib.util.find_spec("caffe") is None, "a caffe is installed"
        logging.basicConfig(level=logging.INFO)
        import caffe_lite
        net = caffe_lite.Net("net.prototxt", caffe_lite.TEST)
        print(net.forward(data=np.array([1.5, -2], np.float32))["out"].tolist())
        import caffe
        print(caffe.Layer is caffe_lite.Layer, caffe.__caffe_lite_alias__)
        """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, str(tmp_path)]))
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["[3.0, -4.0]", "True True"]
    assert "imports caffe; serving caffe-lite's pycaffe alias" in r.stderr
