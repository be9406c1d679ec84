"""The default suite's fuzz run (tests/fuzzing.py): 200 seeded mutations of every format
caffe-lite reads, each loaded and used as a user would, in worker processes: only typed
errors, no traceback, no crash.  The harness itself is checked on cases that misbehave on
purpose.  tests/fuzz_large.py runs many more (docs/robustness.md)."""
import pytest

import fuzzing

COUNT = 200
SEED = 20261204
FORMATS = ["net", "solver", "caffemodel", "binaryproto", "solverstate", "masks", "lmdb",
           "hdf5", "imagelist"]


@pytest.fixture(scope="module")
def results():
    return fuzzing.run(FORMATS, COUNT, seed=SEED, jobs=2)


@pytest.mark.parametrize("fmt", FORMATS)
def test_only_typed_errors(results, fmt):
    counts, failures = results[fmt]
    assert sum(counts.values()) == COUNT
    assert counts["typed"] >= COUNT // 4   # the mutations do reach the checks
    assert not failures, "\n".join(
        f"case {i}: {cls}: {detail}  (rerun: python tests/fuzzing.py one {fmt} {SEED} {i})"
        for i, cls, detail, _ in failures[:10])


def test_the_harness_attributes_every_outcome_to_its_case():
    """Typed errors, tracebacks, aborts, segfaults and hangs, each found at its case; after a
    case that kills the worker, the next case runs in a new one."""
    counts, failures = fuzzing.run_plan([("selftest", 6)], seed=0, timeout=2)["selftest"]
    assert dict(counts) == {"typed": 1, "traceback": 1, "crash": 3, "ok": 1}
    got = {i: (cls, detail.split(" ")[:3]) for i, cls, detail, _ in failures}
    assert got[1][1][2].startswith("tests/fuzzing.py:")   # where the traceback ended
    got[1][1][2] = "..."
    assert got == {1: ("traceback", ["ValueError", "at", "..."]),
                   2: ("crash", ["killed", "by", "SIGABRT"]),
                   3: ("crash", ["killed", "by", "SIGSEGV"]),
                   5: ("crash", ["no", "result", "after"])}
