"""The process-wide state Caffe keeps in its `Caffe` singleton: mode, device and RNG."""
import numpy as np

CPU = "CPU"
GPU = "GPU"

_state = {"mode": CPU, "device": 0, "rng": np.random.default_rng()}


def mode():
    return _state["mode"]


def set_mode_cpu():
    _state["mode"] = CPU


def gpu_available():
    """(True, '') when PyCUDA imports and a device is present, else (False, reason)."""
    from . import gpu
    return gpu.available()


def set_mode_gpu():
    from . import gpu
    gpu.require(_state["device"])
    _state["mode"] = GPU


def set_device(device_id):
    device_id = int(device_id)
    if _state["mode"] == GPU:
        from . import gpu
        gpu.require(device_id)
    _state["device"] = device_id


def device_id():
    return _state["device"]


def set_random_seed(seed):
    """Seed every random draw caffe-lite makes (fillers, dropout, data shuffling, cropping).

    Caffe's streams come from boost's mt19937 and cannot be reproduced bit for bit in numpy;
    what is kept is Caffe's contract: the same seed gives the same run."""
    _state["rng"] = np.random.default_rng(int(seed))
    from . import gpu
    gpu.on_seed(int(seed))


def rng():
    return _state["rng"]


# Caffe's multi-process settings (Caffe::solver_count / solver_rank / multiprocess), which
# pycaffe exposes; one process trains one net until multi-process training uses them.
_state.update(solver_count=1, solver_rank=0, multiprocess=False)


def solver_count():
    return _state["solver_count"]


def set_solver_count(count):
    _state["solver_count"] = int(count)


def solver_rank():
    return _state["solver_rank"]


def set_solver_rank(rank):
    _state["solver_rank"] = int(rank)


def multiprocess():
    return _state["multiprocess"]


def set_multiprocess(value):
    _state["multiprocess"] = bool(value)
