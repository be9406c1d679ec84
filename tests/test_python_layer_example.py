"""examples/python_layers: LeNet fed by a pycaffe-style Python data layer trains exactly as
with Caffe's LMDB Data layer (same batches, same seed: the same weights, bit for bit).  The
example runs in its own process (its layer module says `import caffe`)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from caffe_lite.io import load_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "python_layers", "train_lenet.py")


def run_example(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, SCRIPT, "--data", "both", "--workdir", str(tmp_path),
                        "--json", *args], env=env, capture_output=True, text=True,
                       timeout=3000)
    assert r.returncode == 0, r.stderr[-3000:]
    python, lmdb = json.loads(r.stdout.strip().splitlines()[-1])
    assert python["data"] == "python" and lmdb["data"] == "lmdb"
    return python, lmdb


def assert_same_weights(a, b):
    wa, wb = load_weights(a), load_weights(b)
    assert [n for n, _ in wa] == [n for n, _ in wb] == ["conv1", "conv2", "ip1", "ip2"]
    for (name, xs), (_, ys) in zip(wa, wb):
        for x, y in zip(xs, ys):
            assert np.array_equal(x, y), name


def test_python_data_layer_trains_lenet_bit_for_bit_as_lmdb(tmp_path, mnist_dir, models_dir):
    python, lmdb = run_example(tmp_path, "--iters", "40", "--test-iters", "0")
    assert python["loss"] == lmdb["loss"] < 1.5  # it learned (the first losses are ~2.3)
    assert_same_weights(python["model"], lmdb["model"])


@pytest.mark.slow
def test_python_data_layer_lenet_reaches_the_lmdb_accuracy(tmp_path, mnist_dir, models_dir):
    python, lmdb = run_example(tmp_path, "--iters", "2000", "--test-iters", "100")
    assert python["test_images"] == 10000
    assert python["test_accuracy"] == lmdb["test_accuracy"] >= 0.97
    assert_same_weights(python["model"], lmdb["model"])
