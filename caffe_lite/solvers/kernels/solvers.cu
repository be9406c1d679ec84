// caffe-lite: one fused kernel per solver type.  Python side: caffe_lite/solvers/cuda.py.
//
// For each element, in the order of the CPU path (caffe_lite/solvers/solver.py and the solver
// files):  g = diff * clip_scale * norm_scale  (gradient clipping, iter_size normalisation),
// g += decay * w (L2, reg == 1) or decay * sign(w) (L1, reg == 2), g *= mask; then the
// solver's history update and step; then diff = step, data = (data - step) * mask, and the
// history is multiplied by the mask so that pruned entries keep a history of exactly 0.
// `mask` may be NULL (no mask).

#define CL_LOOP(i, n) \
  for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < (n); \
       i += (int)(blockDim.x * gridDim.x))

__device__ __forceinline__ float cl_grad(float g, float w, float m, float clip_scale,
                                         float norm_scale, float decay, int reg) {
  g *= clip_scale;
  g *= norm_scale;
  if (reg == 1) {
    g += decay * w;
  } else if (reg == 2) {
    g += decay * (w > 0.0f ? 1.0f : (w < 0.0f ? -1.0f : 0.0f));
  }
  return g * m;
}

#define CL_PROLOGUE                                                              \
  const float m = mask ? mask[i] : 1.0f;                                         \
  const float w = data[i];                                                       \
  float g = cl_grad(diff[i], w, m, clip_scale, norm_scale, decay, reg);

#define CL_EPILOGUE(step)        \
  diff[i] = (step);              \
  data[i] = (w - (step)) * m;

// h = momentum h + rate g;  step = h
extern "C" __global__ void sgd_update(
    int n, float* __restrict__ data, float* __restrict__ diff,
    const float* __restrict__ mask, float clip_scale, float norm_scale, float decay, int reg,
    float rate, float momentum, float* __restrict__ h) {
  CL_LOOP(i, n) {
    CL_PROLOGUE
    g *= rate;
    const float hn = (h[i] * momentum + g) * m;
    h[i] = hn;
    CL_EPILOGUE(hn)
  }
}

// h' = momentum h + rate g;  step = (1 + momentum) h' - momentum h
extern "C" __global__ void nesterov_update(
    int n, float* __restrict__ data, float* __restrict__ diff,
    const float* __restrict__ mask, float clip_scale, float norm_scale, float decay, int reg,
    float rate, float momentum,
                                           float* __restrict__ h) {
  CL_LOOP(i, n) {
    CL_PROLOGUE
    g *= rate;
    const float old = h[i] * momentum;
    const float hn = (h[i] * momentum + g) * m;
    h[i] = hn;
    const float step = (hn * (1.0f + momentum) - old) * m;
    CL_EPILOGUE(step)
  }
}

// h += g^2;  step = rate g / (sqrt(h) + delta)
extern "C" __global__ void adagrad_update(
    int n, float* __restrict__ data, float* __restrict__ diff,
    const float* __restrict__ mask, float clip_scale, float norm_scale, float decay, int reg,
    float rate, float delta, float* __restrict__ h) {
  CL_LOOP(i, n) {
    CL_PROLOGUE
    const float hn = (h[i] + g * g) * m;
    h[i] = hn;
    const float step = (g / (sqrtf(hn) + delta)) * rate;
    CL_EPILOGUE(step)
  }
}

// h = d h + (1 - d) g^2;  step = rate g / (sqrt(h) + delta)
extern "C" __global__ void rmsprop_update(
    int n, float* __restrict__ data, float* __restrict__ diff,
    const float* __restrict__ mask, float clip_scale, float norm_scale, float decay, int reg,
    float rate, float rms_decay, float delta,
                                          float* __restrict__ h) {
  CL_LOOP(i, n) {
    CL_PROLOGUE
    const float t = (g * g) * (1.0f - rms_decay);
    const float hn = (h[i] * rms_decay + t) * m;
    h[i] = hn;
    const float step = (g / (sqrtf(hn) + delta)) * rate;
    CL_EPILOGUE(step)
  }
}

// hg = rho hg + (1 - rho) g^2;  u = g sqrt((hu + delta) / (hg + delta));
// hu = rho hu + (1 - rho) u^2;  step = rate u
extern "C" __global__ void adadelta_update(
    int n, float* __restrict__ data, float* __restrict__ diff,
    const float* __restrict__ mask, float clip_scale, float norm_scale, float decay, int reg,
    float rate, float rho, float delta,
                                           float* __restrict__ hg, float* __restrict__ hu) {
  CL_LOOP(i, n) {
    CL_PROLOGUE
    const float one_minus = 1.0f - rho;
    const float hgn = (hg[i] * rho + (g * g) * one_minus) * m;
    hg[i] = hgn;
    const float u = g * sqrtf((hu[i] + delta) / (hgn + delta));
    hu[i] = (hu[i] * rho + (u * u) * one_minus) * m;
    const float step = u * rate;
    CL_EPILOGUE(step)
  }
}

// mt = b1 mt + (1 - b1) g;  vt = b2 vt + (1 - b2) g^2;
// step = (rate * correction) mt / (sqrt(vt) + eps)   (correction folded into rate by the caller)
extern "C" __global__ void adam_update(
    int n, float* __restrict__ data, float* __restrict__ diff,
    const float* __restrict__ mask, float clip_scale, float norm_scale, float decay, int reg,
    float rate, float beta1, float beta2, float eps,
                                       float* __restrict__ mt, float* __restrict__ vt) {
  CL_LOOP(i, n) {
    CL_PROLOGUE
    const float mn = (mt[i] * beta1 + g * (1.0f - beta1)) * m;
    const float vn = (vt[i] * beta2 + (g * g) * (1.0f - beta2)) * m;
    mt[i] = mn;
    vt[i] = vn;
    const float step = (mn / (sqrtf(vn) + eps)) * rate;
    CL_EPILOGUE(step)
  }
}
