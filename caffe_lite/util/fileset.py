"""Files written as one set (a snapshot's caffemodel, sidecar and solverstate), and the lock
that keeps two runs from writing sets under one prefix.

A set is written in steps: every file goes to a hidden temp file beside its target
(`.NAME.XXXXXX.tmp`, flushed and fsynced); a journal (`.PREFIX_iter_N.journal`, itself written
atomically) lists the (temp, target) pairs; files already at the targets (an old set) are
removed, the one that made it usable first; the temps are renamed onto their targets in order,
the last one being the file that makes the set usable (the solverstate); the journal is
removed.  A crash leaves either the journal's whole set or none of it usable: until the last
rename nothing refers to the new files.  `recover()` -- run by whoever holds the lock, before
writing -- finishes the picture: a journal whose renames all happened is dropped (the set is
whole); otherwise the set is rolled back (the temps and the targets already renamed are
deleted; the list of them is written into the journal first, so an interrupted rollback is
finished by the next one), and stray temp files of the prefix (from a write that never reached its journal)
are removed.

The lock is an advisory `flock` on `PREFIX.lock`, held for a whole run; the kernel releases
it when the process dies, however it dies.  The file is removed on a clean release."""
import contextlib
import errno
import glob
import json
import logging
import os
import tempfile

from ..errors import CaffeLiteError
from .atomic import _umask, atomic_write_text

log = logging.getLogger("caffe_lite")

try:
    import fcntl
except ImportError:  # not POSIX: runs without the lock
    fcntl = None


class LockedError(CaffeLiteError):
    """Another process holds the snapshot lock of a prefix."""


def _fsync_dir(directory):
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _test_pause(point):
    """Tests of crash safety set CAFFE_LITE_TEST_SNAPSHOT_PAUSE=SECONDS to widen the windows
    between the steps of a set write (so a kill lands inside them)."""
    delay = os.environ.get("CAFFE_LITE_TEST_SNAPSHOT_PAUSE")
    if delay:
        import time
        time.sleep(float(delay))


class FileSet:
    """Write several files so that they appear together (see the module docstring).

        with FileSet(journal_path) as fs:
            with fs.open(model, "wb") as f: ...
            with fs.open(state, "wb") as f: ...      # renamed last: commits the set

    Leaving the block normally commits (replacing files at the targets); an exception
    removes the temps."""

    def __init__(self, journal):
        self.journal = os.fspath(journal)
        self.pairs = []

    def __enter__(self):
        return self

    @contextlib.contextmanager
    def open(self, path, mode="wb"):
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                                   dir=directory)
        self.pairs.append((tmp, path))
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        _test_pause("written")

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            for tmp, _ in self.pairs:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            return False
        self.commit()
        return False

    def commit(self):
        directories = {os.path.dirname(os.path.abspath(p)) for pair in self.pairs for p in pair}
        atomic_write_text(self.journal, json.dumps(
            {"pairs": [[os.path.abspath(t), os.path.abspath(p)] for t, p in self.pairs]}))
        for d in directories:
            _fsync_dir(d)
        _test_pause("journal")
        for _, path in reversed(self.pairs):
            # An old set under these names is removed first, its last file (the one that made
            # it usable) before the others: it never mixes with the new one.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        for tmp, path in self.pairs:
            os.replace(tmp, path)
            _test_pause("renamed")
        for d in directories:
            _fsync_dir(d)
        os.unlink(self.journal)
        _fsync_dir(os.path.dirname(os.path.abspath(self.journal)))


def recover(directory, pattern):
    """Finish or roll back the interrupted set writes of the journals matching `pattern`
    (a glob, relative to `directory`) and delete stray temp files `.{pattern}*.tmp`.  Only
    the holder of the lock may call this.  Returns the paths removed."""
    removed = []
    for journal in sorted(glob.glob(os.path.join(glob.escape(directory),
                                                 "." + pattern + ".journal"))):
        try:
            with open(journal, encoding="utf-8") as f:
                entry = json.load(f)
            pairs = [(str(t), str(p)) for t, p in entry["pairs"]]
            victims = entry.get("rollback")
            victims = None if victims is None else [str(v) for v in victims]
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            log.warning("%s: unreadable snapshot journal (%s); removed", journal, exc)
            pairs, victims = [], None
        if victims is None and any(os.path.exists(t) for t, _ in pairs):
            # Interrupted before the last rename: the set never became usable.  Targets whose
            # temp is gone were renamed by that write, so they are its files.  The list is
            # recorded first, so a rollback that is itself interrupted is finished next time.
            victims = [t if os.path.exists(t) else p for t, p in pairs]
            atomic_write_text(journal, json.dumps({"pairs": pairs, "rollback": victims}))
            log.warning("Removing the incomplete snapshot set of an interrupted write (%s)",
                        ", ".join(p for _, p in pairs))
        for victim in victims or ():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(victim)
                removed.append(victim)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(journal)
            removed.append(journal)
    strays = [t for dots in (".", "..")  # `..`: the journal's own temp file
              for t in glob.glob(os.path.join(glob.escape(directory), dots + pattern + ".tmp"))]
    for tmp in strays:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
            removed.append(tmp)
    if removed:
        _fsync_dir(directory)
    return removed


class PrefixLock:
    """An exclusive lock on `path` (e.g. `snapshots/lenet.lock`) for as long as it is held.
    acquire() raises LockedError naming the holder when another process has it."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._fd = None

    @property
    def held(self):
        return self._fd is not None

    def acquire(self):
        if self._fd is not None:
            return self
        if fcntl is None:
            log.warning("no file locking on this platform: nothing stops another run from "
                        "writing snapshots to %s at the same time", self.path)
            return self
        while True:
            try:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                log.warning("cannot create the lock file %s (%s): nothing stops another run "
                            "from writing snapshots under this prefix at the same time",
                            self.path, exc)
                return self
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise LockedError(f"{self.path}: another run ({self._holder()}) is writing "
                                      "snapshots under this snapshot_prefix; wait for it to "
                                      "finish, stop it, or use another snapshot_prefix") \
                        from None
                log.warning("cannot lock %s (%s): nothing stops another run from writing "
                            "snapshots under this prefix at the same time", self.path, exc)
                return self
            # The file may have been removed by the previous holder between our open and
            # flock: then the lock is on a dead inode, so try again.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())
        self._fd = fd
        return self

    def _holder(self):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            with open(self.path, encoding="utf-8") as f:
                text = f.read().strip()
            if text:
                return text
        return "pid unknown"

    def release(self):
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
