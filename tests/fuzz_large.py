"""The large fuzz run: many seeded mutations of every format, counted (docs/robustness.md).

    python tests/fuzz_large.py [--count 2000] [--seed 1] [--jobs 2] [--formats net,lmdb,...]

Prints, per format, the inputs tried and how each ended (ok, typed error, traceback, crash),
then every traceback and crash with the command that reruns it."""
import argparse
import os
import platform
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fuzzing  # noqa: E402

FORMATS = ["net", "solver", "caffemodel", "binaryproto", "solverstate", "masks", "lmdb",
           "hdf5", "imagelist"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=2000, help="cases per format")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2, help="worker processes at a time")
    p.add_argument("--formats", default=",".join(FORMATS))
    args = p.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    t0 = time.time()
    results = fuzzing.run(formats, args.count, seed=args.seed, jobs=args.jobs)
    wall = time.time() - t0
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"{'format':<12} {'inputs':>7} {'ok':>6} {'typed':>6} {'traceback':>9} {'crash':>6}")
    total = dict.fromkeys(("inputs", "ok", "typed", "traceback", "crash"), 0)
    for f in formats:
        c, _ = results[f]
        row = {"inputs": sum(c.values()), **{k: c[k] for k in fuzzing.CLASSES}}
        for k in total:
            total[k] += row[k]
        print(f"{f:<12} {row['inputs']:>7} {row['ok']:>6} {row['typed']:>6} "
              f"{row['traceback']:>9} {row['crash']:>6}")
    print(f"{'total':<12} {total['inputs']:>7} {total['ok']:>6} {total['typed']:>6} "
          f"{total['traceback']:>9} {total['crash']:>6}")
    print(f"seed {args.seed}; {wall:.0f} s wall, {cpu.ru_utime + cpu.ru_stime:.0f} s CPU in "
          f"the workers, {args.jobs} jobs, {os.cpu_count()} CPUs; Python "
          f"{platform.python_version()}")
    # failures grouped by format, class and where they ended (the exception and its line)
    groups = {}
    for f in formats:
        for i, cls, detail, desc in results[f][1]:
            key = (f, cls, detail.split(":")[0] if cls == "traceback" else detail[:60])
            groups.setdefault(key, []).append(i)
    for (f, cls, where), cases in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        print(f"{len(cases):5d} x {f} {cls}: {where}  (e.g. python tests/fuzzing.py one {f} "
              f"{args.seed} {cases[0]})")
    return 1 if total["traceback"] or total["crash"] else 0


if __name__ == "__main__":
    sys.exit(main())
