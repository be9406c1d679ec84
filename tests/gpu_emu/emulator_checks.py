"""Checks of the CPU emulator itself (run by tests/test_gpu_emulated.py in its subprocess,
where tests/gpu_emu is on sys.path): it must run correct kernels correctly and notice the
mistakes that would corrupt memory on a GPU."""
import pathlib

import numpy as np
import pytest

import emulator
from pycuda import gpuarray

pytestmark = pytest.mark.gpu
SELFTEST = pathlib.Path(__file__).with_name("selftest.cu")


@pytest.fixture(scope="module")
def mod():
    return emulator.EmuModule("selftest", SELFTEST)


def test_block_reduction_with_barriers(mod):
    x = gpuarray.to_gpu(np.arange(3 * 64, dtype=np.float32))
    out = gpuarray.zeros(3, np.float32)
    f = mod.get_function("block_sum").prepare("PP")
    f.prepared_call((3, 1, 1), (64, 1, 1), x.ptr, out.ptr)
    assert out.get().tolist() == [float(sum(range(k * 64, k * 64 + 64))) for k in range(3)]


def test_out_of_bounds_write_is_caught(mod):
    y = gpuarray.zeros(10, np.float32)
    f = mod.get_function("write_one_past").prepare("iP")
    with pytest.raises(MemoryError, match="wrote outside"):
        f.prepared_call((1, 1, 1), (32, 1, 1), 10, y.ptr)


def test_wrong_signature_and_bad_pointers_are_caught(mod):
    with pytest.raises(TypeError, match="declared as 'iPP'"):
        mod.get_function("copy_plain").prepare("iPf")
    f = mod.get_function("copy_plain").prepare("iPP")
    x = gpuarray.zeros(4, np.float32)
    host = np.zeros(4, np.float32)
    with pytest.raises(MemoryError, match="not inside any emulated device allocation"):
        f.prepared_call((1, 1, 1), (32, 1, 1), 4, x.ptr, host.ctypes.data)
    with pytest.raises(TypeError, match="takes 3 arguments"):
        f.prepared_call((1, 1, 1), (32, 1, 1), 4, x.ptr)


def test_divergent_barrier_is_caught(mod):
    out = gpuarray.zeros(8, np.float32)
    f = mod.get_function("divergent_barrier").prepare("P")
    with pytest.raises(RuntimeError, match="divergent barrier"):
        f.prepared_call((1, 1, 1), (8, 1, 1), out.ptr)


def test_uninitialised_device_memory_reads_as_nan():
    assert np.isnan(gpuarray.empty(5, np.float32).get()).all()


def test_fake_cublas_checks_leading_dimensions():
    a = gpuarray.zeros(6, np.float32)
    with pytest.raises(ValueError, match="leading dimension"):
        emulator.FakeCublas().sgemm(None, 0, 0, 3, 2, 2, 1.0, a.ptr, 2, a.ptr, 2, 0.0, a.ptr, 3)
