"""LMDB databases as Caffe uses them: a directory holding data.mdb (and lock.mdb), keys in
sorted byte order, one serialized Datum per value.

Reading: `open_db(path, where)` checks the path (missing, a file, a LevelDB, empty) and gives
a clear DataError for each; before liblmdb maps data.mdb, lmdb_check reads its header and (up
to VERIFY_PAGES pages) its tree, so a truncated or damaged file is a DataError instead of a
SIGBUS or an abort inside liblmdb.  Every lmdb error met while reading becomes a DataError
naming the database.  Writing: `DBWriter` builds the database in a temporary directory
beside the target and renames it into place when complete, so an interrupted conversion never
leaves a half-written database at OUT_DB, and an existing OUT_DB is never touched."""
import contextlib
import logging
import os
import shutil
import tempfile
import threading

from ..errors import DataError
from ..util.atomic import OutputExistsError
from . import _deps, lmdb_check

log = logging.getLogger("caffe_lite")

COMMIT_EVERY = 1000          # Caffe's tools commit a transaction every 1000 records
_INITIAL_MAP = 64 << 20      # the map grows (doubling) as the database outgrows it
# Databases whose tree (branch + leaf pages) is at most this many pages are walked page by page
# when first opened (about as long as one epoch read through liblmdb when values live in the
# leaves, far less when they are on overflow pages: benchmarks/bench_lmdb_check.py); larger
# ones get the header checks only, and `caffe-lite check-db` walks them on request.
VERIFY_PAGES = 1 << 18


def _looks_like_leveldb(path):
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return "CURRENT" in names or any(n.endswith((".ldb", ".sst")) or n.startswith("MANIFEST-")
                                     for n in names)


def check_backend(backend, source, where):
    """Caffe's DataParameter.DB: LMDB is supported, LEVELDB gives an actionable error."""
    from ..proto import caffe_pb2
    if backend == caffe_pb2.DataParameter.LMDB:
        return
    raise DataError(f"{_pre(where)}source '{source}' uses the LEVELDB backend, which caffe-lite "
                    "does not support; convert it to LMDB (e.g. with Caffe's convert_imageset "
                    "-backend lmdb, or caffe-lite convert-imageset / convert-mnist) and set "
                    "'backend: LMDB' in data_param")


def _pre(where):
    return f"{where}: " if where else ""


def _check_path(path, where):
    if not os.path.exists(path):
        raise DataError(f"{_pre(where)}LMDB source '{path}' does not exist")
    if not os.path.isdir(path):
        raise DataError(f"{_pre(where)}LMDB source '{path}' is a file; an LMDB is a directory "
                        "holding data.mdb")
    if not os.path.exists(os.path.join(path, "data.mdb")):
        if _looks_like_leveldb(path):
            raise DataError(f"{_pre(where)}'{path}' is a LevelDB database, which caffe-lite does "
                            "not support; convert it to LMDB")
        raise DataError(f"{_pre(where)}'{path}' is not an LMDB (no data.mdb in the directory)")


def damaged(path, exc, where=""):
    """The DataError for an lmdb error (or a lmdb_check.Damage) met reading `path`."""
    what = str(exc) if isinstance(exc, lmdb_check.Damage) else f"{type(exc).__name__}: {exc}"
    return DataError(f"{_pre(where)}LMDB '{path}' is damaged: {what}; `caffe-lite check-db "
                     f"{path}` lists what is still readable")


def verify(path, where=""):
    """The checks made before liblmdb maps `path` (see VERIFY_PAGES); DataError if damaged."""
    try:
        meta = lmdb_check.read_meta(path)
        if meta.tree_pages > VERIFY_PAGES:
            log.info("%sLMDB '%s': %d tree pages, more than are walked at open; header checked "
                     "(caffe-lite check-db checks every page)", _pre(where), path,
                     meta.tree_pages)
            return meta
        scan = lmdb_check.scan(path, meta)
    except lmdb_check.Damage as exc:
        raise damaged(path, exc, where) from None
    except OSError as exc:
        raise DataError(f"{_pre(where)}cannot read LMDB '{path}': {exc}") from None
    if scan.problems:
        more = f" and {len(scan.problems) - 1} more" if len(scan.problems) > 1 else ""
        raise damaged(path, lmdb_check.Damage(f"{scan.problems[0]}{more}"), where)
    return meta


_OPEN = {}                   # realpath -> [environment, users]: py-lmdb allows one per process
_OPEN_LOCK = threading.Lock()
_HOLDER = threading.local()
_DEFERRED = []               # closes that arrived while their thread held _OPEN_LOCK


@contextlib.contextmanager
def _registry():
    with _OPEN_LOCK:
        _HOLDER.held = True
        try:
            yield
        finally:
            _HOLDER.held = False
    while _DEFERRED:
        _DEFERRED.pop().close()


class DB:
    """A read-only LMDB shared by every reader in the process (a TRAIN and a TEST net may
    read the same database).  `close()` releases this reader's share."""

    def __init__(self, env, key, entries):
        self.env, self._key, self.entries = env, key, entries
        self._closed = False

    def begin(self, **kw):
        return self.env.begin(**kw)

    def close(self):
        if getattr(_HOLDER, "held", False):
            # A garbage-collection finalizer (a dropped data layer's) run while this thread is
            # inside open_db: taking the lock again would deadlock, and changing the share
            # counts under open_db's feet could close the environment it is about to return.
            _DEFERRED.append(self)
            return
        with _registry():
            if self._closed:
                return
            self._closed = True
            slot = _OPEN.get(self._key)
            if slot is not None:
                slot[1] -= 1
                if slot[1] == 0:
                    del _OPEN[self._key]
                    slot[0].close()


def open_db(path, where=""):
    """Open an LMDB read-only; DataError if it is missing, not an LMDB, unreadable or empty.
    Returns a DB (with .env and .entries)."""
    path = os.fspath(path)
    lmdb = _deps.lmdb(f"{_pre(where)}reading LMDB '{path}'")
    _check_path(path, where)
    key = os.path.realpath(path)
    with _registry():
        slot = _OPEN.get(key)
        try:
            if slot is None:
                verify(path, where)
                env = lmdb.open(path, readonly=True, lock=False, readahead=True, subdir=True,
                                create=False, max_readers=126, meminit=False)
                slot = _OPEN[key] = [env, 0]
            entries = slot[0].stat()["entries"]
        except lmdb.Error as exc:
            if slot is None:
                _OPEN.pop(key, None)
            raise DataError(f"{_pre(where)}cannot open LMDB '{path}': {exc}") from None
        if entries == 0:
            if slot[1] == 0:
                del _OPEN[key]
                slot[0].close()
            raise DataError(f"{_pre(where)}LMDB '{path}' is empty (0 records)")
        slot[1] += 1
        return DB(slot[0], key, entries)


def key_text(key):
    """A record's key for messages: UTF-8 text, other bytes and control characters escaped."""
    text = bytes(key).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Cursor:
    """Sequential reading that wraps to the first record at the end, as Caffe's DataLayer
    does ("Restarting data prefetching from start").  Used from one thread only."""

    def __init__(self, db, path):
        self.path = path
        self._lmdb_error = _deps.lmdb().Error
        try:
            self._txn = db.begin(buffers=False)
            self._cur = self._txn.cursor()
            found = self._cur.first()
        except self._lmdb_error as exc:
            raise damaged(path, exc) from None
        self.epochs = 0
        if not found:
            raise DataError(f"LMDB '{path}' is empty (0 records)")

    def skip(self, n):
        for _ in range(n):
            self.advance()

    def advance(self):
        try:
            if not self._cur.next():
                self._cur.first()
                self.epochs += 1
                log.debug("%s: restarting data prefetching from start", self.path)
        except self._lmdb_error as exc:
            raise damaged(self.path, exc) from None

    def read(self):
        """(key, value) of the current record; then move to the next one."""
        try:
            item = self._cur.item()
        except self._lmdb_error as exc:
            raise damaged(self.path, exc) from None
        self.advance()
        return item

    def close(self):
        with contextlib.suppress(Exception):
            self._txn.abort()


def first_record(db, path):
    try:
        with db.begin(buffers=False) as txn:
            cur = txn.cursor()
            if not cur.first():
                raise DataError(f"LMDB '{path}' is empty (0 records)")
            return cur.item()
    except _deps.lmdb().Error as exc:
        raise damaged(path, exc) from None


def iterate(db, path):
    """Every (key, value) once, in key order."""
    try:
        with db.begin(buffers=False) as txn:
            yield from txn.cursor()
    except _deps.lmdb().Error as exc:
        raise damaged(path, exc) from None


class DBWriter:
    """Write a new LMDB at `path`, atomically: records go to a temporary directory beside it
    that is renamed to `path` by `close()`.  `path` must not exist (OutputExistsError)."""

    def __init__(self, path, backend="lmdb"):
        path = os.fspath(path).rstrip("/") or "/"
        if backend.lower() != "lmdb":
            raise DataError(f"{path}: backend '{backend}' is not supported; caffe-lite writes "
                            "LMDB only (-backend lmdb)")
        self._lmdb = _deps.lmdb(f"writing LMDB '{path}'")
        if os.path.lexists(path):
            raise OutputExistsError(f"{path} already exists; refusing to overwrite it "
                                    "(remove it or choose another output name)")
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                     dir=parent)
        self._map_size = _INITIAL_MAP
        self._env = self._lmdb.open(self._tmp, map_size=self._map_size, subdir=True,
                                    meminit=False, sync=False, metasync=False)
        self._pending = []
        self.count = 0

    def put(self, key, value):
        if isinstance(key, str):
            key = key.encode("utf-8")
        self._pending.append((key, value))
        self.count += 1
        if len(self._pending) >= COMMIT_EVERY:
            self.commit()

    def commit(self):
        if not self._pending:
            return
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for k, v in self._pending:
                        txn.put(k, v)
                break
            except self._lmdb.MapFullError:
                self._map_size *= 2
                self._env.set_mapsize(self._map_size)
            except self._lmdb.Error as exc:  # a full disk, a key too long, ...
                self.abort()
                raise DataError(f"writing LMDB '{self.path}': {type(exc).__name__}: {exc}") \
                    from None
        self._pending = []

    def close(self):
        """Commit what is left and move the finished database to `path`."""
        self.commit()
        self._env.sync(True)
        self._env.close()
        self._env = None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._tmp, 0o777 & ~umask)
        if os.path.lexists(self.path):
            self.abort()
            raise OutputExistsError(f"{self.path} appeared while writing; not overwritten")
        os.rename(self._tmp, self.path)
        self._tmp = None

    def abort(self):
        if self._env is not None:
            with contextlib.suppress(Exception):
                self._env.close()
            self._env = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False
