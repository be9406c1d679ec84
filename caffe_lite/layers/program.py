"""Prepared CPU steps run as one native program: a pass's kernels and products without the
interpreter between them.

A prepared step (Layer.prepare_cpu) is a Python callable; the spinning pool (gemm_pool.py)
already hands its pieces to the workers as job rows: a product as the arguments of
cblas_sgemm, a compiled kernel's block as the address of its native task and packed arguments
(numba/_native.py).  A callable that can say all of its work that way carries `native`: its
*phases*, each (rows for the caller, [rows for worker 1, ...]), run in order, a phase ending
when all of its rows are done.  One that may have to do something else on a given call (a
layer whose weight went sparse, a fused group whose parameters changed) also carries `ready`,
which says whether the phases still compute what the callable would.  A ready check made with
ready_while names the buffers whose versions it reads; the rest of what it reads (a layer's
kept input copy, a sparse path's mode) changes only where layer code runs in Python, inside a
parallel.cpu_pass.  A program whose checks all say so checks again only when one of those
buffers or parallel.changes moved.

A Program strings the phases of consecutive steps together (plan.py) and runs them in one
compiled call (numba/spin.py run_program): for small nets the interpreter's share of a pass —
closures, the numba dispatch of each kernel, the pool's Python bookkeeping, about two to three
microseconds a step — is most of what separates them from OpenCV's runtime.  The results are
those of the Python path bit for bit: the same kernels, products and splits, in the same order."""
import numpy as np

from . import gemm_pool, jit, parallel


def in_order(*runs):
    """A callable running `runs` (callables or None) one after another; native where each of
    them is."""
    runs = [r for r in runs if r is not None]
    if len(runs) == 1:
        return runs[0]

    def run():
        for r in runs:
            r()
    parts = [gemm_pool.phases_of(r) for r in runs]
    readies = [r.ready for r in runs if getattr(r, "ready", None) is not None]
    ready = None
    if readies:
        ready = readies[0] if len(readies) == 1 else \
            ready_while(lambda: all(f() for f in readies), (), *readies)
    return gemm_pool.attach(run, None if any(p is None for p in parts) else
                            [ph for p in parts for ph in p], ready)


def ready_while(check, memories, *inner):
    """`check` as a step's ready that reads the versions of `memories` (SyncedMemory
    objects), what the ready checks `inner` (or None) read, and otherwise only what changes
    inside a cpu_pass."""
    more = watched(*inner)
    check.watch = None if more is None else _union(memories, more)
    return check


def _union(*lists):
    out = {}
    for ms in lists:
        out.update((id(m), m) for m in ms)
    return list(out.values())


def watched(*readies):
    """The memories `readies` (ready checks or None) watch together; None where one of them
    says nothing of what it reads."""
    lists = []
    for r in readies:
        if r is None:
            continue
        watch = getattr(r, "watch", None)
        if watch is None:
            return None
        lists.append(watch)
    return _union(*lists)


def nothing():
    pass


gemm_pool.attach(nothing, [])


def prepare_nothing(layer, bottom, top):
    """prepare_cpu of a layer whose forward does nothing (its top shares the bottom's data):
    `prepare_cpu = program.prepare_nothing` in its class."""
    return nothing


class Program:
    """The phases of `runs` (prepared steps that all have them) as one native call.  run()
    returns False, having done nothing, where it cannot run now (a step not ready, the pool
    busy with another thread's product): the caller runs the steps themselves then."""

    def __init__(self, runs):
        self.runs = runs
        phases = [ph for r in runs for ph in gemm_pool.phases_of(r)]
        self.readies = [r.ready for r in runs if r.ready is not None]
        self.watch = watched(*self.readies)
        # (gemm_pool's table of every worker, parallel's native switches, run_pass's
        # description, number of phases)
        self._desc = None
        self._passed = None     # (parallel.changes, the versions watched) when all were ready
        n_w = max([len(others) for _, others in phases] + [0])
        table = np.zeros((len(phases), 2 + 2 * n_w), np.int64)
        parts = []
        at = 0
        for p, (own, others) in enumerate(phases):
            for c, block in enumerate([own] + list(others)):
                n = 0 if block is None else len(block)
                table[p, 2 * c], table[p, 2 * c + 1] = at, at + n
                if n:
                    parts.append(block)
                    at += n
        self.rows = np.concatenate(parts) if parts else gemm_pool.rows()
        self.phases = table
        self.workers = gemm_pool.workers(n_w) if n_w else []
        self.table = gemm_pool.table(self.workers)
        self.seqs = np.zeros(max(1, n_w), np.int64)
        # (steps that do nothing: no compiled call, and nothing the pool must provide)
        self.k = jit.kernels("spin") if len(phases) else None
        self.blas = gemm_pool.addresses() if len(phases) else None

    def _ready(self):
        watch = self.watch
        if watch is None:
            for ready in self.readies:
                if not ready():
                    return False
            return True
        seen = parallel.changes, [m.version for m in watch]
        if seen == self._passed:
            return True
        for ready in self.readies:
            if not ready():
                return False
        self._passed = seen
        return True

    def run(self):
        if not self._ready():
            return False
        if self.k is None:
            return True
        busy = gemm_pool._busy
        if not busy.acquire(blocking=False):
            return False
        try:
            self._go_on(0)
        finally:
            busy.release()
        return True

    def run_pass(self):
        """run() as a whole CPU pass (plan.py, where this program is all of it): the pass's
        edges (parallel.cpu_pass: the workers' flags, BLAS at one thread) and the program in
        one compiled call.  False, having done nothing, where it cannot: the caller runs the
        pass as usual then."""
        desc = self._desc
        if desc is None or desc[0] is not gemm_pool._table or desc[1] is not parallel._native:
            switches = parallel._native_switches()
            if self.k is None or switches is None:
                return False
            edge = gemm_pool.edge()
            desc = self._desc = (edge, parallel._native,
                                 self._describe(edge, switches[1]), len(self.phases))
        if parallel._pass_threads or not self._ready():
            return False    # (inside another pass, a Python layer's net: that pass's edges)
        busy = gemm_pool._busy
        if not busy.acquire(blocking=False):
            return False
        try:
            n = desc[3]
            at = self.k.run_pass(desc[2], gemm_pool.CLAIM_POLLS, gemm_pool.WAIT_POLLS)
            if at > n:
                return False    # (workers asleep: the usual pass wakes them, once)
            if at < 0:
                try:
                    self._go_on(-at)
                finally:
                    gemm_pool.want(False, desc[1])
        finally:
            busy.release()
        return True

    def _describe(self, edge, switches):
        """run_pass's description of this program (spin.py PASS_* words)."""
        k = self.k
        desc = np.zeros(k.PASS_WORDS, np.int64)
        for at, rows_at, array in ((k.PASS_EDGE, k.PASS_EDGE_ROWS, edge),
                                   (k.PASS_SWITCHES, k.PASS_SWITCHES_ROWS, switches),
                                   (k.PASS_ROWS, k.PASS_ROWS_ROWS, self.rows),
                                   (k.PASS_PHASES, k.PASS_PHASES_ROWS, self.phases),
                                   (k.PASS_WORKERS, k.PASS_WORKERS_ROWS, self.table),
                                   (k.PASS_SEQS, k.PASS_SEQS_WORDS, self.seqs)):
            assert array.dtype == np.int64 and array.flags.c_contiguous
            desc[at], desc[rows_at] = array.ctypes.data, array.shape[0]
        desc[k.PASS_PHASES_COLUMNS] = self.phases.shape[1]
        desc[k.PASS_SGEMM], desc[k.PASS_SGEMV], desc[k.PASS_WIDE] = self.blas
        return desc

    def _go_on(self, at):
        """The phases from `at` on; a worker still at its rows is waited for."""
        run_program = self.k.run_program
        while True:
            at = run_program(self.rows, self.phases, self.table, self.seqs, *self.blas, at,
                             gemm_pool.CLAIM_POLLS, gemm_pool.WAIT_POLLS)
            if at >= 0:
                return
            at = -at    # (a worker was still at its rows: wait for it, then go on)
            for w, seq in zip(self.workers, self.seqs.tolist()):
                while seq and not self.k.wait(w.ctl, seq, gemm_pool.WAIT_POLLS):
                    w.poke()    # (a worker that blocked just as this posted)
