"""numba kernels of sparse inference: a CSR weight (caffe_lite/compression/sparse.py) times
dense activations.  Importing this module needs numba.

As in the other kernel families, each kernel works on a range of rows [r0, r1) (outputs of an
InnerProduct, filters of a Convolution), releases the GIL and allocates nothing, so the caller
splits the rows over its thread pool.  Sums may be reassociated and contracted (FMA): results
equal the dense product to float32 rounding.  Inner loops index slices with the loop variable
and the column indices are unsigned, so numba needs no negative-index handling there (which
would stop vectorisation)."""
import numpy as np
from numba import njit

_REDUCTION = {"contract", "reassoc"}


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_REDUCTION)
def csr_gemv(indptr, indices, data, x, bias, y, r0, r1):
    """y[r] = bias[r] + sum_j data[j] * x[indices[j]] over row r's nonzeros, for r in
    [r0, r1).  x (K,), y (R,); a bias of size 0 means none."""
    has_bias = bias.size > 0
    for r in range(r0, r1):
        a, b = indptr[r], indptr[r + 1]
        v = data[a:b]
        ix = indices[a:b]
        acc = np.float32(0)
        for j in range(v.size):
            acc += v[j] * x[ix[j]]
        if has_bias:
            acc += bias[r]
        y[r] = acc


@njit(nogil=True, cache=True, boundscheck=False, fastmath=_REDUCTION)
def csr_spmm(indptr, indices, data, col_offset, src, bias, y, r0, r1, tile):
    """y[n, r, p] = bias[r] + sum_j data[j] * src[n, col_offset[indices[j]] + p] over row r's
    nonzeros, for r in [r0, r1) and every p < y.shape[2].

    Column c of the matrix meets the run of src starting at col_offset[c]: c * P for im2col
    columns (images, K, P) flattened to (images, K * P), for a 1x1 convolution's input and
    for an InnerProduct's input transposed to (1, K * batch); c's channel and tap offset in
    the zero-padded input for a direct (stride-1) convolution, whose output rows then come out
    as wide as the padded input (the caller drops the extra columns).  The caller guarantees
    that every run lies inside src.  Positions are taken `tile` at a time so that one tile of
    every input run stays in cache while all rows of the block use it; four nonzeros per pass
    over an output row (a quarter of the loads and stores of y)."""
    n_img, _, p_all = y.shape
    has_bias = bias.size > 0
    for n in range(n_img):
        sn = src[n]
        yn = y[n]
        for p0 in range(0, p_all, tile):
            w = min(tile, p_all - p0)
            for r in range(r0, r1):
                yr = yn[r, p0:p0 + w]
                init = bias[r] if has_bias else np.float32(0)
                for p in range(w):
                    yr[p] = init
                j, e = indptr[r], indptr[r + 1]
                while j + 4 <= e:
                    v0, v1, v2, v3 = data[j], data[j + 1], data[j + 2], data[j + 3]
                    o0 = col_offset[indices[j]] + p0
                    o1 = col_offset[indices[j + 1]] + p0
                    o2 = col_offset[indices[j + 2]] + p0
                    o3 = col_offset[indices[j + 3]] + p0
                    s0 = sn[o0:o0 + w]
                    s1 = sn[o1:o1 + w]
                    s2 = sn[o2:o2 + w]
                    s3 = sn[o3:o3 + w]
                    for p in range(w):
                        yr[p] += (v0 * s0[p] + v1 * s1[p]) + (v2 * s2[p] + v3 * s3[p])
                    j += 4
                while j < e:
                    v = data[j]
                    o = col_offset[indices[j]] + p0
                    s = sn[o:o + w]
                    for p in range(w):
                        yr[p] += v * s[p]
                    j += 1
