"""Run the GPU test suite (`-m gpu`) on a CPU emulator of the CUDA kernels, so that machines
without a GPU (development and CI) execute every kernel and every GPU code path.

The emulator (tests/gpu_emu) compiles each .cu file with g++ against a small header that
defines the CUDA built-ins, runs each launch over all blocks and threads (threads of kernels
with __syncthreads as coroutines meeting at each barrier), checks prepared signatures, launch
shapes and pointer arguments, and puts guard zones around every allocation; a fake `pycuda`
package and a numpy stand-in for the cuBLAS calls complete it.  What it cannot show: real
PyCUDA and cuBLAS behaviour, races between blocks running concurrently, and speed."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EMU = ROOT / "tests" / "gpu_emu"
GPU_TESTS = ["tests/test_gpu_layers.py", "tests/test_gpu_solvers.py", "tests/test_gpu_backend.py",
             "tests/test_gpu_fusion.py", "tests/test_gpu_depthwise.py", "tests/test_gpu_host.py",
             "tests/test_gpu_conv.py", "tests/test_pruning_example.py",
             "tests/test_cli_prune.py", "tests/test_gpu_sparse.py",
             "tests/test_gpu_bench.py", "tests/test_gpu_python_layer.py",
             "tests/test_compression_sharing.py", "tests/test_gpu_detection.py",
             "tests/gpu_emu/emulator_checks.py"]


def test_gpu_suite_on_the_cpu_emulator():
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the CPU emulator of the CUDA kernels")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(EMU), str(ROOT)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # faulthandler_timeout prints every thread's stack when one test runs for minutes, so a
    # hang fails here with its place named instead of a bare timeout.
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "gpu_emu_plugin",
           "-o", "faulthandler_timeout=240", "-m", "gpu", *GPU_TESTS]
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=900)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        pytest.fail(f"the emulated GPU suite ran past 900 s:\n{out[-8000:]}")
    tail = (res.stdout + res.stderr)[-6000:]
    assert res.returncode == 0, f"GPU tests failed on the emulator:\n{tail}"
    assert " passed" in res.stdout and " skipped" not in res.stdout.splitlines()[-1], tail
