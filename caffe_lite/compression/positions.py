"""Sparse positions as relative indices with Deep Compression's padding-zero rule.

The live entries of a flattened weight, in C order, are stored as gaps: an entry at flat
position p after one at q (the first after q = -1) is stored as the symbol p - q - 1, which a
`width`-bit index holds while p - q <= 2^width.  A longer gap gets padding entries: an entry
2^width positions on that holds zero (Han et al., Deep Compression, section 2), as many as
needed.  Decoding is a cumulative sum: position = cumsum(symbol + 1) - 1."""
import numpy as np


def encode(positions, width):
    """(symbols, padding) for increasing flat positions: the relative-index symbols and a
    boolean array marking the padding entries."""
    positions = np.asarray(positions, np.int64)
    span = 1 << width
    gaps = np.diff(positions, prepend=-1)
    entries = (gaps + span - 1) // span          # entries per gap, padding included
    symbols = np.full(int(entries.sum()), span - 1, np.int64)
    ends = np.cumsum(entries) - 1                # the real entry closes its gap
    symbols[ends] = gaps - (entries - 1) * span - 1
    padding = np.ones(symbols.size, bool)
    padding[ends] = False
    return symbols, padding


def decode(symbols):
    """Flat positions of the entries (padding entries included)."""
    return np.cumsum(np.asarray(symbols, np.int64) + 1) - 1


def histogram(positions, width):
    """(symbol frequencies, number of padding entries) that encode(positions, width) would
    give, computed from the gap histogram alone (to choose the width cheaply)."""
    positions = np.asarray(positions, np.int64)
    span = 1 << width
    gaps, counts = np.unique(np.diff(positions, prepend=-1), return_counts=True)
    pads = (gaps - 1) // span
    last = gaps - pads * span - 1
    freqs = np.bincount(last, weights=counts, minlength=span).astype(np.int64)
    n_pad = int(np.dot(pads, counts))
    freqs[span - 1] += n_pad
    return freqs, n_pad
