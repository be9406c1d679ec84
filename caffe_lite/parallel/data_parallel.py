"""DataParallel: one solver per rank, trained as one.

Every rank runs forward and backward on its own share of the data; the gradients are summed
across ranks (buckets.py: during backward, by a communication thread, when the solver's
`layer_wise_reduce` is true, Caffe's default) and scaled by 1 / N, so each rank holds the
gradient of the N ranks' combined batch; then each rank applies the same solver update to the
same weights.  As a solver callback it comes first, before
gradual pruning or weight sharing see the gradients.

At the first iteration it checks that the masks agree (a mismatch is a ParallelError naming
the layers), copies rank 0's weights and solver history to every rank (Caffe's NCCL bcast),
and gives each rank random streams of its own.  Each iteration it also agrees on snapshot /
stop requests (SIGUSR1, which mpirun passes on to every rank) and on masks: when a callback
(gradual pruning) has changed them on any rank, rank 0's masks are broadcast and, should a
rank have decided differently, rank 0's weights and history with them.  At each snapshot the
per-rank random state is gathered into rank 0's sidecar (this callback's state), and the
weights are checked to be bit-identical on every rank."""
import hashlib
import logging
import signal

import numpy as np

from ..backend import state
from ..errors import ParallelError
from ..solvers import cuda
from ..solvers.solver import NONE, SNAPSHOT, SNAPSHOT_STOP, STOP
from . import mpi
from .buckets import DEFAULT_BUCKET_BYTES, GradientBuckets

log = logging.getLogger("caffe_lite")

_REQUEST_BITS = {NONE: (0, 0), SNAPSHOT: (1, 0), STOP: (0, 1), SNAPSHOT_STOP: (1, 1)}
_BITS_REQUEST = {v: k for k, v in _REQUEST_BITS.items()}


def _digest(*arrays):
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        h.update(np.ascontiguousarray(a).view(np.uint8).tobytes())
    return h.hexdigest()


def _rng_digest(generator):
    return hashlib.blake2b(repr(generator.bit_generator.state).encode(), digest_size=16) \
        .hexdigest()


class DataParallel:
    """Train `solver` data-parallel over MPI with the other ranks of the job.

    `bucket_bytes`: gradient bucket size (default 4 MiB); `layer_wise`: start each bucket's
    allreduce during backward (default: the solver's layer_wise_reduce, true unless set);
    `attach`: register as the solver's first callback and backward hook now (pycaffe's NCCL
    shape registers through solver.add_callback / net.after_backward instead)."""
    state_key = "DataParallel"

    def __init__(self, solver, bucket_bytes=None, layer_wise=None, attach=True):
        self.world = mpi.init()
        self.solver = solver
        self.size, self.rank = self.world.size, self.world.rank
        self._check_built_sharded()
        if not state.root_solver() and solver.test_nets:  # built before init(): rank 0 tests
            for net in solver.test_nets:
                net.close()
            solver.test_nets = []
        self.layer_wise = bool(solver.param.layer_wise_reduce if layer_wise is None
                               else layer_wise)
        if self.layer_wise and not self.world.threads_ok:
            log.warning("MPI was started without thread support (MPI_THREAD_SERIALIZED): "
                        "gradients are summed after backward, not during it")
            self.layer_wise = False
        self.buckets = GradientBuckets(self.world.comm, self.world.MPI, solver.net,
                                       bucket_bytes or DEFAULT_BUCKET_BYTES, self.layer_wise)
        self._masked = [b for b in solver.net.learnable_params if b.has_mask]
        self._live = self._live_count()
        self._started = False
        self._pass = 0
        self._signals = self._signals_seen = 0  # stop requests from signals, and handled
        self._saved_ranks = None  # per-rank states a restore handed over
        if attach:
            self.attach()

    # --- registration ----------------------------------------------------------------------
    def attach(self):
        s = self.solver
        if self not in s.callbacks:
            s.callbacks.insert(0, self)
        if self.layer_wise and self not in s.net._hooks["after_backward"]:
            s.net.after_backward(self)
        return self

    def __call__(self, layer_index):
        """The after-backward hook (pycaffe: solver.net.after_backward(nccl))."""
        if self._pass == self.solver.param.iter_size - 1:  # the last pass of the iteration
            self.buckets.layer_done(layer_index)
        if layer_index == 0:
            self._pass += 1

    def _check_built_sharded(self):
        for layer in self.solver.net.layers:
            shard = getattr(layer, "shard", None)
            if shard is not None and tuple(shard) != (self.rank, self.size):
                raise ParallelError(
                    f"layer '{layer.name}' ({layer.type}) reads as rank {shard[0]} of "
                    f"{shard[1]}, but this is rank {self.rank} of {self.size}: build the solver "
                    "after caffe_lite.parallel.init() so that each rank reads its own share")

    # --- the callback ----------------------------------------------------------------------
    def bcast(self):
        """pycaffe's NCCL.bcast(): rank 0's weights (and solver history) on every rank now
        (the first iteration does it too)."""
        self._broadcast_weights()

    def on_start(self, solver):
        if solver.callbacks[0] is not self:
            # registered later than other callbacks (solver.add_callback(nccl)): the gradients
            # must be summed before any other callback sees them (weight sharing ties them)
            solver.callbacks.remove(self)
            solver.callbacks.insert(0, self)
        if not self._started:
            self._start()
        self._pass = 0
        self.buckets.reset()

    def on_gradients_ready(self, solver):
        comm, MPI = self.world.comm, self.world.MPI
        request = solver.action_request
        signals = self._signals  # (a handler may add one meanwhile: seen next iteration)
        if signals != self._signals_seen:
            self._signals_seen, request = signals, SNAPSHOT_STOP
        live = self._live_count()
        control = np.array(_REQUEST_BITS[request] + (live, -live), np.int64)
        agreed = np.empty_like(control)
        self.buckets.finish(1.0 / self.size)
        comm.Allreduce(control, agreed, op=MPI.MAX)  # after: one thread in MPI at a time
        solver.action_request = _BITS_REQUEST[(int(agreed[0]), int(agreed[1]))]
        if agreed[2] != self._live or -agreed[3] != self._live:
            self._sync_masks()
            self.buckets.refresh()  # pruned weights send fewer entries from now on
        self._live = self._live_count()

    # --- start ------------------------------------------------------------------------------
    def _start(self):
        s = self.solver
        self._started = True
        cuda.sync_history_to_host(s)
        self._check_masks()
        self._live = self._live_count()
        self.buckets.refresh()  # the masks as restored
        self._broadcast_weights()
        self._apply_saved_ranks()
        self._fork_identical_streams()
        if self.rank == 0:
            self._log_setup()

    def _check_masks(self):
        net = self.solver.net
        mine = [(name, j, _digest(np.packbits(b.cpu_mask.reshape(-1) != 0)),
                 int(np.count_nonzero(b.cpu_mask)))
                for name, blobs in net.params.items() for j, b in enumerate(blobs) if b.has_mask]
        everyone = self.world.comm.allgather(mine)
        bad = []
        for rank, theirs in enumerate(everyone):
            if [m[:2] for m in theirs] != [m[:2] for m in mine]:
                raise ParallelError(f"rank {rank}'s net has other prunable weights than rank "
                                    f"{self.rank}'s: every rank must build the same net")
            for (name, j, digest, live), (_, _, d0, live0) in zip(theirs, everyone[0]):
                if digest != d0:
                    bad.append(f"rank {rank}'s '{name}' param {j} ({live} live weights; "
                               f"rank 0: {live0})")
        if bad:
            raise ParallelError("the masks differ between ranks: " + "; ".join(bad[:4]) +
                                (f" and {len(bad) - 4} more" if len(bad) > 4 else "") +
                                "; every rank must load the same weights and .masks sidecar")

    def _broadcast_weights(self):
        """Rank 0's weights and solver history on every rank (Caffe's NCCL::Broadcast)."""
        s = self.solver
        comm = self.world.comm
        cuda.sync_history_to_host(s)
        for blob in s.net.learnable_params:
            if blob.count:
                buf = np.ascontiguousarray(blob.cpu_data, np.float32).copy()
                comm.Bcast(buf, root=0)
                blob.data[...] = buf
        for h in s.history:
            if h.size:
                comm.Bcast(h, root=0)

    def _live_count(self):
        return sum(int(np.count_nonzero(b.cpu_mask)) for b in self._masked)

    def _sync_masks(self):
        """Masks changed on some rank (a pruning step): rank 0's decision holds everywhere."""
        s = self.solver
        comm = self.world.comm
        differs = False
        for blob in self._masked:
            bits = np.packbits(blob.cpu_mask.reshape(-1) != 0)
            root_bits = bits.copy()
            comm.Bcast(root_bits, root=0)
            if not np.array_equal(bits, root_bits):
                differs = True
                blob.mask = np.unpackbits(root_bits, count=blob.count).reshape(blob.shape)
        if comm.allreduce(int(differs), op=self.world.MPI.MAX):
            if self.rank == 0:
                log.warning("Iteration %d: the ranks pruned differently; every rank now uses "
                            "rank 0's masks, weights and history", s.iter)
            self._broadcast_weights()
            for blob in self._masked:
                blob.mask_diff()
                blob.apply_mask()
            s.mask_history()

    # --- random streams ---------------------------------------------------------------------
    def _data_layers(self):
        return [layer for layer in self.solver.net.layers
                if hasattr(layer, "state_dict") and getattr(layer, "rng", None) is not None]

    def _fork_identical_streams(self):
        """Ranks other than 0 whose generators (global, data layers') equal rank 0's draw from
        streams of their own (a fresh start, or a resume from a snapshot that did not hold this
        rank's own state)."""
        comm = self.world.comm
        layers = self._data_layers()
        mine = [_rng_digest(state.rng())] + [_rng_digest(layer.rng) for layer in layers]
        root = comm.bcast(mine if self.rank == 0 else None, root=0)
        if self.rank == 0:
            return
        if mine[0] == root[0]:
            state.fork_rng(state.rng(), self.rank)
        for layer, a, b in zip(layers, mine[1:], root[1:]):
            if a == b:
                layer_state = layer.state_dict()
                probe = np.random.Generator(type(layer.rng.bit_generator)())
                probe.bit_generator.state = layer_state["rng"]
                state.fork_rng(probe, self.rank)
                layer_state["rng"] = probe.bit_generator.state
                layer.load_state_dict(layer_state)  # restarts its reading thread

    # --- snapshots --------------------------------------------------------------------------
    def _rank_state(self):
        return {"rng": state.rng().bit_generator.state,
                "layers": {layer.name: layer.state_dict() for layer in self._data_layers()}}

    def state_dict(self):
        """Called on every rank by Solver.snapshot(): gathers each rank's random state (its
        global generator, its data layers' generators) for rank 0 to save, and checks that
        the trained weights are the same on every rank."""
        self._check_weights_agree()
        ranks = self.world.comm.gather(self._rank_state(), root=0)
        return {"ranks": self.size, "rank_states": ranks}

    def load_state_dict(self, saved):
        n = saved.get("ranks")
        ranks = saved.get("rank_states")
        if not isinstance(n, int) or not isinstance(ranks, list) or len(ranks) != n:
            raise ValueError("expected 'ranks' and one 'rank_states' entry per rank")
        if n != self.size and self.rank == 0:
            log.warning("The snapshot was taken by %d data-parallel rank(s), this run has %d: "
                        "weights, solver history, masks and data read positions continue; the "
                        "random streams of ranks beyond the snapshot's are derived afresh",
                        n, self.size)
        self._saved_ranks = ranks[self.rank] if self.rank < n else None
        if self._started:
            self._apply_saved_ranks()

    def _apply_saved_ranks(self):
        saved, self._saved_ranks = self._saved_ranks, None
        if saved is None or self.rank == 0:  # rank 0's is the sidecar's own state
            return
        state.rng().bit_generator.state = saved["rng"]
        for layer in self._data_layers():
            if layer.name in saved["layers"]:
                layer.load_state_dict(saved["layers"][layer.name])

    def _check_weights_agree(self):
        """The solver's updates are the same on every rank, so the trained weights must be
        bit-identical; should an MPI reduction ever give ranks different sums, rank 0's
        weights are copied everywhere (with a warning) rather than let the ranks drift."""
        s = self.solver
        net = s.net
        trained = [b for b, lr in zip(net.learnable_params, net.params_lr) if lr]
        mine = _digest(*[b.cpu_data for b in trained])
        everyone = self.world.comm.allgather(mine)
        if len(set(everyone)) > 1:
            if self.rank == 0:
                log.warning("Iteration %d: the weights differ between ranks %s; copying rank "
                            "0's to every rank", s.iter,
                            [r for r, d in enumerate(everyone) if d != everyone[0]])
            cuda.sync_history_to_host(s)
            self._broadcast_weights()

    # --- signals ------------------------------------------------------------------------------
    def install_signal_handlers(self):
        """SIGUSR1 (which mpirun passes on to every rank), SIGINT, SIGTERM: every rank finishes
        the iteration in which any of them got it, snapshots and stops.  (mpirun itself ends
        the job soon after SIGINT or SIGTERM; send it SIGUSR1.)"""
        def handler(signum, frame):
            if self.rank == 0:
                log.info("Received %s: snapshotting and stopping after iteration %d",
                         signal.Signals(signum).name, self.solver.iter)
            self._signals += 1
        return {sig: signal.signal(sig, handler)
                for sig in (signal.SIGUSR1, signal.SIGINT, signal.SIGTERM)}

    # --- reporting ----------------------------------------------------------------------------
    def batch_per_rank(self):
        """The batch of the first data layer (None when the net has none)."""
        for layer, tops in zip(self.solver.net.layers, self.solver.net.top_vecs):
            if getattr(layer, "shard", None) is not None and tops:
                return tops[0].shape[0] if tops[0].shape else None
        return None

    def _log_setup(self):
        w, p = self.world, self.solver.param
        b = self.batch_per_rank()
        batch = (f"batch {b} per rank x {w.size} ranks" +
                 (f" x iter_size {p.iter_size}" if p.iter_size > 1 else "") +
                 f" = effective batch {b * w.size * p.iter_size}") if b else \
            f"{w.size} ranks"
        dense = 4 * sum(blob.count for blob in self.solver.net.learnable_params)
        sent = self.buckets.nbytes
        log.info("Data-parallel training over MPI (%s; %d rank(s) on %d host(s)): %s; "
                 "gradients summed in %d bucket(s) of %.3g MB in all%s%s", w.library,
                 w.size, w.hosts, batch, len(self.buckets.buckets), sent / 1e6,
                 f" ({sent / dense:.0%} of the dense gradients: pruned weights send their "
                 "live entries)" if sent < dense else "",
                 ", started during backward" if self.layer_wise else "")
