"""A stand-in for PyCUDA on machines without a GPU (caffe-lite's tests only): the driver and
GPUArray surface caffe-lite uses, over host memory, with kernels run by the CPU emulator."""
VERSION = (0, 0, "caffe-lite-emulator")
VERSION_TEXT = "caffe-lite emulator"
EMULATED = True
