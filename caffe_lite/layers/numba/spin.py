"""The native side of the spinning product pool (layers/gemm_pool.py): a worker's loop and
the caller's wait, both without the interpreter lock.  Importing this module needs numba.

A worker's control word array `ctl` (int64):
  POSTED  sequence number of the last batch of products posted by the caller
  DONE    sequence number of the last batch the worker finished
  WANTED  1 while the caller is inside a pass (the worker keeps spinning)
  MODE    1 spinning: the caller may post; 0 napping: it may not (a pass's start gets the
          worker spinning within a nap); 2 held and 3 asleep: blocked reading the worker's
          pipe until the caller writes a byte to it
  STOP    1: leave for good
  SPIN    idle polls spent spinning (after the last batch, outside a pass) before napping
  COUNT   number of products in the posted batch
  HOLD    1 while the caller's Python workers run a split kernel: the worker leaves the
          core to them (MODE 2) until the caller ends the hold with a byte
  NAPS    naps (of `nap_us`) before falling asleep (MODE 3)
  RAN     batches the worker ran itself (not claimed by the caller first)
  TAKEN   sequence number of the last batch the worker claimed
A batch is claimed with pthread_spin_trylock on a lock word that the caller resets before
posting: the worker runs it if it claims it first, else the caller, which tries once its own
piece is done and the worker has not claimed the batch within a few polls (work stealing: a
worker whose core another process holds delays a product by those polls, not by the
scheduler's time slice).  The work of a batch is rows of `jobs`, each a product or a task:
  (transA, transB, M, N, K, A, lda, B, ldb, C, ldc), pointers as integers: cblas_sgemm in
      row-major order with alpha 1 and beta 0; a row with M = 1 (one image through an
      InnerProduct) runs as cblas_sgemv instead: OpenBLAS's sgemm takes 2-5x longer than its
      sgemv on a single row (numpy's matmul makes the same switch);
  (TASK, callback, args, r0, r1, slot, ...): rows r0..r1-1 of a compiled kernel, through the
      C callback of its task (_native.py), with its packed arguments at address `args`.

`pause` (sched_yield) is called on every poll: being opaque to the compiler, it makes each
poll read the control words again, and it hands the core to any other runnable thread.
Blocking in `read` costs nothing while idle and needs no interpreter lock to wake from, but a
thread woken by another may be queued on the waker's busy core for milliseconds (the
scheduler's wake-affine placement); a nap ends on the worker's own core, so an idle worker
naps before it sleeps."""
import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._native import _i64_at, call_task

POSTED, DONE, WANTED, MODE, STOP, SPIN, COUNT, HOLD, NAPS, RAN, TAKEN = range(11)
CONTROL_WORDS = 16
ROW_MAJOR = 101
NOTRANS, TRANS = 111, 112
TASK = 1


@njit(nogil=True, cache=True)
def run_jobs(jobs, count, sgemm, sgemv):
    """The work of rows 0..count-1 of `jobs`."""
    one, zero = np.float32(1), np.float32(0)
    for j in range(count):
        q = jobs[j]
        if q[0] == TASK:
            call_task(q[1], q[2], q[3], q[4], q[5])
        elif q[2] == 1:
            _row(sgemv, q, one, zero)
        else:
            sgemm(ROW_MAJOR, q[0], q[1], q[2], q[3], q[4], one, q[5], q[6], q[7], q[8], zero,
                  q[9], q[10])


@njit(nogil=True, cache=True)
def serve(ctl, jobs, sgemm, sgemv, pause, read, fd, byte, nap, nap_us, claim, lock):
    """Run posted batches until STOP.  A batch runs only if claim(lock) (pthread_spin_trylock
    on the worker's lock word) succeeds: a caller that finished its own piece before this
    worker started (its core taken by another process) claims the batch and runs it itself."""
    idle = 0
    naps = 0
    while ctl[STOP] == 0:
        posted = ctl[POSTED]
        if posted != ctl[DONE]:
            if claim(lock) == 0:
                ctl[TAKEN] = posted
                run_jobs(jobs, ctl[COUNT], sgemm, sgemv)
                ctl[RAN] += 1
            ctl[DONE] = posted
            idle = 0
            naps = 0
            ctl[MODE] = 1
            continue
        if ctl[HOLD] != 0:
            # (polling, even with sched_yield or short naps, left a Python worker sharing
            # this core about half of it)
            ctl[MODE] = 2
            read(fd, byte, 1)
            continue
        if ctl[WANTED] != 0:
            idle = 0
            naps = 0
        if idle < ctl[SPIN]:
            idle += 1
            ctl[MODE] = 1
            pause()
            continue
        if naps < ctl[NAPS]:
            # (a caller that saw MODE 1 just before may still post: naps poll)
            naps += 1
            ctl[MODE] = 0
            nap(nap_us)
            continue
        ctl[MODE] = 3
        pause()
        # (one that set WANTED after this writes a byte)
        if ctl[POSTED] == ctl[DONE] and ctl[WANTED] == 0 and ctl[STOP] == 0:
            read(fd, byte, 1)
        idle = 0
        naps = 0


@njit(nogil=True, cache=True)
def _row(sgemv, q, one, zero):
    """C (1, N) = A (1, K) x B (K, N) as a matrix-vector product.  A's elements lie lda apart
    when it is transposed (a column of its storage), else next to each other; C's always do."""
    inc_a = q[6] if q[0] == TRANS else 1
    if q[1] == TRANS:   # B's storage is (N, K): C = storage x A
        sgemv(ROW_MAJOR, NOTRANS, q[3], q[4], one, q[7], q[8], q[5], inc_a, zero, q[9], 1)
    else:               # B's storage is (K, N): C = storage^T x A
        sgemv(ROW_MAJOR, TRANS, q[4], q[3], one, q[7], q[8], q[5], inc_a, zero, q[9], 1)


# The caller's side calls libc by name (the dynamic linker finds it): a ctypes function passed
# to a compiled function costs about 1 us of typing on every call, as much as a round trip.
def _libc_function(builder, context, name, result, params):
    fnty = ir.FunctionType(context.get_value_type(result),
                           [context.get_value_type(t) for t in params])
    return cgutils.get_or_insert_function(builder.module, fnty, name)


@intrinsic
def _yield(typingctx):
    """sched_yield()"""
    def codegen(context, builder, signature, args):
        return builder.call(_libc_function(builder, context, "sched_yield", types.int32, ()),
                            [])
    return types.int32(), codegen


def _lock_call(name):
    @intrinsic
    def call(typingctx, address):
        """name(the pthread_spinlock_t at `address`)"""
        def codegen(context, builder, signature, args):
            fn = _libc_function(builder, context, name, types.int32, (types.voidptr,))
            ptr = builder.inttoptr(args[0], context.get_value_type(types.voidptr))
            return builder.call(fn, [ptr])
        return types.int32(types.int64), codegen
    return call


_trylock = _lock_call("pthread_spin_trylock")
_unlock = _lock_call("pthread_spin_unlock")


@njit(nogil=True, cache=True)
def post(ctl, jobs, batch, lock):
    """Post the rows of `batch` to a worker whose control words are `ctl`, its rows `jobs`
    and its lock word at address `lock`: the batch's sequence number, or 0 where the worker
    cannot take it (napping, asleep, gone, held inside a kernel section, or not yet past a
    batch the caller took over), -1 where it is asleep (the caller writes it a byte for
    the next batch)."""
    mode = ctl[MODE]
    if mode != 1 and (mode != 2 or ctl[HOLD] != 0) or ctl[DONE] != ctl[POSTED]:
        return -1 if mode == 3 else 0
    n = batch.shape[0]
    for j in range(n):
        jobs[j, :] = batch[j, :]
    ctl[COUNT] = n
    _unlock(lock)
    seq = ctl[POSTED] + 1
    ctl[POSTED] = seq
    return seq


@njit(nogil=True, cache=True)
def finish(ctl, seq, lock, claim_polls, wait_polls):
    """After the caller's own piece: 1 once the worker finished batch `seq`; 2 where it had
    not claimed it within `claim_polls` polls and the caller claimed it instead (the caller
    runs it); 0 where it is still running after `wait_polls` more (the caller pokes it and
    waits again)."""
    if not taken(ctl, seq, claim_polls) and _trylock(lock) == 0:
        return 2
    return 1 if wait(ctl, seq, wait_polls) else 0


@njit(nogil=True, cache=True)
def taken(ctl, seq, polls):
    """Poll until the worker claimed (or finished) batch `seq` (True), at most `polls`
    times (False)."""
    for _ in range(polls):
        if ctl[TAKEN] == seq or ctl[DONE] == seq:
            return True
        _yield()
    return ctl[TAKEN] == seq or ctl[DONE] == seq


@njit(nogil=True, cache=True)
def wait(ctl, seq, polls):
    """Poll until the worker finished batch `seq` (True), at most `polls` times (False)."""
    for _ in range(polls):
        if ctl[DONE] == seq:
            return True
        _yield()
    return ctl[DONE] == seq


# --------------------------------------------------------------------------------------------
# A program: the prepared steps of a pass run one after another in one call (layers/program.py).
# Its rows are job rows as above; phase p runs rows phases[p, 0]:phases[p, 1] on the caller
# and phases[p, 2 + 2w]:phases[p, 3 + 2w] on worker w, and ends when all of them are done
# (the next phase reads what they wrote).  Products are called through their addresses here
# (a ctypes function argument costs a microsecond of typing per call).
# --------------------------------------------------------------------------------------------

@intrinsic
def _call_at(typingctx, fn, args):
    """Call the C function at address `fn` with the values of the tuple `args`, whose types
    give its parameters (int32 / int64 / float32); it returns nothing."""
    def codegen(context, builder, signature, llargs):
        tys = signature.args[1]
        values = [builder.extract_value(llargs[1], i) for i in range(len(tys))]
        fnty = ir.FunctionType(ir.VoidType(), [context.get_value_type(t) for t in tys])
        builder.call(builder.inttoptr(llargs[0], fnty.as_pointer()), values)
        return context.get_dummy_value()
    return types.void(fn, args), codegen


@intrinsic
def _call_int_at(typingctx, fn):
    """int fn(void), the C function at address `fn`."""
    def codegen(context, builder, signature, llargs):
        fnty = ir.FunctionType(ir.IntType(32), [])
        return builder.call(builder.inttoptr(llargs[0], fnty.as_pointer()), [])
    return types.int32(fn), codegen


@njit(nogil=True, cache=True)
def pass_edge(workers, wanted, switches, starting):
    """A pass starts (`starting`) or ends, in one call: WANTED of each worker of a
    run_program table set to `wanted`; each OpenBLAS of `switches` (rows:
    openblas_get_num_threads' and _set_num_threads' addresses, the saved count) held at one
    thread at the start, its count saved, and set back at the end.  Returns a bit mask of the
    workers asleep (MODE 3) when wanted: the caller pokes them."""
    mask = 0
    for w in range(workers.shape[0]):
        ctl = carray(_i64_at(workers[w, 0]), (CONTROL_WORDS,))
        ctl[WANTED] = wanted
        if wanted and ctl[MODE] == 3:
            mask |= 1 << w
    for b in range(switches.shape[0]):
        if starting:
            n = _call_int_at(switches[b, 0])
            switches[b, 2] = n
            if n != 1:
                _call_at(switches[b, 1], (np.int32(1),))
        elif switches[b, 2] != 1:
            _call_at(switches[b, 1], (np.int32(switches[b, 2]),))
    return mask


@njit(nogil=True, cache=True)
def _product_at(sgemm, sgemv, wide, q):
    """Job row q (a product) through cblas_sgemm / cblas_sgemv at their addresses; `wide`:
    the BLAS takes 64-bit sizes (an ILP64 OpenBLAS, as numpy's own)."""
    one, zero = np.float32(1), np.float32(0)
    i32 = np.int32
    order = i32(ROW_MAJOR)
    if q[2] == 1:   # one row: a matrix-vector product, as _row
        inc_a = q[6] if q[0] == TRANS else 1
        if q[1] == TRANS:
            t, m, n = i32(NOTRANS), q[3], q[4]
        else:
            t, m, n = i32(TRANS), q[4], q[3]
        if wide:
            _call_at(sgemv, (order, t, m, n, one, q[7], q[8], q[5], inc_a, zero, q[9],
                             np.int64(1)))
        else:
            _call_at(sgemv, (order, t, i32(m), i32(n), one, q[7], i32(q[8]), q[5],
                             i32(inc_a), zero, q[9], i32(1)))
    elif wide:
        _call_at(sgemm, (order, i32(q[0]), i32(q[1]), q[2], q[3], q[4], one, q[5], q[6], q[7],
                         q[8], zero, q[9], q[10]))
    else:
        _call_at(sgemm, (order, i32(q[0]), i32(q[1]), i32(q[2]), i32(q[3]), i32(q[4]), one,
                         q[5], i32(q[6]), q[7], i32(q[8]), zero, q[9], i32(q[10])))


@njit(nogil=True, cache=True)
def run_rows(rows, lo, hi, sgemm, sgemv, wide):
    """Job rows lo..hi-1 on this thread."""
    for j in range(lo, hi):
        q = rows[j]
        if q[0] == TASK:
            call_task(q[1], q[2], q[3], q[4], q[5])
        else:
            _product_at(sgemm, sgemv, wide, q)


@njit(nogil=True, cache=True)
def run_program(rows, phases, workers, seqs, sgemm, sgemv, wide, start, claim_polls,
                wait_polls):
    """Phases start.. of a program; workers[w] = (control words, jobs, lock word addresses,
    rows of jobs).  A worker that cannot take its batch (not spinning) has it run here, so
    does one that has not claimed it within claim_polls polls.  Returns the number of phases
    when all ran; else minus the index of the next phase to run, after a phase whose batch a
    worker was still running after wait_polls polls: seqs[w] is then that batch's sequence
    number (else 0), and the caller pokes the worker, waits for it and goes on from there."""
    n_w = workers.shape[0]
    seqs[:n_w] = 0
    for ph in range(start, phases.shape[0]):
        for w in range(n_w):
            seqs[w] = 0
            b0, b1 = phases[ph, 2 + 2 * w], phases[ph, 3 + 2 * w]
            if b1 > b0:
                ctl = carray(_i64_at(workers[w, 0]), (CONTROL_WORDS,))
                jobs = carray(_i64_at(workers[w, 1]), (workers[w, 3], 11))
                seq = post(ctl, jobs, rows[b0:b1], workers[w, 2])
                if seq > 0:
                    seqs[w] = seq
                else:
                    run_rows(rows, b0, b1, sgemm, sgemv, wide)
        run_rows(rows, phases[ph, 0], phases[ph, 1], sgemm, sgemv, wide)
        stuck = False
        for w in range(n_w):
            if seqs[w] > 0:
                ctl = carray(_i64_at(workers[w, 0]), (CONTROL_WORDS,))
                state = finish(ctl, seqs[w], workers[w, 2], claim_polls, wait_polls)
                if state == 0:
                    stuck = True
                    continue
                if state == 2:
                    run_rows(rows, phases[ph, 2 + 2 * w], phases[ph, 3 + 2 * w], sgemm,
                             sgemv, wide)
                seqs[w] = 0
        if stuck:
            return -(ph + 1)
    return phases.shape[0]


# run_pass's description of a program (int64 words): the addresses and row counts of the
# tables that run_program and pass_edge take, and the BLAS functions' addresses.  One array
# instead of six with five numbers: the call's dispatch from Python costs half as much.
(PASS_EDGE, PASS_EDGE_ROWS, PASS_SWITCHES, PASS_SWITCHES_ROWS, PASS_ROWS, PASS_ROWS_ROWS,
 PASS_PHASES, PASS_PHASES_ROWS, PASS_PHASES_COLUMNS, PASS_WORKERS, PASS_WORKERS_ROWS,
 PASS_SEQS, PASS_SEQS_WORDS, PASS_SGEMM, PASS_SGEMV, PASS_WIDE, PASS_WORDS) = range(17)


@njit(nogil=True, cache=True)
def run_pass(desc, claim_polls, wait_polls):
    """A whole CPU pass that is one program, described by `desc` (PASS_* words): pass_edge's
    start (its table: every worker's), run_program, pass_edge's end, in one call.  Returns
    run_program's answer; where it is negative (a worker stuck) the pass is still open: the
    caller waits, goes on and closes it.  Where a worker is asleep it does nothing (the edge
    closed again) and returns the number of phases plus 1 plus the mask of the sleepers (the
    caller's usual pass wakes them)."""
    edge = carray(_i64_at(desc[PASS_EDGE]), (desc[PASS_EDGE_ROWS], 4))
    switches = carray(_i64_at(desc[PASS_SWITCHES]), (desc[PASS_SWITCHES_ROWS], 3))
    rows = carray(_i64_at(desc[PASS_ROWS]), (desc[PASS_ROWS_ROWS], 11))
    phases = carray(_i64_at(desc[PASS_PHASES]),
                    (desc[PASS_PHASES_ROWS], desc[PASS_PHASES_COLUMNS]))
    workers = carray(_i64_at(desc[PASS_WORKERS]), (desc[PASS_WORKERS_ROWS], 4))
    seqs = carray(_i64_at(desc[PASS_SEQS]), (desc[PASS_SEQS_WORDS],))
    sgemm, sgemv, wide = desc[PASS_SGEMM], desc[PASS_SGEMV], desc[PASS_WIDE]
    asleep = pass_edge(edge, 1, switches, True)
    if asleep:
        pass_edge(edge, 0, switches, False)
        return phases.shape[0] + 1 + asleep
    at = run_program(rows, phases, workers, seqs, sgemm, sgemv, wide, 0, claim_polls,
                     wait_polls)
    if at >= 0:
        pass_edge(edge, 0, switches, False)
    return at
