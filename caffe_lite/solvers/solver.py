"""Solver: Caffe's training loop (Solver::Step / Solve / Test / Snapshot / Restore) and the
update rules shared by every solver type (clipping, iter_size normalisation, L1/L2 decay).

A subclass defines `history_per_param` and `compute_update_value(i, rate)`, which turns
param i's gradient into the step to subtract, in place in its diff; the base then applies
`data -= diff` and `data *= mask`.

`solver.callbacks` get, per iteration and when they define them: `on_start(solver)` before
the forward pass, `on_gradients_ready(solver)` before the update, and `on_update_done(solver)`
after it (solver.iter already counts it), before any snapshot."""
import contextlib
import logging
import math
import signal
import time

import numpy as np

from ..backend.state import root_solver, set_random_seed
from ..errors import ArgumentTypeError, NumericalError, SolverError
from ..net import Net
from . import state as snapshot_state
from . import cuda
from .lr_policy import learning_rate
from .params import load_solver_param, net_params

log = logging.getLogger("caffe_lite")

# Requests a signal handler (or a callback) can make; checked after each iteration.
NONE, STOP, SNAPSHOT, SNAPSHOT_STOP = "none", "stop", "snapshot", "snapshot+stop"


def _g(x):
    """Format a number as C++'s ostream does by default (6 significant digits)."""
    return f"{float(x):.6g}"


class Solver:
    type = None
    history_per_param = 1

    def __init__(self, solver, weights=None):
        """`solver`: a solver.prototxt path, its text, or a SolverParameter."""
        self.param = load_solver_param(solver)
        self.check_param()
        if self.param.random_seed >= 0:
            set_random_seed(self.param.random_seed)
        train, tests = net_params(self.param)
        self.net = Net(train)
        # As Caffe: in data-parallel training only the root solver (rank 0) tests.
        self.test_nets = [Net(t) for t in tests] if root_solver() else []
        for t in self.test_nets:
            t.share_with(self.net)
        self.iter = 0
        self.current_step = 0
        self.history = [np.zeros(p.shape, np.float32)
                        for _ in range(self.history_per_param) for p in self.net.learnable_params]
        self.losses = []
        self.smoothed_loss = 0.0
        self.test_results = []
        self.callbacks = []
        self.action_request = NONE
        self.requested_early_exit = False
        self._iter_timer = time.perf_counter()
        self._iters_last = 0
        self._last_snapshot_iter = None
        self._snapshot_lock = None
        if weights:
            for w in ([weights] if isinstance(weights, str) else weights):
                self.net.copy_from(w)

    # --- configuration ----------------------------------------------------------------------
    def check_param(self):
        """Solver-specific configuration checks (subclasses extend)."""

    @property
    def n_params(self):
        return len(self.net.learnable_params)

    # --- the loop ------------------------------------------------------------------------
    def step(self, iters):
        p = self.param
        start_iter, stop_iter = self.iter, self.iter + int(iters)
        self.losses, self.smoothed_loss = [], 0.0
        self._iter_timer, self._iters_last = time.perf_counter(), self.iter
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if p.test_interval and self.iter % p.test_interval == 0 and \
                    (self.iter > 0 or p.test_initialization):
                self.test_all()
                if self.requested_early_exit:
                    break
            for cb in self.callbacks:
                getattr(cb, "on_start", lambda s: None)(self)
            display = p.display and self.iter % p.display == 0
            loss = 0.0
            for _ in range(p.iter_size):
                loss += self.net.forward_backward()
            loss /= p.iter_size
            if not math.isfinite(loss):
                self._diagnose_non_finite(loss)
            self._update_smoothed_loss(loss, start_iter)
            if display:
                self._display()
            for cb in self.callbacks:
                getattr(cb, "on_gradients_ready", lambda s: None)(self)
            self.apply_update()
            self.iter += 1
            for cb in self.callbacks:
                getattr(cb, "on_update_done", lambda s: None)(self)
            request = self.action_request
            self.action_request = NONE
            if (p.snapshot and self.iter % p.snapshot == 0) or \
                    request in (SNAPSHOT, SNAPSHOT_STOP):
                self.snapshot()
            if request in (STOP, SNAPSHOT_STOP):
                self.requested_early_exit = True
                break

    def solve(self, resume_file=None):
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        self.requested_early_exit = False
        with self.snapshot_lock():
            if resume_file:
                log.info("Restoring previous solver status from %s", resume_file)
                self.restore(resume_file)
            start_iter = self.iter
            self.step(p.max_iter - self.iter)
            if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0) \
                    and self._last_snapshot_iter != self.iter:
                self.snapshot()
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0:
            loss = self.net.forward_from_to()
            self._update_smoothed_loss(loss, start_iter)
            log.info("Iteration %d, loss = %s", self.iter, _g(self.smoothed_loss))
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        log.info("Optimization Done.")

    def _update_smoothed_loss(self, loss, start_iter):
        avg = self.param.average_loss
        if len(self.losses) < avg:
            self.losses.append(loss)
            n = len(self.losses)
            self.smoothed_loss = (self.smoothed_loss * (n - 1) + loss) / n
        else:
            idx = (self.iter - start_iter) % avg
            self.smoothed_loss += (loss - self.losses[idx]) / avg
            self.losses[idx] = loss

    def _display(self):
        now = time.perf_counter()
        self.iters_per_second = (self.iter - self._iters_last) / ((now - self._iter_timer) or 1)
        self._iter_timer, self._iters_last = now, self.iter
        # The pre-1.0 line format, which parse_log.sh / parse_log.py and plot scripts read.
        log.info("Iteration %d, loss = %s", self.iter, _g(self.smoothed_loss))
        k = 0
        for name in self.net.outputs:
            w = self.net.blob_loss_weights[name]
            for v in self.net.blobs[name].cpu_data.ravel():
                extra = f" (* {_g(w)} = {_g(w * v)} loss)" if w else ""
                log.info("    Train net output #%d: %s = %s%s", k, name, _g(v), extra)
                k += 1

    def _diagnose_non_finite(self, loss):
        """Name the first layer whose output stopped being finite, then stop."""
        net = self.net
        bad_params = [n for n, ps in net.params.items()
                      if any(not np.isfinite(b.cpu_data).all() for b in ps)]
        last_ok, first_bad = None, None
        for i, layer in enumerate(net.layers):
            layer.forward(net.bottom_vecs[i], net.top_vecs[i])
            if all(np.isfinite(t.cpu_data).all() for t in net.top_vecs[i]):
                last_ok = layer.name
            else:
                first_bad = layer.name
                break
        if first_bad is not None and not net.bottom_vecs[i]:
            bad = [net.blob_names[j] for j in net.top_ids[i]
                   if not np.isfinite(net._blobs[j].cpu_data).all()]
            where = f"input blob '{bad[0]}' holds non-finite values (layer '{first_bad}')"
        else:
            where = (f"layer '{first_bad}' produced the first non-finite output"
                     + (f" (last finite: '{last_ok}')" if last_ok else ""))
        if bad_params:
            where += f"; non-finite weights in {', '.join(bad_params[:5])}"
        raise NumericalError(f"iteration {self.iter}: loss is {loss}; {where}. Training stopped; "
                             "the last snapshot (if any) is intact. Try a lower base_lr or "
                             "clip_gradients.")

    # --- pycaffe's Solver methods ----------------------------------------------------------
    def add_callback(self, on_start, on_gradients_ready=None):
        """pycaffe's Solver.add_callback(on_start, on_gradients_ready): two functions of no
        arguments, called at the start of every iteration and when its gradients are ready
        (before the update).  A callback object (methods on_start(solver) and / or
        on_gradients_ready(solver), optionally state_dict / load_state_dict) may be given
        alone; it joins `solver.callbacks`."""
        if on_gradients_ready is None and (hasattr(on_start, "on_start") or
                                           hasattr(on_start, "on_gradients_ready")):
            self.callbacks.append(on_start)
            return
        for fn, what in ((on_start, "on_start"), (on_gradients_ready, "on_gradients_ready")):
            if not callable(fn):
                raise ArgumentTypeError(f"add_callback(): {what} must be a function of no "
                                        f"arguments, got {fn!r}")
        self.callbacks.append(_FunctionCallbacks(on_start, on_gradients_ready))

    def share_weights(self, net):
        """pycaffe's Solver.share_weights(net): `net` uses this solver's trained weights."""
        net.share_with(self.net)

    @property
    def lr(self):
        """The learning rate of the current iteration (lr_policy at `iter`)."""
        return learning_rate(self.param, self.iter, self.current_step)[0]

    # --- testing -------------------------------------------------------------------------
    def test_all(self):
        return [self.test(i) for i in range(len(self.test_nets))]

    def test(self, test_net_id=0):
        p = self.param
        log.info("Iteration %d, Testing net (#%d)", self.iter, test_net_id)
        net = self.test_nets[test_net_id]
        net.share_with(self.net)
        n = p.test_iter[test_net_id]
        scores, loss = None, 0.0
        for _ in range(n):
            it_loss = net.forward_from_to()
            if p.test_compute_loss:
                loss += it_loss
            vals = [net.blobs[o].cpu_data.astype(np.float64).ravel() for o in net.outputs]
            scores = vals if scores is None else [a + b for a, b in zip(scores, vals)]
        if p.test_compute_loss:
            log.info("Test loss: %s", _g(loss / max(n, 1)))
        result, k = {}, 0
        for name, total in zip(net.outputs, scores or []):
            w = net.blob_loss_weights[name]
            means = total / max(n, 1)
            for v in means:
                extra = f" (* {_g(w)} = {_g(w * v)} loss)" if w else ""
                log.info("    Test net output #%d: %s = %s%s", k, name, _g(v), extra)
                k += 1
            result[name] = float(means[0]) if means.size == 1 else means
        self.test_results.append((self.iter, test_net_id, result))
        return result

    def mask_history(self):
        """Zero the history (momentum, squared-gradient sums, Adam moments) of every masked
        entry: called after masks shrink (gradual pruning), so a weight pruned mid-run starts
        from the same all-zero history as one pruned before training."""
        cuda.sync_history_to_host(self)
        n = self.n_params
        for i, blob in enumerate(self.net.learnable_params):
            if blob.has_mask:
                for k in range(self.history_per_param):
                    self.history[i + k * n] *= blob.mask

    # --- updates -------------------------------------------------------------------------
    def get_learning_rate(self):
        rate, self.current_step = learning_rate(self.param, self.iter, self.current_step)
        return rate

    def apply_update(self):
        rate = self.get_learning_rate()
        if self.param.display and self.iter % self.param.display == 0:
            log.info("Iteration %d, lr = %s", self.iter, _g(rate))
        if cuda.try_apply_update_gpu(self, rate):
            return
        self.clip_gradients()
        rate = np.float32(rate)
        fused = self.fused_update_available()
        for i, blob in enumerate(self.net.learnable_params):
            self.normalize(i)
            if fused and self.fused_update(i, rate):
                continue  # decay, mask, step and data -= step in one pass (SGD)
            self.regularize(i)
            if blob.has_mask:
                blob.mask_diff()  # pruned entries: no decay, no history, no step
            self.compute_update_value(i, rate)
            blob.update()

    def fused_update_available(self):
        """True when fused_update may be used: CPU mode and the compiled kernels present."""
        from ..backend import state as mode
        from ..layers import jit
        return (type(self).fused_update is not Solver.fused_update
                and mode.mode() == mode.CPU and jit.kernels("sgd") is not None)

    def fused_update(self, i, rate):
        """Regularise, mask, compute the step and apply it to param i in one pass; return
        False to have apply_update run the separate steps (the default)."""
        return False

    def clip_gradients(self):
        clip = self.param.clip_gradients
        if clip < 0:
            return
        norm = math.sqrt(sum(p.sumsq_diff() for p in self.net.learnable_params))
        if norm > clip:
            factor = clip / norm
            log.info("Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale "
                     "factor %s", _g(norm), _g(clip), _g(factor))
            for p in self.net.learnable_params:
                p.scale_diff(factor)

    def normalize(self, i):
        if self.param.iter_size != 1:
            self.net.learnable_params[i].scale_diff(1.0 / self.param.iter_size)

    def regularize(self, i):
        decay = self.param.weight_decay * self.net.params_weight_decay[i]
        if not decay:
            return
        blob = self.net.learnable_params[i]
        diff, data = blob.diff, blob.cpu_data
        decay = np.float32(decay)
        t = self.scratch(i)  # free until compute_update_value
        if self.param.regularization_type == "L2":
            np.multiply(data, decay, out=t)
        else:  # L1; sign(0) = 0, so a pruned weight gets no decay
            np.sign(data, out=t)
            t *= decay
        diff += t

    def scratch(self, i):
        """A float32 work buffer shaped like param i, reused across iterations."""
        if not hasattr(self, "_scratch"):
            self._scratch = [np.empty(p.shape, np.float32) for p in self.net.learnable_params]
        return self._scratch[i]

    def local_rate(self, i, rate):
        return np.float32(rate * self.net.params_lr[i])

    def compute_update_value(self, i, rate):
        raise NotImplementedError

    # --- snapshots -----------------------------------------------------------------------
    def snapshot(self):
        """Write <prefix>_iter_N.caffemodel / .solverstate (+ .masks), as one set; return the
        model path.  In data-parallel training every rank calls it (the callbacks' state_dict()
        may gather from all ranks) and only the root solver writes (returns None elsewhere)."""
        cuda.sync_history_to_host(self)
        if not root_solver():
            for _, cb in snapshot_state.callback_states(self):
                cb.state_dict()
            self._last_snapshot_iter = self.iter
            return None
        with self.snapshot_lock():
            model = snapshot_state.write_snapshot(self)
        self._last_snapshot_iter = self.iter
        return model

    @contextlib.contextmanager
    def snapshot_lock(self):
        """Hold the lock on snapshot_prefix (`<prefix>.lock`) for the block, first clearing
        what an interrupted snapshot write left there.  solve() and `caffe-lite train` hold it
        for the whole run; a snapshot() outside them holds it while writing.  LockedError when
        another process holds it.  Only the root solver writes snapshots, and locks."""
        prefix = self.param.snapshot_prefix
        if not prefix or self._snapshot_lock is not None or not root_solver():
            yield
            return
        lock = snapshot_state.snapshot_lock(prefix).acquire()
        self._snapshot_lock = lock
        try:
            if lock.held:
                snapshot_state.recover(prefix)
            yield
        finally:
            self._snapshot_lock = None
            lock.release()

    def restore(self, state_file):
        cuda.sync_history_to_host(self)
        snapshot_state.restore(self, state_file)

    # --- signals (the CLI's SIGINT / SIGTERM) ----------------------------------------------
    def install_signal_handlers(self):
        """SIGINT / SIGTERM: finish the current iteration, snapshot, stop.  A second signal
        interrupts at once."""
        def handler(signum, frame):
            if self.action_request == SNAPSHOT_STOP:
                raise KeyboardInterrupt
            log.info("Received %s: snapshotting and stopping after iteration %d",
                     signal.Signals(signum).name, self.iter)
            self.action_request = SNAPSHOT_STOP
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        return previous


class _FunctionCallbacks:
    """pycaffe's callback pair: functions of no arguments."""

    def __init__(self, on_start, on_gradients_ready):
        self._start, self._ready = on_start, on_gradients_ready

    def on_start(self, solver):
        self._start()

    def on_gradients_ready(self, solver):
        self._ready()


def solver_from_type(type_name):
    from . import SOLVERS
    cls = SOLVERS.get(type_name)
    if cls is None:
        raise SolverError(f"unknown solver type '{type_name}'; known: {', '.join(SOLVERS)}")
    return cls


def get_solver(solver, weights=None):
    """The solver class the prototxt's `type` (or `solver_type`) names, built from it."""
    param = load_solver_param(solver)
    return solver_from_type(param.type)(param, weights=weights)

