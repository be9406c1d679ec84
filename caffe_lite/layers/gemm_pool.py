"""Matrix products and compiled kernels split over native threads that spin between pieces.

Handing a piece of work to a Python thread that waits on a lock costs 40-50 us on the 2-vCPU
VM (an OS wake-up each way), as much as a whole small convolution; OpenBLAS's own threads hand
work over in microseconds because they spin.  This pool does that for the products of
parallel.prepare_matmul and the compiled kernels of parallel.prepare_blocks / run_blocks: each
worker is a thread that, while the caller is inside a pass (parallel.cpu_pass) and for about
100 us after, polls two control words without the interpreter lock (layers/numba/spin.py) and
runs the pieces posted to it by calling cblas_sgemm (cblas_sgemv for one row) of numpy's own
BLAS, or a kernel's native task (a C callback, layers/numba/_native.py), directly, never
needing the interpreter.  The caller runs its own piece (np.matmul, or the kernel as Python
calls it) and polls for the workers' pieces: a round trip costs 2-7 us.

Unlike OpenBLAS's threads, a worker gets one static piece per product (a busy core delays
that piece once, not every synchronisation inside the product), yields its core on every
poll, and after the spin window naps, then blocks in a pipe read until a pass starts.
A caller only posts to a worker seen spinning (and done with its last piece); others' pieces
run on the caller's thread, and so does a posted piece its worker has not claimed within
CLAIM_POLLS polls after the caller's own is done (work stealing: a worker whose core another
process holds costs a few polls, not a scheduler time slice).

Used when numba is available (CAFFE_LITE_JIT not 0), on x86-64 (whose ordering of plain
stores and loads the control words rely on), with an OpenBLAS whose cblas_sgemm threadpoolctl
can name; else parallel.py splits products over its Python workers as before."""
import atexit
import collections
import ctypes
import os
import platform
import threading

import numpy as np

from ..util import env
from . import jit

# After the last piece, outside a pass, a worker polls about 100 us (back-to-back passes find
# it spinning), naps NAP_US at a time for about half a second (a pass's start finds it within
# a nap; the naps cost about 13 % of a core, as OpenMP runtimes spin for 0.2 s at 100 %), then
# blocks in a pipe read until a pass wakes it.  A longer tail of polling took its core from
# whatever ran next (the PyTorch and OpenCV runs the benchmarks alternate with caffe-lite's);
# 1 ms naps left the first products of a pass after a pause on one thread for longer (the
# OpenCV ratios of MobileNet v2, SqueezeNet, GoogLeNet 0.05-0.2 higher).
SPIN_POLLS = 250
NAP_US = 200
NAPS = 2500
MAX_JOBS = 64             # products (2-D pieces of a batched product) per posted batch
WAIT_POLLS = 1 << 12      # polls per native wait before the caller pokes the worker
# Polls the caller gives a worker to claim its piece, once the caller's own is done, before it
# claims the piece itself: a spinning worker picks a batch up in a few microseconds (a poll
# yields the core, about 1 us here), one whose core another process holds takes a time slice.
CLAIM_POLLS = 64

_NOTRANS, _TRANS = 111, 112
_state = None             # _functions(): the ctypes functions, or False where the pool cannot run
_workers = []
_workers_pid = None
_lock = threading.Lock()
_busy = threading.Lock()  # one split product at a time; a concurrent one runs unsplit
_wanted = 0               # inside a pass (want(True)): what a new worker's WANTED starts at


_Functions = collections.namedtuple(
    "_Functions", "sgemm pause read nap sgemv claim reset init")


def _functions(libraries=()):
    """_Functions: cblas_sgemm, sched_yield, read, usleep, cblas_sgemv, and the lock word's
    pthread_spin_trylock / _unlock / _init, as ctypes functions; or False.  Looked up once,
    BLAS in the first of `libraries` (threadpoolctl's BLAS controllers) that is an OpenBLAS."""
    global _state
    if _state is not None:
        return _state
    if not libraries:
        return False    # (not looked up yet: nothing to cache)
    if platform.machine().lower() not in ("x86_64", "amd64") or os.name != "posix":
        _state = False
        return _state
    # numpy's own OpenBLAS first (another one, OpenCV's say, may be loaded beside it)
    def not_numpys(lib):
        return "numpy" not in str(getattr(lib, "filepath", ""))
    for lib in sorted(libraries, key=not_numpys):
        if type(lib).__name__ != "OpenBLASController":
            continue
        prefix = getattr(lib, "_symbol_prefix", "") or ""
        suffix = getattr(lib, "_symbol_suffix", "") or ""
        try:
            sgemm = getattr(lib.dynlib, f"{prefix}cblas_sgemm{suffix}")
            sgemv = getattr(lib.dynlib, f"{prefix}cblas_sgemv{suffix}")
            libc = ctypes.CDLL(None)
            pause, read, nap = libc.sched_yield, libc.read, libc.usleep
            claim, reset = libc.pthread_spin_trylock, libc.pthread_spin_unlock
            init = libc.pthread_spin_init
        except (AttributeError, OSError):
            continue
        idx = ctypes.c_int64 if "64" in suffix else ctypes.c_int
        ptr = ctypes.c_uint64
        sgemm.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, idx, idx, idx,
                          ctypes.c_float, ptr, idx, ptr, idx, ctypes.c_float, ptr, idx]
        sgemm.restype = None
        sgemv.argtypes = [ctypes.c_int, ctypes.c_int, idx, idx, ctypes.c_float, ptr, idx, ptr,
                          idx, ctypes.c_float, ptr, idx]
        sgemv.restype = None
        pause.argtypes, pause.restype = [], ctypes.c_int
        read.argtypes, read.restype = [ctypes.c_int, ptr, ctypes.c_size_t], ctypes.c_ssize_t
        nap.argtypes, nap.restype = [ctypes.c_uint], ctypes.c_int
        for f in (claim, reset):
            f.argtypes, f.restype = [ptr], ctypes.c_int
        init.argtypes, init.restype = [ptr, ctypes.c_int], ctypes.c_int
        _state = _Functions(sgemm, pause, read, nap, sgemv, claim, reset, init)
        return _state
    _state = False
    return _state


def enabled():
    """CAFFE_LITE_SPIN (default on): 0 keeps products on the Python workers."""
    return env.flag("CAFFE_LITE_SPIN")


def available(libraries):
    """Whether products can go to spinning workers: CAFFE_LITE_SPIN not 0, numba kernels on
    (layers.jit) and a cblas_sgemm found in `libraries` (threadpoolctl's BLAS controllers)."""
    return enabled() and jit.kernels("spin") is not None and bool(_functions(libraries))


class _Worker:
    def __init__(self, index):
        k = jit.kernels("spin")
        self.k = k
        self.ctl = np.zeros(k.CONTROL_WORDS, np.int64)
        self.ctl[k.SPIN], self.ctl[k.NAPS] = SPIN_POLLS, NAPS
        self.ctl[k.WANTED] = _wanted   # (started inside a pass: spin through it)
        self.jobs = np.zeros((MAX_JOBS, 11), np.int64)
        # the batch's lock word (pthread_spinlock_t, an int; a cache line of its own)
        self.lock = np.zeros(16, np.int32)
        self.lock_at = self.lock.ctypes.data
        _functions().init(self.lock_at, 0)
        self.pipe_r, self.pipe_w = os.pipe()
        os.set_blocking(self.pipe_w, False)
        self.byte = np.zeros(8, np.uint8)
        threading.Thread(target=self._loop, name=f"caffe-lite-gemm-{index}",
                         daemon=True).start()

    def _loop(self):
        f = _functions()
        self.k.serve(self.ctl, self.jobs, f.sgemm, f.sgemv, f.pause, f.read, self.pipe_r,
                     self.byte.ctypes.data, f.nap, NAP_US, f.claim, self.lock_at)

    def poke(self):
        """Wake the worker from its pipe read (a full pipe means it has wake-ups pending)."""
        try:
            os.write(self.pipe_w, b"w")
        except OSError:
            pass

    def release(self):
        """End a hold."""
        self.ctl[self.k.HOLD] = 0
        self.poke()


def workers(n):
    """n spinning workers (started on first use; again in a forked child, which has none);
    the pool must be available() first."""
    global _workers, _workers_pid, _table
    if not _functions():
        raise RuntimeError("the spinning product pool is not available here")
    with _lock:
        if _workers_pid != os.getpid():
            _workers, _workers_pid = [], os.getpid()
            _table = None
        while len(_workers) < n:
            _workers.append(_Worker(len(_workers) + 1))
        return _workers[:n]


def want(on, switches=None):
    """Called as a pass starts (True) and ends (False): workers spin through a pass.  With
    `switches` (parallel's: spin.py's module and its table of OpenBLAS thread switches), their
    BLAS is held at one thread through the pass in the same compiled call (pass_edge)."""
    global _wanted
    starting = on
    on = on and enabled()
    _wanted = 1 if on else 0
    # (a forked child's copies of the parent's workers are marked gone, MODE -1: setting their
    # flags does nothing, so the process id need not be asked for on every pass)
    if not _workers:
        if switches is not None:
            switches[0].pass_edge(_NO_WORKERS, 0, switches[1], starting)
        return
    asleep = _workers[0].k.pass_edge(table(), _wanted,
                                     _NO_SWITCHES if switches is None else switches[1],
                                     starting)
    if asleep:
        for i, w in enumerate(_workers):
            if asleep >> i & 1:
                w.poke()


def edge():
    """The table a pass's edges set the workers' flags in (pass_edge): every worker's."""
    return table() if _workers else _NO_WORKERS


_NO_WORKERS = np.zeros((0, 4), np.int64)
_NO_SWITCHES = np.zeros((0, 3), np.int64)
_table = None


def table(workers_=None):
    """The workers' (control words, jobs, lock word addresses, rows of jobs), int64 (W, 4),
    as the native calls (spin.py run_program, want) take them; of all workers by default."""
    global _table
    if workers_ is not None:
        return np.array([(w.ctl.ctypes.data, w.jobs.ctypes.data, w.lock_at, w.jobs.shape[0])
                         for w in workers_], np.int64).reshape(-1, 4)
    if _table is None or len(_table) != len(_workers):
        _table = table(_workers)
    return _table


def hold(on):
    """Called around a section of parallel.run_tasks: while the Python workers run, the
    spinning workers block instead of sharing their cores."""
    if _workers_pid != os.getpid() or not _workers:
        return
    for w in _workers:
        if on:
            if w.ctl[w.k.MODE] == 1 and enabled():
                w.ctl[w.k.HOLD] = 1
        elif w.ctl[w.k.HOLD]:
            w.release()


def _after_fork_in_child():
    """A forked child has none of the parent's threads: products prepared before the fork,
    which hold the parent's workers, run on the caller (MODE -1); new ones start new workers."""
    for w in _workers:
        w.ctl[w.k.MODE] = -1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _stop():
    for w in _workers:
        w.ctl[w.k.STOP] = 1
        w.poke()


def tasks(module):
    """The native tasks of a kernel family (layers/numba/_native.py)."""
    return [v for v in vars(module).values() if getattr(v, "native_task", False)]


def warm_up(libraries, families=()):
    """Compile (or load) the native loops and the native tasks of `families` (kernel
    modules), as caffe_lite.warmup does the kernels."""
    if not available(libraries):
        return
    for module in families:
        for t in tasks(module):
            callback(t)
    k = jit.kernels("spin")
    f = _functions()
    ctl = np.zeros(k.CONTROL_WORDS, np.int64)
    ctl[k.STOP] = 1
    lock = np.zeros(16, np.int32)
    k.serve(ctl, np.zeros((1, 11), np.int64), f.sgemm, f.sgemv, f.pause, f.read, -1, 0, f.nap,
            NAP_US, f.claim, lock.ctypes.data)
    k.run_jobs(np.zeros((1, 11), np.int64), 0, f.sgemm, f.sgemv)
    jobs = np.zeros((1, 11), np.int64)
    lock_at = lock.ctypes.data
    k.post(ctl, jobs, jobs[:0], lock_at)
    k.finish(ctl, 0, lock_at, 1, 1)
    k.wait(ctl, 0, 1)
    k.taken(ctl, 0, 1)
    sgemm, sgemv, wide = addresses()
    k.run_rows(jobs[:0], 0, 0, sgemm, sgemv, wide)
    k.run_program(jobs[:0], np.zeros((0, 2), np.int64), np.zeros((0, 4), np.int64),
                  np.zeros(1, np.int64), sgemm, sgemv, wide, 0, 1, 1)
    k.pass_edge(_NO_WORKERS, 0, _NO_SWITCHES, False)
    desc = np.zeros(k.PASS_WORDS, np.int64)
    desc[k.PASS_SGEMM], desc[k.PASS_SGEMV], desc[k.PASS_WIDE] = sgemm, sgemv, wide
    for at, array in ((k.PASS_EDGE, _NO_WORKERS), (k.PASS_SWITCHES, _NO_SWITCHES),
                      (k.PASS_ROWS, jobs), (k.PASS_PHASES, jobs), (k.PASS_WORKERS, _NO_WORKERS),
                      (k.PASS_SEQS, jobs)):
        desc[at] = array.ctypes.data    # (no rows: nothing is read)
    k.run_pass(desc, 1, 1)


def _layout(x):
    """(CBLAS transpose flag, leading dimension) of a 2-D float32 view, or None."""
    r, c = x.shape
    s0, s1 = x.strides
    if r == 1 and c == 1:
        return _NOTRANS, 1
    if (c == 1 or s1 == 4) and (r == 1 or (s0 % 4 == 0 and s0 >= 4 * c)):
        return _NOTRANS, (max(1, c) if r == 1 else s0 // 4)
    if (r == 1 or s0 == 4) and (c == 1 or (s1 % 4 == 0 and s1 >= 4 * r)):
        return _TRANS, (max(1, r) if c == 1 else s1 // 4)
    return None


def _jobs(a, b, out):
    """The rows of `jobs` computing np.matmul(a, b, out=out), or None (not expressible:
    not float32, an output not in row order, too many products)."""
    if a.ndim < 2 or b.ndim < 2 or not all(x.dtype == np.float32 for x in (a, b, out)):
        return None
    batch = out.shape[:-2]
    if len(batch) and int(np.prod(batch)) > MAX_JOBS:
        return None
    try:
        aa = np.broadcast_to(a, batch + a.shape[-2:])
        bb = np.broadcast_to(b, batch + b.shape[-2:])
    except ValueError:
        return None
    rows = []
    for idx in np.ndindex(*batch):
        x, y, z = aa[idx], bb[idx], out[idx]
        m, k = x.shape
        n = y.shape[1]
        if m == 0 or n == 0:
            continue
        if k == 0:
            return None
        la, lb = _layout(x), _layout(y)
        lc = _layout(z)
        if la is None or lb is None or lc is None or lc[0] != _NOTRANS:
            return None
        rows.append((la[0], lb[0], m, n, k, x.ctypes.data, la[1], y.ctypes.data, lb[1],
                     z.ctypes.data, lc[1]))
    return np.array(rows, np.int64).reshape(-1, 11)


def prepare(pieces, native=True):
    """A callable computing np.matmul(a, b, out=out) for every (a, b, out) of `pieces`: the
    first on the caller's thread, each other one on a spinning worker (on the caller's thread
    when that worker is not spinning, or has not started the piece by the time the caller's
    own is done); None when a piece cannot be posted.  It expects BLAS on one thread (a
    cpu_pass).  `native`: with the caller's piece as rows too (attach), for a program."""
    if len(pieces) < 2 or not _functions() or jit.kernels("spin") is None:
        return None
    batches = [_jobs(*p) for p in pieces[1:]]
    if any(j is None for j in batches):
        return None
    a0, b0, out0 = pieces[0]
    here = [lambda p=p: np.matmul(p[0], p[1], out=p[2]) for p in pieces[1:]]
    run = _prepared(lambda: np.matmul(a0, b0, out=out0), batches, here)
    own = _jobs(a0, b0, out0) if native else None
    return attach(run, None if own is None else [(own, batches)])


def pack(arguments):
    """A native task's arguments as int64 words (layers/numba/_native.py): an array as its
    address and shape, an integer (or bool) as itself; None when an array is not C-contiguous,
    not of a type the readers take, or the words do not fit.  (A float has no word: pass it
    in an array.)"""
    words = []
    for a in arguments:
        if isinstance(a, np.ndarray):
            # (a task reads its arrays as the types it names; a float64 array from elsewhere
            # must not be read as float32: the kernel's own call takes any type)
            if not a.flags.c_contiguous or a.dtype not in _TASK_TYPES:
                return None
            words.append(a.ctypes.data)
            words.extend(a.shape)
        elif isinstance(a, (int, np.integer, np.bool_)):
            words.append(int(a))
        else:
            raise TypeError(f"a native task's argument must be an array or an integer, "
                            f"not {type(a).__name__}")
    size = _native_words()
    if len(words) > size:
        return None
    packed = np.zeros(size, np.int64)
    packed[:len(words)] = words
    return packed


_TASK_TYPES = (np.dtype(np.float32), np.dtype(np.int64), np.dtype(np.int32),
               np.dtype(np.int16))


def _native_words():
    from .numba._native import MAX_WORDS
    return MAX_WORDS


_callbacks = {}


def callback(task):
    """The address of native task `task`'s C callback, compiled (or loaded from numba's
    cache) on first use."""
    c = _callbacks.get(task)
    if c is None:
        from numba import cfunc
        from .numba._native import TASK_SIGNATURE
        c = _callbacks[task] = cfunc(TASK_SIGNATURE, nopython=True, cache=True)(task)
    return c.address


def prepare_tasks(fn, blocks, task, arguments, native=True):
    """A callable running fn(r0, r1, slot) for each block (r0, r1) of `blocks`, slot being the
    block's index: the first on the caller's thread, each other one on a spinning worker as
    native task `task` of fn's kernel (layers/numba/_native.py) with `arguments` (a tuple, or
    a callable giving the tuple of a slot), on the caller's thread where prepare() would run
    a product there; None when the pool cannot take them (an argument pack() refuses).
    `native`: with the caller's block as a row too (attach), for a program."""
    if len(blocks) < 2 or not _functions() or jit.kernels("spin") is None:
        return None
    packed = [pack(arguments(slot) if callable(arguments) else arguments)
              for slot in range(1, len(blocks))]
    if any(p is None for p in packed):
        return None
    address = callback(task)
    k = jit.kernels("spin")
    batches = [np.array([[k.TASK, address, p.ctypes.data, a, b, slot] + [0] * 5], np.int64)
               for slot, ((a, b), p) in enumerate(zip(blocks[1:], packed), 1)]
    here = [lambda a=a, b=b, slot=slot: fn(a, b, slot)
            for slot, (a, b) in enumerate(blocks[1:], 1)]
    a0, b0 = blocks[0]
    run = _prepared(lambda: fn(a0, b0, 0), batches, here)
    # (the workers read these addresses: the words and the arrays they point to live as long
    # as the callable)
    run.packed = packed
    run.arguments = arguments
    own = task_rows(task, arguments(0) if callable(arguments) else arguments, a0, b0) \
        if native else None
    return attach(run, None if own is None else [(own[0], batches)],
                  keep=() if own is None else (own[1],))


# --- work as job rows, for a native program (layers/program.py) --------------------------------
# A prepared callable whose work can all be said as job rows carries `native`: its phases, each
# (rows for the caller, [rows for worker 1, ...]), run in order, each ending when all of its
# rows are done; `ready`, where set, says whether the phases still compute what the callable
# would on this call; `keep`, the arrays its rows point into.

def rows(*rows_):
    """An int64 (n, 11) array of job rows, each given as a sequence of up to 11 integers."""
    out = np.zeros((len(rows_), 11), np.int64)
    for i, r in enumerate(rows_):
        out[i, :len(r)] = r
    return out


def task_rows(task, arguments, r0, r1, slot=0):
    """(the job row running rows r0..r1-1 of native task `task` with `arguments`, the packed
    arguments it points to), or None where they cannot be packed."""
    packed = pack(arguments)
    if packed is None:
        return None
    return rows((jit.kernels("spin").TASK, callback(task), packed.ctypes.data, r0, r1,
                 slot)), packed


def attach(run, phases, ready=None, keep=()):
    """`run` with its native phases (None: it has none), `ready` and `keep`."""
    run.native = phases
    run.ready = ready
    run.keep = keep
    return run


def phases_of(run):
    return getattr(run, "native", None)


_addresses = None


def addresses():
    """(cblas_sgemm's address, cblas_sgemv's, 1 where they take 64-bit sizes, else 0)."""
    global _addresses
    if _addresses is None:
        f = _functions()
        address = lambda fn: ctypes.cast(fn, ctypes.c_void_p).value  # noqa: E731
        _addresses = (address(f.sgemm), address(f.sgemv),
                      int(f.sgemm.argtypes[3] is ctypes.c_int64))
    return _addresses


def run_on(w, jobs):
    """Post the rows of `jobs` to worker w alone and wait until it is done with them (it must
    claim them: the caller never does here); True when the worker ran them itself.  For
    tests and benchmarks."""
    k = w.k
    f = _functions()
    ran = int(w.ctl[k.RAN])
    w.jobs[:len(jobs)] = jobs
    w.ctl[k.COUNT] = len(jobs)
    f.reset(w.lock_at)
    seq = w.ctl[k.POSTED] + 1
    w.ctl[k.POSTED] = seq
    while not k.wait(w.ctl, seq, WAIT_POLLS):
        w.poke()
    return int(w.ctl[k.RAN]) == ran + 1


def _prepared(own, batches, here):
    """The callable of prepare() / prepare_tasks(): posts batches[i] to worker i (or runs
    here[i] on the caller), runs own(), then waits for (or takes over) the posted batches."""
    ws = workers(len(batches))
    k = ws[0].k
    f = _functions()
    post, finish = k.post, k.finish
    posts = [(w, w.ctl, w.jobs, w.lock_at, jobs, h) for w, jobs, h in zip(ws, batches, here)]

    def run():
        if not _busy.acquire(blocking=False):
            own()
            for h in here:
                h()
            return
        posted = []
        try:
            for w, ctl, jobs, lock, batch, h in posts:
                seq = post(ctl, jobs, batch, lock)
                if seq > 0:
                    posted.append((w, ctl, seq, lock, len(batch)))
                    continue
                if seq < 0:
                    w.poke()    # (asleep: for the next product)
                h()
            own()
        finally:
            # (the posted pieces write into the outputs: finish them even on an error)
            for w, ctl, seq, lock, n in posted:
                state = finish(ctl, seq, lock, CLAIM_POLLS, WAIT_POLLS)
                if state == 2:
                    # the worker has not started it (another process holds its core): run
                    # it here instead of waiting for it
                    k.run_jobs(w.jobs, n, f.sgemm, f.sgemv)
                    continue
                while state == 0:
                    w.poke()   # (a worker that blocked just as this posted)
                    state = 1 if k.wait(ctl, seq, WAIT_POLLS) else 0
            _busy.release()
    return run
