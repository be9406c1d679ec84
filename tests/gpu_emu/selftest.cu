// Kernels that misbehave on purpose, to check that the emulator notices.
#define CL_LOOP(i, n) \
  for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < (n); \
       i += (int)(blockDim.x * gridDim.x))

extern "C" __global__ void write_one_past(int n, float* y) {
  CL_LOOP(i, n) { y[i + 1] = 1.0f; }
}

extern "C" __global__ void copy_plain(int n, const float* x, float* y) {
  CL_LOOP(i, n) { y[i] = x[i]; }
}

extern "C" __global__ void block_sum(const float* x, float* out) {
  __shared__ float buf[64];
  buf[threadIdx.x] = x[blockIdx.x * 64 + threadIdx.x];
  __syncthreads();
  for (int half = 32; half > 0; half >>= 1) {
    if ((int)threadIdx.x < half) buf[threadIdx.x] += buf[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = buf[0];
}

extern "C" __global__ void divergent_barrier(float* out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}
