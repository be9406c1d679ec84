// caffe-lite: Pooling kernels (MAX, AVE, STOCHASTIC) on (N, C, H, W).
// Python side: caffe_lite/layers/cuda/pooling.py.  Window rules as Caffe's (and
// caffe_lite/layers/pooling.py): a window starts at o * stride - pad; MAX and AVE clip it to
// the input, AVE divides by its size clipped to the PADDED input.  Backward passes gather, one
// thread per input element, over the windows that contain it (no atomics).

#define CL_FLT_MAX 3.402823466e+38F
#define CL_FLT_MIN 1.175494351e-38F
#define CL_LOOP(i, n) \
  for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < (n); \
       i += (int)(blockDim.x * gridDim.x))

__device__ __forceinline__ int cl_min(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int cl_max(int a, int b) { return a > b ? a : b; }

// y = window max; idx = its input index h * W + w (-1: none); top_mask (optional) = idx.
// Strict '>' in row-major window order keeps the first maximum.
extern "C" __global__ void max_pool_forward(int n, int H, int W, int OH, int OW,
    int KH, int KW, int SH, int SW, int PH, int PW,
    const float* __restrict__ x, float* __restrict__ y, int* __restrict__ idx,
    float* __restrict__ top_mask) {
  CL_LOOP(index, n) {
    const int ow = index % OW;
    const int oh = (index / OW) % OH;
    const int plane = index / (OW * OH);   // image * C + channel
    int hs = oh * SH - PH, ws = ow * SW - PW;
    const int he = cl_min(hs + KH, H), we = cl_min(ws + KW, W);
    hs = cl_max(hs, 0);
    ws = cl_max(ws, 0);
    const float* xp = x + (long long)plane * H * W;
    float best = -CL_FLT_MAX;
    int arg = -1;
    for (int h = hs; h < he; ++h)
      for (int w = ws; w < we; ++w)
        if (xp[h * W + w] > best) { best = xp[h * W + w]; arg = h * W + w; }
    y[index] = best;
    idx[index] = arg;
    if (top_mask) top_mask[index] = (float)arg;
  }
}

extern "C" __global__ void ave_pool_forward(int n, int H, int W, int OH, int OW,
    int KH, int KW, int SH, int SW, int PH, int PW,
    const float* __restrict__ x, float* __restrict__ y) {
  CL_LOOP(index, n) {
    const int ow = index % OW;
    const int oh = (index / OW) % OH;
    const int plane = index / (OW * OH);
    int hs = oh * SH - PH, ws = ow * SW - PW;
    int he = cl_min(hs + KH, H + PH), we = cl_min(ws + KW, W + PW);
    const int pool_size = (he - hs) * (we - ws);
    hs = cl_max(hs, 0);
    ws = cl_max(ws, 0);
    he = cl_min(he, H);
    we = cl_min(we, W);
    const float* xp = x + (long long)plane * H * W;
    float sum = 0.0f;
    for (int h = hs; h < he; ++h)
      for (int w = ws; w < we; ++w) sum += xp[h * W + w];
    y[index] = sum / (float)pool_size;
  }
}

// TRAIN: pick one position of each window with probability proportional to its value, with
// u uniform in (0, 1] drawn on the host: the first position whose running sum reaches
// u * (window sum).  No padding (Caffe allows none for STOCHASTIC).
extern "C" __global__ void sto_pool_forward_train(int n, int H, int W, int OH, int OW,
    int KH, int KW, int SH, int SW,
    const float* __restrict__ x, const float* __restrict__ u, float* __restrict__ y,
    int* __restrict__ idx) {
  CL_LOOP(index, n) {
    const int ow = index % OW;
    const int oh = (index / OW) % OH;
    const int plane = index / (OW * OH);
    const int hs = oh * SH, ws = ow * SW;
    const int he = cl_min(hs + KH, H), we = cl_min(ws + KW, W);
    const float* xp = x + (long long)plane * H * W;
    float total = 0.0f;
    for (int h = hs; h < he; ++h)
      for (int w = ws; w < we; ++w) total += xp[h * W + w];
    const float thres = total * u[index];
    float cum = 0.0f, val = 0.0f;
    int arg = -1;
    for (int h = hs; h < he && arg < 0; ++h)
      for (int w = ws; w < we; ++w) {
        cum += xp[h * W + w];
        if (cum >= thres) { val = xp[h * W + w]; arg = h * W + w; break; }
      }
    y[index] = val;
    idx[index] = arg;
  }
}

// TEST: the activation-weighted average sum(x^2) / sum(x), the sum started at FLT_MIN.
extern "C" __global__ void sto_pool_forward_test(int n, int H, int W, int OH, int OW,
    int KH, int KW, int SH, int SW,
    const float* __restrict__ x, float* __restrict__ y, int* __restrict__ idx) {
  CL_LOOP(index, n) {
    const int ow = index % OW;
    const int oh = (index / OW) % OH;
    const int plane = index / (OW * OH);
    const int hs = oh * SH, ws = ow * SW;
    const int he = cl_min(hs + KH, H), we = cl_min(ws + KW, W);
    const float* xp = x + (long long)plane * H * W;
    float total = CL_FLT_MIN, sq = 0.0f;
    for (int h = hs; h < he; ++h)
      for (int w = ws; w < we; ++w) {
        const float v = xp[h * W + w];
        total += v;
        sq += v * v;
      }
    y[index] = sq / total;
    idx[index] = -1;   // nothing sampled: backward passes no gradient
  }
}

// MAX and STOCHASTIC: dx(h, w) = sum of dy over the windows containing (h, w) that chose it.
extern "C" __global__ void argmax_pool_backward(int n, int H, int W, int OH, int OW,
    int KH, int KW, int SH, int SW, int PH, int PW,
    const float* __restrict__ dy, const int* __restrict__ idx, float* __restrict__ dx) {
  CL_LOOP(index, n) {
    const int w = index % W;
    const int h = (index / W) % H;
    const int plane = index / (W * H);
    const int phs = (h + PH < KH) ? 0 : (h + PH - KH) / SH + 1;
    const int phe = cl_min((h + PH) / SH + 1, OH);
    const int pws = (w + PW < KW) ? 0 : (w + PW - KW) / SW + 1;
    const int pwe = cl_min((w + PW) / SW + 1, OW);
    const long long off = (long long)plane * OH * OW;
    const int me = h * W + w;
    float g = 0.0f;
    for (int ph = phs; ph < phe; ++ph)
      for (int pw = pws; pw < pwe; ++pw)
        if (idx[off + ph * OW + pw] == me) g += dy[off + ph * OW + pw];
    dx[index] = g;
  }
}

extern "C" __global__ void ave_pool_backward(int n, int H, int W, int OH, int OW,
    int KH, int KW, int SH, int SW, int PH, int PW,
    const float* __restrict__ dy, float* __restrict__ dx) {
  CL_LOOP(index, n) {
    const int w = index % W;
    const int h = (index / W) % H;
    const int plane = index / (W * H);
    const int phs = (h + PH < KH) ? 0 : (h + PH - KH) / SH + 1;
    const int phe = cl_min((h + PH) / SH + 1, OH);
    const int pws = (w + PW < KW) ? 0 : (w + PW - KW) / SW + 1;
    const int pwe = cl_min((w + PW) / SW + 1, OW);
    const float* d = dy + (long long)plane * OH * OW;
    float g = 0.0f;
    for (int ph = phs; ph < phe; ++ph)
      for (int pw = pws; pw < pwe; ++pw) {
        const int hs = ph * SH - PH, ws = pw * SW - PW;
        const int he = cl_min(hs + KH, H + PH), we = cl_min(ws + KW, W + PW);
        g += d[ph * OW + pw] / (float)((he - hs) * (we - ws));
      }
    dx[index] = g;
  }
}
