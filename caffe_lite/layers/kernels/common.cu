// caffe-lite: generic GPU kernels (fill, copies, elementwise arithmetic, reductions).
// Plain CUDA C, loaded by caffe_lite/backend/kernels.py; Python wrappers in backend/ops.py.
// Elementwise kernels are grid-stride loops; reductions use shared-memory trees over blocks
// of exactly CL_THREADS threads (the Python side launches them so).

#define CL_THREADS 256
#define CL_LOOP(i, n) \
  for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < (n); \
       i += (int)(blockDim.x * gridDim.x))

extern "C" __global__ void set_value(int n, float value, float* __restrict__ y) {
  CL_LOOP(i, n) { y[i] = value; }
}

extern "C" __global__ void copy(int n, const float* __restrict__ x, float* __restrict__ y) {
  CL_LOOP(i, n) { y[i] = x[i]; }
}

// y = a * x (x may be y)
extern "C" __global__ void scale(int n, float a, const float* x, float* y) {
  CL_LOOP(i, n) { y[i] = a * x[i]; }
}

// z = x + y (any of them may alias)
extern "C" __global__ void add(int n, const float* x, const float* y, float* z) {
  CL_LOOP(i, n) { z[i] = x[i] + y[i]; }
}

// z = x * y (any of them may alias)
extern "C" __global__ void mul(int n, const float* x, const float* y, float* z) {
  CL_LOOP(i, n) { z[i] = x[i] * y[i]; }
}

// y += a * x
extern "C" __global__ void axpy(int n, float a, const float* x, float* y) {
  CL_LOOP(i, n) { y[i] += a * x[i]; }
}

// dst[i] = src[i] for an N-d block of up to 6 axes: element i of `shape` (row-major) is read
// at sum(idx_k * src_stride_k) and written at sum(idx_k * dst_stride_k) (strides in elements).
// Concat, Slice, Crop and Permute are all this copy.
extern "C" __global__ void copy_nd(int n,
    int d0, int d1, int d2, int d3, int d4, int d5,
    int s0, int s1, int s2, int s3, int s4, int s5,
    int t0, int t1, int t2, int t3, int t4, int t5,
    const float* __restrict__ src, float* __restrict__ dst) {
  CL_LOOP(i, n) {
    int r = i;
    int k5 = r % d5; r /= d5;
    int k4 = r % d4; r /= d4;
    int k3 = r % d3; r /= d3;
    int k2 = r % d2; r /= d2;
    int k1 = r % d1; r /= d1;
    int k0 = r;
    (void)d0;
    long long from = (long long)k0 * s0 + (long long)k1 * s1 + (long long)k2 * s2 +
                     (long long)k3 * s3 + (long long)k4 * s4 + (long long)k5 * s5;
    long long to = (long long)k0 * t0 + (long long)k1 * t1 + (long long)k2 * t2 +
                   (long long)k3 * t3 + (long long)k4 * t4 + (long long)k5 * t5;
    dst[to] = src[from];
  }
}

// Per-channel sums of a (or of a * b when b is not NULL) over x seen as (outer, channels,
// inner), first stage: block (c, s) sums the s-th of `splits` equal parts of channel c's
// outer * inner elements into partial[c * splits + s].
extern "C" __global__ void channel_sum_partial(int outer, int channels, int inner, int splits,
    const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ partial) {
  __shared__ float buf[CL_THREADS];
  const int c = blockIdx.x;
  const int s = blockIdx.y;
  const int total = outer * inner;
  const int per = (total + splits - 1) / splits;
  const int begin = s * per;
  const int end = begin + per < total ? begin + per : total;
  float acc = 0.0f;
  for (int j = begin + (int)threadIdx.x; j < end; j += CL_THREADS) {
    int o = j / inner;
    int idx = (o * channels + c) * inner + (j - o * inner);
    acc += b ? a[idx] * b[idx] : a[idx];
  }
  buf[threadIdx.x] = acc;
  __syncthreads();
  for (int half = CL_THREADS / 2; half > 0; half >>= 1) {
    if ((int)threadIdx.x < half) buf[threadIdx.x] += buf[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[c * splits + s] = buf[0];
}

// The same first stage for two sums at once: partial_ab gets the sums of a * b, partial_a
// those of a (one pass over a and b instead of two).
extern "C" __global__ void channel_sum2_partial(int outer, int channels, int inner, int splits,
    const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ partial_ab,
    float* __restrict__ partial_a) {
  __shared__ float buf_ab[CL_THREADS];
  __shared__ float buf_a[CL_THREADS];
  const int c = blockIdx.x;
  const int s = blockIdx.y;
  const int total = outer * inner;
  const int per = (total + splits - 1) / splits;
  const int begin = s * per;
  const int end = begin + per < total ? begin + per : total;
  float acc_ab = 0.0f, acc_a = 0.0f;
  for (int j = begin + (int)threadIdx.x; j < end; j += CL_THREADS) {
    int o = j / inner;
    int idx = (o * channels + c) * inner + (j - o * inner);
    const float va = a[idx];
    acc_ab += va * b[idx];
    acc_a += va;
  }
  buf_ab[threadIdx.x] = acc_ab;
  buf_a[threadIdx.x] = acc_a;
  __syncthreads();
  for (int half = CL_THREADS / 2; half > 0; half >>= 1) {
    if ((int)threadIdx.x < half) {
      buf_ab[threadIdx.x] += buf_ab[threadIdx.x + half];
      buf_a[threadIdx.x] += buf_a[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    partial_ab[c * splits + s] = buf_ab[0];
    partial_a[c * splits + s] = buf_a[0];
  }
}

// Second stage: out[c] = alpha * sum_s partial[c * splits + s] (+ beta * out[c] when beta != 0).
extern "C" __global__ void channel_sum_finish(int channels, int splits,
    const float* __restrict__ partial, float alpha, float beta, float* __restrict__ out) {
  CL_LOOP(c, channels) {
    float acc = 0.0f;
    for (int s = 0; s < splits; ++s) acc += partial[c * splits + s];
    out[c] = beta == 0.0f ? alpha * acc : alpha * acc + beta * out[c];
  }
}

// sum(a) (b NULL) or sum(a * b), accumulated in double: block k writes partial[k].
extern "C" __global__ void dot_partial(int n, const float* __restrict__ a,
    const float* __restrict__ b, double* __restrict__ partial) {
  __shared__ double buf[CL_THREADS];
  double acc = 0.0;
  CL_LOOP(i, n) { acc += b ? (double)a[i] * (double)b[i] : (double)a[i]; }
  buf[threadIdx.x] = acc;
  __syncthreads();
  for (int half = CL_THREADS / 2; half > 0; half >>= 1) {
    if ((int)threadIdx.x < half) buf[threadIdx.x] += buf[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = buf[0];
}

// One block: the sum of `parts` partials, times scale, as a float (out_f) and/or a double
// (out_d); a NULL output is skipped.
extern "C" __global__ void sum_finish(int parts, const double* __restrict__ partial,
    double scale, float* __restrict__ out_f, double* __restrict__ out_d) {
  __shared__ double buf[CL_THREADS];
  double acc = 0.0;
  for (int k = (int)threadIdx.x; k < parts; k += CL_THREADS) acc += partial[k];
  buf[threadIdx.x] = acc;
  __syncthreads();
  for (int half = CL_THREADS / 2; half > 0; half >>= 1) {
    if ((int)threadIdx.x < half) buf[threadIdx.x] += buf[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    if (out_f) out_f[0] = (float)(buf[0] * scale);
    if (out_d) out_d[0] = buf[0] * scale;
  }
}

// out[j] += sum over r < rows of a[r * cols + j], r in order (deterministic): the sum of
// per-image (or per-part) partial weight gradients.  One thread per column j; a warp reads
// 32 consecutive floats of each row.
extern "C" __global__ void sum_rows_acc(int cols, int rows, const float* __restrict__ a,
                                        float* __restrict__ out) {
  CL_LOOP(j, cols) {
    float acc = 0.0f;
    for (int r = 0; r < rows; ++r) acc += a[(long long)r * cols + j];
    out[j] += acc;
  }
}
