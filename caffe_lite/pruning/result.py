"""What a pruning method reports per layer (LayerResult), and the two small helpers every
method shares: Caffe-style rounding of a target count and a blob's sparsity."""
import dataclasses

import numpy as np


@dataclasses.dataclass
class LayerResult:
    name: str
    type: str
    params: int
    before: float       # sparsity before
    after: float        # sparsity after
    detail: str = ""    # e.g. "threshold 0.0123", "filters 20 -> 14"


def _round(x):
    """Round half up (not to even): a target of 0.5 x 3 filters removes 2."""
    return int(np.floor(x + 0.5))


def _sparsity(blob):
    return float(1.0 - np.count_nonzero(blob.cpu_data) / max(blob.count, 1))
