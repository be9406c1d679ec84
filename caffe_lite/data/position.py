"""Where a data source is in its stream of records, as a small state that a snapshot keeps.

A source reads its `size` records epoch after epoch.  Its position is (epoch, index): the
index-th record of that epoch's order.  The order is the records' own (key order, list order)
or, with shuffling, a permutation drawn from (seed, epoch) alone -- so any epoch's order can be
rebuilt from three numbers, without replaying the epochs before it, and a resumed run reads
exactly the records the uninterrupted run would have.  (Sharding a source across processes
can stride over the same order.)

Caffe reshuffles with the layer's generator at setup and at every wrap; here each epoch's
permutation comes from its own seed sequence.  Both give a new order every epoch; only this
one can be resumed."""
import numpy as np


def permutation(seed, n, *key):
    """The permutation of range(n) for (seed, key...): the same numbers give the same order.
    (SeedSequence ignores trailing zeros, hence the + 1.)"""
    return np.random.default_rng([int(seed)] + [int(k) + 1 for k in key]).permutation(n)


def draw_seed(rng):
    return int(rng.integers(0, 2**63 - 1))


def state_int(state, name, low=0, high=None):
    """state[name], checked to be an int in [low, high); ValueError naming it otherwise."""
    v = state.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and
                                                                   v >= high):
        bound = f"an integer >= {low}" + (f" and < {high}" if high is not None else "")
        raise ValueError(f"'{name}' is {v!r}, expected {bound}")
    return v


class ReadPosition:
    """(epoch, index) over `size` records; with `seed` (shuffling), epoch e reads the records
    in the order permutation(seed, size, e)."""

    def __init__(self, size, seed=None, index=0):
        self.size = int(size)
        self.seed = seed
        self.epoch = 0
        self.index = int(index)
        self._order = (None, None)

    @property
    def shuffled(self):
        return self.seed is not None

    def order(self, epoch=None):
        """This epoch's order as an array of record numbers (None: the records' own order)."""
        epoch = self.epoch if epoch is None else epoch
        if self.seed is None:
            return None
        if self._order[0] != epoch:
            self._order = (epoch, permutation(self.seed, self.size, epoch))
        return self._order[1]

    def record(self):
        """The record number at the current position."""
        order = self.order()
        return self.index if order is None else int(order[self.index])

    def advance(self, n=1):
        """Move n records on; returns True when an epoch ended (the position wrapped)."""
        wrapped = False
        self.index += n
        while self.index >= self.size:
            self.index -= self.size
            self.epoch += 1
            wrapped = True
        return wrapped

    def take(self, n):
        """The record numbers of the next n records (across epoch ends), then advance."""
        out = np.empty(n, np.int64)
        filled = 0
        while filled < n:
            k = min(n - filled, self.size - self.index)
            order = self.order()
            out[filled:filled + k] = (np.arange(self.index, self.index + k) if order is None
                                      else order[self.index:self.index + k])
            filled += k
            self.advance(k)
        return out

    # --- persistence -----------------------------------------------------------------------
    def state_dict(self):
        return {"epoch": self.epoch, "index": self.index, "size": self.size, "seed": self.seed}

    def check_state(self, state):
        """Raise ValueError when `state` is not a position at all; returns a reason (str) why
        it cannot apply to this source (other size, shuffled vs not), or None."""
        if not isinstance(state, dict):
            raise ValueError(f"a read position must be an object, got {type(state).__name__}")
        size = state_int(state, "size", 1)
        state_int(state, "epoch")
        state_int(state, "index", 0, size)
        seed = state.get("seed")
        if seed is not None:
            state_int(state, "seed")
        if size != self.size:
            return f"the snapshot was taken reading {size} records, the source now has " \
                   f"{self.size}"
        if (seed is None) != (self.seed is None):
            return "the snapshot was taken with shuffle " + ("off" if seed is None else "on")
        return None

    def load_state_dict(self, state):
        """Move to a position from state_dict(); check_state first."""
        self.epoch, self.index, self.seed = state["epoch"], state["index"], state["seed"]
        self._order = (None, None)
