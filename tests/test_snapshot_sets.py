"""Snapshot sets on disk are always whole: a crash at any step of a write leaves the previous
sets loadable and the new one whole or (after the next start) absent; nothing is left behind;
a resume never needs -overwrite because of an interrupted write; two runs on one prefix are
refused by a lock held for the whole run.  The kill -9 loop kills real training processes,
many of them inside snapshot writes (slowed down by a test-only pause)."""
import glob
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from caffe_lite.cli import main
from caffe_lite.errors import CaffeLiteError
from caffe_lite.io.caffemodel import load_weights
from caffe_lite.io.masks import read_masks
from caffe_lite.proto import caffe_pb2
from caffe_lite.solvers import get_solver, state as snapshot_state
from caffe_lite.util import fileset
from caffe_lite.util.fileset import LockedError

from pruning_nets import mlp_solver, restore_logging  # noqa: F401

pytestmark = pytest.mark.usefixtures("restore_logging")
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def keep_signal_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def solverstates(prefix):
    return sorted(glob.glob(glob.escape(str(prefix)) + "_iter_*.solverstate"),
                  key=lambda p: int(p.rsplit("_iter_", 1)[1].split(".")[0]))


def check_whole(prefix):
    """Every solverstate under `prefix` has its caffemodel and sidecar, and they belong
    together (the sidecar's fingerprint matches the weights).  Returns the iterations."""
    its = []
    for state in solverstates(prefix):
        s = caffe_pb2.SolverState.FromString(pathlib.Path(state).read_bytes())
        model = state[: -len(".solverstate")] + ".caffemodel"
        assert s.learned_net == model and len(s.history) == 4, state
        assert read_masks(model, load_weights(model)) is not None, f"{model}: sidecar mismatch"
        its.append(s.iter)
    return its


def leftovers(directory):
    names = os.listdir(directory)
    return [n for n in names if n.endswith((".tmp", ".journal", ".lock"))]


def orphans(prefix):
    """Files of a set without its solverstate."""
    states = {p[: -len(".solverstate")] for p in solverstates(prefix)}
    return [p for p in glob.glob(glob.escape(str(prefix)) + "_iter_*")
            if not p.endswith(".tmp") and p.rsplit(".", 1)[0] not in states]


# --- a crash at each step of a set write (in this process) -------------------------------------
class Crash(BaseException):
    """Stands for the process dying: nothing after it runs, no cleanup."""


def _exit_without_cleanup(self, exc_type, exc, tb):
    if exc_type is None:
        self.commit()  # (where a Crash may strike)
    return False


POINTS = ["written"] * 3 + ["journal"] + ["renamed"] * 3


@pytest.mark.parametrize("crash_at", range(len(POINTS)))
def test_a_crash_at_any_step_leaves_whole_sets(tmp_path, monkeypatch, crash_at):
    solver_file = mlp_solver(tmp_path, max_iter=6, snapshot=1)
    prefix = tmp_path / "snap" / "mlp"
    s = get_solver(str(solver_file))
    s.step(2)
    calls = []

    def pause(point):
        calls.append(point)
        if len(calls) == crash_at + 1:
            raise Crash
    monkeypatch.setattr(fileset, "_test_pause", pause)
    monkeypatch.setattr(fileset.FileSet, "__exit__", _exit_without_cleanup)
    with pytest.raises(Crash):
        s.step(1)  # its snapshot at iteration 3 dies at step `crash_at`
    assert calls == POINTS[:crash_at + 1]
    # at this instant every solverstate on disk has its whole set; the new one once its
    # solverstate (the last rename) is in place
    whole = [1, 2, 3] if crash_at == len(POINTS) - 1 else [1, 2]
    assert check_whole(prefix) == whole
    assert leftovers(tmp_path / "snap") != []  # the journal or temp files
    if crash_at in (4, 5):
        assert orphans(prefix) != []  # renamed files of the unfinished set
    monkeypatch.undo()
    # the next start (it takes the lock) clears what the write left
    with get_solver(str(solver_file)).snapshot_lock():
        pass
    assert leftovers(tmp_path / "snap") == []
    assert orphans(prefix) == []
    assert check_whole(prefix) == whole
    # and a resume from the last whole set starts without -overwrite
    assert main(["train", "-solver", str(solver_file), "-snapshot",
                 solverstates(prefix)[-1]]) == 0
    assert check_whole(prefix) == [1, 2, 3, 4, 5, 6]
    assert leftovers(tmp_path / "snap") == [] and orphans(prefix) == []


def test_recover_finishes_a_set_whose_renames_all_happened(tmp_path):
    """A journal left after the last rename: the set is whole and is kept."""
    journal = tmp_path / ".x_iter_1.journal"
    fs = fileset.FileSet(journal)
    with fs.open(tmp_path / "x_iter_1.a") as f:
        f.write(b"a")
    with fs.open(tmp_path / "x_iter_1.b") as f:
        f.write(b"b")
    fileset.atomic_write_text(journal, '{"pairs": %s}' % str(
        [list(p) for p in fs.pairs]).replace("'", '"'))
    for tmp, path in fs.pairs:
        os.replace(tmp, path)
    (tmp_path / ".x_iter_2.caffemodel.abc.tmp").write_bytes(b"stray")
    (tmp_path / "..x_iter_3.journal.abc.tmp").write_bytes(b"stray journal")
    (tmp_path / ".other_iter_2.caffemodel.abc.tmp").write_bytes(b"not ours")
    removed = fileset.recover(str(tmp_path), "x_iter_*")
    assert sorted(os.listdir(tmp_path)) == [".other_iter_2.caffemodel.abc.tmp", "x_iter_1.a",
                                            "x_iter_1.b"]
    assert len(removed) == 3


def test_an_interrupted_rollback_is_finished_by_the_next_start(tmp_path, monkeypatch):
    solver_file = mlp_solver(tmp_path, max_iter=6, snapshot=1)
    prefix = tmp_path / "snap" / "mlp"
    s = get_solver(str(solver_file))
    s.step(1)
    calls = []

    def pause(point):
        calls.append(point)
        if len(calls) == 6:  # after the caffemodel and the sidecar are renamed
            raise Crash
    monkeypatch.setattr(fileset, "_test_pause", pause)
    monkeypatch.setattr(fileset.FileSet, "__exit__", _exit_without_cleanup)
    with pytest.raises(Crash):
        s.step(1)
    monkeypatch.undo()
    assert len(orphans(prefix)) == 2
    unlink, deleted = os.unlink, []

    def dying_unlink(path):
        if len(deleted) == 1:
            raise Crash  # the start doing the rollback dies after its first deletion
        deleted.append(path)
        unlink(path)
    monkeypatch.setattr(fileset.os, "unlink", dying_unlink)
    with pytest.raises(Crash):
        snapshot_state.recover(str(prefix))
    monkeypatch.undo()
    journal = tmp_path / "snap" / ".mlp_iter_2.journal"
    assert '"rollback"' in journal.read_text()
    assert orphans(prefix) != [] or leftovers(tmp_path / "snap") != []
    snapshot_state.recover(str(prefix))
    assert leftovers(tmp_path / "snap") == [] and orphans(prefix) == []
    assert check_whole(prefix) == [1]


def test_an_existing_set_is_replaced_safely(tmp_path, monkeypatch):
    """Rewriting the set of an iteration (-overwrite): the old solverstate goes first, so a
    crash never pairs the old solverstate with new weights."""
    solver_file = mlp_solver(tmp_path, max_iter=6)
    prefix = tmp_path / "snap" / "mlp"
    s = get_solver(str(solver_file))
    s.step(2)
    s.snapshot()
    old = (tmp_path / "snap" / "mlp_iter_2.caffemodel").read_bytes()
    s.net.params["ip1"][0].data[...] += 1
    calls = []

    def pause(point):
        calls.append(point)
        if point == "renamed":
            raise Crash
    monkeypatch.setattr(fileset, "_test_pause", pause)
    monkeypatch.setattr(fileset.FileSet, "__exit__", _exit_without_cleanup)
    with pytest.raises(Crash):
        s.snapshot()
    assert (tmp_path / "snap" / "mlp_iter_2.caffemodel").read_bytes() != old
    assert check_whole(prefix) == []  # the new caffemodel is in place, no solverstate refers
    monkeypatch.undo()
    with get_solver(str(solver_file)).snapshot_lock():
        pass
    assert leftovers(tmp_path / "snap") == [] and orphans(prefix) == []


# --- the lock ------------------------------------------------------------------------------------
def test_the_lock_is_held_for_the_whole_run(tmp_path, keep_signal_handlers, capsys):
    solver_file = mlp_solver(tmp_path, max_iter=8, snapshot=4)
    prefix = str(tmp_path / "snap" / "mlp")
    seen = []

    class Probe:
        def on_start(self, solver):
            if solver.iter in (1, 6):  # between snapshots
                assert os.path.exists(prefix + ".lock")
                with pytest.raises(LockedError, match=r"another run \(pid \d+\) is writing "
                                                      "snapshots under this snapshot_prefix"):
                    snapshot_state.snapshot_lock(prefix).acquire()
                assert main(["train", "-solver", str(solver_file), "-overwrite"]) == 1
                other = get_solver(str(solver_file))
                with pytest.raises(LockedError):
                    other.solve()
                with pytest.raises(LockedError):
                    other.snapshot()
                seen.append(solver.iter)
    s = get_solver(str(solver_file))
    s.callbacks.append(Probe())
    s.solve()
    assert seen == [1, 6]
    assert "snap/mlp.lock: another run (pid" in capsys.readouterr().err
    assert not os.path.exists(prefix + ".lock")  # released (and removed) at the end
    assert check_whole(prefix) == [4, 8]


def _train_process(solver_file, env_extra=None, args=()):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    env.update(env_extra or {})
    log = open(str(solver_file) + f".{time.monotonic_ns()}.log", "w+")
    p = subprocess.Popen([sys.executable, "-m", "caffe_lite", "train", "-solver",
                          str(solver_file), *args], stdout=log, stderr=subprocess.STDOUT,
                         env=env)
    p.log = log
    return p


def _log(p):
    p.log.seek(0)
    return p.log.read()


def test_two_runs_started_together_one_is_refused(tmp_path):
    solver_file = mlp_solver(tmp_path, max_iter=12, snapshot=1)
    prefix = tmp_path / "snap" / "mlp"
    slow = {"CAFFE_LITE_TEST_SNAPSHOT_PAUSE": "0.02"}
    procs = [_train_process(solver_file, slow) for _ in range(2)]
    codes = sorted(p.wait(timeout=300) for p in procs)
    assert codes == [0, 1], [_log(p)[-2000:] for p in procs]
    refused = next(_log(p) for p in procs if p.returncode == 1)
    assert "is writing snapshots under this snapshot_prefix" in refused
    assert "Traceback" not in refused
    assert "is writing snapshots" in refused.strip().splitlines()[-1]
    assert check_whole(prefix) == list(range(1, 13))
    assert leftovers(tmp_path / "snap") == [] and orphans(prefix) == []


# --- kill -9 ---------------------------------------------------------------------------------------
def kill_loop(tmp_path, kills, seed, max_iter):
    solver_file = mlp_solver(tmp_path / "run", max_iter=max_iter, snapshot=1)
    prefix = tmp_path / "run" / "snap" / "mlp"
    snap = prefix.parent
    rnd = random.Random(seed)
    slow = {"CAFFE_LITE_TEST_SNAPSHOT_PAUSE": "0.01"}
    fast = {"CAFFE_LITE_TEST_SNAPSHOT_PAUSE": "0.002"}
    inside = 0
    def pending():
        """Journals and temp files, each with what tells it from a later file of that name
        (temps have random names; a journal lists its random temp names)."""
        out = set()
        for n in os.listdir(snap) if snap.exists() else ():
            if n.endswith(".tmp"):
                out.add((n, ""))
            elif n.endswith(".journal"):
                try:
                    out.add((n, (snap / n).read_text()))
                except FileNotFoundError:
                    pass
        return out
    for k in range(kills):
        states = solverstates(prefix)
        before, left = check_whole(prefix), pending()  # (left: by the run killed last)
        # every other run writes slowly (kills land inside writes), the others faster; none at
        # full speed, so that no run reaches max_iter before its kill however idle the machine
        p = _train_process(solver_file, slow if k % 2 == 0 else fast,
                           ["-snapshot", states[-1]] if states else [])
        # wait until this run writes (or has written) a set of its own, then kill it soon
        deadline = time.monotonic() + 60
        while p.poll() is None and time.monotonic() < deadline:
            if any(not n.startswith("..") for n, _ in pending() - left if n.endswith(".tmp")) \
                    or len(solverstates(prefix)) != len(before):
                break  # (its own temp files, not those of a journal rewritten by recovery)
            time.sleep(0.002)
        time.sleep(rnd.uniform(0, 0.1 if k % 2 == 0 else 0.3))
        assert p.poll() is None, ("the run ended before its kill: raise max_iter",
                                  _log(p)[-3000:])
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert "Traceback" not in _log(p) and "refusing" not in _log(p), _log(p)[-3000:]
        assert not left & pending()  # what the last kill left was cleared by this start
        inside += bool(pending())
        its = check_whole(prefix)
        assert its[:len(before)] == before  # earlier sets untouched
        assert its == list(range(1, len(its) + 1))
    # finish the run without a pause and without a kill
    states = solverstates(prefix)
    p = _train_process(solver_file, {}, ["-snapshot", states[-1]] if states else [])
    assert p.wait(timeout=600) == 0, _log(p)[-3000:]
    assert check_whole(prefix) == list(range(1, max_iter + 1))
    assert leftovers(snap) == [] and orphans(prefix) == []
    # and the weights are the uninterrupted run's, bit for bit
    ref = mlp_solver(tmp_path / "ref", max_iter=max_iter, snapshot=max_iter)
    assert main(["train", "-solver", str(ref)]) == 0
    assert (snap / f"mlp_iter_{max_iter}.caffemodel").read_bytes() == \
        (tmp_path / "ref" / "snap" / f"mlp_iter_{max_iter}.caffemodel").read_bytes()
    return inside


def test_kill_9_loop(tmp_path, keep_signal_handlers):
    inside = kill_loop(tmp_path, kills=20, seed=1, max_iter=400)
    assert inside >= 6  # many kills landed inside a snapshot write


@pytest.mark.slow
def test_kill_9_loop_long(tmp_path, keep_signal_handlers):
    inside = kill_loop(tmp_path, kills=200, seed=2, max_iter=4000)
    assert inside >= 80


def test_a_caffemodel_given_to_snapshot_says_what_it_is(tmp_path, keep_signal_handlers, capsys):
    solver_file = mlp_solver(tmp_path, max_iter=4, snapshot=2)
    assert main(["train", "-solver", str(solver_file)]) == 0
    model = tmp_path / "snap" / "mlp_iter_2.caffemodel"
    capsys.readouterr()
    assert main(["train", "-solver", str(solver_file), "-snapshot", str(model),
                 "-overwrite"]) == 1
    err = capsys.readouterr().err
    assert "not a solverstate (it is a caffemodel: trained weights" in err
    assert "give the caffemodel to -weights" in err and "Traceback" not in err
    for wrong, what in ((tmp_path / "snap" / "mlp_iter_2.masks", "it is a caffe-lite .masks"),
                        (solver_file, "it looks like a text file")):
        with pytest.raises(CaffeLiteError, match=f"not a solverstate \\({what}"):
            get_solver(str(solver_file)).restore(str(wrong))
    np.testing.assert_equal(check_whole(tmp_path / "snap" / "mlp"), [2, 4])
