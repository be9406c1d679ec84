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


def fork_rng(generator, rank):
    """Turn `generator` (in place) into a stream of its own for process `rank`, derived from
    its current state and the rank: processes that start from one state draw differently."""
    seed = int(generator.integers(0, 2**63 - 1))
    generator.bit_generator.state = type(generator.bit_generator)(
        np.random.SeedSequence([seed, int(rank) + 1])).state  # (+1: trailing 0s are ignored)


# Caffe's multi-process settings (Caffe::solver_count / solver_rank / multiprocess), which
# pycaffe exposes.  caffe_lite.parallel sets them from MPI before a solver is built: TRAIN-phase
# data layers then read their rank's share of each source, and only the root solver (rank 0)
# builds test nets and writes snapshots.
_state.update(solver_count=1, solver_rank=0, multiprocess=False)


def solver_count():
    return _state["solver_count"]


def set_solver_count(count):
    _state["solver_count"] = int(count)


def solver_rank():
    return _state["solver_rank"]


def root_solver():
    """True in the process that tests, logs and snapshots (Caffe::root_solver: rank 0)."""
    return _state["solver_rank"] == 0


def set_solver_rank(rank):
    _state["solver_rank"] = int(rank)


def multiprocess():
    return _state["multiprocess"]


def set_multiprocess(value):
    _state["multiprocess"] = bool(value)
