"""Helpers of the spinning pool's tests (test_gemm_pool.py, test_native_tasks.py)."""
import select
import time

from caffe_lite.layers import gemm_pool, parallel


def spinning(threads=2):
    """Start threads - 1 workers and wait until they spin (a new one compiles or loads its
    loop); the first of them."""
    gemm_pool.workers(threads - 1)
    deadline = time.monotonic() + 60
    with parallel.cpu_pass():
        while any(w.ctl[w.k.MODE] != 1 for w in gemm_pool._workers[:threads - 1]):
            assert time.monotonic() < deadline, "the workers never started spinning"
            time.sleep(0.01)
    return gemm_pool._workers[0]


def hold_until_blocked(w):
    """Hold the workers (as a section of parallel.run_tasks does) until w blocks in its pipe
    read; the caller is inside a pass.  (hold only catches a spinning worker: until it
    blocks, again.)"""
    deadline = time.monotonic() + 20
    while True:
        while w.ctl[w.k.MODE] != 2:
            assert time.monotonic() < deadline, "the worker never blocked"
            gemm_pool.hold(True)
            time.sleep(0.001)
        # a wake-up an earlier poke left in its pipe would let it go on once the hold ends:
        # until it has read them all (going back to its read each time), it is not blocked
        if not select.select([w.pipe_r], [], [], 0)[0]:
            time.sleep(0.005)
            if w.ctl[w.k.MODE] == 2 and not select.select([w.pipe_r], [], [], 0)[0]:
                return
        time.sleep(0.001)
