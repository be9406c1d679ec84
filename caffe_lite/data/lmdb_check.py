"""LMDB's on-disk structure, checked with plain reads before liblmdb maps the file.

liblmdb trusts data.mdb.  A file shorter than its header says (an interrupted copy) ends in
SIGBUS when a page past its end is touched, and a damaged page header (a zeroed page, say)
can stop the process on an assertion inside mdb.c.  Neither can be caught in Python, so the
file is read here first with os.pread, where a short read is just a short read:

  * `read_meta` (every open): both meta pages, and the file size against the
    (last page + 1) x page size the newer one declares;
  * `scan`: every branch and leaf page reachable from the main database's root: its own page
    number, its type, its bounds, each node inside the page, each child and overflow page
    number inside the file, the depth, and the page and record counts against the header.
    With `records=True` it also yields every (key, value), read here, not by liblmdb, so a
    damaged page costs the records below it and nothing else.

What no check here can see: damage inside a value (LMDB keeps no checksums; a Datum that no
longer parses is reported by its reader, one that still parses is wrong pixels), and a file
changed after it was checked.

Layout (liblmdb 0.9, 64-bit, MDB_DATA_VERSION 1; little-endian): every page starts with a
16-byte header (pgno u64, pad u16, flags u16, lower u16, upper u16; an overflow page keeps
its page count in lower/upper as u32).  Pages 0 and 1 are meta pages: magic, version,
address, mapsize, then two 48-byte MDB_db records (free list, main; the free list's pad is
the page size), last_pg, txnid.  A branch or leaf page holds `(lower - 16) / 2` u16 node
offsets; a node is lo u16, hi u16, flags u16, ksize u16, the key, then (leaf) the value or,
for F_BIGDATA, the u64 number of its first overflow page; a branch node's child page number
is lo | hi << 16 | flags << 32."""
import os
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = 0xBEEFC0DE
DATA_VERSION = 1
PAGEHDRSZ = 16
NODESIZE = 8
P_INVALID = 0xFFFFFFFFFFFFFFFF
P_BRANCH, P_LEAF, P_OVERFLOW, P_META, P_LEAF2, P_SUBP = 0x01, 0x02, 0x04, 0x08, 0x20, 0x40
F_BIGDATA, F_SUBDATA, F_DUPDATA = 0x01, 0x02, 0x04
MDB_DUPSORT = 0x04
CURSOR_STACK = 32            # liblmdb's deepest tree
_TYPE_BITS = P_BRANCH | P_LEAF | P_OVERFLOW | P_META | P_LEAF2 | P_SUBP
_META = struct.Struct("<QHHHH" "II" "QQ" "IHHQQQQQ" "IHHQQQQQ" "QQ")


class Damage(Exception):
    """Raised (inside this module) for a file that cannot be read at all; callers turn it into
    their own typed error naming the database."""


@dataclass
class Meta:
    psize: int
    last_pg: int
    txnid: int
    mapsize: int
    flags: int       # the main database's (MDB_DUPSORT, ...)
    depth: int
    branch_pages: int
    leaf_pages: int
    overflow_pages: int
    entries: int
    root: int

    file_size: int = 0

    @property
    def tree_pages(self):
        return self.branch_pages + self.leaf_pages

    @property
    def truncated(self):
        """What is missing when the file is shorter than the header says, else ''."""
        need = (self.last_pg + 1) * self.psize
        if self.file_size >= need:
            return ""
        return (f"data.mdb is {self.file_size:,} bytes but its header says the database spans "
                f"{self.last_pg + 1:,} pages of {self.psize} bytes ({need:,} bytes): the file "
                "is truncated (an interrupted copy?)")


def _data_file(path):
    path = os.fspath(path)
    return os.path.join(path, "data.mdb") if os.path.isdir(path) else path


def _read_one_meta(fd, offset, which):
    buf = os.pread(fd, _META.size, offset)
    if len(buf) < _META.size:
        raise Damage(f"meta page {which} is cut short: the file ends inside it")
    (_pg, _pad, pflags, _lo, _up, magic, version, _addr, mapsize,
     psize, _ff, _fd, _fb, _fl, _fo, _fe, _fr,
     _mp, mflags, depth, branch, leaf, overflow, entries, root,
     last_pg, txnid) = _META.unpack(buf)
    if not pflags & P_META or magic != MAGIC:
        raise Damage(f"meta page {which} is not an LMDB meta page (flags {pflags:#x}, magic "
                     f"{magic:#x}; expected {MAGIC:#x})")
    if version != DATA_VERSION:
        raise Damage(f"meta page {which} declares data format version {version}; this "
                     f"liblmdb reads version {DATA_VERSION}")
    if psize < 256 or psize > 65536 or psize & (psize - 1):
        raise Damage(f"meta page {which} declares a page size of {psize} bytes")
    return Meta(psize, last_pg, txnid, mapsize, mflags, depth, branch, leaf, overflow,
                entries, root)


def read_meta(path, allow_truncated=False):
    """The newer of the two meta pages (as liblmdb picks it), after the checks liblmdb relies
    on: both are meta pages of this format version, the page size is sane, and the file holds
    every page up to last_pg (unless `allow_truncated`: `Meta.file_size` tells).  Raises
    Damage naming what is wrong."""
    fname = _data_file(path)
    fd = os.open(fname, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        m0 = _read_one_meta(fd, 0, 0)
        m1 = _read_one_meta(fd, m0.psize, 1)
    finally:
        os.close(fd)
    if m0.psize != m1.psize:
        raise Damage(f"the meta pages disagree on the page size ({m0.psize} and {m1.psize})")
    meta = m1 if m1.txnid > m0.txnid else m0
    meta.file_size = size
    if meta.last_pg < 1:
        raise Damage(f"the header declares {meta.last_pg + 1} page(s)")
    if meta.truncated and not allow_truncated:
        raise Damage(meta.truncated)
    if meta.root != P_INVALID and not 2 <= meta.root <= meta.last_pg:
        raise Damage(f"the header's root page {meta.root} lies outside the file's pages "
                     f"2..{meta.last_pg}")
    if meta.root != P_INVALID and not 1 <= meta.depth <= CURSOR_STACK:
        raise Damage(f"the header declares a tree depth of {meta.depth}")
    if meta.flags & MDB_DUPSORT:
        raise Damage("the main database allows duplicate keys (MDB_DUPSORT), which a database "
                     "of Datums never does")
    return meta


@dataclass
class Problem:
    """A damaged page: what is lost is the records below it (`records` when known)."""
    pgno: int
    detail: str
    parent: int = -1

    def __str__(self):
        where = f" (referenced from page {self.parent})" if self.parent >= 0 else ""
        return f"page {self.pgno}{where}: {self.detail}"


@dataclass
class Scan:
    meta: Meta
    problems: list
    branch_pages: int = 0
    leaf_pages: int = 0
    overflow_pages: int = 0
    entries: int = 0

    def count_mismatches(self):
        """Header counts that differ from what the walk found (only meaningful when no page
        was damaged)."""
        out = []
        for name in ("branch_pages", "leaf_pages", "overflow_pages", "entries"):
            found, declared = getattr(self, name), getattr(self.meta, name)
            if found != declared:
                out.append(f"{name.replace('_', ' ')}: the header says {declared:,}, the tree "
                           f"holds {found:,}")
        return out


def _ovpages(size, psize):
    return (PAGEHDRSZ - 1 + size) // psize + 1


_FIELD = np.arange(NODESIZE)
_SMALL = 24                  # pages with fewer nodes are parsed with struct, others with numpy


def _check_page(page, pgno, meta, want_leaf):
    """A problem string, or the page's nodes: [(offset, ksize, dsize, big)] for a leaf page,
    [child page number] for a branch page."""
    psize = meta.psize
    if len(page) < psize:
        return f"lies past the end of the file ({len(page)} of {psize} bytes readable)"
    own, _pad, flags, lower, upper = struct.unpack_from("<QHHHH", page)
    if own != pgno:
        zero = " (the page is zeroed)" if not any(page[:PAGEHDRSZ]) else ""
        return f"its header names page {own}, not {pgno}{zero}"
    kind = flags & _TYPE_BITS
    if kind not in (P_BRANCH, P_LEAF):
        return f"is neither a branch nor a leaf page (flags {flags:#06x})"
    if (kind == P_LEAF) != want_leaf:
        return (f"is a {'leaf' if kind == P_LEAF else 'branch'} page where the tree's depth "
                f"{meta.depth} needs a {'leaf' if want_leaf else 'branch'} page")
    if not PAGEHDRSZ <= lower <= upper <= psize or (lower - PAGEHDRSZ) % 2:
        return f"has bad bounds (lower {lower}, upper {upper}, page size {psize})"
    n = (lower - PAGEHDRSZ) // 2
    if n < (1 if want_leaf else 2):
        return f"holds {n} node(s)"
    ptrs = struct.unpack_from(f"<{n}H", page, PAGEHDRSZ)
    if min(ptrs) < upper or max(ptrs) > psize - NODESIZE:
        return f"has node offsets outside {upper}..{psize - NODESIZE}"
    if n <= _SMALL:   # struct is faster than numpy's per-call cost on a few nodes
        hdrs = [struct.unpack_from("<HHHH", page, o) for o in ptrs]
    else:
        buf = np.frombuffer(page, np.uint8)
        idx = np.asarray(ptrs, np.int64)[:, None] + _FIELD
        hdrs = buf[idx].view("<u2").tolist()
    if want_leaf:
        nodes = []
        for o, (lo, hi, nflags, ks) in zip(ptrs, hdrs):
            big = nflags == F_BIGDATA
            if nflags not in (0, F_BIGDATA, F_SUBDATA):
                return "holds nodes with invalid flags"
            ds = lo | (hi << 16)
            if o + NODESIZE + ks + (8 if big else ds) > psize:
                return "holds a node that runs past the end of the page"
            nodes.append((o, ks, ds, big))
        return nodes
    children = []
    for o, (lo, hi, nflags, ks) in zip(ptrs, hdrs):
        child = lo | (hi << 16) | (nflags << 32)
        if o + NODESIZE + ks > psize:
            return "holds a node that runs past the end of the page"
        if not 2 <= child <= meta.last_pg:
            return f"points to page {child}, outside the file's pages 2..{meta.last_pg}"
        children.append(child)
    return children


def scan(path, meta=None, records=False, problems_limit=1000):
    """Walk the main database's tree (see the module docstring).  Returns a Scan; with
    `records=True` returns a generator of ("record", key, value) and ("problem", Problem)
    items whose final item is ("done", Scan).  A value on overflow pages whose first page
    does not carry the overflow header is reported as a problem too (liblmdb never checks
    it)."""
    gen = _walk(path, meta, records, problems_limit)
    if records:
        return gen
    for item in gen:
        if item[0] == "done":
            return item[1]


def _walk(path, meta, records, problems_limit):
    meta = meta or read_meta(path)
    result = Scan(meta, [])
    if meta.root == P_INVALID:
        yield "done", result
        return
    psize = meta.psize
    fd = os.open(_data_file(path), os.O_RDONLY)
    try:
        stack = [(meta.root, 1, -1)]
        while stack:
            pgno, depth, parent = stack.pop()
            page = os.pread(fd, psize, pgno * psize)
            checked = _check_page(page, pgno, meta, depth == meta.depth)
            if isinstance(checked, str):
                p = Problem(pgno, checked, parent)
                result.problems.append(p)
                if records:
                    yield "problem", p
                if len(result.problems) >= problems_limit:
                    break
                continue
            if depth < meta.depth:
                result.branch_pages += 1
                stack.extend((c, depth + 1, pgno) for c in reversed(checked))
                continue
            result.leaf_pages += 1
            result.entries += len(checked)
            bad = None
            for o, ks, ds, big in checked:
                if big:
                    first = struct.unpack_from("<Q", page, o + NODESIZE + ks)[0]
                    pages = _ovpages(ds, psize)
                    if first < 2 or first + pages - 1 > meta.last_pg:
                        bad = (first, pages)
                        break
                    result.overflow_pages += pages
            if bad is not None:
                p = Problem(pgno, f"a value's overflow pages {bad[0]}..{bad[0] + bad[1] - 1} "
                                  f"lie outside the file's pages 2..{meta.last_pg}", parent)
                result.problems.append(p)
                if records:
                    yield "problem", p
                continue
            if records:
                yield from _records(fd, page, meta, pgno, checked, result)
    finally:
        os.close(fd)
    yield "done", result


def _records(fd, page, meta, pgno, nodes, result):
    for off, ks, ds, b in nodes:
        start = off + NODESIZE
        key = page[start:start + ks]
        if not b:
            yield "record", key, page[start + ks:start + ks + ds]
            continue
        first = struct.unpack_from("<Q", page, start + ks)[0]
        head = os.pread(fd, PAGEHDRSZ, first * meta.psize)
        own, _pad, flags, count = struct.unpack("<QHHI", head.ljust(PAGEHDRSZ, b"\0"))
        if (len(head) < PAGEHDRSZ or own != first or not flags & P_OVERFLOW
                or count != _ovpages(ds, meta.psize)):
            p = Problem(first, f"the value of key {key!r} (leaf page {pgno}) starts on a page "
                               "whose header is not an overflow page header", pgno)
            result.problems.append(p)
            yield "problem", p
            continue
        value = os.pread(fd, ds, first * meta.psize + PAGEHDRSZ)
        if len(value) < ds:
            p = Problem(first, f"the value of key {key!r} (leaf page {pgno}) runs past the end "
                               "of the file", pgno)
            result.problems.append(p)
            yield "problem", p
            continue
        yield "record", key, value
