"""Summing the ranks' gradients: the learnable parameters, in the order backward finishes
them, packed into buckets of about `bucket_bytes`; each bucket's allreduce (MPI_Iallreduce,
in place, float32 sum) starts as soon as backward has produced all of its gradients, and the
rest of backward runs while it travels.  `finish(scale)` waits for every bucket and writes
scale * sum back into the diffs.

A parameter's gradient is final after the backward of the first layer (in net order) that uses
it: with shared parameters, the lowest index among the layers that hold it."""
import numpy as np

DEFAULT_BUCKET_BYTES = 4 << 20


class Bucket:
    def __init__(self, params, blobs):
        self.params = params                       # learnable param indices
        self.sizes = [blobs[k].count for k in params]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.buffer = np.empty(int(self.offsets[-1]), np.float32)
        self.request = None

    @property
    def nbytes(self):
        return self.buffer.nbytes


def ready_layers(net):
    """For each learnable param, the index of the layer after whose backward its gradient is
    complete."""
    ready = [len(net.layers)] * len(net.learnable_params)
    for net_pid, (layer_id, _) in enumerate(net._param_layer_indices):
        k = net.learnable_param_ids[net_pid]
        ready[k] = min(ready[k], layer_id)
    return ready


class GradientBuckets:
    def __init__(self, comm, MPI, net, bucket_bytes=DEFAULT_BUCKET_BYTES):
        self.comm, self.MPI = comm, MPI
        self.blobs = net.learnable_params
        ready = ready_layers(net)
        order = sorted(range(len(self.blobs)), key=lambda k: (-ready[k], -k))
        self.buckets, current, size = [], [], 0
        for k in order:
            if self.blobs[k].count == 0:
                continue
            current.append(k)
            size += self.blobs[k].count * 4
            if size >= bucket_bytes:
                self.buckets.append(Bucket(current, self.blobs))
                current, size = [], 0
        if current:
            self.buckets.append(Bucket(current, self.blobs))
        # a bucket may start once backward has passed the lowest of its params' layers
        self.ready_at = [min(ready[k] for k in b.params) for b in self.buckets]
        self.next = 0

    @property
    def nbytes(self):
        return sum(b.nbytes for b in self.buckets)

    def reset(self):
        self.next = 0

    def layer_done(self, layer_index):
        """Backward has finished layer `layer_index`: start the buckets it completed, and let
        MPI progress those in flight."""
        while self.next < len(self.buckets) and self.ready_at[self.next] >= layer_index:
            self._start(self.next)
            self.next += 1
        self._progress()

    def _start(self, i):
        b = self.buckets[i]
        for k, start, end in zip(b.params, b.offsets[:-1], b.offsets[1:]):
            b.buffer[start:end] = self.blobs[k].cpu_diff.reshape(-1)
        b.request = self.comm.Iallreduce(self.MPI.IN_PLACE, b.buffer, op=self.MPI.SUM)

    def _progress(self):
        pending = [b.request for b in self.buckets[:self.next] if b.request is not None]
        if pending:
            self.MPI.Request.Testall(pending)  # drives nonblocking collectives forward

    def finish(self, scale):
        """Start what has not started, wait for all, and set every diff to scale * sum."""
        while self.next < len(self.buckets):
            self._start(self.next)
            self.next += 1
        self.MPI.Request.Waitall([b.request for b in self.buckets])
        scale = np.float32(scale)
        for b in self.buckets:
            b.request = None
            for k, start, end in zip(b.params, b.offsets[:-1], b.offsets[1:]):
                blob = self.blobs[k]
                np.multiply(b.buffer[start:end], scale, out=blob.diff.reshape(-1))
        self.next = 0
