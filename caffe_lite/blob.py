"""Blob: Caffe's N-d float32 array with `data`, `diff` and, for prunable weights, `mask`.

`data`, `diff` and `mask` give writable host views (pycaffe's semantics: assigning into them
is how users feed inputs).  Layer code reads through `cpu_data` / `cpu_diff` / `cpu_mask`,
read-only views that leave a GPU copy valid, and writes through `data` / `diff`; the GPU side
(`gpu_data`, `mutable_gpu_data`, ...) is the same memory seen from the device."""
import math

import numpy as np

from .backend import state as _mode
from .backend.memory import SyncedMemory
from .errors import BlobSizeError, CaffeLiteError, ShapeMismatchError

MAX_BLOB_AXES = 32
MAX_BLOB_COUNT = 2**31 - 1   # Caffe's limit: a blob's count is an int (CHECK_LE(count, INT_MAX))


def _as_shape(args, name="", what=None):
    """A checked shape tuple and its element count: the check runs before any memory is
    allocated, so an absurd shape is a BlobSizeError, not a numpy MemoryError."""
    if len(args) == 1 and not np.isscalar(args[0]):
        args = tuple(args[0])
    shape = tuple(int(d) for d in args)
    what = what or (f"blob '{name}'" if name else "blob")
    if len(shape) > MAX_BLOB_AXES:
        raise BlobSizeError(f"{what} shape {shape} has more than {MAX_BLOB_AXES} axes")
    if any(d < 0 for d in shape):
        raise BlobSizeError(f"{what} shape {shape} has a negative dimension")
    count = math.prod(shape)
    if count > MAX_BLOB_COUNT:
        raise BlobSizeError(f"{what} shape {shape} has {count:,} elements; a blob holds at "
                            f"most 2^31 - 1 = {MAX_BLOB_COUNT:,} (Caffe's limit)")
    return shape, count


# Changes whenever any blob's shape changes or a blob gets other memory (a reallocation, a
# shared buffer): a Net whose blobs' shapes are all as it last shaped its layers skips their
# reshape (caffe_lite/plan.py).  Reshaping a blob to the shape it has changes nothing.
shape_epoch = 0


def _shapes_changed():
    global shape_epoch
    shape_epoch += 1


def checked_count(shape, what):
    """The element count of a work buffer of `shape`, held to a blob's limits (Caffe keeps such
    buffers, im2col's columns say, in Blobs); BlobSizeError naming `what` otherwise."""
    return _as_shape((shape,), what=what)[1]


class _Views:
    """Cached numpy views of one SyncedMemory for one shape; rebuilt when either changes."""
    __slots__ = ("mem", "base_rw", "rw", "base_ro", "ro")

    def __init__(self, mem):
        self.mem = mem
        self.base_rw = self.rw = self.base_ro = self.ro = None


class Blob:
    def __init__(self, *shape, name=""):
        self.name = name
        self._shape = ()
        self._count = 1
        self._data = None
        self._diff = None
        self._mask = None
        self.reshape(*shape)

    # --- shape -----------------------------------------------------------------------------
    def reshape(self, *shape):
        """Change the shape; memory is reallocated only when the count outgrows the capacity,
        so reshaping back and forth reuses the same buffers, as in Caffe."""
        if len(shape) == 1 and type(shape[0]) is tuple:
            shape = shape[0]
        try:
            if shape == self._shape and self._data is not None:
                return self  # nothing changes (the shape was checked when it was set)
        except ValueError:  # numpy arrays among the dimensions: _as_shape reads them
            pass
        shape, count = _as_shape(shape, self.name)
        if shape != self._shape:
            _shapes_changed()
        self._shape = shape
        self._count = count
        need = max(count, 1)
        if self._data is None or need > self._data.mem.size or need > self._diff.mem.size:
            if self._data is not None:
                _shapes_changed()
            self._data = _Views(SyncedMemory(need))
            self._diff = _Views(SyncedMemory(need))
            if self._mask is not None:
                self._mask = None
                self.init_mask()
        else:
            if self._mask is not None and need > self._mask.mem.size:
                self._mask = None
                self.init_mask()
            for v in (self._data, self._diff, self._mask):
                if v is not None:
                    v.base_rw = v.base_ro = None
        return self

    def reshape_like(self, other):
        return self.reshape(other.shape)

    @property
    def shape(self):
        return self._shape

    @property
    def count(self):
        return self._count

    @property
    def num_axes(self):
        return len(self._shape)

    def count_range(self, start, end=None):
        """Product of dims in [start, end): Caffe's Blob::count(start, end)."""
        end = self.num_axes if end is None else end
        return math.prod(self._shape[start:end])

    def canonical_axis_index(self, axis):
        n = self.num_axes
        if not -n <= axis < max(n, 1):
            raise CaffeLiteError(f"axis {axis} out of range for a {n}-axis blob {self._shape}")
        return axis + n if axis < 0 else axis

    def legacy_shape(self, i):
        """Caffe's LegacyShape: dims beyond num_axes read as 1 (for num/channels/height/width)."""
        if i >= self.num_axes or i < -self.num_axes:
            return 1
        return self._shape[i]

    num = property(lambda self: self.legacy_shape(0))
    channels = property(lambda self: self.legacy_shape(1))
    height = property(lambda self: self.legacy_shape(2))
    width = property(lambda self: self.legacy_shape(3))

    def __repr__(self):
        m = ", masked" if self._mask is not None else ""
        return f"Blob({self.name!r}, shape={self._shape}{m})"

    # --- views -----------------------------------------------------------------------------
    def _rw(self, v):
        arr = v.mem.mutable_cpu()
        if v.base_rw is not arr:
            v.rw = arr[:self._count].reshape(self._shape)
            v.base_rw = arr
        return v.rw

    def _ro(self, v):
        arr = v.mem.cpu()
        if v.base_ro is not arr:
            ro = arr[:self._count].reshape(self._shape)
            ro.flags.writeable = False
            v.ro = ro
            v.base_ro = arr
        return v.ro

    def _gpu(self, v, mutable):
        flat = v.mem.mutable_gpu() if mutable else v.mem.gpu()
        return flat[:self._count].reshape(self._shape) if self._shape else flat[:1]

    @property
    def data(self):
        return self._rw(self._data)

    @data.setter
    def data(self, value):
        self._assign(self.data, value, "data")

    @property
    def diff(self):
        return self._rw(self._diff)

    @diff.setter
    def diff(self, value):
        self._assign(self.diff, value, "diff")

    @property
    def data_version(self):
        """Changes whenever the data may have been written (a writable view was handed out on
        either side; shared data shares it); see SyncedMemory.version."""
        return self._data.mem.version

    @property
    def cpu_data(self):
        return self._ro(self._data)

    @property
    def cpu_diff(self):
        return self._ro(self._diff)

    @property
    def gpu_data(self):
        return self._gpu(self._data, False)

    @property
    def mutable_gpu_data(self):
        return self._gpu(self._data, True)

    @property
    def gpu_diff(self):
        return self._gpu(self._diff, False)

    @property
    def mutable_gpu_diff(self):
        return self._gpu(self._diff, True)

    def _assign(self, view, value, what):
        value = np.asarray(value, dtype=np.float32)
        if value.shape != view.shape and value.size != view.size:
            raise ShapeMismatchError(
                f"cannot assign an array of shape {value.shape} to {what} of blob "
                f"'{self.name}' with shape {view.shape}")
        view[...] = value.reshape(view.shape)

    # --- mask ------------------------------------------------------------------------------
    @property
    def has_mask(self):
        return self._mask is not None

    def init_mask(self):
        """Give this blob an all-ones mask (a prunable weight with nothing pruned yet)."""
        if self._mask is None:
            self._mask = _Views(SyncedMemory(self._data.mem.size))
            self._mask.mem.mutable_cpu()[:] = 1
        return self

    def mask_from_data(self):
        """mask = (data != 0): how a loaded caffemodel's zeros become pruned entries."""
        self.init_mask()
        np.not_equal(self.cpu_data, 0, out=self.mask, casting="unsafe")
        return self

    @property
    def mask(self):
        return None if self._mask is None else self._rw(self._mask)

    @mask.setter
    def mask(self, value):
        if value is None:
            self._mask = None
            return
        value = np.asarray(value)
        if value.shape != self._shape:
            raise ShapeMismatchError(f"mask of shape {value.shape} does not fit blob "
                                     f"'{self.name}' of shape {self._shape}")
        self.init_mask()
        np.not_equal(value, 0, out=self.mask, casting="unsafe")

    @property
    def cpu_mask(self):
        return None if self._mask is None else self._ro(self._mask)

    @property
    def gpu_mask(self):
        return None if self._mask is None else self._gpu(self._mask, False)

    def apply_mask(self):
        """data *= mask: pruned entries become exactly 0."""
        if self._mask is None:
            return
        if _mode.mode() == _mode.GPU:
            self._mask_gpu(self._data)
        else:
            np.multiply(self.data, self.cpu_mask, out=self.data)

    def mask_diff(self):
        """diff *= mask: pruned entries receive no gradient."""
        if self._mask is None:
            return
        if _mode.mode() == _mode.GPU:
            self._mask_gpu(self._diff)
        else:
            np.multiply(self.diff, self.cpu_mask, out=self.diff)

    def _mask_gpu(self, views):
        # On the flat device buffers: no shaped GPUArray views, no PyCUDA elementwise call
        # (host work once per prunable layer per backward).
        from .backend import gpu, ops
        p = gpu.ptr(views.mem.mutable_gpu())
        ops.mul(self._count, p, gpu.ptr(self._mask.mem.gpu()), p)

    # --- sharing and update ----------------------------------------------------------------
    def share_data(self, other):
        """Use `other`'s data memory (counts must match): Caffe's ShareData."""
        if other.count != self.count:
            raise ShapeMismatchError(f"cannot share data of blob {other.shape} with {self.shape}")
        if self._data.mem is not other._data.mem:
            _shapes_changed()
            self._data = _Views(other._data.mem)

    def share_diff(self, other):
        if other.count != self.count:
            raise ShapeMismatchError(f"cannot share diff of blob {other.shape} with {self.shape}")
        if self._diff.mem is not other._diff.mem:
            _shapes_changed()
            self._diff = _Views(other._diff.mem)

    def share_mask(self, other):
        self._mask = None if other._mask is None else _Views(other._mask.mem)

    def update(self):
        """data -= diff, then data *= mask (Caffe's Blob::Update plus the pruning invariant)."""
        if _mode.mode() == _mode.GPU:
            d = self.mutable_gpu_data
            d -= self.gpu_diff
            if self._mask is not None:
                d *= self.gpu_mask
        else:
            d = self.data
            np.subtract(d, self.cpu_diff, out=d)
            if self._mask is not None:
                np.multiply(d, self.cpu_mask, out=d)

    # --- norms (used by gradient clipping and reports) ---------------------------------------
    def sumsq_data(self):
        d = self.cpu_data.ravel()
        return float(np.dot(d, d))

    def sumsq_diff(self):
        d = self.cpu_diff.ravel()
        return float(np.dot(d, d))

    def asum_data(self):
        return float(np.abs(self.cpu_data).sum(dtype=np.float64))

    def asum_diff(self):
        return float(np.abs(self.cpu_diff).sum(dtype=np.float64))

    def scale_diff(self, factor):
        np.multiply(self.diff, np.float32(factor), out=self.diff)

    # --- protobuf --------------------------------------------------------------------------
    def to_proto(self, proto=None, write_diff=False):
        from .io.blobproto import blob_to_proto
        return blob_to_proto(self, proto, write_diff)

    def from_proto(self, proto, reshape=True, source=""):
        from .io.blobproto import blob_from_proto
        blob_from_proto(self, proto, reshape=reshape, source=source)
        return self

    @classmethod
    def from_array(cls, array, name=""):
        array = np.asarray(array, dtype=np.float32)
        b = cls(array.shape, name=name)
        b.data[...] = array
        return b
