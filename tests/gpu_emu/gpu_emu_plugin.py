"""pytest plugin (-p gpu_emu_plugin, with tests/gpu_emu on sys.path): run caffe-lite's GPU code
paths on the CPU emulator.  The fake `pycuda` package beside this file makes PyCUDA importable;
this swaps the kernel loader and the cuBLAS calls for the emulator's."""
import emulator


def install():
    from caffe_lite.backend import cublas, kernels
    kernels.loader = emulator.load
    kernels.clear()
    cublas.api = emulator.FakeCublas()
    cublas.reset()


def pytest_configure(config):
    install()
