"""examples/mnist/dns_lenet.py: Dynamic Network Surgery on LeNet / MNIST.  The full run (slow)
meets the issue's bar: at least 50x fewer weights, at most 0.5 points of accuracy lost on the
10,000 test images; a short run checks the same machinery end to end."""
import importlib.util
import pathlib

import numpy as np
import pytest

from caffe_lite.io import load_weights

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "examples" / "mnist" / "dns_lenet.py"


def _example():
    spec = importlib.util.spec_from_file_location("dns_lenet", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_short_run(mnist_dir, models_dir, tmp_path):
    out = _example().main(["--shared", str(models_dir.parent), "--workdir", str(tmp_path),
                           "--train-iters", "200", "--iters", "160", "--end-iter", "140",
                           "--ramp", "3,40"])
    rows = {r["name"]: r["sparsity"] for r in out["report"]["layers"]}
    assert rows == pytest.approx({"conv1": 0.8, "conv2": 0.95, "ip1": 0.986, "ip2": 0.9})
    assert out["compression"] > 57
    assert out["spliced"] > 0                      # pruned weights came back
    # 160 iterations are too few to recover all (the full run loses 0.17 points): > 88 %.
    assert out["dense"] > 0.94 and out["dns"] > 0.88
    w = dict(load_weights(str(tmp_path / "lenet_dns.caffemodel")))
    assert np.mean(w["ip1"][0] == 0) == pytest.approx(0.986)


@pytest.mark.slow
def test_full_run_meets_the_target(mnist_dir, models_dir, tmp_path):
    out = _example().main(["--shared", str(models_dir.parent), "--workdir", str(tmp_path)])
    assert out["dense"] >= 0.97
    assert out["compression"] >= 50
    assert out["dns"] >= out["dense"] - 0.005
