// caffe-lite: depthwise convolution kernels (group == input channels).
// Python side: caffe_lite/layers/cuda/depthwise.py (which plans the tiles).
//
// x (N, C, H, W), weight (C*M, 1, KH, KW), y (N, C*M, OH, OW): output channel o = c*M + m
// convolves input channel c = o / M with its own filter.  A "plane" is one (image, channel)
// H x W (or OH x OW) slice, contiguous in memory.
//
// Tiled kernels (3x3 and 5x5 filters, stride 1 or 2 in both directions, dilation 1, any
// padding and multiplier), each a memory-bound pass that reads its inputs from DRAM once:
//   * a block works on a "unit": a band of TH rows of one plane, or PB whole small planes;
//     it stages the input rows the unit needs (zero-padded at the borders) in shared
//     memory with float4 loads where rows are 16-byte aligned, then computes from there;
//   * register blocking: a thread computes DW_R = 4 vertically adjacent outputs of one
//     column, so each staged value is read from shared memory once per tap column for all
//     four (((4 - 1) * S + K) * K reads for 4 outputs instead of 4 * K * K); adjacent threads
//     take adjacent columns: global writes are coalesced;
//   * forward            y = conv(x, w) (+ bias): unit = output rows; stages x.
//   * backward-data      dx = conv_transpose(dy, w): unit = input rows; stages the dy rows
//                        of all M outputs of the channel (a gather: no atomics).
//   * backward-filter    dw += sum over images and positions: grid (splits, C*M); block
//                        (s, o) walks units s, s + splits, ... of channel o (image, band),
//                        stages x, reads dy coalesced, keeps K*K sums in registers, reduces
//                        them over the block in shared memory and writes one partial per
//                        block; dw_filter_finish adds the partials in a fixed order.  No
//                        atomics: the result is bit-deterministic.
// The Python side picks TH / PB so a unit fits DW_SMEM floats and gives a few hundred
// thread items; shapes where it cannot (very wide rows, other filters, dilation, 1-D) run
// the direct kernels at the end of this file.

#define CL_THREADS 256
#define CL_LOOP(i, n) \
  for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < (n); \
       i += (int)(blockDim.x * gridDim.x))
#ifndef CL_CHECK_ALIGN
#define CL_CHECK_ALIGN(p)
#endif

#define DW_R 4          // outputs per thread item (a vertical strip)
#define DW_SMEM 6144    // floats of shared memory a unit may stage (24 KiB)

__device__ __forceinline__ float4 dw_ld4(const float* p) {
  CL_CHECK_ALIGN(p);
  return *reinterpret_cast<const float4*>(p);
}

__device__ __forceinline__ void dw_st4(float* p, float4 v) {
  CL_CHECK_ALIGN(p);
  *reinterpret_cast<float4*>(p) = v;
}

__device__ __forceinline__ int dw_ceil_div(int a, int b) {  // b > 0, any sign of a
  return a >= 0 ? (a + b - 1) / b : -((-a) / b);
}

// Stage `rows` rows of plane `src` (H x W) starting at row r0 into tile rows (stride RS),
// column j of the tile holding source column j - col0 (zero outside the plane).  col0 and
// RS are multiples of 4, so every tile slot of 4 floats is one aligned float4 store, and one
// aligned float4 load where it lies inside a row and vec (W % 4 == 0, src 16-byte aligned).
__device__ __forceinline__ void dw_stage_row(float* tile_row, const float* src, int r, int H,
                                             int W, int col0, int k, int vec) {
  float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (r >= 0 && r < H) {
    const float* row = src + (long long)r * W;
    const int c = 4 * k - col0;
    if (vec && c >= 0 && c + 3 < W) {
      v = dw_ld4(row + c);
    } else {
      v.x = (c >= 0 && c < W) ? row[c] : 0.0f;
      v.y = (c + 1 >= 0 && c + 1 < W) ? row[c + 1] : 0.0f;
      v.z = (c + 2 >= 0 && c + 2 < W) ? row[c + 2] : 0.0f;
      v.w = (c + 3 >= 0 && c + 3 < W) ? row[c + 3] : 0.0f;
    }
  }
  dw_st4(tile_row + 4 * k, v);
}

// --- forward -------------------------------------------------------------------------------
// grid (units), units = ceil(planes / PB) * bands over the N*C*M output planes; TH is a
// multiple of DW_R; tile rows (TH - 1) * SH + KH per plane; tile column of input column 0 is
// col0 = shift + PW (a multiple of 4).
template <int KH, int KW, int SH, int SW>
__device__ __forceinline__ void dw_forward_tiled(int N, int C, int M, int H, int W, int OH,
    int OW, int PH, int PW, int TH, int PB, int bands, int RS, int shift, int vec,
    const float* __restrict__ x, const float* __restrict__ weight,
    const float* __restrict__ bias, float* __restrict__ y) {
  __shared__ __align__(16) float tile[DW_SMEM];
  const int IT = (TH - 1) * SH + KH;
  const int CM = C * M;
  const int planes = N * CM;
  const int band = blockIdx.x % bands;
  const int p0 = (blockIdx.x / bands) * PB;
  const int np = planes - p0 < PB ? planes - p0 : PB;
  if (np * IT * RS > DW_SMEM) return;  // the planner never asks for this
  const int oh0 = band * TH;
  const int col0 = shift + PW;
  const int slots = RS / 4;
  for (int idx = threadIdx.x; idx < np * IT * slots; idx += blockDim.x) {
    const int k = idx % slots;
    const int row = idx / slots;
    const int q = row / IT;
    const int P = p0 + q;
    const int ip = (P / CM) * C + (P % CM) / M;
    dw_stage_row(tile + row * RS, x + (long long)ip * H * W, oh0 * SH - PH + (row - q * IT),
                 H, W, col0, k, vec);
  }
  __syncthreads();
  const int NS = TH / DW_R;
  const int items = np * NS * OW;
  for (int it = threadIdx.x; it < items; it += blockDim.x) {
    const int ow = it % OW;
    const int t = it / OW;
    const int strip = t % NS;
    const int q = t / NS;
    const int P = p0 + q;
    const int o = P % CM;
    float wr[KH * KW];
#pragma unroll
    for (int j = 0; j < KH * KW; ++j) wr[j] = __ldg(weight + o * KH * KW + j);
    float acc[DW_R];
#pragma unroll
    for (int r = 0; r < DW_R; ++r) acc[r] = 0.0f;
    const float* base = tile + (q * IT + strip * DW_R * SH) * RS + shift + ow * SW;
#pragma unroll
    for (int tr = 0; tr < (DW_R - 1) * SH + KH; ++tr) {
#pragma unroll
      for (int kw = 0; kw < KW; ++kw) {
        const float v = base[tr * RS + kw];
#pragma unroll
        for (int r = 0; r < DW_R; ++r) {
          const int kh = tr - r * SH;
          if (kh >= 0 && kh < KH) acc[r] += v * wr[kh * KW + kw];
        }
      }
    }
    const float b = bias ? __ldg(bias + o) : 0.0f;
    const int oh = oh0 + strip * DW_R;
    float* out = y + ((long long)P * OH + oh) * OW + ow;
#pragma unroll
    for (int r = 0; r < DW_R; ++r)
      if (oh + r < OH) out[r * OW] = acc[r] + b;
  }
}

// --- backward-data -------------------------------------------------------------------------
// grid (units) over the N*C input planes; unit rows h0 .. h0 + TH - 1 need dy rows from
// ohlo = ceil((h0 + PH - KH + 1) / SH), TR of them per output channel (M per unit plane);
// tile column of dy column 0 is col0 = shift - owlo (a multiple of 4).
template <int KH, int KW, int SH, int SW>
__device__ __forceinline__ void dw_backward_data_tiled(int N, int C, int M, int H, int W,
    int OH, int OW, int PH, int PW, int TH, int PB, int bands, int RS, int shift, int owlo,
    int TR, int vec, const float* __restrict__ dy, const float* __restrict__ weight,
    float* __restrict__ dx) {
  __shared__ __align__(16) float tile[DW_SMEM];
  const int planes = N * C;
  const int band = blockIdx.x % bands;
  const int p0 = (blockIdx.x / bands) * PB;
  const int np = planes - p0 < PB ? planes - p0 : PB;
  if (np * M * TR * RS > DW_SMEM) return;  // the planner never asks for this
  const int h0 = band * TH;
  const int ohlo = dw_ceil_div(h0 + PH - KH + 1, SH);
  const int col0 = shift - owlo;
  const int slots = RS / 4;
  for (int idx = threadIdx.x; idx < np * M * TR * slots; idx += blockDim.x) {
    const int k = idx % slots;
    const int row = idx / slots;           // (q * M + m) * TR + r
    const int qm = row / TR;
    const int q = qm / M;
    const int m = qm - q * M;
    const int ip = p0 + q;                 // n * C + c
    const int op = (ip / C) * C * M + (ip % C) * M + m;
    dw_stage_row(tile + row * RS, dy + (long long)op * OH * OW, ohlo + (row - qm * TR), OH,
                 OW, col0, k, vec);
  }
  __syncthreads();
  const int NS = TH / DW_R;
  const int items = np * NS * W;
  for (int it = threadIdx.x; it < items; it += blockDim.x) {
    const int w = it % W;
    const int t = it / W;
    const int strip = t % NS;
    const int q = t / NS;
    const int ip = p0 + q;
    const int c = ip % C;
    float acc[DW_R];
#pragma unroll
    for (int r = 0; r < DW_R; ++r) acc[r] = 0.0f;
    const int hs = h0 + strip * DW_R;
    for (int m = 0; m < M; ++m) {
      const float* wo = weight + (long long)(c * M + m) * KH * KW;
      float wr[KH * KW];
#pragma unroll
      for (int j = 0; j < KH * KW; ++j) wr[j] = __ldg(wo + j);
      const float* tm = tile + (q * M + m) * TR * RS + col0;
#pragma unroll
      for (int r = 0; r < DW_R; ++r) {
        const int h = hs + r;
#pragma unroll
        for (int kh = 0; kh < KH; ++kh) {
          const int th = h + PH - kh;
          if (SH > 1 && th % SH != 0) continue;
          const float* trow = tm + (th / SH - ohlo) * RS;
#pragma unroll
          for (int kw = 0; kw < KW; ++kw) {
            const int tw = w + PW - kw;
            if (SW > 1 && tw % SW != 0) continue;
            acc[r] += trow[tw / SW] * wr[kh * KW + kw];
          }
        }
      }
    }
    float* out = dx + ((long long)ip * H + hs) * W + w;
#pragma unroll
    for (int r = 0; r < DW_R; ++r)
      if (hs + r < H) out[r * W] = acc[r];
  }
}

// --- backward-filter -----------------------------------------------------------------------
// grid (splits, C*M).  Block (s, o): units u = s, s + splits, ... < ceil(N / PB) * bands of
// output channel o (PB images' whole planes, or one image's band of TH output rows); x tile
// as in forward.  partial[(o * splits + s) * KH * KW + tap] = the block's sum for that tap.
template <int KH, int KW, int SH, int SW>
__device__ __forceinline__ void dw_filter_tiled(int N, int C, int M, int H, int W, int OH,
    int OW, int PH, int PW, int TH, int PB, int bands, int RS, int shift, int vec, int splits,
    const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ partial) {
  __shared__ __align__(16) float tile[DW_SMEM];
  __shared__ float red[CL_THREADS];
  const int IT = (TH - 1) * SH + KH;
  const int o = blockIdx.y;
  const int c = o / M;
  const int s = blockIdx.x;
  const int units = (N + PB - 1) / PB * bands;
  const int col0 = shift + PW;
  const int slots = RS / 4;
  const int NS = TH / DW_R;
  float acc[KH * KW];
#pragma unroll
  for (int j = 0; j < KH * KW; ++j) acc[j] = 0.0f;
  const bool fits = PB * IT * RS <= DW_SMEM;  // the planner never asks otherwise
  for (int u = s; fits && u < units; u += splits) {
    const int band = u % bands;
    const int n0 = (u / bands) * PB;
    const int np = N - n0 < PB ? N - n0 : PB;
    const int oh0 = band * TH;
    __syncthreads();  // the previous unit's tile is no longer read
    for (int idx = threadIdx.x; idx < np * IT * slots; idx += blockDim.x) {
      const int k = idx % slots;
      const int row = idx / slots;
      const int q = row / IT;
      dw_stage_row(tile + row * RS, x + ((long long)(n0 + q) * C + c) * H * W,
                   oh0 * SH - PH + (row - q * IT), H, W, col0, k, vec);
    }
    __syncthreads();
    const int items = np * NS * OW;
    for (int it = threadIdx.x; it < items; it += blockDim.x) {
      const int ow = it % OW;
      const int t = it / OW;
      const int strip = t % NS;
      const int q = t / NS;
      const int oh = oh0 + strip * DW_R;
      const float* d = dy + (((long long)(n0 + q) * C * M + o) * OH + oh) * OW + ow;
      float dv[DW_R];
#pragma unroll
      for (int r = 0; r < DW_R; ++r) dv[r] = oh + r < OH ? d[r * OW] : 0.0f;
      const float* base = tile + (q * IT + strip * DW_R * SH) * RS + shift + ow * SW;
#pragma unroll
      for (int tr = 0; tr < (DW_R - 1) * SH + KH; ++tr) {
#pragma unroll
        for (int kw = 0; kw < KW; ++kw) {
          const float v = base[tr * RS + kw];
#pragma unroll
          for (int r = 0; r < DW_R; ++r) {
            const int kh = tr - r * SH;
            if (kh >= 0 && kh < KH) acc[kh * KW + kw] += dv[r] * v;
          }
        }
      }
    }
  }
  // Block sums of the KH*KW accumulators: one shared-memory tree each, in a fixed order.
  for (int j = 0; j < KH * KW; ++j) {
    __syncthreads();
    red[threadIdx.x] = acc[j];
    __syncthreads();
    for (int half = CL_THREADS / 2; half > 0; half >>= 1) {
      if ((int)threadIdx.x < half) red[threadIdx.x] += red[threadIdx.x + half];
      __syncthreads();
    }
    if (threadIdx.x == 0) partial[((long long)o * splits + s) * KH * KW + j] = red[0];
  }
}

// dweight[i] += sum over s of partial[(o * splits + s) * K + tap], i = o * K + tap.
extern "C" __global__ void dw_filter_finish(int n, int K, int splits,
    const float* __restrict__ partial, float* __restrict__ dweight) {
  CL_LOOP(i, n) {
    const int o = i / K;
    const int tap = i - o * K;
    const float* p = partial + (long long)o * splits * K + tap;
    float sum = 0.0f;
    for (int s = 0; s < splits; ++s) sum += p[(long long)s * K];
    dweight[i] += sum;
  }
}

// The instantiations the planner knows (kernel size and stride in both directions).
#define DW_INSTANCES(X) X(3, 3, 1, 1, k3s1) X(3, 3, 2, 2, k3s2) X(5, 5, 1, 1, k5s1) \
  X(5, 5, 2, 2, k5s2)

#define DW_FORWARD(KH, KW, SH, SW, NAME)                                                      \
  extern "C" __global__ void dw_forward_##NAME(int N, int C, int M, int H, int W, int OH,   \
      int OW, int PH, int PW, int TH, int PB, int bands, int RS, int shift, int vec,          \
      const float* __restrict__ x, const float* __restrict__ weight,                         \
      const float* __restrict__ bias, float* __restrict__ y) {                               \
    dw_forward_tiled<KH, KW, SH, SW>(N, C, M, H, W, OH, OW, PH, PW, TH, PB, bands, RS,       \
                                     shift, vec, x, weight, bias, y);                        \
  }
#define DW_BACKWARD_DATA(KH, KW, SH, SW, NAME)                                                \
  extern "C" __global__ void dw_backward_data_##NAME(int N, int C, int M, int H, int W,     \
      int OH, int OW, int PH, int PW, int TH, int PB, int bands, int RS, int shift,          \
      int owlo, int TR, int vec, const float* __restrict__ dy,                               \
      const float* __restrict__ weight, float* __restrict__ dx) {                            \
    dw_backward_data_tiled<KH, KW, SH, SW>(N, C, M, H, W, OH, OW, PH, PW, TH, PB, bands,     \
                                           RS, shift, owlo, TR, vec, dy, weight, dx);        \
  }
#define DW_FILTER(KH, KW, SH, SW, NAME)                                                       \
  extern "C" __global__ void dw_filter_##NAME(int N, int C, int M, int H, int W, int OH,    \
      int OW, int PH, int PW, int TH, int PB, int bands, int RS, int shift, int vec,          \
      int splits, const float* __restrict__ x, const float* __restrict__ dy,                 \
      float* __restrict__ partial) {                                                         \
    dw_filter_tiled<KH, KW, SH, SW>(N, C, M, H, W, OH, OW, PH, PW, TH, PB, bands, RS,        \
                                    shift, vec, splits, x, dy, partial);                     \
  }
DW_INSTANCES(DW_FORWARD)
DW_INSTANCES(DW_BACKWARD_DATA)
DW_INSTANCES(DW_FILTER)

// --- direct kernels: any filter, stride, dilation, 1-D ------------------------------------
//   forward          one thread per output element, looping over the taps;
//   backward_data    one thread per input element, gathering over every (m, tap) whose
//                    output reads it (no atomics);
//   backward_filter  one block per (output channel, tap): a shared-memory tree reduction over
//                    all images and output positions, added to the weight gradient by one
//                    thread (no atomics).

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
