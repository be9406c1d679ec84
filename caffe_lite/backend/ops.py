"""Generic GPU operations on device addresses (ints): fill, copies, arithmetic, reductions.

Thin wrappers over the kernels of caffe_lite/layers/kernels/common.cu.  Every function
queues work on the default stream and returns at once; nothing here synchronises except
`sum_host`, which copies its result to the host."""
import numpy as np

from . import gpu
from .kernels import THREADS, blocks_for, function, launch, launch_1d

_scratch = {}  # (device, name) -> GPUArray, grow-only


def scratch(name, n, dtype=np.float32):
    """A device buffer of at least n elements, kept per device and name and reused; its
    contents are whatever the last user left.  Returns (GPUArray, address)."""
    key = (gpu.current_device(), name, np.dtype(dtype).str)
    buf = _scratch.get(key)
    if buf is None or buf.size < n:
        buf = gpu.empty(max(int(n), 1), dtype)
        _scratch[key] = buf
    return buf, gpu.ptr(buf)


def _fn(name, sig):
    return function("common", name, sig)


def fill(n, value, y):
    launch_1d(_fn("set_value", "ifP"), n, np.int32(n), np.float32(value), y)


def zero_diffs(blobs):
    """diff = 0 on the device for each blob: Net.clear_param_diffs in GPU mode."""
    for b in blobs:
        fill(b.count, 0.0, gpu.ptr(b.mutable_gpu_diff))


def copy(n, x, y):
    if x != y:
        launch_1d(_fn("copy", "iPP"), n, np.int32(n), x, y)


def scale(n, a, x, y):
    """y = a * x"""
    launch_1d(_fn("scale", "ifPP"), n, np.int32(n), np.float32(a), x, y)


def add(n, x, y, z):
    """z = x + y"""
    launch_1d(_fn("add", "iPPP"), n, np.int32(n), x, y, z)


def mul(n, x, y, z):
    """z = x * y"""
    launch_1d(_fn("mul", "iPPP"), n, np.int32(n), x, y, z)


def axpy(n, a, x, y):
    """y += a * x"""
    launch_1d(_fn("axpy", "ifPP"), n, np.int32(n), np.float32(a), x, y)


MAX_ND = 6


def collapse(shape, src_strides, dst_strides):
    """Merge neighbouring axes that are contiguous in both source and destination and drop
    size-1 axes, so more copies fit copy_nd's 6 axes (and index arithmetic is cheaper)."""
    dims = [(d, s, t) for d, s, t in zip(shape, src_strides, dst_strides) if d != 1]
    out = []
    for d, s, t in dims:
        if out and out[-1][1] == s * d and out[-1][2] == t * d:
            pd, ps, pt = out[-1]
            out[-1] = (pd * d, s, t)
        else:
            out.append((d, s, t))
    return ([d for d, _, _ in out], [s for _, s, _ in out], [t for _, _, t in out])


def fits_nd(shape, src_strides, dst_strides):
    """Whether copy_nd can do this copy (at most 6 axes once contiguous ones are merged)."""
    return len(collapse(shape, src_strides, dst_strides)[0]) <= MAX_ND


def copy_nd(shape, src, src_strides, dst, dst_strides):
    """Copy the N-d block `shape` from src to dst (addresses of its first element), strides
    in elements.  Returns False (copying nothing) when the block needs more than 6 axes."""
    n = int(np.prod(shape, dtype=np.int64))
    if n == 0:
        return True
    dims, ss, ts = collapse(shape, src_strides, dst_strides)
    if len(dims) > MAX_ND:
        return False
    pad = MAX_ND - len(dims)
    dims = [1] * pad + dims
    ss = [0] * pad + ss
    ts = [0] * pad + ts
    launch_1d(_fn("copy_nd", "i" + "i" * 18 + "PP"), n, np.int32(n),
              *(np.int32(v) for v in dims + ss + ts), src, dst)
    return True


def contiguous_strides(shape):
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return strides[::-1]


def _splits(channels, total):
    """Blocks per channel: about 1024 blocks in all, each with at least ~1024 elements."""
    return max(1, min(-(-1024 // channels), -(-total // 1024), 65535))


def channel_sum(outer, channels, inner, a, out, b=0, alpha=1.0, beta=0.0):
    """out[c] = alpha * sum over (outer, inner) of a (* b) [+ beta * out[c]] for arrays seen
    as (outer, channels, inner).  Two stages; deterministic (no atomics)."""
    if channels == 0:
        return
    total = outer * inner
    if total == 0:
        if beta == 0:
            fill(channels, 0.0, out)
        else:
            scale(channels, beta, out, out)
        return
    splits = _splits(channels, total)
    partial, pp = scratch("channel_sum", channels * splits)
    launch(_fn("channel_sum_partial", "iiiiPPP"), (channels, splits, 1), (THREADS, 1, 1),
           np.int32(outer), np.int32(channels), np.int32(inner), np.int32(splits), a, b, pp)
    launch_1d(_fn("channel_sum_finish", "iiPffP"), channels, np.int32(channels),
              np.int32(splits), pp, np.float32(alpha), np.float32(beta), out)


def channel_sums_ab(outer, channels, inner, a, b, out_ab, out_a, alpha=1.0):
    """out_ab[c] = alpha * sum of a * b and out_a[c] = alpha * sum of a over (outer, inner),
    in one pass over a and b."""
    total = outer * inner
    if channels == 0 or total == 0:
        fill(channels, 0.0, out_ab)
        fill(channels, 0.0, out_a)
        return
    splits = _splits(channels, total)
    _, pab = scratch("channel_sum", 2 * channels * splits)
    pa = pab + 4 * channels * splits
    launch(_fn("channel_sum2_partial", "iiiiPPPP"), (channels, splits, 1), (THREADS, 1, 1),
           np.int32(outer), np.int32(channels), np.int32(inner), np.int32(splits), a, b, pab, pa)
    for part, out in ((pab, out_ab), (pa, out_a)):
        launch_1d(_fn("channel_sum_finish", "iiPffP"), channels, np.int32(channels),
                  np.int32(splits), part, np.float32(alpha), np.float32(0.0), out)


def sum_rows_acc(rows, cols, a, out):
    """out[j] += sum over r of a[r, j] for a (rows, cols) array, rows summed in order."""
    launch_1d(_fn("sum_rows_acc", "iiPP"), cols, np.int32(cols), np.int32(rows), a, out)


REDUCE_BLOCKS = 4096


def sum_to(n, a, out_f=0, out_d=0, b=0, scale_by=1.0):
    """out = scale_by * sum(a) (or sum(a * b)), accumulated in double, written to the device
    float out_f and/or double out_d (addresses; 0 to skip)."""
    parts = min(blocks_for(n), REDUCE_BLOCKS) if n > 0 else 0
    _, pp = scratch("dot_partial", max(parts, 1), np.float64)
    if parts:
        launch(_fn("dot_partial", "iPPP"), (parts, 1, 1), (THREADS, 1, 1), np.int32(n), a, b, pp)
    launch(_fn("sum_finish", "iPdPP"), (1, 1, 1), (THREADS, 1, 1), np.int32(parts), pp,
           np.float64(scale_by), out_f, out_d)


def sum_host(n, a, b=0):
    """sum(a) or sum(a * b) as a Python float (accumulated in double; synchronises)."""
    buf, p = scratch("sum_host", 1, np.float64)
    sum_to(n, a, out_d=p, b=b)
    return float(buf.get()[0])
