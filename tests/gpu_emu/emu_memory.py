"""Emulated device memory: host buffers with guard zones, and a registry of live allocations.

New allocations are filled with a NaN bit pattern (uninitialised device memory reads as NaN,
so a kernel that reads memory nobody wrote produces NaNs the tests see), and every allocation
has GUARD words of the same pattern before and after it: a kernel writing out of bounds
changes a guard, which is checked after every launch for each pointer argument."""
import bisect
import weakref

import numpy as np

import os

# Words of guard before and after each allocation (0 under AddressSanitizer, which then sees
# every out-of-bounds access itself: CAFFE_LITE_EMU_ASAN=1, see emulator.py).
GUARD = 0 if os.environ.get("CAFFE_LITE_EMU_ASAN") else 64
SENTINEL = np.uint32(0x7FC0DEAD)   # a quiet NaN as float32

# Kernel launches so far; with null_device (CAFFE_LITE_EMU_NULL=1) launches and cuBLAS calls
# return at once: what is left is the host's own work (benchmarks/gpu/host_overhead.py).
launches = 0
null_device = bool(os.environ.get("CAFFE_LITE_EMU_NULL"))

_starts = []        # sorted user-region start addresses
_regions = {}       # start -> (end, weakref to the raw buffer)


live_bytes = 0


def alloc(nbytes, owner):
    """A raw buffer for `owner` (freed when owner dies): returns (raw uint32 array, start)."""
    global live_bytes
    words = max(1, (int(nbytes) + 3) // 4)
    live_bytes += 4 * words
    raw = np.empty(words + 2 * GUARD, np.uint32)
    raw[:] = SENTINEL
    start = raw.ctypes.data + 4 * GUARD
    bisect.insort(_starts, start)
    _regions[start] = (start + 4 * words, raw)
    weakref.finalize(owner, _free, start)
    return raw, start


def _free(start):
    global live_bytes
    if start in _regions:
        live_bytes -= _regions[start][0] - start
    i = bisect.bisect_left(_starts, start)
    if i < len(_starts) and _starts[i] == start:
        del _starts[i]
    _regions.pop(start, None)


def _region(p):
    i = bisect.bisect_right(_starts, p) - 1
    if i < 0:
        return None
    start = _starts[i]
    end, raw = _regions[start]
    return (start, end, raw) if p <= end else None


def check_pointer(p, what, nbytes=0):
    r = _region(p)
    if r is None:
        raise MemoryError(f"{what}: address {p:#x} is not inside any emulated device allocation")
    start, end, _ = r
    if p + nbytes > end:
        raise MemoryError(f"{what}: {nbytes} bytes at {p:#x} run {p + nbytes - end} bytes past "
                          f"the end of its allocation ({end - start} bytes)")


def check_guards(p, what):
    r = _region(p)
    if r is None:
        return
    _, _, raw = r
    if GUARD and ((raw[:GUARD] != SENTINEL).any() or (raw[-GUARD:] != SENTINEL).any()):
        raise MemoryError(f"{what} wrote outside the allocation holding address {p:#x}")
