"""Canonical Huffman coding of integer symbol streams, vectorised with numpy.

Code lengths are limited to MAX_BITS (15), so a length fits in 4 bits and one 2^15-entry table
decodes any code.  The
stream is cut into blocks of BLOCK symbols whose bit lengths are stored, and every block is
decoded at once, one symbol per block per step (numpy over the blocks).

Stream layout (little-endian; docs/compression.md gives it byte by byte):

    uint32  A              number of code lengths (the largest used symbol + 1)
    uint8   lengths[ceil(A / 2)]  4 bits per symbol, symbol 2i in the low half of byte i:
                           the code length of the symbol (0: it does not occur), <= 15
    uint16  block_bits[B]  bits of each block of BLOCK symbols, B = ceil(n / BLOCK)
    bytes   codes          the codes, most significant bit first, blocks back to back,
                           the last byte padded with zero bits

The number of symbols n is not stored here: the caller knows it."""
import numpy as np

MAX_BITS = 15
BLOCK = 1024            # BLOCK * MAX_BITS must fit the uint16 block_bits
_WINDOW = (1 << MAX_BITS) - 1


class HuffmanError(ValueError):
    """A stream that does not decode (the file format turns it into a ModelFileError)."""


def code_lengths(freqs, max_bits=MAX_BITS):
    """Huffman code lengths (uint8) for symbol frequencies, limited to `max_bits` by halving
    the frequencies until the tree is shallow enough.  A lone symbol gets length 1."""
    freqs = np.asarray(freqs, np.int64)
    lengths = np.zeros(freqs.size, np.uint8)
    used = np.flatnonzero(freqs)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used] = 1
        return lengths
    if used.size > (1 << max_bits):
        raise ValueError(f"{used.size} symbols cannot have codes of at most {max_bits} bits")
    f = freqs[used].copy()
    while True:
        depth = _tree_depths(f)
        if depth.max() <= max_bits:
            lengths[used] = depth
            return lengths
        f = np.maximum(f >> 1, 1)


def _tree_depths(f):
    """Huffman code lengths for frequencies f: Moffat and Katajainen's in-place algorithm
    (1995) over the frequencies sorted in increasing order, O(n) after the sort."""
    n = f.size
    order = np.argsort(f, kind="stable")
    a = [int(x) for x in f[order]]
    # Phase 1: build the tree; a[i] becomes the weight, then the parent, of internal node i.
    a[0] += a[1]
    root, leaf = 0, 2
    for nxt in range(1, n - 1):
        if leaf >= n or a[root] < a[leaf]:
            a[nxt] = a[root]
            a[root] = nxt
            root += 1
        else:
            a[nxt] = a[leaf]
            leaf += 1
        if leaf >= n or (root < nxt and a[root] < a[leaf]):
            a[nxt] += a[root]
            a[root] = nxt
            root += 1
        else:
            a[nxt] += a[leaf]
            leaf += 1
    # Phase 2: depths of the internal nodes.
    a[n - 2] = 0
    for nxt in range(n - 3, -1, -1):
        a[nxt] = a[a[nxt]] + 1
    # Phase 3: depths of the leaves, the most frequent first.
    avail, used, depth, root, nxt = 1, 0, 0, n - 2, n - 1
    while avail > 0:
        while root >= 0 and a[root] == depth:
            used += 1
            root -= 1
        while avail > used:
            a[nxt] = depth
            nxt -= 1
            avail -= 1
        avail, depth, used = 2 * used, depth + 1, 0
    depths = np.empty(n, np.int64)
    depths[order] = a
    return depths


def canonical_codes(lengths):
    """Canonical code of each symbol (DEFLATE's rule: shorter codes first, then by symbol)."""
    lengths = np.asarray(lengths, np.int64)
    codes = np.zeros(lengths.size, np.int64)
    order = np.lexsort((np.arange(lengths.size), lengths))
    code, prev = 0, 0
    for s in order:
        ln = lengths[s]
        if ln == 0:
            continue
        code <<= ln - prev
        codes[s] = code
        code += 1
        prev = ln
    return codes


def encoded_bits(freqs, lengths):
    """Bits the codes of a stream take (without the table)."""
    return int(np.dot(np.asarray(freqs, np.int64), np.asarray(lengths, np.int64)))


def stream_bytes(freqs, n):
    """Bytes encode() writes for n symbols with these frequencies (for choosing formats)."""
    freqs = np.asarray(freqs, np.int64)
    lengths = code_lengths(freqs)
    a = int(np.flatnonzero(freqs)[-1]) + 1 if freqs.any() else 0
    return 4 + (a + 1) // 2 + 2 * _n_blocks(n) + (encoded_bits(freqs, lengths) + 7) // 8


def _n_blocks(n):
    return (n + BLOCK - 1) // BLOCK


def encode(symbols):
    """The stream bytes for a 1-d array of non-negative integer symbols."""
    symbols = np.asarray(symbols, np.int64).ravel()
    n = symbols.size
    freqs = np.bincount(symbols) if n else np.zeros(0, np.int64)
    lengths = code_lengths(freqs)
    codes = canonical_codes(lengths)
    sym_len = lengths.astype(np.int64)[symbols]
    sym_code = codes[symbols]
    total = int(sym_len.sum())
    starts = np.cumsum(sym_len) - sym_len
    bits = np.zeros(total + 8, np.uint8)
    for j in range(MAX_BITS):
        sel = sym_len > j
        if not sel.any():
            break
        shift = sym_len[sel] - 1 - j
        bits[starts[sel] + j] = (sym_code[sel] >> shift) & 1
    packed = np.packbits(bits[:total])
    block_bits = np.add.reduceat(sym_len, np.arange(0, n, BLOCK)) if n else np.zeros(0)
    return b"".join([np.uint32(lengths.size).tobytes(), _pack_nibbles(lengths),
                     block_bits.astype("<u2").tobytes(), packed.tobytes()])


def _pack_nibbles(lengths):
    pairs = np.zeros(2 * ((lengths.size + 1) // 2), np.uint8)
    pairs[:lengths.size] = lengths
    return (pairs[0::2] | (pairs[1::2] << 4)).tobytes()


def _unpack_nibbles(raw, a):
    b = np.frombuffer(raw, np.uint8)
    out = np.empty(2 * b.size, np.uint8)
    out[0::2] = b & 15
    out[1::2] = b >> 4
    if a % 2 and out[-1]:
        raise HuffmanError("a code length for a symbol past the table")
    return out[:a]


def _tables(lengths):
    """(symbol, length) for every MAX_BITS-bit window; length 0 marks a window that starts
    no valid code."""
    if lengths.size and lengths.max() > MAX_BITS:
        raise HuffmanError(f"a code length of {int(lengths.max())} bits (at most {MAX_BITS})")
    used = lengths[lengths > 0].astype(np.float64)
    if used.size and np.sum(2.0 ** -used) > 1.0:
        raise HuffmanError("the code lengths do not form a prefix code")
    codes = canonical_codes(lengths)
    sym = np.zeros(1 << MAX_BITS, np.int64)
    ln = np.zeros(1 << MAX_BITS, np.int64)
    for s in np.flatnonzero(lengths):
        shift = MAX_BITS - int(lengths[s])
        lo = int(codes[s]) << shift
        sym[lo:lo + (1 << shift)] = s
        ln[lo:lo + (1 << shift)] = lengths[s]
    return sym, ln


def decode(buf, offset, n):
    """Decode n symbols from `buf` (bytes) at `offset`; returns (int64 symbols, end offset).
    Raises HuffmanError for a stream that is cut short or does not decode."""
    view = memoryview(buf)
    pos = offset

    def take(count, what):
        nonlocal pos
        if pos + count > len(view):
            raise HuffmanError(f"cut short in the {what}")
        out = view[pos:pos + count]
        pos += count
        return out

    a = int(np.frombuffer(take(4, "header"), "<u4")[0])
    lengths = _unpack_nibbles(take((a + 1) // 2, "code lengths"), a)
    nb = _n_blocks(n)
    block_bits = np.frombuffer(take(2 * nb, "block table"), "<u2").astype(np.int64)
    total = int(block_bits.sum())
    data = take((total + 7) // 8, "codes")
    if n == 0:
        return np.zeros(0, np.int64), pos
    sym_table, len_table = _tables(lengths)
    if not (len_table > 0).any():
        raise HuffmanError("no symbol has a code")
    limit = 8 * len(data)
    padded = np.zeros(len(data) + 3, np.int64)
    padded[:len(data)] = np.frombuffer(data, np.uint8)
    out = np.empty(nb * BLOCK, np.int64)
    ends = np.cumsum(block_bits)
    bit = ends - block_bits
    rows = np.arange(nb) * BLOCK
    last = n - (nb - 1) * BLOCK           # symbols in the last block
    for t in range(BLOCK):
        if t == last:                     # the last block is done; the others go on
            if bit[-1] != ends[-1]:
                raise HuffmanError("a block's codes do not fill its stated length")
            bit, rows, ends = bit[:-1], rows[:-1], ends[:-1]
            if not bit.size:
                break
        if bit.max() >= limit:
            raise HuffmanError("codes run past the end of the stream")
        byte = bit >> 3
        window = (padded[byte] << 16) | (padded[byte + 1] << 8) | padded[byte + 2]
        window = (window >> (9 - (bit & 7))) & _WINDOW
        ln = len_table[window]
        if not ln.all():
            raise HuffmanError("an invalid code")
        out[rows + t] = sym_table[window]
        bit = bit + ln
    if bit.size and (bit != ends).any():
        raise HuffmanError("a block's codes do not fill its stated length")
    return out[:n], pos
