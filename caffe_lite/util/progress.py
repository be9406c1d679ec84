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


@contextlib.contextmanager
def training_bar(solver, total, enabled=None):
    """Attach a bar to `solver` for `total` iterations while the block runs."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    try:
        from tqdm import tqdm
    except ImportError:
        enabled = False
    if not enabled or total <= 0:
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
