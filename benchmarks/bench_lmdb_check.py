"""What the LMDB checks cost when a database is opened (docs/robustness.md).

    python benchmarks/bench_lmdb_check.py [--records 60000] [--size 28] [--repeat 7]

Builds an LMDB of `records` raw 1 x size x size Datums (MNIST's shape by default: the values
live in leaf pages, the worst case for the tree walk), then times, alternating, medians:
  * the header check alone (lmdb_check.read_meta);
  * the header and the tree walk that open_db makes (lmdb_io.verify);
  * one epoch read through liblmdb (a cursor over every record), for scale."""
import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from caffe_lite.data import lmdb_check  # noqa: E402
from caffe_lite.data.lmdb_io import DBWriter, verify  # noqa: E402
from caffe_lite.io import array_to_datum  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=60000)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args(argv)
    import lmdb
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "db")
        with DBWriter(path) as w:
            for i in range(args.records):
                a = rng.integers(0, 256, (1, args.size, args.size)).astype(np.uint8)
                w.put(b"%08d" % i, array_to_datum(a, i % 10).SerializeToString())
        meta = lmdb_check.read_meta(path)

        def epoch():
            env = lmdb.open(path, readonly=True, lock=False)
            with env.begin(buffers=True) as txn:
                n = sum(1 for _ in txn.cursor())
            env.close()
            return n

        cases = {"header": lambda: lmdb_check.read_meta(path),
                 "header + tree walk (open_db)": lambda: verify(path),
                 "liblmdb epoch": epoch}
        times = {k: [] for k in cases}
        for _ in range(args.repeat):
            for k, fn in cases.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        size = os.path.getsize(os.path.join(path, "data.mdb"))
        print(f"{args.records:,} records of 1x{args.size}x{args.size}: data.mdb {size:,} bytes, "
              f"{meta.tree_pages:,} tree pages ({meta.leaf_pages:,} leaf, "
              f"{meta.overflow_pages:,} overflow)")
        walk = statistics.median(times["header + tree walk (open_db)"])
        for k, ts in times.items():
            print(f"{k:<30} median {1e3 * statistics.median(ts):9.1f} ms  "
                  f"(min {1e3 * min(ts):.1f}, max {1e3 * max(ts):.1f})")
        print(f"tree walk: {1e6 * walk / max(meta.tree_pages, 1):.1f} us per tree page; "
              f"{walk / statistics.median(times['liblmdb epoch']):.1f}x a liblmdb epoch")


if __name__ == "__main__":
    main()
