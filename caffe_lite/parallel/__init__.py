"""Data-parallel training over MPI (mpi4py): `mpirun -n N caffe-lite train -solver S` or, in
Python, `parallel.init()` before building the solver and `parallel.DataParallel(solver)`
after.  Each of the N ranks reads its own share of every TRAIN-phase data layer (records r,
r + N, ... of the stream one process would read), runs forward and backward, and the ranks'
gradients are summed by allreduce in buckets started while backward still runs, then scaled
by 1/N, so that every rank applies the same update the solver would make with one process and
an N-times larger batch, masks included; rank 0 logs, tests and writes the snapshots.  MPI is
optional (`pip install 'caffe-lite[mpi]'`); nothing here imports mpi4py until asked to.
docs/distributed.md describes usage, exactness, resuming and the cost model."""
from .mpi import World, abort_on_error, import_mpi, init, launched_size, world


def __getattr__(name):  # DataParallel imports the solvers: only when used
    if name == "DataParallel":
        from .data_parallel import DataParallel
        return DataParallel
    raise AttributeError(f"module 'caffe_lite.parallel' has no attribute '{name}'")


def cli_world(force=False):
    """The World for a CLI verb: None (one process, MPI never imported) unless an MPI launcher
    started this process as one of several, or `force` (-mpi) asks for MPI anyway."""
    from ..errors import ParallelError
    size, var = launched_size()
    if not force and (size is None or size <= 1):
        return None
    why = (f"launched by an MPI launcher as one of {size} processes ({var}={size})"
           if size else "-mpi")
    try:
        w = init()
    except ParallelError as exc:
        raise ParallelError(f"{why}, but {exc}") from None
    if size is not None and w.size != size:
        raise ParallelError(f"{why}, but MPI reports {w.size} process(es): mpi4py uses another "
                            "MPI library than the launcher (use the mpirun of the MPI mpi4py "
                            "was built with, e.g. the one `pip install 'caffe-lite[mpi]'` "
                            "installs beside python)")
    return w


__all__ = ["DataParallel", "World", "abort_on_error", "cli_world", "import_mpi", "init",
           "launched_size", "world"]
