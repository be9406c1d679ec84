"""The machine the benchmarks run on: what it is, and its limits measured in the same run.

    python -m benchmarks.machine          prints both as JSON

`limits(threads)` measures numpy's single-precision matrix product (GFLOP/s) and a memory copy
(GB/s, bytes read + bytes written), each the better of BLAS's own threading and an even split
over caffe-lite's thread pool; those are the yardsticks the achieved rates are reported
against."""
import datetime
import json
import os
import platform
import socket
import subprocess
import time

import numpy as np

from caffe_lite.layers import parallel


def _lscpu():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    info = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def _blas_info():
    try:
        from threadpoolctl import threadpool_info
        return [{k: v for k, v in lib.items() if k in ("internal_api", "version", "num_threads",
                                                        "architecture", "threading_layer")}
                for lib in threadpool_info() if lib.get("user_api") == "blas"]
    except ImportError:
        return []


def describe():
    """Host, CPU, date and software versions."""
    cpu = _lscpu()
    info = {
        "host": socket.gethostname(),
        "date": datetime.date.today().isoformat(),
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu.get("Model name") or platform.processor() or platform.machine(),
        "cpus_usable": parallel.num_threads() if not os.environ.get("CAFFE_LITE_NUM_THREADS")
        else len(os.sched_getaffinity(0)),
        "cores_per_socket": cpu.get("Core(s) per socket"),
        "threads_per_core": cpu.get("Thread(s) per core"),
        "l2": cpu.get("L2 cache"),
        "l3": cpu.get("L3 cache"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": _blas_info(),
        "caffe_lite_threads": parallel.num_threads(),
        "load_average": os.getloadavg(),
    }
    try:
        import numba
        info["numba"] = numba.__version__
    except ImportError:
        info["numba"] = None
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_mkldnn"] = bool(torch.backends.mkldnn.is_available())
    except ImportError:
        info["torch"] = None
    return info


def _best(fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def sgemm_gflops(threads, n=2048, repeats=5):
    """Best of numpy's n x n float32 product with BLAS on `threads` threads, and the same
    product split by rows over the pool (single-threaded BLAS per piece)."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    flops = 2.0 * n ** 3
    libs = parallel._blas_libraries()
    saved = [lib.get_num_threads() for lib in libs]
    try:
        for lib in libs:
            lib.set_num_threads(threads)
        native = flops / _best(lambda: np.matmul(a, b, out=c), repeats) / 1e9
    finally:
        for lib, t in zip(libs, saved):
            lib.set_num_threads(t)
    split = flops / _best(lambda: parallel.matmul(a, b, c), repeats) / 1e9
    return {"native_blas": native, "split_over_pool": split, "best": max(native, split)}


def copy_gbps(threads, mbytes=256, repeats=5):
    """Memory copy bandwidth (read + write bytes per second) of np.copyto on `mbytes` MB, on
    one thread and split over `threads`."""
    n = mbytes * (1 << 20) // 4
    src = np.ones(n, np.float32)
    dst = np.empty(n, np.float32)
    moved = 2.0 * 4 * n
    one = moved / _best(lambda: np.copyto(dst, src), repeats) / 1e9
    step = -(-n // threads)

    def split():
        parallel.run_tasks([lambda a=a: np.copyto(dst[a:a + step], src[a:a + step])
                            for a in range(0, n, step)])
    many = moved / _best(split, repeats) / 1e9
    return {"one_thread": one, "split_over_pool": many, "best": max(one, many)}


def limits(threads=None, quick=False):
    threads = threads or parallel.num_threads()
    return {
        "threads": threads,
        "sgemm_gflops": sgemm_gflops(threads, n=1024 if quick else 2048,
                                     repeats=3 if quick else 7),
        "copy_gbps": copy_gbps(threads, mbytes=64 if quick else 256,
                               repeats=3 if quick else 7),
    }


if __name__ == "__main__":
    print(json.dumps({"machine": describe(), "limits": limits()}, indent=2))
