"""Background prefetching: a daemon thread fills a bounded queue with batches, as Caffe's
BasePrefetchingDataLayer does, so loading and transforming overlap the net's compute.

The thread calls one `produce()` function, batch after batch, so every random draw happens in
the same order whatever the timing.  An exception in the thread is handed to the consumer and
raised there (the same, typed exception object).  The thread holds no reference to the layer
that owns the Prefetcher, so a layer that is dropped is collected and its thread stopped."""
import queue
import threading
import weakref

from ..errors import DataError

_POLL = 0.1


def _run(produce, q, stop):
    try:
        while not stop.is_set():
            item = ("batch", produce())
            while not stop.is_set():
                try:
                    q.put(item, timeout=_POLL)
                    break
                except queue.Full:
                    pass
    except BaseException as exc:  # handed to the consumer, which re-raises it
        while not stop.is_set():
            try:
                q.put(("error", exc), timeout=_POLL)
                return
            except queue.Full:
                pass


class Prefetcher:
    def __init__(self, produce, depth=4, name="prefetch", on_close=None):
        self.name = name
        self._queue = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._error = None
        self._thread = threading.Thread(target=_run, args=(produce, self._queue, self._stop),
                                        name=f"caffe-lite {name}", daemon=True)
        self._on_close = on_close
        self._thread.start()

    def get(self):
        """The next batch; re-raises an error from the loading thread."""
        if self._error is not None:
            raise self._error
        if self._stop.is_set():
            raise DataError(f"{self.name}: the data layer was closed")
        while True:
            try:
                kind, payload = self._queue.get(timeout=_POLL)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise DataError(f"{self.name}: the prefetch thread stopped unexpectedly")
        if kind == "error":
            self._error = payload
            raise payload
        return payload

    @property
    def alive(self):
        return self._thread.is_alive()

    def stop(self, timeout=None):
        """Stop the thread and drop the batches it made ahead; wait until it has finished the
        batch it is building (at most `timeout` seconds).  Returns True when it has exited,
        so the source may be used by another thread."""
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self, timeout=5.0):
        """Stop the thread (it finishes the batch it is building) and release the source."""
        if self._stop.is_set():
            return
        if self.stop(timeout) and self._on_close is not None:
            self._on_close()


def attach(owner, prefetcher):
    """Stop `prefetcher` when `owner` is garbage-collected or at interpreter exit."""
    return weakref.finalize(owner, prefetcher.close)
