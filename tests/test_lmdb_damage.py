"""A damaged LMDB never kills the process: truncated files, zeroed pages and lmdb errors
become DataErrors naming the database (in the main thread, also when met by the prefetch
thread), and `caffe-lite check-db` reports what is damaged without crashing.

Without the checks each of these damages ends the process (SIGBUS, an abort inside mdb.c):
the subprocess tests show it by switching the check off."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import lmdb
import numpy as np
import pytest

import caffe_lite
from caffe_lite.cli import main as cli
from caffe_lite.data import lmdb_check, lmdb_io
from caffe_lite.data.check_db import _liblmdb_reads, check_db
from caffe_lite.errors import DataError

from data_util import restore_logging  # noqa: F401  (autouse fixture)
from data_util import data_layer_text, datum_lmdb, write_lmdb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PSIZE = 4096


@pytest.fixture
def db(tmp_path):
    """300 small Datums: a two-level tree (a branch page over a dozen leaf pages)."""
    r = np.random.default_rng(0)
    path = tmp_path / "db"
    datum_lmdb(path, [r.integers(0, 256, (1, 6, 6)).astype(np.uint8) for _ in range(300)])
    return path


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _leaf_pages(path):
    """Page numbers of the leaf pages, from the tree walk."""
    meta = lmdb_check.read_meta(path)
    with open(os.path.join(path, "data.mdb"), "rb") as f:
        data = f.read()
    leaves = []
    for pg in range(2, meta.last_pg + 1):
        flags = int.from_bytes(data[pg * PSIZE + 10: pg * PSIZE + 12], "little")
        if flags & lmdb_check.P_LEAF:
            leaves.append(pg)
    return leaves


def _zero_page(path, pg):
    with open(os.path.join(path, "data.mdb"), "r+b") as f:
        f.seek(pg * PSIZE)
        f.write(bytes(PSIZE))


def _net(path, batch=7):
    return caffe_lite.Net("layer { " + data_layer_text(path, batch) + " }", caffe_lite.TRAIN)


def test_header_and_tree_of_a_good_database(db):
    meta = lmdb_check.read_meta(db)
    assert meta.psize == PSIZE and meta.entries == 300 and meta.depth == 2
    scan = lmdb_check.scan(db, meta)
    assert scan.problems == [] and scan.count_mismatches() == []
    assert (scan.branch_pages, scan.leaf_pages, scan.entries) == \
        (meta.branch_pages, meta.leaf_pages, 300)
    # the walk reads every record with its key and bytes, as liblmdb does
    env = lmdb.open(str(db), readonly=True, lock=False)
    with env.begin() as txn:
        expected = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    env.close()
    got = [(bytes(i[1]), bytes(i[2])) for i in lmdb_check.scan(db, records=True)
           if i[0] == "record"]
    assert got == expected


def test_values_on_overflow_pages_are_walked(tmp_path):
    r = np.random.default_rng(1)
    arrays = [r.integers(0, 256, (1, 48, 48)).astype(np.uint8) for _ in range(20)]
    datum_lmdb(tmp_path / "big", arrays)
    scan = lmdb_check.scan(tmp_path / "big")
    assert scan.problems == [] and scan.count_mismatches() == []
    assert scan.overflow_pages == 20   # one 2.3 kB value per overflow page
    report = check_db(tmp_path / "big")
    assert report.ok and report.records == 20 and report.first_shape == (1, 48, 48)


@pytest.mark.parametrize("cut", [PSIZE + 100, 5 * PSIZE, -PSIZE + 1])
def test_a_truncated_copy_is_a_data_error_naming_the_file(db, tmp_path, cut):
    bad = _copy(db, tmp_path / "copy")
    size = os.path.getsize(bad / "data.mdb")
    os.truncate(bad / "data.mdb", cut % size)
    with pytest.raises(DataError) as exc:
        _net(bad)
    msg = str(exc.value)
    assert str(bad) in msg and "layer 'data' (Data)" in msg
    assert "truncated" in msg or "cut short" in msg


def test_a_zeroed_page_is_found_before_liblmdb_reads_it(db, tmp_path):
    bad = _copy(db, tmp_path / "copy")
    pg = _leaf_pages(bad)[3]
    _zero_page(bad, pg)
    with pytest.raises(DataError, match=rf"page {pg} .*zeroed.*check-db"):
        _net(bad)


@pytest.mark.parametrize("damage", ["truncate", "zero"])
def test_without_the_check_the_process_dies(db, tmp_path, damage):
    """The same damages with lmdb_io.verify switched off: liblmdb ends the process (SIGBUS on
    the truncated file, SIGABRT on its assertion for the zeroed page); with it, one
    DataError.  Every leaf page and every truncation point is tried."""
    pages = os.path.getsize(db / "data.mdb") // PSIZE
    targets = _leaf_pages(db) if damage == "zero" else list(range(3, pages))
    code = f"""
        import os, shutil, sys
        import caffe_lite
        from caffe_lite.data import lmdb_io
        from caffe_lite.errors import DataError
        if sys.argv[1:] == ["off"]:
            lmdb_io.verify = lambda path, where="": None
        for n, pg in enumerate({targets}):
            d = "{tmp_path}/%s%d" % (sys.argv[1], n)
            shutil.copytree("{db}", d)
            with open(d + "/data.mdb", "r+b") as f:
                if "{damage}" == "zero":
                    f.seek(pg * {PSIZE}); f.write(bytes({PSIZE}))
                else:
                    f.truncate(pg * {PSIZE} + 100)
            try:
                net = caffe_lite.Net("layer {{ name: 'd' type: 'Data' top: 'x' top: 'y' "
                                     "data_param {{ source: '%s' batch_size: 50 "
                                     "backend: LMDB }} }}" % d, caffe_lite.TRAIN)
                for _ in range(8):
                    net.forward()
                net.close()
                print("read", pg, flush=True)
            except DataError as exc:
                print("DataError", pg, flush=True)
    """
    checked = subprocess.run([sys.executable, "-c", textwrap.dedent(code), "on"],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert checked.returncode == 0, checked.stderr[-2000:]
    outcomes = checked.stdout.split()[0::2]
    assert outcomes.count("DataError") >= len(targets) - 1 and "Traceback" not in checked.stderr
    unchecked = subprocess.run([sys.executable, "-c", textwrap.dedent(code), "off"],
                               capture_output=True, text=True, cwd=ROOT, timeout=120)
    died = {"truncate": -signal.SIGBUS, "zero": -signal.SIGABRT}[damage]
    assert unchecked.returncode == died, (unchecked.returncode, unchecked.stderr[-500:])


def test_lmdb_errors_in_the_prefetch_thread_reach_the_main_thread_as_data_errors(
        db, monkeypatch):
    """Whatever lmdb error class the reading thread meets (CorruptedError, PageNotFoundError,
    ...), the net's forward raises a DataError naming the database and the layer."""
    real_begin = lmdb_io.DB.begin

    class FailingCursor:
        def __init__(self, cur):
            self.cur, self.n = cur, 0

        def first(self):
            return self.cur.first()

        def item(self):
            return self.cur.item()

        def next(self):
            self.n += 1
            if self.n == 40:
                raise lmdb.PageNotFoundError("mdb_cursor_next: MDB_PAGE_NOTFOUND")
            return self.cur.next()

    class Txn:
        def __init__(self, txn):
            self.txn = txn

        def cursor(self):
            return FailingCursor(self.txn.cursor())

        def abort(self):
            self.txn.abort()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.txn.__exit__(*exc)

    monkeypatch.setattr(lmdb_io.DB, "begin", lambda self, **kw: Txn(real_begin(self, **kw)))
    net = _net(db, batch=7)
    with pytest.raises(DataError) as exc:
        for _ in range(10):
            net.forward()
    net.close()
    msg = str(exc.value)
    assert "layer 'data' (Data)" in msg and str(db) in msg
    assert "PageNotFoundError" in msg and "check-db" in msg


def test_check_db_reports_a_good_database(db, capsys):
    assert cli(["check-db", str(db)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "OK: 300 of 300 records read, 300 good (1x6x6), 0 bad records, 0 bad pages"


def test_check_db_lists_bad_records(tmp_path, capsys):
    from caffe_lite.io import array_to_datum
    good = array_to_datum(np.zeros((1, 6, 6), np.uint8), 1).SerializeToString()
    other = array_to_datum(np.zeros((1, 5, 6), np.uint8), 1).SerializeToString()
    records = [(b"%08d" % i, good) for i in range(10)]
    records[3] = (b"00000003", b"\xff\xff\xff not a datum")
    records[7] = (b"00000007", other)
    write_lmdb(tmp_path / "db", records)
    assert cli(["check-db", str(tmp_path / "db")]) == 1
    out = capsys.readouterr().out
    assert "bad record '00000003': not a valid Caffe Datum" in out
    assert "bad record '00000007': Datum is 1x5x6 but the first record is 1x6x6" in out
    assert "DAMAGED: 10 of 10 records read, 8 good (1x6x6), 2 bad records, 0 bad pages" in out


def test_check_db_reads_what_is_left_of_a_damaged_database(db, tmp_path, capsys):
    bad = _copy(db, tmp_path / "zeroed")
    pg = _leaf_pages(bad)[2]
    _zero_page(bad, pg)
    report = check_db(bad)
    assert not report.ok and [p.pgno for p in report.bad_pages] == [pg]
    assert 200 < report.records < 300 and report.bad_records == []
    assert report.liblmdb is None   # not run when pages are damaged: it would abort
    cut = _copy(db, tmp_path / "cut")
    os.truncate(cut / "data.mdb", 6 * PSIZE)
    assert cli(["check-db", str(cut)]) == 1
    out = capsys.readouterr().out
    assert "the file is truncated" in out and "lies past the end of the file" in out


def test_the_liblmdb_read_runs_in_a_child_that_may_die(db, tmp_path):
    """check-db's last step reads through liblmdb in a child process: a crash there is a
    line of the report, not the end of check-db."""
    assert _liblmdb_reads(str(db), 300) == ""
    bad = _copy(db, tmp_path / "zeroed")
    _zero_page(bad, _leaf_pages(bad)[2])
    assert _liblmdb_reads(str(bad), 300).startswith("liblmdb crashed reading it (SIGABRT)")
    assert "reads 300 records where the page walk found 299" in _liblmdb_reads(str(db), 299)


def test_check_db_path_errors(tmp_path, capsys):
    assert cli(["check-db", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli(["check-db", str(tmp_path / "empty")]) == 1
    assert "no data.mdb" in capsys.readouterr().err


def test_header_counts_that_disagree_with_the_tree(db, tmp_path, capsys):
    bad = _copy(db, tmp_path / "counts")
    with open(bad / "data.mdb", "r+b") as f:
        for meta_page in (0, 1):      # the main database's entry count, in both meta pages
            f.seek(meta_page * PSIZE + 120)
            f.write((301).to_bytes(8, "little"))
    assert cli(["check-db", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "header mismatch: entries: the header says 301, the tree holds 300" in out


def test_a_database_with_duplicate_keys_is_refused(db, tmp_path):
    """A main database flagged MDB_DUPSORT (which no Datum database is; liblmdb would read its
    leaves as sub-databases) is refused at open."""
    bad = _copy(db, tmp_path / "dup")
    with open(bad / "data.mdb", "r+b") as f:
        for meta_page in (0, 1):      # the main database's md_flags
            f.seek(meta_page * PSIZE + 92)
            f.write((lmdb_check.MDB_DUPSORT).to_bytes(2, "little"))
    with pytest.raises(DataError, match="MDB_DUPSORT"):
        _net(bad)


def test_a_tree_above_verify_pages_gets_the_header_checks_only(db, tmp_path, monkeypatch,
                                                               caplog):
    monkeypatch.setattr(lmdb_io, "VERIFY_PAGES", 2)
    bad = _copy(db, tmp_path / "zeroed")
    _zero_page(bad, _leaf_pages(bad)[3])
    with caplog.at_level("INFO", logger="caffe_lite"):
        meta = lmdb_io.verify(str(bad))       # the zeroed page is not looked at
    assert meta.tree_pages > 2
    assert "more than are walked at open; header checked" in caplog.text
    os.truncate(bad / "data.mdb", 3 * PSIZE)  # the header checks still run
    with pytest.raises(DataError, match="truncated"):
        lmdb_io.verify(str(bad))


def test_a_reader_closed_by_a_finalizer_inside_open_db_does_not_deadlock(db, tmp_path,
                                                                         monkeypatch):
    """A dropped data layer's finalizer may run (garbage collection) while this thread is
    inside open_db, verifying another database: its close waits until open_db is done
    instead of taking the registry lock again (a deadlock that hung the emulated GPU suite)."""
    import threading
    other = _copy(db, tmp_path / "other")
    first = lmdb_io.open_db(str(db))
    real_verify = lmdb_io.verify

    def verify_then_collect(path, where=""):
        first.close()                     # as weakref.finalize would, in the middle of open_db
        return real_verify(path, where)

    monkeypatch.setattr(lmdb_io, "verify", verify_then_collect)
    opened = []
    t = threading.Thread(target=lambda: opened.append(lmdb_io.open_db(str(other))), daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "open_db deadlocked on a close made from inside it"
    assert os.path.realpath(db) not in lmdb_io._OPEN      # the deferred close ran afterwards
    assert opened[0].entries == 300
    opened[0].close()
    assert os.path.realpath(other) not in lmdb_io._OPEN
