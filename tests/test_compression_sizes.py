"""The size targets of docs/compression.md, measured by benchmarks/compression_sizes.py (slow:
LeNet-5 is covered by test_pruning_example.py's full run)."""
import pytest

pytestmark = pytest.mark.slow


def test_alexnet_at_hans_profile_is_35x_smaller(models_dir):
    from benchmarks.compression_sizes import alexnet
    r = alexnet()["conv=8,fc=4"]
    assert r["ratio"] >= 35
    assert r["live"]["fc6"] == pytest.approx(0.09 * 4096 * 9216, abs=2)
    # Deep Compression's own layout of the same model: about the published 8.9 MB
    assert 8.0e6 < r["deep_compression_layout"] < 9.5e6


def test_lenet_300_100_is_40x_smaller(mnist_dir, models_dir, tmp_path):
    from benchmarks.compression_sizes import lenet300
    r = lenet300(str(tmp_path), str(models_dir.parent))
    assert r["ratio"] >= 40
    assert r["sparsity"] == pytest.approx({"ip1": 0.92, "ip2": 0.91, "ip3": 0.74})
    assert r["quantized_accuracy"] >= r["dense_accuracy"] - 0.005
    assert r["loaded_accuracy"] == r["quantized_accuracy"]
