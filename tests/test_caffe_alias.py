"""The opt-in `caffe` alias (alias/, distribution caffe-lite-alias): pycaffe's module layout
over caffe_lite, the warning when a real pycaffe is installed too, and its installation with
pip.  Each case runs in its own process, so this session's `import caffe` stays untouched."""
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALIAS = os.path.join(ROOT, "alias")


def run(script, *path, cwd=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(list(path) + [ROOT]))
    r = subprocess.run([sys.executable, "-W", "default", "-c", textwrap.dedent(script)],
                       env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


PYCAFFE_SCRIPT = """
import numpy as np
import caffe
import caffe.draw, caffe.coord_map, caffe.io, caffe.net_spec, caffe.pycaffe
import caffe.classifier, caffe.detector
import caffe.proto.caffe_pb2
from caffe import layers as L, params as P
from caffe.proto import caffe_pb2
from caffe.coord_map import crop
from caffe.pycaffe import Net, SGDSolver, Timer
import caffe_lite
from caffe_lite.pycaffe import CAFFE_NAMES

missing = [n for n in CAFFE_NAMES if not hasattr(caffe, n)]
assert not missing, missing
assert caffe.Layer is caffe_lite.Layer and caffe.Net is caffe_lite.Net is Net
assert caffe.io is caffe_lite.io and caffe.draw is caffe_lite.draw
assert caffe.proto.caffe_pb2 is caffe_pb2 is caffe_lite.proto.caffe_pb2
assert caffe.classifier.Classifier is caffe.Classifier
assert caffe.TRAIN == 0 and caffe.TEST == 1

n = caffe.NetSpec()
n.data = L.Input(shape=dict(dim=[1, 1, 10, 10]))
n.conv = L.Convolution(n.data, num_output=2, kernel_size=3, pad=2,
                       weight_filler=dict(type="xavier"))
n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=1)
n.crop = crop(n.pool, n.data)
net = caffe.Net(str(n.to_proto()), caffe.TEST)
out = net.forward(data=np.ones((1, 1, 10, 10), np.float32))
print("ok", out["crop"].shape, n.to_proto().layer[-1].crop_param.offset[0])
"""


def test_pycaffe_script_runs_on_the_alias():
    r = run(PYCAFFE_SCRIPT, ALIAS)
    assert r.stdout.strip() == "ok (1, 2, 10, 10) 1"
    assert "Warning" not in r.stderr


def fake_pycaffe(folder):
    """A folder holding what BVLC's pycaffe installs: caffe/ with its compiled _caffe."""
    pkg = folder / "caffe"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("class _L: pass\n_L.__module__ = 'caffe._caffe'\n"
                                     "Layer = _L\nREAL = True\n")
    (pkg / "_caffe.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    return str(folder)


def test_alias_warns_when_it_hides_a_real_pycaffe(tmp_path):
    real = fake_pycaffe(tmp_path / "real")
    r = run("import caffe; print(hasattr(caffe, 'REAL'))", ALIAS, real)
    assert r.stdout.strip() == "False"
    assert "ShadowedPycaffeWarning" in r.stderr and "hides the BVLC pycaffe at" in r.stderr
    assert os.path.join(real, "caffe") in r.stderr


def test_a_real_pycaffe_first_is_used_and_its_layers_are_refused_clearly(tmp_path):
    real = fake_pycaffe(tmp_path / "real")
    (tmp_path / "bvlc_layer.py").write_text("import caffe\nclass L(caffe.Layer):\n    pass\n")
    r = run("""
        import caffe, caffe_lite
        from caffe_lite.alias import install, real_pycaffe_locations
        print(caffe.REAL, install(), len(real_pycaffe_locations()))
        try:
            caffe_lite.Net("input: 'd' input_shape { dim: 1 } layer { name: 'p' "
                           "type: 'Python' bottom: 'd' top: 't' python_param { "
                           "module: 'bvlc_layer' layer: 'L' } }", caffe_lite.TEST)
        except ImportError as e:
            print(e)
        """, real, str(tmp_path))
    first, second = r.stdout.strip().splitlines()
    assert first == "True False 1"          # the real one is used; the alias steps aside
    assert "subclasses BVLC pycaffe's caffe.Layer" in second and "layer 'p'" in second


def test_install_serves_the_alias_only_when_no_caffe_exists():
    r = run("""
        import importlib.util, sys
        from caffe_lite import alias
        assert importlib.util.find_spec('caffe') is None
        print(alias.install(), alias.install())
        import caffe, caffe.io, caffe_lite
        print(caffe.io is caffe_lite.io, caffe.layers is caffe_lite.net_spec.layers)
        """)
    assert r.stdout.split() == ["True", "True", "True", "True"]


def test_pip_installs_the_alias_distribution(tmp_path):
    target = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
           ALIAS]
    if importlib.util.find_spec("setuptools") is not None:
        cmd.insert(4, "--no-build-isolation")   # no download needed
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode and "setuptools" in (r.stdout + r.stderr) and "--no-build-isolation" \
            not in cmd:
        pytest.skip(f"pip could not fetch setuptools to build the alias: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (target / "caffe" / "__init__.py").is_file()
    assert any(p.name.startswith("caffe_lite_alias-") for p in target.iterdir())
    r = run("import caffe, caffe_lite; print(caffe.Net is caffe_lite.Net, caffe.__file__)",
            str(target))
    assert r.stdout.split()[0] == "True" and str(target) in r.stdout
