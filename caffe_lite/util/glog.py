"""Caffe's glog line format, so existing log parsers (tools/extra/parse_log.py, plot scripts)
read caffe-lite logs unchanged:  I1122 10:04:05.123456 12345 solver.cpp:218] message"""
import logging
import os
import sys
import time

_LEVEL = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E",
          logging.CRITICAL: "F"}


class GlogFormatter(logging.Formatter):
    def format(self, record):
        t = time.localtime(record.created)
        micros = int((record.created % 1) * 1e6)
        src = os.path.basename(record.pathname).replace(".py", ".cpp") \
            if record.pathname else "caffe_lite"
        head = (f"{_LEVEL.get(record.levelno, 'I')}{t.tm_mon:02d}{t.tm_mday:02d} "
                f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{micros:06d} "
                f"{os.getpid()} {src}:{record.lineno}] ")
        return head + record.getMessage()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (it may be replaced, e.g. under pytest)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def install(level=logging.INFO, stream=None):
    """Route the `caffe_lite` logger to `stream` (default: the current sys.stderr) in glog
    format (what the CLI does)."""
    logger = logging.getLogger("caffe_lite")
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(GlogFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    return logger
