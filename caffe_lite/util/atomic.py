"""Atomic file writes: a crash never leaves a half-written model where the user's file was."""
import contextlib
import os
import tempfile

from ..errors import CaffeLiteError


class OutputExistsError(CaffeLiteError):
    pass


@contextlib.contextmanager
def atomic_open(path, mode="wb", overwrite=True):
    """Write to a temp file beside `path`, fsync, then rename over `path`.

    With overwrite=False an existing `path` is an error (checked before any work is done)."""
    path = os.fspath(path)
    if not overwrite and os.path.exists(path):
        raise OutputExistsError(f"{path} already exists; refusing to overwrite it "
                                "(choose another name or pass the overwrite flag)")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if not overwrite and os.path.exists(path):
            raise OutputExistsError(f"{path} appeared while writing; not overwritten")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data, overwrite=True):
    with atomic_open(path, "wb", overwrite=overwrite) as f:
        f.write(data)


def atomic_write_text(path, text, overwrite=True):
    with atomic_open(path, "w", overwrite=overwrite) as f:
        f.write(text)
