"""Prepared CPU steps run as one native program: a pass's kernels and products without the
interpreter between them.

A prepared step (Layer.prepare_cpu) is a Python callable; the spinning pool (gemm_pool.py)
already hands its pieces to the workers as job rows: a product as the arguments of
cblas_sgemm, a compiled kernel's block as the address of its native task and packed arguments
(numba/_native.py).  A callable that can say all of its work that way carries `native`: its
*phases*, each (rows for the caller, [rows for worker 1, ...]), run in order, a phase ending
when all of its rows are done.  One that may have to do something else on a given call (a
layer whose weight went sparse, a fused group whose parameters changed) also carries `ready`,
which says whether the phases still compute what the callable would.

A Program strings the phases of consecutive steps together (plan.py) and runs them in one
compiled call (numba/spin.py run_program): for small nets the interpreter's share of a pass —
closures, the numba dispatch of each kernel, the pool's Python bookkeeping, about two to three
microseconds a step — is most of what separates them from OpenCV's runtime.  The results are
those of the Python path bit for bit: the same kernels, products and splits, in the same order."""
import numpy as np

from . import gemm_pool, jit


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
        ready = readies[0] if len(readies) == 1 else (lambda: all(f() for f in readies))
    return gemm_pool.attach(run, None if any(p is None for p in parts) else
                            [ph for p in parts for ph in p], ready)


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

    def run(self):
        for ready in self.readies:
            if not ready():
                return False
        if self.k is None:
            return True
        busy = gemm_pool._busy
        if not busy.acquire(blocking=False):
            return False
        try:
            run_program, at = self.k.run_program, 0
            while True:
                at = run_program(self.rows, self.phases, self.table, self.seqs, *self.blas,
                                 at, gemm_pool.CLAIM_POLLS, gemm_pool.WAIT_POLLS)
                if at >= 0:
                    break
                at = -at    # (a worker was still at its rows: wait for it, then go on)
                for w, seq in zip(self.workers, self.seqs.tolist()):
                    while seq and not self.k.wait(w.ctl, seq, gemm_pool.WAIT_POLLS):
                        w.poke()    # (a worker that blocked just as this posted)
        finally:
            busy.release()
        return True
