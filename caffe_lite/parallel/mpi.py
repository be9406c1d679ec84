"""The MPI world a data-parallel run lives in: starting MPI through mpi4py (imported only here,
and only when asked), the ranks of this process in the job and on its host, and ending the
whole job when one rank fails."""
import logging
import os
import sys
import traceback

from ..backend import state
from ..errors import CaffeLiteError, ParallelError

log = logging.getLogger("caffe_lite")

INSTALL_HINT = "pip install 'caffe-lite[mpi]' (mpi4py and Open MPI)"

# What MPI launchers put in each process's environment: the number of processes of the job
# (Open MPI's mpirun, MPICH / Intel MPI's Hydra, MVAPICH2).
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")

_world = None


def launched_size():
    """(the job's process count, the variable that says so) when an MPI launcher started this
    process, else (None, None).  Reads the environment only: MPI is not started."""
    for name in _SIZE_VARS:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value), name
    return None, None


def import_mpi(why="data-parallel training"):
    """mpi4py's MPI module (MPI starts on this import), or one ParallelError line saying what
    is missing."""
    try:
        import mpi4py
        # one thread calls MPI at a time: the main one, or the allreduce thread (buckets.py)
        mpi4py.rc.thread_level = "serialized"
        from mpi4py import MPI
    except (ImportError, RuntimeError, OSError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ParallelError(f"{why} needs MPI for Python, which is not available ({detail}); "
                            f"{INSTALL_HINT}") from None
    return MPI


class World:
    """This process's place in the job: `rank` of `size`, `local_rank` of `local_size` on its
    host (the GPU it uses in GPU mode), and the communicator."""

    def __init__(self, MPI, comm):
        self.MPI = MPI
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        self.hosts = len(set(comm.allgather(MPI.Get_processor_name())))
        local.Free()
        # the allreduce thread needs MPI to accept calls from a second thread, one at a time
        self.threads_ok = MPI.Query_thread() >= MPI.THREAD_SERIALIZED

    @property
    def library(self):
        """The MPI library's name and version, as it states them (first line)."""
        return self.MPI.Get_library_version().strip().splitlines()[0].split(",")[0]

    def abort(self, code=1):
        """End every rank of the job now (MPI_Abort)."""
        sys.stderr.flush()
        self.comm.Abort(code)

    def __repr__(self):
        return f"World(rank {self.rank} of {self.size}, local {self.local_rank} of " \
               f"{self.local_size})"


def init(comm=None):
    """Start MPI (once per process) and set caffe-lite's solver_count / solver_rank /
    multiprocess from it; returns the World.  Call it before building the solver: TRAIN-phase
    data layers read their rank's share of each source, and only rank 0 builds test nets.

    Every rank's global generator is seeded alike (a seed drawn on rank 0), so nets and data
    shuffles built from it agree across ranks even without a solver random_seed; the layers'
    CPU threads default to the host's CPUs shared among its ranks (CAFFE_LITE_NUM_THREADS
    overrides); an exception no code catches ends the whole job (MPI_Abort)."""
    global _world
    if _world is not None:
        return _world
    MPI = import_mpi()
    world = World(MPI, comm if comm is not None else MPI.COMM_WORLD)
    state.set_solver_count(world.size)
    state.set_solver_rank(world.rank)
    state.set_multiprocess(world.size > 1)
    seed = world.comm.bcast(int(state.rng().integers(0, 2**31 - 1)) if world.rank == 0 else None)
    state.set_random_seed(seed)
    if "CAFFE_LITE_NUM_THREADS" not in os.environ and world.local_size > 1:
        from ..layers.parallel import num_threads
        os.environ["CAFFE_LITE_NUM_THREADS"] = str(max(1, num_threads() // world.local_size))
    if world.size > 1 and sys.excepthook is sys.__excepthook__:
        sys.excepthook = _abort_hook(world)
    _world = world
    return world


def _abort_hook(world):
    """An exception nothing caught, on any rank, ends the job: the other ranks would otherwise
    wait for this one in their next allreduce, forever."""
    def hook(kind, exc, tb):
        sys.__excepthook__(kind, exc, tb)
        print(f"[rank {world.rank} of {world.size}] ending the MPI job", file=sys.stderr)
        world.abort(1)
    return hook


def world():
    """The World init() made, or None."""
    return _world


def abort_on_error(command, world):
    """A context manager for a CLI verb run by several ranks: an error on any rank prints one
    line (naming the rank) and ends the whole job with MPI_Abort, so no rank waits forever for
    one that stopped."""
    return _AbortOnError(command, world)


class _AbortOnError:
    def __init__(self, command, world):
        self.command, self.world = command, world

    def __enter__(self):
        return self.world

    def __exit__(self, kind, exc, tb):
        if kind is None or self.world.size == 1 or issubclass(kind, SystemExit) and not exc.code:
            return False
        where = f"caffe-lite {self.command}: error: [rank {self.world.rank} of {self.world.size}]"
        if isinstance(exc, CaffeLiteError):
            print(f"{where} {' '.join(str(exc).split())}", file=sys.stderr)
        elif isinstance(exc, KeyboardInterrupt):
            print(f"{where} interrupted", file=sys.stderr)
        elif isinstance(exc, MemoryError):
            print(f"{where} out of memory", file=sys.stderr)
        else:
            traceback.print_exception(kind, exc, tb)
            print(f"{where} {kind.__name__}: {exc}", file=sys.stderr)
        self.world.abort(1)
        return False  # not reached
