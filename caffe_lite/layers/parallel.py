"""The CPU threading policy of the layers: one pool of CAFFE_LITE_NUM_THREADS workers (default:
the usable CPUs) runs everything that is split, elementwise kernels and matrix products alike.

Matrix products are split into one piece per worker, each piece a single-threaded BLAS call
(BLAS is held at one thread while caffe-lite runs a product and set back afterwards, through
threadpoolctl; CAFFE_LITE_NUM_THREADS=1 therefore means one thread in all).  BLAS's own
threads are not used because they busy-wait for each other: on a machine where another
process holds a core for a moment, a 2-thread OpenBLAS product ran 5-30x slower than the same
product split here (see docs/performance.md); split this way, work simply waits for a core.
Without threadpoolctl, products run unsplit on BLAS's threads.

The pieces go to the spinning product pool (gemm_pool.py: native threads, a 2 us hand-over)
where it can run, else to the Python workers here, which block on a lock (40-50 us a hand-over
on a virtual machine); compiled kernels always go to the Python workers, and hold the pool's
threads off the cores while they run."""
import ctypes
import os
import threading

import numpy as np

from ..util import env
from . import gemm_pool, jit

# Handing work to the pool and waiting for it costs 20-50 us (more on a virtual machine whose
# idle CPU has to wake up), so work is only split when each piece is worth several times that:
# elementwise work of at least this many elements per thread,
MIN_PARALLEL_ELEMENTS = 1 << 17
# matrix products of at least this many multiply-adds,
MIN_PARALLEL_MACS = 1 << 22
# and compiled kernels (run_blocks with block_elements=None) on at least this many elements,
MIN_PARALLEL_KERNEL_ELEMENTS = 1 << 18
# but compiled one-pass elementwise kernels (the activation / affine epilogue, ReLU) on this
# many: they take about 40 ps an element on one core (measured 2026-12-05 on data in cache, the
# fused ReLU epilogue: 614k elements 28 us whole / 80 split, 1.6M 60 / 97, 3.2M 159 / 174).
# In whole nets, where a split keeps each core on the output of its own piece of the product,
# 1M came out best of 256k (before), 1M and 4M: face detector b1 2.56 -> 2.42 ms, MobileNet
# v1 / v2 at batch 8 within 2 %.
MIN_PARALLEL_STREAM_ELEMENTS = 1 << 20
# Products handed to the spinning workers of gemm_pool (a round trip of 2-7 us) pay from
# about this many multiply-adds (measured 2026-12-05 on a Zen 5 VM, whole nets at batch 1, 2^20
# against 2^21: LeNet 8-10 %, P-Net and O-Net 3-5 % faster, MobileNet v1 and SqueezeNet 1-3 %
# slower, near the noise; single products: 8 x 784 x 300 64 -> 37 us, 979k 20 -> 18 us).
# Since posting and finishing a split became one native call each (about 1.6 us for both,
# against 5.3, 2026-12-05 fifth session), 2^18: R-Net 10 %, O-Net and LeNet 6 % faster at
# batch 1 with MIN_SPIN_KERNEL_ELEMENTS at 2^13 (benchmarks.ab, in-process A/B), MobileNet v1
# b1 and SqueezeNet b8 1 % (noise).
MIN_SPIN_MACS = 1 << 18
# A single row (an InnerProduct at batch 1) reads its weights once: it is bound by memory, not
# arithmetic, and two cores read twice as fast (each half stays in its core's L2 from call to
# call).  Split from this many weights (measured 2026-12-05, one row: 180k weights 7.5 -> 7.9 us,
# 235k 10.9 -> 8.8, 295k 14.5 -> 8.6, 8M 94 -> 49).
MIN_SPIN_ROW_WEIGHTS = 200_000
# Compiled kernels handed to the spinning workers as native tasks split from this many
# elements (rows x row_elements of prepare_blocks, in a plan: `planned`), elementwise ones
# (the epilogue) from MIN_SPIN_STREAM_ELEMENTS.  (2^15 until a split's overhead fell to
# 1.6 us: see MIN_SPIN_MACS.)
MIN_SPIN_KERNEL_ELEMENTS = 1 << 13
MIN_SPIN_STREAM_ELEMENTS = 1 << 17
# A kernel split for one call (run_blocks: the backward passes; a step prepared outside a
# plan, as Layer.forward does it) also pays for packing its arguments and posting (about
# 14 us with five arrays): from this many.
MIN_SPIN_CALL_ELEMENTS = 1 << 17
# Products of at most this many rows by a matrix stored transposed (an InnerProduct's weight,
# (num_output, K), at batch 1 to 8) run as the compiled kernel of layers/numba/dense.py, split
# over the columns from MIN_SPIN_FEW_ROWS_MACS multiply-adds.
FEW_ROWS = 8
MIN_SPIN_FEW_ROWS_MACS = 1 << 16


def num_threads():
    """Threads used by the layers: CAFFE_LITE_NUM_THREADS, else the usable CPUs (read once
    per pass inside a `cpu_pass`)."""
    if _pass_threads:
        return _pass_threads
    value = env.get("CAFFE_LITE_NUM_THREADS")
    if value:
        n = _parsed.get(value)
        if n is None:
            n = _parsed[value] = max(1, int(value))
        return n
    return _usable_cpus()


_parsed = {}


_cpus = None


def _usable_cpus():
    global _cpus
    if _cpus is None:
        try:
            _cpus = max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            _cpus = max(1, os.cpu_count() or 1)
    return _cpus


_pass_threads = 0   # num_threads() while a cpu_pass is open, else 0
# Counts the cpu_passes opened, and the sparse paths' modes set: layer code that runs
# on the CPU in Python runs in a pass, so while this count stands, what a prepared step's
# ready check reads (layers/program.py) changed only in the memories it watches
changes = 0
_pass_blas = None   # the single_threaded_blas context of the open pass


class cpu_pass:
    """Context around a whole forward or backward pass of a Net on the CPU: the thread count
    is read once and BLAS is held at one thread once, not around each product.  Nested
    passes (a Net inside a Python layer) reuse the outer one's settings."""
    __slots__ = ("outer",)

    def __enter__(self):
        global _pass_threads, _pass_blas, changes
        changes += 1
        self.outer = _pass_threads
        if not self.outer:
            threads = num_threads()
            switches = _native_switches()
            _pass_blas = switches if switches is not None else \
                single_threaded_blas().__enter__()
            _pass_threads = threads
            gemm_pool.want(True, switches)
        return self

    def __exit__(self, *exc):
        global _pass_threads, _pass_blas
        if not self.outer:
            _pass_threads = 0
            blas, _pass_blas = _pass_blas, None
            native = type(blas) is tuple
            if not native:
                blas.__exit__(*exc)
            gemm_pool.want(False, blas if native else None)


class _Worker:
    """A thread that runs one task at a time: the caller releases `start`, the worker runs the
    task and releases `done`.  Two plain locks cost about half of what a ThreadPoolExecutor
    round trip (queue, condition variable, future) costs, which matters at a few hundred
    parallel sections per training step."""

    def __init__(self, index):
        self.start = threading.Lock()
        self.start.acquire()
        self.done = threading.Lock()
        self.done.acquire()
        self.task = None
        self.error = None
        threading.Thread(target=self._loop, name=f"caffe-lite-{index}", daemon=True).start()

    def _loop(self):
        while True:
            self.start.acquire()
            try:
                self.task()
            except BaseException as exc:  # noqa: BLE001  (re-raised in the caller)
                self.error = exc
            self.task = None
            self.done.release()

    def submit(self, task):
        self.error = None
        self.task = task
        self.start.release()

    def wait(self):
        self.done.acquire()
        if self.error is not None:
            error, self.error = self.error, None
            raise error


_workers = []
_workers_pid = None
_busy = threading.Lock()  # one parallel section at a time; a nested or concurrent one runs
                          # its tasks on its own thread


def _get_workers(n):
    global _workers, _workers_pid
    if _workers_pid != os.getpid():  # a forked child has no threads: start its own
        _workers, _workers_pid = [], os.getpid()
    while len(_workers) < n:
        _workers.append(_Worker(len(_workers) + 1))
    return _workers[:n]


def run_tasks(tasks):
    """Run the callables in `tasks`, the first on this thread, the rest on the pool's
    workers (one each)."""
    if len(tasks) == 1 or not _busy.acquire(blocking=False):
        for t in tasks:
            t()
        return
    gemm_pool.hold(True)
    try:
        workers = _get_workers(len(tasks) - 1)
        for w, t in zip(workers, tasks[1:]):
            w.submit(t)
        error = None
        try:
            tasks[0]()
        except BaseException as exc:  # noqa: BLE001
            error = exc
        for w in workers:
            try:
                w.wait()
            except BaseException as exc:  # noqa: BLE001
                error = error or exc
        if error is not None:
            raise error
    finally:
        gemm_pool.hold(False)
        _busy.release()


def _blocks(rows, row_elements, block_elements, min_elements):
    """(row blocks, threads) of run_blocks / prepare_blocks."""
    threads = num_threads()
    if block_elements is None:
        if rows * row_elements < (min_elements or MIN_PARALLEL_KERNEL_ELEMENTS):
            threads = 1
        per_block = -(-rows // threads)
    else:
        per_block = max(1, min(-(-rows // threads), block_elements // max(1, row_elements)))
    blocks = [(r, min(r + per_block, rows)) for r in range(0, rows, per_block)]
    return blocks, min(threads, len(blocks))


def run_blocks(rows, row_elements, fn, block_elements=1 << 17, min_elements=None,
               native=None, spin_elements=None):
    """Call fn(start, stop, slot) over consecutive row blocks covering range(rows).

    Blocks are dealt round-robin to `num_threads()` workers (the caller is worker 0); `slot`
    is the worker's index, for per-worker scratch buffers.  Blocks must touch disjoint rows.
    block_elements=None: one block per worker (for compiled kernels, which need no blocking
    for the cache and cost a few microseconds per call), split from `min_elements` elements
    (default MIN_PARALLEL_KERNEL_ELEMENTS); native, spin_elements: as prepare_blocks (the
    split is worked out on every call here: from MIN_SPIN_CALL_ELEMENTS at least)."""
    if rows <= 0:
        return
    if native is not None and block_elements is None:
        run = _prepare_native(rows, row_elements, fn, native, spin_elements)
        if run is not None:
            run()
            return
    blocks, threads = _blocks(rows, row_elements, block_elements, min_elements)
    if threads == 1:
        for a, b in blocks:
            fn(a, b, 0)
        return

    def work(slot):
        for a, b in blocks[slot::threads]:
            fn(a, b, slot)
    run_tasks([lambda s=s: work(s) for s in range(threads)])


def prepare_blocks(rows, row_elements, fn, block_elements=None, min_elements=None,
                   native=None, spin_elements=None):
    """A callable doing what run_blocks(rows, row_elements, fn, block_elements, min_elements)
    does, with the split worked out now (for a prepared step, Layer.prepare_cpu).

    native: (task, arguments) of fn's compiled kernel (layers/numba/_native.py): the blocks
    then go to the spinning workers of gemm_pool where they can run, one per thread, from
    `spin_elements` elements (default MIN_SPIN_KERNEL_ELEMENTS) when prepared for a plan
    (`planned`), else from MIN_SPIN_CALL_ELEMENTS at least: a round trip of microseconds
    instead of a Python worker's tens."""
    if rows <= 0:
        return _nothing
    if native is not None and block_elements is None:
        run = _prepare_native(rows, row_elements, fn, native, spin_elements)
        if run is not None:
            return run
    blocks, threads = _blocks(rows, row_elements, block_elements, min_elements)
    if threads == 1:
        if len(blocks) == 1:
            return _serial(fn, rows, native)

        def serial():
            for a, b in blocks:
                fn(a, b, 0)
        return serial

    def work(slot):
        for a, b in blocks[slot::threads]:
            fn(a, b, slot)
    tasks = [lambda s=s: work(s) for s in range(threads)]
    return lambda: run_tasks(tasks)


def _serial(fn, rows, native):
    """fn over all rows on the caller; with `native` = (task, arguments), natively too
    (gemm_pool.attach) where the arguments can be packed, in a plan's preparation."""
    def run():
        fn(0, rows, 0)
    if native is None or not _planned or not gemm_pool.available(_blas_libraries()):
        return run
    task, arguments = native
    own = gemm_pool.task_rows(task, arguments(0) if callable(arguments) else arguments, 0, rows)
    if own is None:
        return run
    return gemm_pool.attach(run, [(own[0], [])], keep=(own[1],))


_planned = 0   # > 0 while a Net's plan prepares the steps it runs again and again


class planned:
    """Context around preparing steps that will run many times (plan.py): inside it,
    prepare_blocks hands kernels to the spinning workers from MIN_SPIN_KERNEL_ELEMENTS (their
    arguments are packed once); a split worked out for one call pays that packing each time,
    so it starts at MIN_SPIN_CALL_ELEMENTS."""
    __slots__ = ()

    def __enter__(self):
        global _planned
        _planned += 1
        return self

    def __exit__(self, *exc):
        global _planned
        _planned -= 1


def _prepare_native(rows, row_elements, fn, native, spin_elements):
    threads = min(num_threads(), rows)
    least = spin_elements or MIN_SPIN_KERNEL_ELEMENTS
    if not _planned:
        least = max(least, MIN_SPIN_CALL_ELEMENTS)
    if threads < 2 or rows * row_elements < least or \
            not gemm_pool.available(_blas_libraries()):
        return None
    step = -(-rows // threads)
    blocks = [(a, min(a + step, rows)) for a in range(0, rows, step)]
    task, arguments = native
    return gemm_pool.prepare_tasks(fn, blocks, task, arguments, native=_planned > 0)


def prepare_flat(count, fn):
    """A callable doing what run_flat(count, fn) does, the split worked out now."""
    threads = min(num_threads(), max(1, count // MIN_PARALLEL_ELEMENTS))
    if threads <= 1:
        return (lambda: fn(0, count)) if count > 0 else _nothing
    step = -(-count // threads)
    tasks = [lambda a=a: fn(a, min(a + step, count)) for a in range(0, count, step)]
    return lambda: run_tasks(tasks)


def _nothing():
    pass


gemm_pool.attach(_nothing, [])


def run_flat(count, fn):
    """fn(start, stop) over a split of range(count) into one contiguous piece per thread (one
    piece when count is small)."""
    threads = min(num_threads(), max(1, count // MIN_PARALLEL_ELEMENTS))
    if threads <= 1:
        if count > 0:
            fn(0, count)
        return
    step = -(-count // threads)
    run_tasks([lambda a=a: fn(a, min(a + step, count)) for a in range(0, count, step)])


# --- BLAS ----------------------------------------------------------------------------------

_blas = None


def _blas_libraries():
    """threadpoolctl's controllers of the BLAS libraries numpy uses ([] without it)."""
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
            _blas = list(ThreadpoolController().select(user_api="blas").lib_controllers)
        except Exception:  # noqa: BLE001  (threadpoolctl absent or unable to inspect)
            _blas = []
    return _blas


_switches = None


def _blas_switches():
    """(get, set) of each BLAS library's thread count.  For OpenBLAS with its own threads the
    library's functions are called directly (0.1 us, against about 1 us through
    threadpoolctl's controller: this runs twice per forward pass)."""
    global _switches
    if _switches is None:
        switches = []
        for lib in _blas_libraries():
            get = set_ = None
            if type(lib).__name__ == "OpenBLASController" and \
                    getattr(lib, "threading_layer", "") != "openmp":
                try:
                    get = lib._get_symbol("openblas_get_num_threads")
                    set_ = lib._get_symbol("openblas_set_num_threads")
                except Exception:  # noqa: BLE001  (another threadpoolctl: its methods)
                    get = set_ = None
            if get is None or set_ is None:
                get, set_ = lib.get_num_threads, lib.set_num_threads
            switches.append((get, set_))
        _switches = switches
    return _switches


_native = None


def _native_switches():
    """(spin.py's module, the BLAS switches as its pass_edge's table), where every switch is an
    OpenBLAS's own functions and the pool is there (its workers' flags and BLAS in one compiled
    call a pass edge: 0.3 us, against 1.5 through ctypes and numpy); else None."""
    global _native
    if _native is None:
        _native = False
        switches = _blas_switches()
        if gemm_pool.available(_blas_libraries()) and \
                all(isinstance(f, ctypes._CFuncPtr) for pair in switches for f in pair):
            address = lambda fn: ctypes.cast(fn, ctypes.c_void_p).value  # noqa: E731
            _native = (jit.kernels("spin"),
                       np.array([(address(get), address(set_), 1) for get, set_ in switches],
                                np.int64).reshape(-1, 3))
    return _native or None


class single_threaded_blas:
    """Context: BLAS runs on one thread inside, as before outside."""

    def __enter__(self):
        self.saved = []
        for get, set_ in _blas_switches():
            n = get()
            if n != 1:
                set_(1)
                self.saved.append((set_, n))
        return self

    def __exit__(self, *exc):
        for set_, n in self.saved:
            set_(n)


def _split_axis(a, b, out, threads):
    """The axis of `out` to split (-2 rows, -1 columns, 0 batch) and its length.

    Each piece reads its share of the operand the split cuts and all of the other one, so
    cut the larger operand: with a small weight matrix and many images (the early 1x1
    convolutions of a MobileNet), split the images or the columns, not the weights' rows."""
    m, n = out.shape[-2], out.shape[-1]
    batched = out.ndim > 2 and out.shape[0] >= threads and (
        b.ndim == out.ndim and b.shape[0] == out.shape[0])
    if a.size >= b.size:
        if m >= 8 * threads:
            return -2, m
        if batched:
            return 0, out.shape[0]
        return (-1, n) if n >= m else (-2, m)
    if batched:
        return 0, out.shape[0]
    if n >= 8 * threads:
        return -1, n
    return (-2, m) if m >= n else (-1, n)


def matmul(a, b, out):
    """np.matmul(a, b, out=out), split over the pool along the rows, columns or leading
    (batch) axis of `out` (see _split_axis); one single-threaded BLAS call per piece."""
    if _pass_blas is not None:
        prepare_matmul(a, b, out)()
    else:
        with single_threaded_blas():
            prepare_matmul(a, b, out)()
    return out


def prepare_matmul(a, b, out):
    """A callable computing np.matmul(a, b, out=out) as `matmul` splits it, the split worked
    out now; it expects BLAS on one thread (a cpu_pass)."""
    few = prepare_few_rows(a, b.T, out) if b.ndim == 2 else None
    if few is not None:
        return few
    threads = num_threads()
    k = a.shape[-1]
    macs = out.size * k
    row = out.ndim == 2 and out.shape[0] == 1
    spin = (macs >= MIN_SPIN_MACS or (row and macs >= MIN_SPIN_ROW_WEIGHTS)) and \
        gemm_pool.available(_blas_libraries())
    if threads == 1 or not (spin or macs >= MIN_PARALLEL_MACS) or not _blas_libraries():
        return _whole_product(a, b, out)
    axis, size = _split_axis(a, b, out, threads)
    step = -(-size // threads)
    if axis == -2 and size > step:
        step = -(-step // 8) * 8  # row blocks in multiples of 8 (BLAS kernels' granularity)

    def piece(lo, hi):
        """(a, b, out) views of one piece."""
        sl = slice(lo, hi)
        if axis == -2:
            return (a[..., sl, :] if a.ndim >= 2 else a), b, out[..., sl, :]
        if axis == -1:
            return a, b[..., sl], out[..., sl]
        aa = a[sl] if a.ndim == out.ndim and a.shape[0] == out.shape[0] else a
        bb = b[sl] if b.ndim == out.ndim and b.shape[0] == out.shape[0] else b
        return aa, bb, out[sl]
    pieces = [piece(lo, min(lo + step, size)) for lo in range(0, size, step)]
    run = gemm_pool.prepare(pieces, native=_planned > 0) if spin else None
    if run is not None:
        return run
    if macs < MIN_PARALLEL_MACS:
        return _whole_product(a, b, out)
    tasks = [lambda p=p: np.matmul(p[0], p[1], out=p[2]) for p in pieces]
    return lambda: run_tasks(tasks)


def prepare_bias(y3, bias):
    """A callable adding `bias` (C,) to y3 (N, C, S) per channel: the fused tail's kernel with
    scale 1 (exact: y * 1 + b is y + b) where numba is there, so that it can run natively;
    else numpy."""
    n, c, s = y3.shape
    k = jit.kernels("neuron")
    if k is None or not (y3.flags.c_contiguous and bias.flags.c_contiguous) or \
            y3.dtype != np.float32 or bias.dtype != np.float32:
        b2 = bias.reshape(-1, 1)
        return lambda: np.add(y3, b2, out=y3)
    ones, _, _, zeros, _ = kernel_tail(None, bias, c)
    if s == 1:
        y2 = y3.reshape(n, c)
        return prepare_blocks(n, c, lambda a, b, slot: k.affine_act_rows(
            y2, ones, bias, 0, zeros, y2, False, a, b),
            min_elements=MIN_PARALLEL_STREAM_ELEMENTS, spin_elements=MIN_SPIN_STREAM_ELEMENTS,
            native=(k.affine_act_rows_task, (y2, ones, bias, 0, zeros, y2, False)))
    return prepare_blocks(n * c, s, lambda a, b, slot: k.affine_act(
        y3, ones, bias, 0, zeros, y3, False, a, b),
        min_elements=MIN_PARALLEL_STREAM_ELEMENTS, spin_elements=MIN_SPIN_STREAM_ELEMENTS,
        native=(k.affine_act_task, (y3, ones, bias, 0, zeros, y3, False)))


def _whole_product(a, b, out):
    """np.matmul(a, b, out=out) on the caller; natively too (gemm_pool.attach) where the
    spinning pool's rows can say it, in a plan's preparation (a product prepared for one call
    does not pay for rows it never runs)."""
    def run():
        np.matmul(a, b, out=out)
    own = gemm_pool._jobs(a, b, out) if _planned and gemm_pool.available(_blas_libraries()) \
        else None
    return run if own is None else gemm_pool.attach(run, [(own, [])])


_NONE = np.zeros(0, np.float32)
_units = {}


def kernel_tail(post, bias, channels):
    """The `tail` of prepare_few_rows (and of the convolution on few positions, im2col.py):
    a fused group's fusion.Epilogue `post`, else the bias alone (scale 1, no activation),
    else None."""
    if post is not None:
        return post.scale, post.shift, post.kind, post.slope, post.keep
    if bias is None:
        return None
    unit = _units.get(channels)
    if unit is None:
        unit = _units[channels] = (np.ones(channels, np.float32),
                                   np.zeros(channels, np.float32))
    return unit[0], bias, 0, unit[1], None


def unpack_tail(tail, out):
    """(scale, shift, kind, slope, keep, affine, has_keep): a kernel's arguments for `tail`
    (kernel_tail's, or None) on the output `out`; keep is `out` where nothing is kept."""
    if tail is None:
        return _NONE, _NONE, 0, _NONE, _NONE.reshape((0,) * out.ndim), False, False
    scale, shift, kind, slope, keep = tail
    return (scale, shift, kind, slope, out if keep is None else keep.reshape(out.shape), True,
            keep is not None)


def prepare_few_rows(a, w, out, tail=None):
    """A callable computing out = a @ w.T for a (M, K) of at most FEW_ROWS rows and w (N, K),
    as layers/numba/dense.py's kernel split over the columns, then, with `tail` = (scale,
    shift, kind, slope, keep), v = out * scale + shift per column, copied to keep (unless it
    is None), then the activation `kind` (fusion.Epilogue's); or None where the kernel cannot
    take them (no numba, not float32, not C-ordered, too many rows)."""
    if a.ndim != 2 or out.ndim != 2 or w.ndim != 2 or not 1 <= a.shape[0] <= FEW_ROWS:
        return None
    k = jit.kernels("dense")
    if k is None or any(t.dtype != np.float32 for t in (a, w, out)) or \
            not (a.flags.c_contiguous and w.flags.c_contiguous and out.flags.c_contiguous):
        return None
    arguments = (a, w, out) + unpack_tail(tail, out)
    kernel = k.rows_by_transposed

    def columns(n0, n1, slot):
        kernel(*arguments, n0, n1)
    # (on the Python workers only where a piece outweighs their 40-80 us round trip)
    return prepare_blocks(out.shape[1], a.size, columns, min_elements=MIN_PARALLEL_MACS,
                          native=(k.rows_by_transposed_task, arguments),
                          spin_elements=MIN_SPIN_FEW_ROWS_MACS)
