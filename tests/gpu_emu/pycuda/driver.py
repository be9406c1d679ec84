"""Emulated pycuda.driver: one device, contexts that do nothing, host-memory copies.

`stats` counts what would cost host time or a synchronisation on a GPU: device allocations
("alloc"), host-to-device and device-to-host copies ("htod", "dtoh"; synchronous in PyCUDA
unless async), device-to-device copies ("dtod") and context synchronisations ("sync");
`events` keeps (kind, stack summary) for each when `trace` is true."""
import collections
import ctypes
import traceback

import emu_memory


stats = collections.Counter()
events = []
trace = False


def count(kind):
    stats[kind] += 1
    if trace:
        frames = [f for f in traceback.extract_stack()[:-2] if "caffe_lite" in f.filename]
        events.append((kind, [f"{f.filename.split('caffe_lite/')[-1]}:{f.lineno} {f.name}"
                              for f in frames[-4:]]))


class Error(Exception):
    pass


class LogicError(Error):
    pass


def init(flags=0):
    pass


class device_attribute:
    MULTIPROCESSOR_COUNT = "MULTIPROCESSOR_COUNT"
    MAX_THREADS_PER_BLOCK = "MAX_THREADS_PER_BLOCK"
    MAX_SHARED_MEMORY_PER_BLOCK = "MAX_SHARED_MEMORY_PER_BLOCK"
    WARP_SIZE = "WARP_SIZE"
    CLOCK_RATE = "CLOCK_RATE"
    MEMORY_CLOCK_RATE = "MEMORY_CLOCK_RATE"
    GLOBAL_MEMORY_BUS_WIDTH = "GLOBAL_MEMORY_BUS_WIDTH"


class Context:
    _stack = []

    def push(self):
        Context._stack.append(self)

    def pop(self):
        if Context._stack:
            Context._stack.pop()

    def detach(self):
        self.pop()

    @staticmethod
    def synchronize():
        count("sync")

    @staticmethod
    def get_device():
        return Device(0)


class Device:
    def __init__(self, i):
        if i != 0:
            raise LogicError(f"emulator has one device, got {i}")
        self.i = i

    @staticmethod
    def count():
        return 1

    def name(self):
        return "caffe-lite CPU emulator"

    def compute_capability(self):
        return (8, 0)

    def total_memory(self):
        return 1 << 34

    def get_attributes(self):
        A = device_attribute
        return {A.MULTIPROCESSOR_COUNT: 1, A.MAX_THREADS_PER_BLOCK: 1024,
                A.MAX_SHARED_MEMORY_PER_BLOCK: 49152, A.WARP_SIZE: 32, A.CLOCK_RATE: 1000000,
                A.MEMORY_CLOCK_RATE: 1000000, A.GLOBAL_MEMORY_BUS_WIDTH: 64}

    def get_attribute(self, a):
        return self.get_attributes()[a]

    def __getattr__(self, name):
        return self.get_attribute(getattr(device_attribute, name.upper()))

    def retain_primary_context(self):
        return Context()


class DeviceAllocation:
    def __init__(self, nbytes):
        count("alloc")
        self.raw, self.start = emu_memory.alloc(nbytes, self)
        g = emu_memory.GUARD
        self.user = self.raw[g:len(self.raw) - g]
        self.nbytes = nbytes

    def __int__(self):
        return self.start

    __index__ = __int__


def mem_get_info():
    """(free, total) bytes: total as Device.total_memory, used = live allocations."""
    total = Device(0).total_memory()
    return total - emu_memory.live_bytes, total


def mem_alloc(nbytes):
    return DeviceAllocation(nbytes)


def module_from_buffer(buffer, options=None, message_handler=None):
    raise Error("the CPU emulator cannot load cubins; caffe_lite.backend.kernels.loader must "
                "be the emulator's (tests/gpu_emu)")


def memcpy_dtod(dest, src, size):
    count("dtod")
    emu_memory.check_pointer(int(src), "memcpy_dtod source", size)
    emu_memory.check_pointer(int(dest), "memcpy_dtod destination", size)
    ctypes.memmove(int(dest), int(src), size)


class Event:
    def record(self, stream=None):
        import time
        self.t = time.perf_counter()
        return self

    def synchronize(self):
        return self

    def time_since(self, other):
        return (self.t - other.t) * 1e3
