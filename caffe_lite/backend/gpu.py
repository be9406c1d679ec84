"""PyCUDA access, imported lazily so that caffe-lite imports and runs on the CPU without it.

Everything GPU-related goes through this module: the context for the selected device, device
allocations for SyncedMemory, and transfers."""
import numpy as np

from ..errors import DeviceError

_ctx = {"checked": False, "ok": False, "reason": "", "device": None, "context": None,
        "seed": None}


def _probe():
    if _ctx["checked"]:
        return
    _ctx["checked"] = True
    try:
        import pycuda.driver as drv  # noqa: F401
    except Exception as exc:  # ImportError, or a libcuda that fails to load
        _ctx["reason"] = f"PyCUDA is not importable ({exc.__class__.__name__}: {exc})"
        return
    try:
        drv.init()
        n = drv.Device.count()
    except Exception as exc:
        _ctx["reason"] = f"CUDA driver failed to initialise ({exc})"
        return
    if n == 0:
        _ctx["reason"] = "no CUDA device present"
        return
    _ctx["ok"] = True


def available():
    _probe()
    return _ctx["ok"], _ctx["reason"]


def device_count():
    ok, _ = available()
    if not ok:
        return 0
    import pycuda.driver as drv
    return drv.Device.count()


def require(device_id=0):
    """Make `device_id` current, creating its context once; raise DeviceError if impossible."""
    ok, reason = available()
    if not ok:
        raise DeviceError(f"GPU mode requested but unavailable: {reason}. "
                          "Install PyCUDA on a machine with an NVIDIA driver, or use CPU mode.")
    import pycuda.driver as drv
    if _ctx["device"] == device_id and _ctx["context"] is not None:
        return _ctx["context"]
    n = drv.Device.count()
    if not 0 <= device_id < n:
        raise DeviceError(f"GPU device {device_id} requested but only {n} device(s) present")
    if _ctx["context"] is not None:
        _ctx["context"].pop()
    dev = drv.Device(device_id)
    ctx = dev.retain_primary_context()
    ctx.push()
    _ctx["device"], _ctx["context"] = device_id, ctx
    import atexit
    atexit.register(_release)
    return ctx


def _release():
    if _ctx["context"] is not None:
        try:
            _ctx["context"].pop()
        except Exception:
            pass
        _ctx["context"] = None


def on_seed(seed):
    _ctx["seed"] = seed


def seed():
    return _ctx["seed"]


def current_device():
    """The device whose context is current (made current on first use)."""
    if _ctx["context"] is None:
        from . import state
        require(state.device_id())
    return _ctx["device"]


def compute_capability(device_id=None):
    import pycuda.driver as drv
    return drv.Device(current_device() if device_id is None else device_id).compute_capability()


def synchronize():
    """Wait for every kernel and copy queued on the current device."""
    if _ctx["context"] is not None:
        import pycuda.driver as drv
        drv.Context.synchronize()


def ptr(array):
    """The device address of a GPUArray (or of a view into one) as an int."""
    return int(array.gpudata)


def device_properties(device_id=None):
    """Name, compute capability, memory and the theoretical memory bandwidth of a device."""
    import pycuda.driver as drv
    d = drv.Device(current_device() if device_id is None else device_id)
    A = drv.device_attribute

    def attr(name):
        try:
            return int(d.get_attribute(getattr(A, name)))
        except Exception:  # an attribute this driver or PyCUDA build does not know
            return 0
    clock_khz = attr("MEMORY_CLOCK_RATE")
    bus_bits = attr("GLOBAL_MEMORY_BUS_WIDTH")
    return {
        "name": d.name(),
        "compute_capability": tuple(d.compute_capability()),
        "total_memory": int(d.total_memory()),
        "multiprocessors": attr("MULTIPROCESSOR_COUNT"),
        "memory_clock_khz": clock_khz,
        "memory_bus_bits": bus_bits,
        # double data rate: two transfers per clock over the whole bus
        "bandwidth_gbs": 2.0 * clock_khz * 1e3 * bus_bits / 8 / 1e9,
    }


def empty(n, dtype=np.float32):
    import pycuda.gpuarray as ga
    require(_ctx["device"] or 0)
    return ga.empty((n,), dtype=dtype)


def zeros(n, dtype=np.float32):
    import pycuda.gpuarray as ga
    require(_ctx["device"] or 0)
    return ga.zeros((n,), dtype=dtype)


def upload(host, dev):
    """Copy a flat host array into an existing flat device array."""
    dev.set(np.ascontiguousarray(host))


def download(dev, host):
    """Copy a flat device array into an existing flat host array."""
    dev.get(ary=host)
