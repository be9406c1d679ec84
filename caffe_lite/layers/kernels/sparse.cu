// caffe-lite: a sparse (CSR) weight times dense activations, the forward of InnerProduct and
// Convolution on a pruned weight (Python side: caffe_lite/layers/cuda/sparse.py; the CPU
// kernels are caffe_lite/layers/numba/sparse.py).  CSR arrays are 32-bit: indptr (R + 1),
// indices and data (nnz).  A NULL bias means none.

#define CL_LOOP(i, n) \
  for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < (n); \
       i += (int)(blockDim.x * gridDim.x))

// Matrix times vectors: y[m * R + r] = bias[r] + sum_j data[j] * x[m * K + indices[j]], for
// pairs = M * R outputs.  One block per (image, row) pair (grid-stride over pairs): its
// threads stride over the row's nonzeros, then a shared-memory tree reduction.  blockDim.x is
// a power of two, at most 256.  Every thread of a block walks the same pairs, so the
// barriers are reached by all.
extern "C" __global__ void csr_gemv(int pairs, int R, int K, const int* __restrict__ indptr,
    const int* __restrict__ indices, const float* __restrict__ data,
    const float* __restrict__ x, const float* __restrict__ bias, float* __restrict__ y) {
  __shared__ float partial[256];
  for (int pair = blockIdx.x; pair < pairs; pair += gridDim.x) {
    const int r = pair % R;
    const float* xm = x + (long long)(pair / R) * K;
    float acc = 0.0f;
    for (int j = indptr[r] + (int)threadIdx.x; j < indptr[r + 1]; j += (int)blockDim.x)
      acc += data[j] * xm[indices[j]];
    partial[threadIdx.x] = acc;
    __syncthreads();
    for (int s = (int)blockDim.x / 2; s > 0; s >>= 1) {
      if ((int)threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
      __syncthreads();
    }
    if (threadIdx.x == 0) y[pair] = bias ? partial[0] + bias[r] : partial[0];
    __syncthreads();
  }
}

// Matrix times columns: y[(img * R + r) * L + p] = bias[r]
//     + sum_j data[j] * src[img * S + col_offset[indices[j]] + p],   n = images * R * L.
// Column c of the matrix meets the run of src starting at col_offset[c] (c * L for im2col
// columns or a 1x1 convolution's input).  One thread per output: the threads of a warp share
// the row (same nonzeros, broadcast loads) and read consecutive positions (coalesced).
extern "C" __global__ void csr_spmm(int n, int R, int L, int S, const int* __restrict__ indptr,
    const int* __restrict__ indices, const float* __restrict__ data,
    const int* __restrict__ col_offset, const float* __restrict__ src,
    const float* __restrict__ bias, float* __restrict__ y) {
  CL_LOOP(index, n) {
    const int p = index % L;
    const int r = (index / L) % R;
    const float* s = src + (long long)(index / (L * R)) * S + p;
    float acc = 0.0f;
    for (int j = indptr[r]; j < indptr[r + 1]; ++j) acc += data[j] * s[col_offset[indices[j]]];
    y[index] = bias ? acc + bias[r] : acc;
  }
}
