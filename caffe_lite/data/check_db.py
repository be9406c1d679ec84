"""`caffe-lite check-db`: test a (copied) LMDB of Datums before a long run.

Every page of the tree and every record is read with lmdb_check's plain reads, never through
liblmdb, so a truncated or damaged file is reported rather than crashing the check: damaged
pages (and so the records below them), records that are not Datums or do not decode, and
records whose size differs from the first one (a Data layer stacks records of one size into
a batch).  When the walk finds no damaged page, liblmdb itself then reads every record in a
child process, so anything it would still stumble on is reported too (by its error, or by the
signal that ended the child) without ending this process."""
import subprocess
import sys
from dataclasses import dataclass, field

from ..errors import DataError
from ..io.datum import decode_datum, parse_datum
from . import lmdb_check
from .lmdb_io import _check_path, key_text

_LIBLMDB_READ = """
import sys, lmdb
env = lmdb.open(sys.argv[1], readonly=True, lock=False, subdir=True, create=False)
n = 0
with env.begin(buffers=True) as txn:
    for _ in txn.cursor():
        n += 1
print(n)
"""


@dataclass
class DBReport:
    path: str
    meta: lmdb_check.Meta = None
    records: int = 0                              # records read (good or bad)
    first_shape: tuple = None
    bad_records: list = field(default_factory=list)   # (key text, detail)
    bad_pages: list = field(default_factory=list)     # lmdb_check.Problem
    count_mismatches: list = field(default_factory=list)
    liblmdb: str = None                           # None: not run; "" ok; else what happened

    @property
    def ok(self):
        return not (self.bad_records or self.bad_pages or self.count_mismatches
                    or self.liblmdb or self.meta.truncated)


def check_db(path, liblmdb=True, on_progress=None):
    """A DBReport for the LMDB at `path`; DataError only when it is not an LMDB at all (missing,
    a file, no data.mdb) or its header is unreadable."""
    path = str(path)
    _check_path(path, "")
    report = DBReport(path)
    try:
        report.meta = lmdb_check.read_meta(path, allow_truncated=True)
        items = lmdb_check.scan(path, report.meta, records=True)
        for item in items:
            if item[0] == "problem":
                report.bad_pages.append(item[1])
            elif item[0] == "record":
                _check_record(report, item[1], item[2])
                if on_progress is not None and report.records % 10000 == 0:
                    on_progress(report)
            else:
                scan = item[1]
    except lmdb_check.Damage as exc:
        raise DataError(f"LMDB '{path}' is damaged: {exc}") from None
    except OSError as exc:
        raise DataError(f"cannot read LMDB '{path}': {exc}") from None
    if not report.bad_pages and not report.meta.truncated:
        report.count_mismatches = scan.count_mismatches()
        if liblmdb:
            report.liblmdb = _liblmdb_reads(path, report.records)
    return report


def _check_record(report, key, value):
    report.records += 1
    where = f"key '{key_text(key)}'"
    try:
        shape = decode_datum(parse_datum(value, where), "unchanged", where).shape
    except DataError as exc:
        report.bad_records.append((key_text(key), str(exc).split(": ", 1)[-1]))
        return
    if report.first_shape is None:
        report.first_shape = shape
    elif shape != report.first_shape:
        report.bad_records.append((key_text(key), f"Datum is {'x'.join(map(str, shape))} but "
                                   f"the first record is "
                                   f"{'x'.join(map(str, report.first_shape))}"))


def _liblmdb_reads(path, expected):
    """'' when liblmdb reads `expected` records in a child process, else what went wrong."""
    try:
        r = subprocess.run([sys.executable, "-c", _LIBLMDB_READ, path], capture_output=True,
                           text=True)
    except OSError as exc:
        return f"could not start the liblmdb read check ({exc})"
    if r.returncode < 0:
        import signal
        try:
            name = signal.Signals(-r.returncode).name
        except ValueError:
            name = f"signal {-r.returncode}"
        tail = r.stderr.strip().splitlines()[-1:] or [""]
        return f"liblmdb crashed reading it ({name}) {tail[0]}".rstrip()
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()[-1:] or ["(no message)"]
        return f"liblmdb could not read it: {tail[0]}"
    got = int(r.stdout.strip() or -1)
    if got != expected:
        return f"liblmdb reads {got} records where the page walk found {expected}"
    return ""


def format_report(report, limit=20):
    """The report as lines of text (at most `limit` bad records and pages listed)."""
    m = report.meta
    lines = [f"{report.path}: {m.entries:,} records declared, {m.last_pg + 1:,} pages of "
             f"{m.psize} bytes, tree depth {m.depth}"]
    if m.truncated:
        lines.append(m.truncated)
    for p in report.bad_pages[:limit]:
        lines.append(f"bad {p} (the records below it cannot be read)")
    if len(report.bad_pages) > limit:
        lines.append(f"... and {len(report.bad_pages) - limit} more bad pages")
    for key, detail in report.bad_records[:limit]:
        lines.append(f"bad record '{key}': {detail}")
    if len(report.bad_records) > limit:
        lines.append(f"... and {len(report.bad_records) - limit} more bad records")
    lines += [f"header mismatch: {x}" for x in report.count_mismatches]
    if report.liblmdb:
        lines.append(report.liblmdb)
    shape = "x".join(map(str, report.first_shape)) if report.first_shape else "-"
    good = report.records - len(report.bad_records)
    verdict = "OK" if report.ok else "DAMAGED"
    lines.append(f"{verdict}: {report.records:,} of {m.entries:,} records read, {good:,} good "
                 f"({shape}), "
                 f"{len(report.bad_records):,} bad records, {len(report.bad_pages):,} bad "
                 "pages")
    return lines
