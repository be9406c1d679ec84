"""Emulated pycuda.gpuarray.GPUArray: a numpy view of emulated device memory.  Supports what
caffe-lite uses: empty/zeros/to_gpu, get/set/fill, slicing, reshape, in-place arithmetic."""
import numpy as np

from . import driver


class GPUArray:
    def __init__(self, shape, dtype=np.float32, allocator=None, base=None, gpudata=None,
                 strides=None, order="C", _view=None):
        dtype = np.dtype(dtype)
        if _view is not None:
            self._a = _view
            self.base = base
            self.gpudata = _view.ctypes.data
        else:
            if gpudata is not None:
                raise NotImplementedError("emulated GPUArray over foreign memory")
            shape = (shape,) if np.isscalar(shape) else tuple(int(s) for s in shape)
            n = int(np.prod(shape, dtype=np.int64))
            alloc = driver.DeviceAllocation(n * dtype.itemsize)
            self._a = alloc.user.view(np.uint8)[:n * dtype.itemsize].view(dtype).reshape(shape)
            self.gpudata = alloc
            self.base = None

    # --- attributes ----------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    mem_size = size
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    ndim = property(lambda self: self._a.ndim)
    ptr = property(lambda self: int(self.gpudata))

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        return f"EmuGPUArray(shape={self.shape}, ptr={self.ptr:#x})"

    def _wrap(self, view):
        return GPUArray(view.shape, view.dtype, base=self if self.base is None else self.base,
                        _view=view)

    # --- transfers -----------------------------------------------------------------------
    def get(self, ary=None, pagelocked=False, async_=False, stream=None):
        driver.count("dtoh")
        if ary is None:
            return self._a.copy()
        if ary.size != self.size or ary.dtype != self.dtype:
            raise ValueError("get: ary must match the GPUArray's size and dtype")
        ary.reshape(self.shape)[...] = self._a
        return ary

    def set(self, ary, async_=False, stream=None):
        driver.count("htod")
        ary = np.asarray(ary)
        if ary.size != self.size or ary.dtype != self.dtype:
            raise ValueError(f"set: size/dtype mismatch ({ary.size} {ary.dtype} into "
                             f"{self.size} {self.dtype})")
        self._a[...] = ary.reshape(self.shape)

    def fill(self, value, stream=None):
        self._a[...] = value
        return self

    def copy(self):
        out = empty(self.shape, self.dtype)
        out._a[...] = self._a
        return out

    # --- views ---------------------------------------------------------------------------
    def __getitem__(self, idx):
        return self._wrap(self._a[idx])

    def reshape(self, *shape, order="C"):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if not self._a.flags.c_contiguous:
            raise RuntimeError("only contiguous arrays may be used as arguments to this operation")
        v = self._a.reshape(shape)
        if not np.shares_memory(v, self._a) and v.size:
            raise RuntimeError("reshape copied")
        return self._wrap(v)

    def ravel(self):
        return self.reshape(self.size)

    # --- in-place arithmetic (PyCUDA's elementwise kernels) ------------------------------
    def _other(self, other):
        if isinstance(other, GPUArray):
            if other.shape != self.shape:
                raise ValueError(f"shape mismatch {self.shape} vs {other.shape}")
            return other._a
        return other

    def __imul__(self, other):
        self._a *= self._other(other)
        return self

    def __isub__(self, other):
        self._a -= self._other(other)
        return self

    def __iadd__(self, other):
        self._a += self._other(other)
        return self

    def __itruediv__(self, other):
        self._a /= self._other(other)
        return self


def empty(shape, dtype=np.float32, allocator=None, order="C"):
    return GPUArray(shape, dtype)


def zeros(shape, dtype=np.float32, allocator=None, order="C"):
    a = GPUArray(shape, dtype)
    a._a[...] = 0
    return a


def to_gpu(ary, allocator=None):
    driver.count("htod")
    ary = np.asarray(ary)
    a = GPUArray(ary.shape, ary.dtype)
    a._a[...] = ary
    return a


def empty_like(other):
    return empty(other.shape, other.dtype)


def zeros_like(other):
    return zeros(other.shape, other.dtype)
