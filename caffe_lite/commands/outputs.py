"""What every verb checks before it does any work: its outputs, and its count flags.

An output must be a file name (never an existing directory, even with -overwrite), in a
directory that exists (the command line creates no directories, as Caffe's tools create
none), not an existing file unless -overwrite is given (databases: never), and distinct from
the verb's other outputs.  Counts such as -iterations must be at least 1."""
import os

from ..errors import CaffeLiteError


def check_outputs(outputs, overwrite=False, kind="file"):
    """`outputs`: [(flag, path)], a path of None or "" meaning not asked for.  `kind`: "file",
    or "database" for an LMDB directory that is created whole."""
    given = [(flag, os.fspath(path)) for flag, path in outputs if path]
    paths = [os.path.abspath(p) for _, p in given]
    if len(set(paths)) != len(paths):
        raise CaffeLiteError(f"the output files must differ: "
                             f"{', '.join(f'{f} {p}' for f, p in given)}")
    for flag, path in given:
        where = f"{flag} {path}" if flag.startswith("-") else path
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise CaffeLiteError(f"{where}: directory {parent} does not exist; create it first "
                                 "(caffe-lite creates no directories)")
        if kind == "database":
            if os.path.lexists(path):
                raise CaffeLiteError(f"{where} already exists; refusing to overwrite it (remove "
                                     "it or choose another output name)")
            continue
        if os.path.isdir(path):
            raise CaffeLiteError(f"{where} is a directory; give a file name (-overwrite "
                                 "replaces files, never directories)")
        if os.path.lexists(path) and not overwrite:
            raise CaffeLiteError(f"{where} already exists; refusing to overwrite it (pass "
                                 "-overwrite, or choose another name)")


def check_snapshot_prefix(prefix):
    """train: the snapshot_prefix's directory must exist (Caffe checks it before training)."""
    if not prefix:
        return
    parent = os.path.dirname(prefix) or "."
    if not os.path.isdir(parent):
        raise CaffeLiteError(f"snapshot_prefix '{prefix}': directory {os.path.abspath(parent)} "
                             "does not exist; create it first, or change snapshot_prefix "
                             "(caffe-lite creates no directories)")


def at_least_one(args, *names):
    """Flags counting iterations or batches must be >= 1."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise CaffeLiteError(f"-{name} must be >= 1, got {value}")
