"""SyncedMemory: one flat float buffer that lives on the CPU, the GPU, or both.

It follows Caffe's SyncedMemory: the head is UNINITIALIZED, AT_CPU, AT_GPU or SYNCED; reading
one side copies from the other only when that other side holds the newer data, and asking for a
side mutably moves the head there.  Blobs view these flat buffers with their own shapes, which is
how Flatten, Reshape and Split share memory without copies.

`version` changes whenever a side is handed out for writing (mutable_cpu / mutable_gpu), and is
unique across all buffers (one process-wide counter): whatever is derived from the data (the
CSR copy of a pruned weight, say) stays valid while (buffer, version) is unchanged.  Like the
head state, it cannot see writes through a writable view obtained before the derivation."""
import itertools

import numpy as np

_versions = itertools.count(1)
# True once any buffer has had a GPU side: until then every host copy is the current one
# (plan.py skips its check of the heads)
on_gpu = False

UNINITIALIZED, HEAD_AT_CPU, HEAD_AT_GPU, SYNCED = "UNINITIALIZED", "HEAD_AT_CPU", \
    "HEAD_AT_GPU", "SYNCED"


class SyncedMemory:
    __slots__ = ("size", "dtype", "_cpu", "_gpu", "head", "version")

    def __init__(self, size, dtype=np.float32):
        self.size = int(size)
        self.dtype = np.dtype(dtype)
        self._cpu = None
        self._gpu = None
        self.head = UNINITIALIZED
        self.version = next(_versions)

    # --- CPU side ------------------------------------------------------------------------
    def _to_cpu(self):
        head = self.head
        if head == UNINITIALIZED:
            self._cpu = np.zeros(self.size, self.dtype)
            self.head = HEAD_AT_CPU
        elif head == HEAD_AT_GPU:
            if self._cpu is None:
                self._cpu = np.empty(self.size, self.dtype)
            from . import gpu
            gpu.download(self._gpu, self._cpu)
            self.head = SYNCED

    def cpu(self):
        """The flat host array, synced; the caller must not write to it."""
        if self.head != HEAD_AT_CPU and self.head != SYNCED:
            self._to_cpu()
        return self._cpu

    def mutable_cpu(self):
        """The flat host array; the caller may write, so the GPU copy becomes stale."""
        self.version = next(_versions)
        if self.head != HEAD_AT_CPU:
            if self.head != SYNCED:
                self._to_cpu()
            self.head = HEAD_AT_CPU
        return self._cpu

    # --- GPU side ------------------------------------------------------------------------
    def _to_gpu(self):
        global on_gpu
        on_gpu = True
        from . import gpu
        head = self.head
        if head == UNINITIALIZED:
            self._gpu = gpu.zeros(self.size, self.dtype)
            self.head = HEAD_AT_GPU
        elif head == HEAD_AT_CPU:
            if self._gpu is None:
                self._gpu = gpu.empty(self.size, self.dtype)
            gpu.upload(self._cpu, self._gpu)
            self.head = SYNCED

    def gpu(self):
        """The flat device array (a pycuda GPUArray), synced; read only."""
        if self.head != HEAD_AT_GPU and self.head != SYNCED:
            self._to_gpu()
        return self._gpu

    def mutable_gpu(self):
        self.version = next(_versions)
        if self.head != HEAD_AT_GPU:
            if self.head != SYNCED:
                self._to_gpu()
            self.head = HEAD_AT_GPU
        return self._gpu

    def __repr__(self):
        return f"SyncedMemory(size={self.size}, head={self.head})"
