"""The GPU benchmark script runs end to end (tiny shapes, no PyTorch); marked gpu."""
import json
import pathlib
import sys

import pytest

from caffe_lite.backend import gpu

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.gpu
def test_bench_gpu_small(tmp_path):
    ok, reason = gpu.available()
    if not ok:
        pytest.skip(f"needs PyCUDA and a CUDA device: {reason}")
    sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
    try:
        import bench_gpu
        out = tmp_path / "bench.json"
        bench_gpu.main(["--small", "--no-torch", "--out", str(out)])
    finally:
        sys.path.remove(str(ROOT / "benchmarks" / "gpu"))
    report = json.loads(out.read_text())
    cases = report["cases"]
    assert set(cases) == {"mobilenet_b2_step", "mobilenet_b1_fwd_bwd", "mobilenet_b1_inference",
                          "lenet_b4_fwd_bwd", "lenet_b4_step"}
    for name, row in cases.items():
        assert row["caffe_lite_s"] > 0 and row["caffe_lite_device_bytes"] > 0, name
        if row["kind"] != "inference":
            assert 0 < row["loss"] < 10, name
    assert report["process_device_bytes_first_case"] >= 0
    assert len(report["depthwise"]) == 2
    for row in report["depthwise"]:
        assert set(row["caffe_lite_s"]) == {"forward", "backward_data", "backward_filter"}
        assert all(row["tiled"].values())
