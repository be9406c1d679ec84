// caffe-lite: depthwise convolution kernels (group == input channels), 2-D; 1-D passes H = 1.
// Python side: caffe_lite/layers/cuda/conv.py.
//
// x (N, C, H, W), weight (C*M, 1, KH, KW), y (N, C*M, OH, OW): output channel o = c*M + m
// convolves input channel c = o / M with its own filter.
//   forward          one thread per output element, looping over the taps;
//   backward_data    one thread per input element, gathering over every (m, tap) whose
//                    output reads it (no atomics);
//   backward_filter  one block per (output channel, tap): a shared-memory tree reduction over
//                    all images and output positions, added to the weight gradient by one
//                    thread (no atomics).  Blocks of one channel are adjacent in the grid, so
//                    the channel's dy is read from L2 rather than DRAM by its K blocks.

#define CL_THREADS 256
#define CL_LOOP(i, n) \
  for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < (n); \
       i += (int)(blockDim.x * gridDim.x))

extern "C" __global__ void dw_forward(int n, int C, int M, int H, int W, int OH, int OW,
    int KH, int KW, int SH, int SW, int PH, int PW, int DH, int DW,
    const float* __restrict__ x, const float* __restrict__ weight,
    const float* __restrict__ bias, float* __restrict__ y) {
  CL_LOOP(index, n) {
    const int ow = index % OW;
    const int oh = (index / OW) % OH;
    const int o = (index / (OW * OH)) % (C * M);
    const int img = index / (OW * OH * C * M);
    const int c = o / M;
    const float* xc = x + ((long long)img * C + c) * H * W;
    const float* wo = weight + (long long)o * KH * KW;
    float sum = 0.0f;
    for (int kh = 0; kh < KH; ++kh) {
      const int h = oh * SH - PH + kh * DH;
      if (h < 0 || h >= H) continue;
      for (int kw = 0; kw < KW; ++kw) {
        const int w = ow * SW - PW + kw * DW;
        if (w < 0 || w >= W) continue;
        sum += xc[h * W + w] * wo[kh * KW + kw];
      }
    }
    y[index] = bias ? sum + bias[o] : sum;
  }
}

extern "C" __global__ void dw_backward_data(int n, int C, int M, int H, int W, int OH, int OW,
    int KH, int KW, int SH, int SW, int PH, int PW, int DH, int DW,
    const float* __restrict__ dy, const float* __restrict__ weight, float* __restrict__ dx) {
  CL_LOOP(index, n) {
    const int w = index % W;
    const int h = (index / W) % H;
    const int ic = index / (W * H);        // image * C + channel
    const int c = ic % C;
    const int img = ic / C;
    float sum = 0.0f;
    for (int m = 0; m < M; ++m) {
      const int o = c * M + m;
      const float* dyo = dy + ((long long)img * C * M + o) * OH * OW;
      const float* wo = weight + (long long)o * KH * KW;
      for (int kh = 0; kh < KH; ++kh) {
        const int th = h + PH - kh * DH;
        if (th < 0 || th % SH != 0) continue;
        const int oh = th / SH;
        if (oh >= OH) continue;
        for (int kw = 0; kw < KW; ++kw) {
          const int tw = w + PW - kw * DW;
          if (tw < 0 || tw % SW != 0) continue;
          const int ow = tw / SW;
          if (ow >= OW) continue;
          sum += dyo[oh * OW + ow] * wo[kh * KW + kw];
        }
      }
    }
    dx[index] = sum;
  }
}

// grid (KH * KW, C * M), block CL_THREADS.  dweight[o, tap] += sum over images and outputs.
extern "C" __global__ void dw_backward_filter(int num, int C, int M, int H, int W, int OH,
    int OW, int KH, int KW, int SH, int SW, int PH, int PW, int DH, int DW,
    const float* __restrict__ x, const float* __restrict__ dy,
    float* __restrict__ dweight) {
  __shared__ float buf[CL_THREADS];
  const int tap = blockIdx.x;
  const int o = blockIdx.y;
  const int kh = tap / KW;
  const int kw = tap % KW;
  const int c = o / M;
  const int P = OH * OW;
  const int total = num * P;
  float acc = 0.0f;
  for (int j = (int)threadIdx.x; j < total; j += CL_THREADS) {
    const int img = j / P;
    const int p = j - img * P;
    const int oh = p / OW;
    const int ow = p - oh * OW;
    const int h = oh * SH - PH + kh * DH;
    const int w = ow * SW - PW + kw * DW;
    if (h >= 0 && h < H && w >= 0 && w < W) {
      acc += dy[((long long)img * C * M + o) * P + p] *
             x[((long long)img * C + c) * H * W + h * W + w];
    }
  }
  buf[threadIdx.x] = acc;
  __syncthreads();
  for (int half = CL_THREADS / 2; half > 0; half >>= 1) {
    if ((int)threadIdx.x < half) buf[threadIdx.x] += buf[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) dweight[o * KH * KW + tap] += buf[0];
}
