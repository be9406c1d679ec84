"""A training progress bar on a terminal (tqdm), silent otherwise, that keeps Caffe's log
lines intact by printing them above the bar."""
import contextlib
import logging
import sys


class _TqdmHandler(logging.Handler):
    def __init__(self, inner):
        super().__init__(inner.level)
        self.inner = inner
        self.setFormatter(inner.formatter)

    def emit(self, record):
        from tqdm import tqdm
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class _Lines:
    """Without a terminal: one line to stderr every `every` iterations."""

    def __init__(self, total, every):
        self.total, self.every, self.done = total, every, 0

    def on_gradients_ready(self, s):
        self.done += 1
        if self.done % self.every == 0 or self.done == self.total:
            print(f"iteration {s.iter + 1} ({self.done}/{self.total}), loss "
                  f"{s.smoothed_loss:.4g}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def training_bar(solver, total, enabled=None, lines_every=0):
    """Attach a bar to `solver` for `total` iterations while the block runs.  Without a
    terminal (or tqdm) nothing is shown, unless `lines_every` asks for a plain line every that
    many iterations."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    try:
        from tqdm import tqdm
    except ImportError:
        enabled = False
    if not enabled or total <= 0:
        if lines_every > 0 and total > 0:
            cb = _Lines(total, lines_every)
            solver.callbacks.append(cb)
            try:
                yield None
            finally:
                solver.callbacks.remove(cb)
            return
        yield None
        return
    logger = logging.getLogger("caffe_lite")
    saved = list(logger.handlers)
    logger.handlers[:] = [_TqdmHandler(h) for h in saved] or saved
    bar = tqdm(total=total, unit="it", dynamic_ncols=True, leave=False, file=sys.stderr)

    class _Callback:
        def on_gradients_ready(self, s):
            bar.update(1)
            bar.set_postfix(loss=f"{s.smoothed_loss:.4g}", refresh=False)

    cb = _Callback()
    solver.callbacks.append(cb)
    try:
        yield bar
    finally:
        solver.callbacks.remove(cb)
        bar.close()
        logger.handlers[:] = saved
