"""Batch sources behind the data layers: an LMDB of Datums, an image list file, HDF5 files.

A source's `next_batch()` returns (data, labels) as float32 arrays, transformed; the LMDB and
image-list sources run it in a prefetch thread.  Each source owns a generator derived from the
global one at setup (only when it needs randomness), and draws from it in a fixed order.

`shard=(rank, count)`: the source is one of `count` processes reading one common stream of
records (data-parallel training, caffe_lite.parallel); each batch of `batch_size` spans
batch_size * count records of that stream, of which this process takes those at offsets
rank, rank + count, ... (as Caffe's multi-GPU DataLayer keeps offset % solver_count ==
solver_rank).  The read position is the common stream's, the same in every process."""
import concurrent.futures
import logging
import os
import queue

import numpy as np

from ..errors import DataError
from ..io.datum import parse_datum
from . import _deps
from .images import hwc_to_chw, read_image
from .lmdb_io import Cursor, first_record, key_text, open_db
from .position import ReadPosition, draw_seed, permutation, state_int

log = logging.getLogger("caffe_lite")


def _decode_workers():
    return max(1, min(4, (os.cpu_count() or 1)))


class _Pool:
    """Decodes the images of a batch in parallel (Pillow releases the GIL while decoding);
    results keep their order, so nothing depends on timing."""

    def __init__(self, workers):
        self.workers = workers
        self._pool = None

    def map(self, fn, items):
        if self.workers <= 1 or len(items) < 4:
            return [fn(x) for x in items]
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.workers,
                                                               "caffe-lite decode")
        return list(self._pool.map(fn, items))

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class _Buffers:
    """Reused batch memory: the stacking buffer (used inside the loading thread only) and the
    transformed outputs, which the layer hands back with `recycle` once it has copied them
    (Caffe's free / full prefetch queues).  Fresh multi-megabyte arrays for every batch
    would cost page faults worth a good part of the transform."""

    def __init__(self):
        self._stack = None
        self._free = queue.SimpleQueue()

    def stack(self, arrays, names, where):
        """Stack same-shaped C x H x W arrays into a batch; name the first one that differs."""
        shape = arrays[0].shape
        for a, name in zip(arrays, names):
            if a.shape != shape:
                raise DataError(f"{where}: {name} has shape {'x'.join(map(str, a.shape))} but "
                                f"the batch's first item has {'x'.join(map(str, shape))}; "
                                "items of one batch must share a shape (resize them, set "
                                "crop_size, or force_color / force_gray for encoded images)")
        dtype = np.result_type(*{a.dtype for a in arrays})
        full = (len(arrays),) + shape
        buf = self._stack
        if buf is None or buf.shape != full or buf.dtype != dtype:
            buf = self._stack = np.empty(full, dtype)
        for i, a in enumerate(arrays):  # one copy per item, from whatever strides it has
            buf[i] = a
        return buf

    def output(self):
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return None

    def recycle(self, array):
        self._free.put(array)


class _Positioned:
    """A source whose read position (`self.position`, a ReadPosition) is its resumable state."""

    def state_dict(self):
        return self.position.state_dict()

    def check_state(self, state):
        return self.position.check_state(state)

    def load_state_dict(self, state):
        self.position.load_state_dict(state)


class DatumDBSource(_Positioned):
    """Caffe's DataLayer reading: records in key order, wrapping at the end of the database."""

    def __init__(self, path, batch_size, transformer, where, rand_skip=0, rng=None,
                 shard=(0, 1)):
        self.path = os.fspath(path)
        self.batch_size = int(batch_size)
        self.shard = shard
        self.transformer = transformer
        self.where = where
        self.db = open_db(self.path, where)
        self.entries = self.db.entries
        try:
            key, value = first_record(self.db, self.path)
            first = transformer.decode(parse_datum(value, self._at(key)), self._at(key))
            self.item_shape = transformer.output_shape(first.shape)
        except BaseException:
            self.db.close()
            raise
        # Caffe: skip = rand() % rand_skip records at the start.
        self.skip = int(rng.integers(0, rand_skip)) if rand_skip else 0
        if self.skip:
            log.info("%s: skipping first %d data points", where, self.skip)
        self.position = ReadPosition(self.entries, index=self.skip % self.entries)
        self._cursor = None
        self._pool = _Pool(_decode_workers())
        self.buffers = _Buffers()

    def _at(self, key):
        return f"{self.where}: LMDB '{self.path}' key '{key_text(key)}'"

    @property
    def top_shape(self):
        return (self.batch_size,) + self.item_shape

    def _decode(self, item):
        datum, where = item
        return self.transformer.decode(datum, where)

    def next_batch(self):
        if self._cursor is None:  # opened in the thread that reads
            self._cursor = Cursor(self.db, self.path)
            self._cursor.skip(self.position.index)
        rank, count = self.shard
        items, labels = [], np.empty(self.batch_size, np.float32)
        for i in range(self.batch_size * count):
            key, value = self._cursor.read()
            self.position.advance()
            if i % count != rank:
                continue  # another process's record
            where = self._at(key)
            datum = parse_datum(value, where)
            labels[len(items)] = datum.label
            items.append((datum, where))
        if any(d.encoded for d, _ in items):
            arrays = self._pool.map(self._decode, items)
        else:
            arrays = [self._decode(it) for it in items]
        batch = self.buffers.stack(arrays, [w.split(": ", 1)[-1] for _, w in items], self.where)
        return self.transformer.transform(batch, self.buffers.output()), labels

    def load_state_dict(self, state):
        """Continue at a saved position (the reading thread must be stopped)."""
        super().load_state_dict(state)
        if self._cursor is not None:  # reopened, and moved there, by the next read
            self._cursor.close()
            self._cursor = None

    def close(self):
        self._pool.close()
        if self._cursor is not None:
            self._cursor.close()
        self.db.close()


def _join_root(root, name):
    """Caffe concatenates root_folder and the file name as strings; a root that is a directory
    without a trailing separator is joined with one, so both spellings work."""
    path = root + name
    if root and not os.path.exists(path) and os.path.isdir(root) and \
            not root.endswith(os.sep):
        return os.path.join(root, name)
    return path


def read_list_file(path, where):
    """[(file name, label)] from a list file of lines 'name label' (the label after the last
    space, as Caffe parses it).  Blank lines are ignored; a label that is not an integer is an
    error naming the file and line."""
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise DataError(f"{where}: list file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: cannot read list file '{path}' ({exc})") from None
    lines = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.rstrip()
        if not line.strip():
            continue
        name, sep, label = line.rpartition(" ")
        if not sep or not name.strip():
            raise DataError(f"{path}:{lineno}: expected '<image file> <integer label>', got "
                            f"{line!r}")
        try:
            value = int(label)
        except ValueError:
            raise DataError(f"{path}:{lineno}: label {label!r} of '{name}' is not an "
                            "integer") from None
        if not -2**31 <= value < 2**31:
            raise DataError(f"{path}:{lineno}: label {value} does not fit an int32")
        lines.append((name, value))
    if not lines:
        raise DataError(f"{where}: list file '{path}' is empty")
    return lines


class ImageListSource(_Positioned):
    """Caffe's ImageDataLayer reading: images named in a list file, optionally shuffled at
    setup and at every epoch, resized to new_height x new_width when both are given."""

    def __init__(self, list_path, batch_size, transformer, where, root_folder="",
                 new_height=0, new_width=0, is_color=True, shuffle=False, rand_skip=0,
                 rng=None, shard=(0, 1)):
        if (new_height > 0) != (new_width > 0):
            raise DataError(f"{where}: new_height and new_width must be set together (got "
                            f"new_height {new_height}, new_width {new_width})")
        self.list_path = os.fspath(list_path)
        self.batch_size = int(batch_size)
        self.shard = shard
        self.transformer = transformer
        self.where = where
        self.root = root_folder
        self.new_size = (int(new_height), int(new_width))
        self.mode = "color" if is_color else "gray"
        self.shuffle = shuffle
        self.rng = rng
        self.lines = read_list_file(self.list_path, where)
        skip = 0
        seed = draw_seed(rng) if shuffle else None
        if rand_skip:
            skip = int(rng.integers(0, rand_skip))
            if skip >= len(self.lines):
                raise DataError(f"{where}: rand_skip drew {skip} but '{self.list_path}' has only "
                                f"{len(self.lines)} images (not enough points to skip)")
        self.position = ReadPosition(len(self.lines), seed, index=skip)
        first = self._read(self.lines[self.position.record()][0])
        self.item_shape = transformer.output_shape(first.shape)
        self._pool = _Pool(_decode_workers())
        self.buffers = _Buffers()

    def _read(self, name):
        return hwc_to_chw(read_image(_join_root(self.root, name), self.mode, *self.new_size))

    @property
    def top_shape(self):
        return (self.batch_size,) + self.item_shape

    def next_batch(self):
        names, labels = [], np.empty(self.batch_size, np.float32)
        rank, count = self.shard
        for i, k in enumerate(self.position.take(self.batch_size * count)[rank::count]):
            name, labels[i] = self.lines[k]
            names.append(name)
        arrays = self._pool.map(self._read, names)
        batch = self.buffers.stack(arrays, [_join_root(self.root, n) for n in names], self.where)
        return self.transformer.transform(batch, self.buffers.output()), labels

    def close(self):
        self._pool.close()


class HDF5Source:
    """Caffe's HDF5DataLayer reading: each file in the source list is loaded whole; datasets
    are named by the layer's tops; rows (and, with shuffle, files and rows) are permuted."""

    def __init__(self, list_path, top_names, batch_size, where, shuffle=False, rng=None,
                 shard=(0, 1)):
        self.list_path = os.fspath(list_path)
        self.names = list(top_names)
        self.batch_size = int(batch_size)
        self.shard = shard
        self.where = where
        self.shuffle = shuffle
        self.rng = rng
        try:
            with open(self.list_path, "r", encoding="utf-8") as f:
                tokens = f.read().split()
        except FileNotFoundError:
            raise DataError(f"{where}: HDF5 source list '{self.list_path}' does not exist") \
                from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{where}: cannot read HDF5 source list '{self.list_path}' "
                            f"({exc})") from None
        if not tokens:
            raise DataError(f"{where}: must have at least 1 HDF5 filename listed in "
                            f"'{self.list_path}'")
        base = os.path.dirname(self.list_path)
        # Caffe opens the listed names as given (relative to the working directory); a name
        # missing there is also looked for beside the list file.
        self.files = [t if os.path.exists(t) or os.path.isabs(t) or
                      not os.path.exists(os.path.join(base, t)) else os.path.join(base, t)
                      for t in tokens]
        # Files are read in the order of a ReadPosition over them; with shuffle, each file's
        # rows are permuted anew whenever it is loaded (seeded by epoch and file position).
        self.position = ReadPosition(len(self.files), draw_seed(rng) if shuffle else None)
        self._loaded = None
        self._load_current()
        self.row = 0

    def _load_current(self):
        """Load the file at the position (unless it is loaded) and set its row order."""
        pos = self.position
        path = self.files[pos.record()]
        if self._loaded != path:
            self._load(path)
            self._loaded = path
        rows = self.arrays[0].shape[0]
        self.perm = (permutation(pos.seed, rows, 1, pos.epoch, pos.index) if pos.shuffled
                     else np.arange(rows))

    def _load(self, path):
        h5py = _deps.h5py(f"{self.where}: reading '{path}'")
        arrays = []
        try:
            with h5py.File(path, "r") as f:
                for name in self.names:
                    if name not in f or not isinstance(f[name], h5py.Dataset):
                        raise DataError(f"{self.where}: HDF5 file '{path}' has no dataset "
                                        f"'{name}' (top names are read as dataset names; the "
                                        f"file has: {', '.join(sorted(f.keys())) or 'nothing'})")
                    ds = f[name]
                    if ds.dtype.kind not in "fiub":
                        raise DataError(f"{self.where}: HDF5 dataset '{name}' in '{path}' has "
                                        f"unsupported type {ds.dtype}; expected float or "
                                        "integer data")
                    if ds.ndim < 1:
                        raise DataError(f"{self.where}: HDF5 dataset '{name}' in '{path}' is "
                                        "a scalar; expected N x ... rows")
                    arrays.append(np.asarray(ds, dtype=np.float32))
        except DataError:
            raise
        except (OSError, KeyError, RuntimeError, ValueError, TypeError) as exc:
            # h5py's messages for damaged files span lines: keep the first
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"{self.where}: cannot read HDF5 file '{path}' ({detail})") \
                from None
        rows = arrays[0].shape[0]
        for name, a in zip(self.names, arrays):
            if a.shape[0] != rows:
                raise DataError(f"{self.where}: HDF5 file '{path}': dataset '{name}' has "
                                f"{a.shape[0]} rows but '{self.names[0]}' has {rows}")
        if rows == 0:
            raise DataError(f"{self.where}: HDF5 file '{path}' holds 0 rows")
        if hasattr(self, "arrays"):
            for name, old, new in zip(self.names, self.arrays, arrays):
                if old.shape[1:] != new.shape[1:]:
                    raise DataError(f"{self.where}: dataset '{name}' in '{path}' has rows of "
                                    f"shape {new.shape[1:]} but earlier files had "
                                    f"{old.shape[1:]}")
        self.arrays = arrays
        self.path = path

    @property
    def top_shapes(self):
        return [(self.batch_size,) + a.shape[1:] for a in self.arrays]

    def _advance(self):
        """End of the current file: Caffe's HDF5DataLayer::Next (the next file, or the same
        one reshuffled)."""
        self.position.advance()
        self._load_current()
        self.row = 0

    def next_batch(self):
        rank, count = self.shard
        outs = [np.empty(s, np.float32) for s in self.top_shapes]
        filled = offset = 0  # rows written; rows of the common stream passed
        while offset < self.batch_size * count:
            take = min(self.batch_size * count - offset, len(self.perm) - self.row)
            idx = self.perm[self.row:self.row + take][(rank - offset) % count::count]
            for out, a in zip(outs, self.arrays):
                np.take(a, idx, axis=0, out=out[filled:filled + len(idx)])
            filled += len(idx)
            offset += take
            self.row += take
            if self.row == len(self.perm):
                self._advance()
        return outs

    def state_dict(self):
        """The file position (epoch, index in the epoch's file order, seed) and the row in
        that file's row order."""
        return {"files": self.position.state_dict(), "row": self.row}

    def check_state(self, state):
        if not isinstance(state, dict):
            raise ValueError(f"an HDF5 read position must be an object, got "
                             f"{type(state).__name__}")
        why = self.position.check_state(state.get("files"))
        state_int(state, "row")
        return why

    def load_state_dict(self, state):
        self.position.load_state_dict(state["files"])
        self._load_current()
        row = state["row"]
        if row >= len(self.perm):
            raise ValueError(f"'row' is {row} but '{self._loaded}' has {len(self.perm)} rows")
        self.row = row

    def close(self):
        pass
