"""Summing the ranks' gradients: the learnable parameters, in the order backward finishes
them, packed into buckets of about `bucket_bytes`.  With `overlap`, each bucket is copied out
as soon as backward has produced all of its gradients and a communication thread runs its
allreduce (MPI_Allreduce, in place, float32 sum) while the rest of backward runs on the main
thread; `finish(scale)` waits for every bucket and writes scale * sum back into the diffs.
Without `overlap`, finish() reduces every bucket then, on the main thread.

(A thread with blocking MPI_Allreduce rather than MPI_Iallreduce: Open MPI's nonblocking
collectives move data only while the program calls into MPI, and over shared memory they ran
5-7x slower than the blocking ones for buckets of 4-17 MB; docs/distributed.md.)

A parameter's gradient is final after the backward of the first layer (in net order) that uses
it: with shared parameters, the lowest index among the layers that hold it.

Pruned weights: every rank has the same mask (DataParallel checks), so a weight whose mask
keeps at most SPARSE_DENSITY of its entries sends only those (gathered in mask order, no
indices needed) and its pruned entries get a zero gradient: the bytes shrink with the density.
`refresh()` re-reads the masks (after a pruning step)."""
import queue
import threading

import numpy as np

DEFAULT_BUCKET_BYTES = 4 << 20
SPARSE_DENSITY = 0.5


def live_entries(blob):
    """The flat indices of a pruned weight's live entries when it sends only those, else
    None (all entries)."""
    if not blob.has_mask or not blob.count:
        return None
    live = np.flatnonzero(blob.cpu_mask.reshape(-1))
    return live if live.size <= SPARSE_DENSITY * blob.count else None


class Bucket:
    def __init__(self, params, blobs):
        self.params = params                       # learnable param indices
        self.live = [live_entries(blobs[k]) for k in params]
        self.sizes = [blobs[k].count if live is None else live.size
                      for k, live in zip(params, self.live)]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.buffer = np.empty(int(self.offsets[-1]), np.float32)

    @property
    def nbytes(self):
        return self.buffer.nbytes

    def entries(self):
        return zip(self.params, self.live, self.offsets[:-1], self.offsets[1:])


def ready_layers(net):
    """For each learnable param, the index of the layer after whose backward its gradient is
    complete."""
    ready = [len(net.layers)] * len(net.learnable_params)
    for net_pid, (layer_id, _) in enumerate(net._param_layer_indices):
        k = net.learnable_param_ids[net_pid]
        ready[k] = min(ready[k], layer_id)
    return ready


class GradientBuckets:
    def __init__(self, comm, MPI, net, bucket_bytes=DEFAULT_BUCKET_BYTES, overlap=True):
        self.comm, self.MPI = comm, MPI
        self.overlap = overlap
        self.blobs = net.learnable_params
        ready = ready_layers(net)
        order = sorted(range(len(self.blobs)), key=lambda k: (-ready[k], -k))
        self.groups, current, size = [], [], 0  # the params of each bucket
        for k in order:
            if self.blobs[k].count == 0:
                continue
            current.append(k)
            size += self.blobs[k].count * 4
            if size >= bucket_bytes:
                self.groups.append(current)
                current, size = [], 0
        if current:
            self.groups.append(current)
        # a bucket may start once backward has passed the lowest of its params' layers
        self.ready_at = [min(ready[k] for k in g) for g in self.groups]
        self.refresh()
        self.next = 0
        self._todo = self._done = None

    def refresh(self):
        """(Re)lay the buckets out for the current masks; no bucket may be in flight."""
        self.buckets = [Bucket(g, self.blobs) for g in self.groups]

    @property
    def nbytes(self):
        return sum(b.nbytes for b in self.buckets)

    def reset(self):
        self.next = 0

    def layer_done(self, layer_index):
        """Backward has finished layer `layer_index`: hand over the buckets it completed."""
        if not self.overlap:
            return
        while self.next < len(self.buckets) and self.ready_at[self.next] >= layer_index:
            self._start(self.next)
            self.next += 1

    def _pack(self, b):
        for k, live, start, end in b.entries():
            diff = self.blobs[k].cpu_diff.reshape(-1)
            if live is None:
                b.buffer[start:end] = diff
            else:
                np.take(diff, live, out=b.buffer[start:end])

    def _allreduce(self, b):
        self.comm.Allreduce(self.MPI.IN_PLACE, b.buffer, op=self.MPI.SUM)

    def _start(self, i):
        self._pack(self.buckets[i])
        if self._todo is None:
            self._todo, self._done = queue.SimpleQueue(), queue.SimpleQueue()
            threading.Thread(target=self._communicate, name="caffe-lite allreduce",
                             daemon=True).start()
        self._todo.put(i)

    def _communicate(self):
        while True:
            i = self._todo.get()
            try:
                self._allreduce(self.buckets[i])
                self._done.put(None)
            except BaseException as exc:  # noqa: BLE001  (raised again by finish())
                self._done.put(exc)

    def finish(self, scale):
        """Reduce what has not been handed over, wait for all, and set every diff to
        scale * sum."""
        started = self.next
        for i in range(self.next, len(self.buckets)):
            if self.overlap:
                self._start(i)
                started += 1
            else:
                self._pack(self.buckets[i])
                self._allreduce(self.buckets[i])
        for _ in range(started):
            error = self._done.get()
            if error is not None:
                raise error
        scale = np.float32(scale)
        for b in self.buckets:
            for k, live, start, end in b.entries():
                diff = self.blobs[k].diff.reshape(-1)
                if live is None:
                    np.multiply(b.buffer[start:end], scale, out=diff)
                else:
                    diff[...] = 0
                    diff[live] = b.buffer[start:end] * scale
        self.next = 0
