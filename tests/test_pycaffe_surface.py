"""docs/pycaffe.md stays true: every name it marks present ('yes' or 'differs') is reachable in
caffe_lite, and through the caffe alias under pycaffe's module path; the top-level table covers
pycaffe's whole `caffe` namespace."""
import importlib
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import caffe_lite
from caffe_lite import layers as L
from caffe_lite.pycaffe import CAFFE_NAMES

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "pycaffe.md"
SECTION = re.compile(r"^## `([\w.]+)`(?: → `([\w.]+)`)?")
ROW = re.compile(r"^\| `([^`]+)` \| (yes|differs|other|no) \|")


def doc_sections():
    """[(pycaffe path, caffe_lite path or None, [(name, status)])]"""
    out = []
    for line in DOC.read_text().splitlines():
        m = SECTION.match(line)
        if m:
            out.append((m.group(1), m.group(2), []))
            continue
        m = ROW.match(line)
        if m and out:
            out[-1][2].append((m.group(1), m.group(2)))
    return [s for s in out if s[2]]


def resolve(path):
    """A dotted path: the longest importable module, then attributes."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            obj = getattr(obj, p)
        return obj
    raise ImportError(path)


TINY = """name: 'tiny' input: 'data' input_shape { dim: 1 dim: 3 dim: 4 dim: 4 }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
        inner_product_param { num_output: 2 } }"""


@pytest.fixture(scope="module")
def instances(tmp_path_factory):
    """Objects whose instance attributes the tables name."""
    tmp = tmp_path_factory.mktemp("surface")
    model = tmp / "tiny.prototxt"
    model.write_text(TINY)
    net = caffe_lite.Net(str(model), caffe_lite.TEST)
    weights = tmp / "tiny.caffemodel"
    net.save(str(weights))
    solver = caffe_lite.get_solver(f"base_lr: 0.1 lr_policy: 'fixed' net: '{model}'")
    n = caffe_lite.NetSpec()
    n.data = L.Input(shape=dict(dim=[1]))

    class Py(caffe_lite.Layer):
        pass
    return {
        "caffe_lite.Net": net,
        "caffe_lite.Blob": net.blobs["data"],
        "caffe_lite.layers.base.Layer": net.layers[1],
        "caffe_lite.Layer": Py(),
        "caffe_lite.solvers.Solver": solver,
        "caffe_lite.io.Transformer": caffe_lite.io.Transformer({"data": (1, 3, 4, 4)}),
        "caffe_lite.NetSpec": n,
        "caffe_lite.net_spec.Top": n.data,
        "caffe_lite.net_spec.Function": n.data.fn,
        "caffe_lite.Classifier": caffe_lite.Classifier(str(model), str(weights)),
        "caffe_lite.Detector": caffe_lite.Detector(str(model), str(weights), context_pad=1,
                                                   mean=np.zeros(3)),
    }


def test_every_name_marked_present_is_reachable(instances):
    sections = doc_sections()
    assert len(sections) >= 20
    missing = []
    checked = 0
    for pycaffe_path, target, rows in sections:
        if target is None:
            assert all(status in ("no", "other") for _, status in rows), pycaffe_path
            continue
        obj = instances.get(target) or resolve(target)
        for name, status in rows:
            if status in ("yes", "differs"):
                checked += 1
                if not hasattr(obj, name):
                    missing.append(f"{target}.{name} ({pycaffe_path})")
    assert not missing, missing
    assert checked > 200


def test_the_top_level_table_is_pycaffes_namespace():
    top = {name for p, _, rows in doc_sections() if p == "caffe" for name, _ in rows}
    assert set(CAFFE_NAMES) <= top
    for name in CAFFE_NAMES:
        assert hasattr(caffe_lite, name), name


def test_the_alias_reaches_the_same_objects():
    """Under `import caffe` (the alias), each documented pycaffe path gives caffe-lite's
    object: modules and their names, and the classes whose attributes are checked above."""
    pairs = []
    for pycaffe_path, target, rows in doc_sections():
        if target is None or pycaffe_path.startswith("caffe._caffe"):
            continue
        pairs.append((pycaffe_path, target,
                       [n for n, s in rows if s in ("yes", "differs")]))
    script = textwrap.dedent("""
        import importlib, json, sys
        pairs = json.loads(sys.argv[1])
        import caffe
        def resolve(path):
            parts = path.split(".")
            for i in range(len(parts), 0, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                except ImportError:
                    continue
                for p in parts[i:]:
                    obj = getattr(obj, p)
                return obj
        bad = []
        for pycaffe_path, target, names in pairs:
            a, b = resolve(pycaffe_path), resolve(target)
            module = type(caffe)
            if isinstance(a, module) and isinstance(b, module):
                # the alias package itself is its own module: its names must be caffe_lite's
                # objects (but `layers`, NetSpec's factory, as in pycaffe)
                for n in names:
                    if not hasattr(a, n):
                        bad.append(f"{pycaffe_path}.{n} is missing")
                    elif a is not b and n != "layers" and getattr(a, n) is not getattr(b, n):
                        bad.append(f"{pycaffe_path}.{n} is not {target}.{n}")
            elif a is not b:
                bad.append(f"{pycaffe_path} is not {target}")
        print(json.dumps(bad))
        """)
    import json
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "alias"), str(ROOT)]))
    r = subprocess.run([sys.executable, "-c", script, json.dumps(pairs)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []
