import os
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("CAFFE_LITE_SHARED", ROOT.parent / "shared"))
MODELS = SHARED / "models"
MNIST = SHARED / "data" / "mnist"


def _need(path):
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared models/data directory ../shared is needed "
                    "for this test; set CAFFE_LITE_SHARED to point elsewhere)")
    return path


@pytest.fixture
def models_dir():
    return _need(MODELS)


@pytest.fixture
def mnist_dir():
    return _need(MNIST)


@pytest.fixture(autouse=True)
def _cpu_mode_and_seed():
    import caffe_lite
    caffe_lite.set_mode_cpu()
    caffe_lite.set_random_seed(1701)
    yield


@pytest.fixture
def need_gpu():
    """GPU tests: skip with the reason where PyCUDA or a device is missing (the kernel emulator,
    tests/gpu_emu, provides both); back to the CPU afterwards."""
    import caffe_lite
    from caffe_lite.backend import gpu as gpu_backend
    ok, reason = gpu_backend.available()
    if not ok:
        pytest.skip(f"needs PyCUDA and a CUDA device: {reason}")
    yield
    caffe_lite.set_mode_cpu()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
