"""Helpers shared by the GPU layer implementations: device addresses of blobs, per-layer
device buffers, and kernel launching.

Blob memory is reached through the blob's SyncedMemory, so the head-state rules hold: `data`
/ `diff` read (copying from the host when the host holds the newer values), `mdata` /
`mdiff` are for writing (the host copy becomes stale)."""
import numpy as np

from ...backend import gpu, ops
from ...backend.kernels import function, launch, launch_1d  # noqa: F401  (launch: re-exported)

I32, F32 = np.int32, np.float32


def _mem(blob, which):
    # The blob's SyncedMemory (blob._data / ._diff / ._mask hold it as `.mem`); this skips
    # building a shaped GPUArray view per access.  Falls back to the public properties.
    views = getattr(blob, which, None)
    return getattr(views, "mem", None)


def data(blob):
    m = _mem(blob, "_data")
    return gpu.ptr(m.gpu()) if m is not None else gpu.ptr(blob.gpu_data)


def mdata(blob):
    m = _mem(blob, "_data")
    return gpu.ptr(m.mutable_gpu()) if m is not None else gpu.ptr(blob.mutable_gpu_data)


def diff(blob):
    m = _mem(blob, "_diff")
    return gpu.ptr(m.gpu()) if m is not None else gpu.ptr(blob.gpu_diff)


def mdiff(blob):
    m = _mem(blob, "_diff")
    return gpu.ptr(m.mutable_gpu()) if m is not None else gpu.ptr(blob.mutable_gpu_diff)


def mask(blob):
    """Device address of the blob's mask, or 0 (a NULL pointer) when it has none."""
    if not blob.has_mask:
        return 0
    m = _mem(blob, "_mask")
    return gpu.ptr(m.gpu()) if m is not None else gpu.ptr(blob.gpu_mask)


class GpuState:
    """Device buffers a layer keeps between calls (grow-only, per name)."""

    def __init__(self):
        self._bufs = {}

    def _base(self, name, n, dtype):
        buf = self._bufs.get(name)
        if buf is None or buf.size < n or buf.dtype != np.dtype(dtype):
            buf = gpu.empty(max(int(n), 1), dtype)
            self._bufs[name] = buf
        return buf

    def array(self, name, n, dtype=np.float32):
        """A GPUArray of exactly n elements (a view of a buffer that only grows)."""
        return self._base(name, n, dtype)[:int(n)]

    def buf(self, name, n, dtype=np.float32):
        """Device address of buffer `name` of at least n elements."""
        return gpu.ptr(self._base(name, n, dtype))


def state(layer):
    st = getattr(layer, "_cuda_state", None)
    if st is None:
        st = GpuState()
        layer._cuda_state = st
    return st


def kernel(module, name, signature):
    return function(module, name, signature)


def elementwise(module, name, signature, n, *args):
    """Launch grid-stride kernel `name` over n elements; args follow the leading n."""
    launch_1d(function(module, name, signature), n, I32(n), *args)


def forward_input(layer, bottom, top, st):
    """Address of x for a layer whose backward reads x: in place (top is bottom), a copy kept
    in the layer's state, since forward overwrites x with y."""
    x = data(bottom[0])
    needs = getattr(layer, "copy_needed_in_place", lambda: True)()
    if top[0] is bottom[0] and needs:
        n = bottom[0].count
        saved = st.buf("saved_input", n)
        ops.copy(n, x, saved)
        st.saved_input = saved
        return saved
    st.saved_input = None
    return x


def backward_input(bottom, st):
    saved = getattr(st, "saved_input", None)
    return saved if saved is not None else data(bottom[0])


def upload(st, name, host):
    """Copy a host array to the layer's device buffer `name`; returns its address."""
    host = np.ascontiguousarray(host).ravel()
    arr = st.array(name, host.size, host.dtype)
    if host.size:
        arr.set(host)
    return gpu.ptr(arr)
