"""pycaffe's `caffe.pycaffe` module and the process-level names of `caffe._caffe`: Net and the
solvers (re-exported), Timer, logging (`init_log`, `log`) and the multi-process settings
(`solver_count`, `solver_rank`, `set_multiprocess`, `has_nccl`).

`CAFFE_NAMES` is the namespace BVLC's `import caffe` gives; the caffe alias (alias.py) and
`import caffe_lite as caffe` both provide every name in it (docs/pycaffe.md)."""
import logging
import time

from .backend import state as _state
from .errors import CaffeLiteError
from .net import Net
from .solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,
                      RMSPropSolver, SGDSolver)

log_ = logging.getLogger("caffe_lite")

# BVLC master's python/caffe/__init__.py, name by name.
CAFFE_NAMES = (
    "Net", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver",
    "AdamSolver", "NCCL", "Timer", "init_log", "log", "set_mode_cpu", "set_mode_gpu",
    "set_device", "Layer", "get_solver", "layer_type_list", "set_random_seed", "solver_count",
    "set_solver_count", "solver_rank", "set_solver_rank", "set_multiprocess", "has_nccl",
    "__version__", "TRAIN", "TEST", "Classifier", "Detector", "io", "layers", "params",
    "NetSpec", "to_proto")


class Timer:
    """pycaffe's caffe.Timer: `start()`, `stop()`, and `ms`, the milliseconds between them (read
    while running, it stops the timer first, as Caffe's Timer::MilliSeconds does)."""

    def __init__(self):
        self._start = self._stop = None

    def start(self):
        self._start, self._stop = time.perf_counter(), None

    def stop(self):
        if self._start is not None and self._stop is None:
            self._stop = time.perf_counter()

    @property
    def ms(self):
        if self._start is None:
            log_.warning("Timer has never been run before reading time.")
            return 0.0
        self.stop()
        return (self._stop - self._start) * 1000.0


_GLOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}


def init_log(level=0):
    """pycaffe's caffe.init_log([level]): caffe-lite's log in glog's format on stderr, from
    `level` up (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL, as glog's minloglevel)."""
    from .util.glog import install
    install(_GLOG_LEVELS.get(int(level), logging.CRITICAL))


def log(message):
    """pycaffe's caffe.log(s): one INFO line in caffe-lite's log."""
    log_.info("%s", message)


def has_nccl():
    """False: caffe-lite has no NCCL library path (as a pycaffe built without USE_NCCL); its
    data-parallel training runs over MPI (caffe_lite.parallel), which NCCL(...) also reaches."""
    return False


class NCCL:
    """pycaffe's caffe.NCCL(solver, uid), over MPI: in a process started by mpirun, after
    caffe_lite.parallel.init() and before building the solver, `NCCL(solver, uid)` gives the
    solver's caffe_lite.parallel.DataParallel (uid is not needed), which pycaffe's training
    script then registers as it would NCCL: `nccl.bcast()`, `solver.add_callback(nccl)` and
    `solver.net.after_backward(nccl)`.  Without MPI it raises NCCLUnavailableError."""

    def __new__(cls, solver=None, uid=None):
        from .parallel import world
        if world() is None:
            raise NCCLUnavailableError(
                "caffe.NCCL: caffe-lite trains on several GPUs or CPUs over MPI, not NCCL "
                "(has_nccl() is False): start the processes with mpirun and call "
                "caffe_lite.parallel.init() before building the solver (docs/distributed.md)")
        from .parallel import DataParallel
        return DataParallel(solver, attach=False)

    @staticmethod
    def new_uid():
        """pycaffe's NCCL.new_uid(): MPI needs no id; a placeholder."""
        return "mpi"


class NCCLUnavailableError(CaffeLiteError, NotImplementedError):
    pass


solver_count = _state.solver_count
set_solver_count = _state.set_solver_count
solver_rank = _state.solver_rank
set_solver_rank = _state.set_solver_rank
set_multiprocess = _state.set_multiprocess

__all__ = ["Net", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
           "AdaDeltaSolver", "AdamSolver", "NCCL", "Timer", "init_log", "log", "has_nccl",
           "solver_count", "set_solver_count", "solver_rank", "set_solver_rank",
           "set_multiprocess", "CAFFE_NAMES"]
