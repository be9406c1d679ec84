"""Data layers: Data (LMDB of Datums), ImageData (image list), HDF5Data, MemoryData, DummyData.

Data layers have no bottoms and no backward.  Data and ImageData load, decode and transform
their batches in a background thread (data_param.prefetch batches ahead, default 4) so loading
overlaps compute; call `close()` to stop it early (it also stops when the layer is collected).
Their random draws (crop offsets, mirror flips, shuffles, rand_skip) come from a generator
derived from caffe-lite's global one at setup, so a run is reproducible from random_seed.

Every data layer keeps its place: `state_dict()` gives the read position (data/position.py)
and the state of the layer's generator as of the batches the net has *consumed* (not those the
prefetch thread has read ahead), and `load_state_dict()` continues from there, so a snapshot
resumes the exact stream of batches.

In data-parallel training (solver_count() > 1, caffe_lite.parallel) the TRAIN-phase Data,
ImageData, HDF5Data and MemoryData layers of rank r read records r, r + N, r + 2N, ... of the
stream one process would read (Caffe's multi-GPU rule; TEST-phase layers read everything): the
N ranks' batches of B together are that process's batch of N * B.  Shuffles and rand_skip are
drawn alike in every rank; the transformer's crops and mirrors then draw per rank."""
import logging
import os

import numpy as np

from ..backend import state as _state
from ..data.prefetch import Prefetcher, attach
from ..data.transformer import DataTransformer, derive_rng
from ..errors import DataError
from ..data.position import state_int
from ..fillers import fill
from ..proto import caffe_pb2
from .base import Layer
from .registry import register

log = logging.getLogger("caffe_lite")


def _shard(layer):
    """(rank, count): this process's share of a TRAIN-phase source (module docstring)."""
    if layer.phase == caffe_pb2.TRAIN and _state.solver_count() > 1:
        return _state.solver_rank(), _state.solver_count()
    return 0, 1


class _PrefetchingDataLayer(Layer):
    """Caffe's BasePrefetchingDataLayer: tops are (data, label); a source makes batches."""
    exact_num_bottom = 0
    min_top = 1
    max_top = 2
    _prefetcher = _finalizer = None

    @property
    def where(self):
        return f"layer '{self.name}' ({self.type})"

    def _batch_size(self, value):
        if value <= 0:
            raise DataError(f"{self.where}: batch_size must be positive, got {value}")
        return int(value)

    def _source_needs_rand(self):
        return False

    def _make_source(self, rng):
        raise NotImplementedError

    def layer_setup(self, bottom, top):
        self.transformer = DataTransformer(self.layer_param.transform_param, self.phase,
                                           self.where, rng=False)
        rng = None
        if self.transformer.needs_rand or self._source_needs_rand():
            rng = derive_rng()
        self.transformer.rng = self.rng = rng
        self.shard = _shard(self)
        self.source = self._make_source(rng)
        if rng is not None and self.shard[0] > 0:
            _state.fork_rng(rng, self.shard[0])  # after the source drew its shuffle and skip
        top[0].reshape(self.source.top_shape)
        if len(top) > 1:
            top[1].reshape((self.source.batch_size,))
        self._consumed = _reader_state(self.source, rng)
        self._start_prefetch()

    def _start_prefetch(self):
        source, rng = self.source, self.rng  # the thread must not hold the layer

        def produce():
            data, labels = source.next_batch()
            return data, labels, _reader_state(source, rng)
        self._prefetcher = Prefetcher(produce, self.layer_param.data_param.prefetch,
                                      self.where, on_close=source.close)
        self._finalizer = attach(self, self._prefetcher)

    def reshape(self, bottom, top):
        pass  # shapes come from each batch in forward (as Caffe's prefetching layers do)

    def forward_cpu(self, bottom, top):
        data, labels, self._consumed = self._prefetcher.get()
        top[0].reshape(data.shape)
        top[0].data[...] = data
        if len(top) > 1:
            top[1].reshape(labels.shape)
            top[1].data[...] = labels
        self.source.buffers.recycle(data)  # its memory is reused for a later batch

    # --- persistence -----------------------------------------------------------------------
    def state_dict(self):
        """Position and generator after the last batch forward() returned."""
        return dict(self._consumed)

    def load_state_dict(self, state):
        """Continue after the batch a state_dict() was taken at: the prefetch thread is
        stopped, the batches it read ahead are dropped, and it restarts from there.  Raises
        ValueError for a state that is not one; a position that does not fit this source (its
        size changed) restarts at the beginning with a warning."""
        if not isinstance(state, dict) or "position" not in state:
            raise ValueError("expected an object with a 'position'")
        why = self.source.check_state(state["position"])
        saved_rng = state.get("rng")
        if (saved_rng is None) != (self.rng is None):
            why = why or "the snapshot's layer " + ("draws no" if saved_rng is None else
                                                    "draws") + " random numbers, this one " + \
                ("does" if saved_rng is None else "does not")
        if why:
            log.warning("%s: cannot continue where the snapshot stopped reading (%s); reading "
                        "starts over", self.where, why)
            return
        if self.rng is not None:
            probe = type(self.rng.bit_generator)()
            probe.state = saved_rng  # raises ValueError / TypeError before anything changes
        self._finalizer.detach()
        if not self._prefetcher.stop(timeout=60):
            raise DataError(f"{self.where}: the prefetch thread did not stop within 60 s")
        self.source.load_state_dict(state["position"])
        if self.rng is not None:
            self.rng.bit_generator.state = saved_rng
        self._consumed = dict(state)
        self._start_prefetch()

    def close(self):
        """Stop the prefetch thread and release the source (LMDB environment, ...)."""
        if self._finalizer is not None:
            self._finalizer()


def _reader_state(source, rng):
    """A prefetching layer's state after the batch its source has just made."""
    return {"position": source.state_dict(),
            "rng": None if rng is None else rng.bit_generator.state}


@register("Data")
class DataLayer(_PrefetchingDataLayer):
    """Datums from an LMDB (raw or encoded), in key order, wrapping at the end."""

    def _source_needs_rand(self):
        return self.layer_param.data_param.rand_skip > 0

    def _make_source(self, rng):
        from ..data.lmdb_io import check_backend
        from ..data.sources import DatumDBSource
        p = self.layer_param.data_param
        if not p.source:
            raise DataError(f"{self.where}: data_param.source is not set")
        backend = p.backend
        if not p.HasField("backend") and os.path.exists(os.path.join(p.source, "data.mdb")):
            # Caffe's default backend is LEVELDB; an unset backend naming an LMDB reads it.
            log.info("%s: data_param.backend not set; '%s' is an LMDB", self.where, p.source)
            backend = caffe_pb2.DataParameter.LMDB
        check_backend(backend, p.source, self.where)
        return DatumDBSource(p.source, self._batch_size(p.batch_size), self.transformer,
                             self.where, rand_skip=p.rand_skip, rng=rng, shard=self.shard)


@register("ImageData")
class ImageDataLayer(_PrefetchingDataLayer):
    """Images named in a list file ('path label' lines) under root_folder."""
    min_top = max_top = -1
    exact_num_top = 2

    def _source_needs_rand(self):
        p = self.layer_param.image_data_param
        return p.shuffle or p.rand_skip > 0

    def _make_source(self, rng):
        from ..data.sources import ImageListSource
        p = self.layer_param.image_data_param
        if not p.source:
            raise DataError(f"{self.where}: image_data_param.source is not set")
        return ImageListSource(p.source, self._batch_size(p.batch_size), self.transformer,
                               self.where, root_folder=p.root_folder, new_height=p.new_height,
                               new_width=p.new_width, is_color=p.is_color, shuffle=p.shuffle,
                               rand_skip=p.rand_skip, rng=rng, shard=self.shard)


@register("HDF5Data")
class HDF5DataLayer(Layer):
    """Rows of the datasets named by the tops, from the HDF5 files listed in `source`."""
    exact_num_bottom = 0
    min_top = 1

    def layer_setup(self, bottom, top):
        from ..data.sources import HDF5Source
        where = f"layer '{self.name}' (HDF5Data)"
        if self.layer_param.HasField("transform_param"):
            raise DataError(f"{where}: HDF5Data does not transform data; remove transform_param")
        p = self.layer_param.hdf5_data_param
        if p.batch_size <= 0:
            raise DataError(f"{where}: batch_size must be positive, got {p.batch_size}")
        if not p.source:
            raise DataError(f"{where}: hdf5_data_param.source is not set")
        rng = derive_rng() if p.shuffle else None
        self.shard = _shard(self)
        self.source = HDF5Source(p.source, self.layer_param.top, p.batch_size, where,
                                 shuffle=p.shuffle, rng=rng, shard=self.shard)
        for t, s in zip(top, self.source.top_shapes):
            t.reshape(s)

    def reshape(self, bottom, top):
        pass

    def forward_cpu(self, bottom, top):
        for t, arr in zip(top, self.source.next_batch()):
            t.reshape(arr.shape)
            t.data[...] = arr

    def state_dict(self):
        return {"position": self.source.state_dict()}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or "position" not in state:
            raise ValueError("expected an object with a 'position'")
        why = self.source.check_state(state["position"])
        if why:
            log.warning("layer '%s' (HDF5Data): cannot continue where the snapshot stopped "
                        "reading (%s); reading starts over", self.name, why)
            return
        self.source.load_state_dict(state["position"])


@register("MemoryData")
class MemoryDataLayer(Layer):
    """Batches taken in turn from arrays given with `reset(data, labels)` (pycaffe's
    net.set_input_arrays), wrapping around.  As in Caffe, Reset's arrays are not transformed."""
    exact_num_bottom = 0
    exact_num_top = 2

    def layer_setup(self, bottom, top):
        p = self.layer_param.memory_data_param
        self.batch_size, self.channels = int(p.batch_size), int(p.channels)
        self.height, self.width = int(p.height), int(p.width)
        if min(self.batch_size, self.channels, self.height, self.width) <= 0:
            raise self.error("batch_size, channels, height, and width must be specified and "
                             f"positive in memory_data_param (got {self.batch_size}, "
                             f"{self.channels}, {self.height}, {self.width})")
        self._data = self._labels = None
        self.pos = 0  # in the common stream: each batch spans batch_size * count items
        self.shard = _shard(self)

    def reshape(self, bottom, top):
        top[0].reshape((self.batch_size, self.channels, self.height, self.width))
        top[1].reshape((self.batch_size,))

    def reset(self, data, labels):
        """Use `data` (N x C x H x W float32, C-contiguous; kept by reference, like pycaffe)
        and `labels` (N values) from the start; N must be a multiple of batch_size."""
        where = f"layer '{self.name}' (MemoryData)"
        if not isinstance(data, np.ndarray) or data.dtype != np.float32 or data.ndim != 4 \
                or not data.flags.c_contiguous:
            desc = (f"{data.dtype} array of shape {data.shape}"
                    + ("" if data.flags.c_contiguous else ", not C-contiguous")) \
                if isinstance(data, np.ndarray) else type(data).__name__
            raise DataError(f"{where}: data must be a C-contiguous 4-D float32 array, got {desc}")
        want = (self.channels, self.height, self.width)
        if data.shape[1:] != want:
            raise DataError(f"{where}: data has shape {data.shape}; memory_data_param needs "
                            f"N x {want[0]} x {want[1]} x {want[2]}")
        labels = np.asarray(labels)
        if labels.dtype.kind not in "fiub":
            raise DataError(f"{where}: labels must be numbers, got dtype {labels.dtype}")
        n = data.shape[0]
        if labels.shape[:1] != (n,) or labels.size != n:
            raise DataError(f"{where}: labels have shape {labels.shape}; expected {n} labels "
                            "(one per data item, shape (N,) or (N, 1, 1, 1))")
        if n == 0 or n % self._span():
            raise DataError(f"{where}: the number of items ({n}) must be a positive multiple "
                            f"of batch_size ({self.batch_size}){self._ranks_text()}")
        if self.layer_param.HasField("transform_param"):
            log.warning("%s: MemoryData does not transform array data on reset", where)
        self._data = data
        self._labels = np.ascontiguousarray(labels.reshape(n), dtype=np.float32)
        self.pos = 0
        resume, self._resume = getattr(self, "_resume", None), None
        if resume is not None and resume[1] == n:  # restored before the arrays were given
            self.pos = resume[0]

    def _span(self, batch_size=None):
        """Items of the arrays one batch spans: batch_size in each of the `count` ranks."""
        return (batch_size or self.batch_size) * self.shard[1]

    def _ranks_text(self):
        count = self.shard[1]
        return f" times the {count} data-parallel ranks" if count > 1 else ""

    def set_batch_size(self, batch_size):
        if self._data is not None and self._data.shape[0] % self._span(batch_size):
            raise self.error(f"batch_size {batch_size}{self._ranks_text()} does not divide the "
                             f"{self._data.shape[0]} items given to reset()")
        self.batch_size = int(batch_size)
        self.pos = 0

    def forward_cpu(self, bottom, top):
        if self._data is None:
            raise DataError(f"layer '{self.name}' (MemoryData) has no data: call "
                            "net.set_input_arrays(data, labels) (or layer.reset) first")
        p, (rank, count), span = self.pos, self.shard, self._span()
        top[0].data[...] = self._data[p + rank:p + span:count]
        top[1].data[...] = self._labels[p + rank:p + span:count]
        self.pos = (p + span) % self._data.shape[0]

    def state_dict(self):
        """The read position in the arrays (the arrays are the caller's: give the same ones
        with set_input_arrays, before or after restoring)."""
        return {"pos": self.pos, "items": None if self._data is None else self._data.shape[0]}

    def load_state_dict(self, state):
        if not isinstance(state, dict):
            raise ValueError("expected an object")
        pos = state_int(state, "pos")
        items = state.get("items")
        if items is not None:
            items = state_int(state, "items", 1)
            if pos >= items or pos % self.batch_size:
                raise ValueError(f"'pos' {pos} is not a batch start among {items} items")
        self.pos, self._resume = 0, None
        if items is None or pos == 0:
            return
        if pos % self._span():  # a snapshot of another number of data-parallel ranks
            log.warning("layer '%s' (MemoryData): the snapshot stopped at item %d, which is not "
                        "a batch start for %d item(s) per batch%s; reading starts over",
                        self.name, pos, self._span(), self._ranks_text())
            return
        if self._data is None:
            self._resume = (pos, items)  # applied by reset() when it gets as many items
        elif self._data.shape[0] == items:
            self.pos = pos
        else:
            log.warning("layer '%s' (MemoryData): the snapshot was reading item %d of %d, "
                        "the arrays given have %d items; reading starts over", self.name, pos,
                        items, self._data.shape[0])


@register("DummyData")
class DummyDataLayer(Layer):
    """Tops of given shapes, filled by data_filler: constant fillers (and no filler, meaning
    0) fill once at setup, other fillers refill at every forward."""
    exact_num_bottom = 0
    min_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.dummy_data_param
        n = len(top)
        nf = len(p.data_filler)
        if nf not in (0, 1, n):
            raise self.error(f"number of data fillers must be 0, 1 or equal to the number of "
                             f"tops ({n}); got {nf}")
        legacy = [list(p.num), list(p.channels), list(p.height), list(p.width)]
        if any(legacy):
            if len(p.shape):
                raise self.error("both shape and legacy fields (num, channels, height, width) "
                                 "were given; use one or the other")
            for name, vals in zip(("num", "channels", "height", "width"), legacy):
                if len(vals) not in (1, n):
                    raise self.error(f"must specify '{name}' once, or once per top blob ({n}); "
                                     f"got {len(vals)}")
            shapes = [tuple(v[i if len(v) > 1 else 0] for v in legacy) for i in range(n)]
        else:
            if len(p.shape) not in (1, n):
                raise self.error(f"must specify 'shape' once, or once per top blob ({n}); got "
                                 f"{len(p.shape)}")
            shapes = [tuple(p.shape[i if len(p.shape) > 1 else 0].dim) for i in range(n)]
        if nf == 0:
            self.fillers = [caffe_pb2.FillerParameter(type="constant", value=0)] * n
        else:
            self.fillers = [p.data_filler[i if nf > 1 else 0] for i in range(n)]
        self.refill = [f.type != "constant" for f in self.fillers]
        for t, s, f, r in zip(top, shapes, self.fillers, self.refill):
            t.reshape(s)
            if not r:
                fill(t, f)

    def reshape(self, bottom, top):
        pass  # shapes are fixed at setup, as in Caffe

    def forward_cpu(self, bottom, top):
        for t, f, r in zip(top, self.fillers, self.refill):
            if r:
                fill(t, f)
