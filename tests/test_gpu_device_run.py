"""The prepared GPU run (benchmarks/gpu/device_run.sh and its helpers): scripts parse, the
summary reads what the run leaves, targets are judged as the issue states them, and the
on-paper weight-gradient table follows the planner.  The whole run on the CPU emulator is
slow (marked)."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
GPU = ROOT / "benchmarks" / "gpu"
sys.path.insert(0, str(GPU))

import bench_gpu  # noqa: E402
import conv_shapes  # noqa: E402
import device_checks  # noqa: E402


@pytest.mark.parametrize("script", ["device_run.sh", "prepare_device_run.sh"])
def test_scripts_parse(script):
    res = subprocess.run(["bash", "-n", str(GPU / script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_device_run_steps_have_limits_and_call_existing_things():
    text = (GPU / "device_run.sh").read_text()
    for name in ("setup", "install", "compile", "tests_new", "bench", "tests_gpu", "main_job",
                 "determinism"):
        assert f"step {name} " in text
    for path in ("tests/test_gpu_fusion.py", "tests/test_gpu_depthwise.py",
                 "tests/test_gpu_conv.py", "tests/test_gpu_host.py",
                 "examples/mnist/prune_finetune.py"):
        assert path in text and (ROOT / path).exists()
    # every flag the run passes to the benchmark exists
    for flag in ("--profile", "--torch-profile", "--small"):
        assert flag in text and getattr(bench_gpu.parser().parse_args([flag]),
                                        flag[2:].replace("-", "_"))


def _report():
    return {
        "device": {"name": "NVIDIA H200", "bandwidth_gbs": 4800.0, "measured_copy_gbs": 4200.0},
        "torch": "2.9", "cudnn": 91000, "pycuda": "2026.1", "date": "2026-12-05",
        "cases": {"mobilenet_b64_step": {"caffe_lite_s": 0.0250, "torch_fp32_s": 0.0270,
                                         "ratio_vs_fp32": 0.0250 / 0.0270, "kind": "step",
                                         "caffe_lite_device_bytes": 3 << 30,
                                         "torch_peak_bytes": {"allocated": 5 << 30},
                                         "caffe_lite_profile_ms": {
                                             "Convolution": {"forward_ms": 5.0,
                                                             "backward_ms": 9.0}}},
                  "mobilenet_b1_inference": {"caffe_lite_s": 0.002, "torch_fp32_s": 0.0015,
                                             "ratio_vs_fp32": 0.002 / 0.0015,
                                             "kind": "inference",
                                             "caffe_lite_device_bytes": 1 << 20}},
        "depthwise": [{"shape": [64, 32, 112, 112, 1],
                       "caffe_lite_s": {"forward": 1e-4, "backward_data": 2e-4,
                                        "backward_filter": 1e-4},
                       "gbs": {"forward": 2700.0, "backward_data": 1300.0,
                               "backward_filter": 2600.0},
                       "fraction_of_copy": {"forward": 2700 / 4200, "backward_data": 1300 / 4200,
                                            "backward_filter": 2600 / 4200}}],
    }


def test_targets_follow_the_issue():
    t = bench_gpu.targets(_report())
    assert t["mobilenet_b64_step_vs_pytorch_fp32"]["met"] is True
    assert t["mobilenet_b1_inference_vs_pytorch_fp32"]["met"] is False
    assert t["depthwise_64x32x112x112x1_forward_of_copy"]["met"] is True        # 64 %
    assert t["depthwise_64x32x112x112x1_backward_data_of_copy"]["met"] is False  # 31 %


def test_summary_reads_every_file_of_the_run(tmp_path, capsys):
    r = _report()
    r["targets"] = bench_gpu.targets(r)
    (tmp_path / "bench_gpu.json").write_text(json.dumps(r))
    (tmp_path / "steps.tsv").write_text("setup\tok\tlimit 90s\t12\ntests_gpu\tfailed rc=1\t"
                                        "limit 200s\t80\n")
    (tmp_path / "tests_gpu.xml").write_text(
        '<testsuites><testsuite tests="300" failures="1" errors="0" skipped="2" time="75.5">'
        '</testsuite></testsuites>')
    (tmp_path / "determinism.json").write_text(json.dumps({
        "gpu_runs_bit_identical": True, "learned_relative_diff_gpu_vs_cpu": 1e-3,
        "learned_relative_diff_cpu_unfused_vs_cpu": 2e-3,
        "bn_statistics_relative_diff_gpu_vs_cpu": 1e-4, "losses_gpu": [2.3],
        "losses_cpu": [2.3], "losses_cpu_unfused": [2.3]}))
    (tmp_path / "main_job.log").write_text("dense  99.00 %\ntotal time 9 s on GPU 0\n")
    device_checks.main(["summary", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| tests_gpu | failed rc=1 | limit 200s | 80 |" in out
    assert "tests_gpu: 300 tests, 1 failures, 0 errors, 2 skipped, 76 s" in out
    assert "| mobilenet_b64_step | 25.00 | 27.00 | 0.93 | 3072 | 5120 |" in out
    assert "| (64, 32, 112, 112, 1) | forward | 100 | 2700 | 64 % | - |" in out
    assert "Targets met: 3 of 5" in out
    assert "GPU runs bit-identical: True" in out and "total time 9 s on GPU 0" in out
    assert "| Convolution | 5.00 | 9.00 |" in out


def test_paper_table_follows_the_planner(capsys):
    rows = conv_shapes.main(["--batch", "64"])
    chosen = {r["layer"]: r["chosen"] for r in rows}
    assert chosen["conv2/sep"] == ("per_image", 5) and chosen["conv14/sep"][0] == "transposed"
    out = capsys.readouterr().out
    assert "| conv2/sep | 64 x 32 x 802816 |" in out and "as planned" in out


@pytest.mark.slow
def test_the_whole_run_on_the_emulator(tmp_path):
    """device_run.sh with EMULATOR=1: every step on the CPU emulator, tiny shapes (minutes)."""
    if shutil.which("g++") is None:
        pytest.skip("no C++ compiler for the emulator")
    env = dict(os.environ, EMULATOR="1", OUT=str(tmp_path), DEVICE_RUN_BUDGET="3000")
    res = subprocess.run(["bash", str(GPU / "device_run.sh")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=3600)
    assert res.returncode == 0, res.stderr[-3000:]
    steps = dict(line.split("\t")[:2] for line in
                 (tmp_path / "steps.tsv").read_text().splitlines())
    assert steps.pop("setup") == steps.pop("install") == "skipped"
    assert set(steps.values()) == {"ok"}, steps
    summary = (tmp_path / "summary.md").read_text()
    assert "GPU runs bit-identical: True" in summary and "on GPU 0" in summary
