"""A matrix product split over two threads, four ways side by side (alternating, medians):
on one thread; split over the spinning product pool (layers/gemm_pool.py); split over the
Python workers (layers/parallel.py, CAFFE_LITE_SPIN=0's path); on OpenBLAS's own two threads.
Plus the pool's round trip (a 1x1x1 product handed to a worker and back), and MobileNet v1's
forward at batch 1 while another process keeps a core busy: the caller claiming a piece its
worker has not started (as shipped) against waiting for the worker (median and 90th
percentile).

    python -m benchmarks.gemm_pool [--repeats 201] [--out FILE.json]

Shapes: convolutions of MTCNN's O-Net (32 -> 64 3x3 on 23x23) and R-Net, a MobileNet 1x1, an
inception 3x3, and a 1M multiply-add product below the pool's threshold (MIN_SPIN_MACS), where
a split does not pay."""
import argparse
import json
import os
import pathlib
import time

import numpy as np

os.environ.setdefault("CAFFE_LITE_NUM_THREADS", "2")

SHAPES = [  # (M, K, N): weight rows, reduction, columns
    ("O-Net conv2 (32->64 3x3, 21x21 out)", 64, 288, 441),
    ("R-Net conv2 (28->48 3x3, 9x9 out), 1M MACs", 48, 252, 81),
    ("MobileNet 1x1 (128->128, 28x28)", 128, 128, 784),
    ("inception 3x3 (96->128, 28x28)", 128, 864, 784),
]


def _timed(fns, repeats):
    """Medians, in blocks of about 40 calls: the pool's workers block after 100 us idle, and
    the first calls after another side's block find them waking (as a net's first products
    after a pause do), which blocks of two would make most of the sample."""
    from .cases import interleaved
    return [m for m, _ in interleaved(fns, repeats, warmup=5, rounds=max(3, repeats // 40))]


def _busy(seconds):
    t = time.monotonic()
    while time.monotonic() - t < seconds:
        pass


def _under_load(repeats):
    """MobileNet v1's forward at batch 1 (benchmarks/deploy_nets.py, random weights) while
    another process keeps a core busy: the caller claiming a piece its worker has not started
    after CLAIM_POLLS polls (as shipped) against waiting for the worker however long (what
    the pool did before), alternating blocks of ten passes."""
    import multiprocessing
    import tempfile
    from caffe_lite.layers import gemm_pool
    from .opencv import build
    name = "mobilenet_v1 b1 forward"
    saved_polls = gemm_pool.CLAIM_POLLS
    with tempfile.TemporaryDirectory() as folder:
        net = build("mobilenet_v1", 1, folder)[0]
        x = np.random.default_rng(1).standard_normal(net.blobs["data"].shape, dtype=np.float32)
        net.forward(data=x)
        hog = multiprocessing.get_context("spawn").Process(target=_busy, args=(600,),
                                                           daemon=True)
        hog.start()
        times = {"steal": [], "wait": []}
        try:
            for r in range(max(4, repeats // 25)):
                for key, polls in (("steal", saved_polls), ("wait", 1 << 40)):
                    gemm_pool.CLAIM_POLLS = polls
                    net.forward(data=x)
                    for _ in range(10):
                        t = time.perf_counter()
                        net.forward(data=x)
                        times[key].append(time.perf_counter() - t)
        finally:
            hog.terminate()
            hog.join()
            gemm_pool.CLAIM_POLLS = saved_polls
    res = {"case": name}
    for key, v in times.items():
        res[f"{key}_median_us"] = float(np.median(v)) * 1e6
        res[f"{key}_p90_us"] = float(np.percentile(v, 90)) * 1e6
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=201)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    from caffe_lite.layers import gemm_pool, parallel
    from threadpoolctl import threadpool_limits
    from .machine import describe
    libs = parallel._blas_libraries()
    if not gemm_pool.available(libs):
        raise SystemExit("the spinning pool cannot run here (numba, x86-64, OpenBLAS needed)")
    rng = np.random.default_rng(0)
    rows = []
    for name, m, k, n in SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        outs = [np.empty((m, n), np.float32) for _ in range(4)]
        save = parallel.MIN_SPIN_MACS, parallel.MIN_PARALLEL_MACS
        try:
            parallel.MIN_SPIN_MACS = parallel.MIN_PARALLEL_MACS = 0
            with parallel.cpu_pass():
                spin = parallel.prepare_matmul(a, b, outs[1])
            os.environ["CAFFE_LITE_SPIN"] = "0"
            with parallel.cpu_pass():
                python_workers = parallel.prepare_matmul(a, b, outs[2])
        finally:
            os.environ.pop("CAFFE_LITE_SPIN", None)
            parallel.MIN_SPIN_MACS, parallel.MIN_PARALLEL_MACS = save

        def one():
            np.matmul(a, b, out=outs[0])

        def pooled():
            with parallel.cpu_pass():
                spin()

        def workers():
            with parallel.cpu_pass():
                python_workers()

        def openblas():
            np.matmul(a, b, out=outs[3])
        with parallel.single_threaded_blas():
            t_one, t_pool, t_workers = _timed([one, pooled, workers], args.repeats)
        with threadpool_limits(2, user_api="blas"):
            (t_blas,) = _timed([openblas], args.repeats)
        for o in outs[1:]:
            np.testing.assert_allclose(o, outs[0], rtol=1e-4, atol=1e-3)
        rows.append({"case": name, "macs": m * k * n, "one_thread_us": t_one * 1e6,
                     "spinning_pool_us": t_pool * 1e6, "python_workers_us": t_workers * 1e6,
                     "openblas_2_threads_us": t_blas * 1e6})
    # the round trip: a 1x1x1 piece posted to a spinning worker, waited for
    k = gemm_pool.jit.kernels("spin")
    w = gemm_pool.workers(1)[0]
    one_job = np.ones((1, 1), np.float32)
    job = gemm_pool._jobs(one_job, one_job, np.empty((1, 1), np.float32))

    def round_trip():
        gemm_pool.run_on(w, job)
    with parallel.cpu_pass():
        deadline = time.monotonic() + 30
        while w.ctl[k.MODE] != 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        (t_rt,) = _timed([round_trip], args.repeats * 10)
    loaded = _under_load(args.repeats)
    result = {"machine": describe(), "products": rows, "round_trip_us": t_rt * 1e6,
              "under_load": loaded}
    print(f"{'product':46s} {'MACs':>9s} {'1 thread':>9s} {'pool':>9s} {'Python':>9s} "
          f"{'OpenBLAS':>9s}  (us, medians)")
    for r in rows:
        print(f"{r['case']:46s} {r['macs']:9d} {r['one_thread_us']:9.1f} "
              f"{r['spinning_pool_us']:9.1f} {r['python_workers_us']:9.1f} "
              f"{r['openblas_2_threads_us']:9.1f}")
    print(f"round trip to a spinning worker: {t_rt * 1e6:.2f} us")
    print(f"with another process busy on a core, {loaded['case']}: median / 90th percentile, "
          f"caller claims a piece its worker has not started "
          f"{loaded['steal_median_us']:.0f} / {loaded['steal_p90_us']:.0f} us, waits for it "
          f"{loaded['wait_median_us']:.0f} / {loaded['wait_p90_us']:.0f} us")
    out = pathlib.Path(args.out or pathlib.Path(__file__).parent / "results" /
                       f"gemm-pool-{result['machine']['date']}-{result['machine']['host']}.json")
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
