// caffe-lite: BatchNorm and LRN kernels.  Python side: caffe_lite/layers/cuda/normalization.py.
// Per-channel sums come from the generic channel_sum (common.cu); these kernels do the
// elementwise parts and the tiny per-channel statistics updates.

#define CL_LOOP(i, n) \
  for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < (n); \
       i += (int)(blockDim.x * gridDim.x))

// --- BatchNorm: x seen as (N, C, S) --------------------------------------------------------
// y = x - mean[c]   (y may be x)
extern "C" __global__ void bn_center(int n, int C, int S, const float* x,
                                     const float* __restrict__ mean, float* y) {
  CL_LOOP(i, n) { y[i] = x[i] - mean[(i / S) % C]; }
}

// y = a / std[c] (y may be a); also kept in xnorm for backward when xnorm is not NULL
extern "C" __global__ void bn_divide(int n, int C, int S, const float* a,
                                     const float* __restrict__ std_, float* y,
                                     float* __restrict__ xnorm) {
  CL_LOOP(i, n) {
    const float v = a[i] / std_[(i / S) % C];
    y[i] = v;
    if (xnorm) xnorm[i] = v;
  }
}

// TRAIN statistics: running sums (Caffe's unnormalised moving averages) and std = sqrt(var + eps).
extern "C" __global__ void bn_stats_train(int C, const float* __restrict__ mean,
    const float* __restrict__ var, float eps, float maf, float correction,
    float* __restrict__ run_mean, float* __restrict__ run_var, float* __restrict__ run_factor,
    float* __restrict__ std_) {
  CL_LOOP(c, C) {
    run_mean[c] = run_mean[c] * maf + mean[c];
    run_var[c] = run_var[c] * maf + correction * var[c];
    std_[c] = sqrtf(var[c] + eps);
    if (c == 0) run_factor[0] = run_factor[0] * maf + 1.0f;
  }
}

// Global statistics: mean = run_mean / factor, std = sqrt(run_var / factor + eps)
// (a factor of 0 reads as statistics 0).
extern "C" __global__ void bn_stats_global(int C, const float* __restrict__ run_mean,
    const float* __restrict__ run_var, const float* __restrict__ run_factor, float eps,
    float* __restrict__ mean, float* __restrict__ std_) {
  CL_LOOP(c, C) {
    const float s = run_factor[0];
    const float f = s == 0.0f ? 0.0f : 1.0f / s;
    mean[c] = run_mean[c] * f;
    std_[c] = sqrtf(run_var[c] * f + eps);
  }
}

// dx = (dy - y * mean(dy * y) - mean(dy)) / std   (dx may be dy)
extern "C" __global__ void bn_backward(int n, int C, int S, const float* dy,
    const float* __restrict__ y, const float* __restrict__ mean_dyy,
    const float* __restrict__ mean_dy, const float* __restrict__ std_, float* dx) {
  CL_LOOP(i, n) {
    const int c = (i / S) % C;
    float t = dy[i] - y[i] * mean_dyy[c];
    t -= mean_dy[c];
    dx[i] = t / std_[c];
  }
}

// --- LRN on (N, C, H, W) ---------------------------------------------------------------------
// out = sum over the window of a^2 (square) or a: across channels c - pre .. c + pre, or a
// size x size box within the channel (zero outside), summed in caffe_lite's CPU order.
extern "C" __global__ void lrn_window_across(int n, int C, int HW, int size, int pre,
    int square, const float* __restrict__ a, float* __restrict__ out) {
  CL_LOOP(i, n) {
    const int p = i % HW;
    const int c = (i / HW) % C;
    const int img = i / (HW * C);
    const float* base = a + (long long)img * C * HW + p;
    float sum = 0.0f;
    for (int t = 0; t < size; ++t) {
      const int cc = c - pre + t;
      if (cc < 0 || cc >= C) continue;
      const float v = base[(long long)cc * HW];
      sum += square ? v * v : v;
    }
    out[i] = sum;
  }
}

extern "C" __global__ void lrn_window_within(int n, int H, int W, int size, int pre,
    int square, const float* __restrict__ a, float* __restrict__ out) {
  CL_LOOP(i, n) {
    const int w = i % W;
    const int h = (i / W) % H;
    const float* plane = a + (long long)(i / (W * H)) * H * W;
    float sum = 0.0f;
    for (int tw = 0; tw < size; ++tw) {
      const int ww = w - pre + tw;
      float col = 0.0f;
      for (int th = 0; th < size; ++th) {
        const int hh = h - pre + th;
        if (hh < 0 || hh >= H || ww < 0 || ww >= W) continue;
        const float v = plane[hh * W + ww];
        col += square ? v * v : v;
      }
      sum += col;
    }
    out[i] = sum;
  }
}

// scale = k + alpha/n * sum (across), or 1 + alpha * sum / size^2 (within); then
// scale_pow = scale^-beta and y = x * scale_pow.
extern "C" __global__ void lrn_output(int n, int within, float alpha_over_n, float k,
    float size_sq, float alpha, float neg_beta, const float* x, float* scale,
    float* __restrict__ scale_pow, float* y) {
  CL_LOOP(i, n) {
    float s = scale[i];
    if (within) {
      s = s / size_sq;
      s = s * alpha + 1.0f;
    } else {
      s = s * alpha_over_n + k;
    }
    scale[i] = s;
    const float sp = powf(s, neg_beta);
    scale_pow[i] = sp;
    y[i] = x[i] * sp;
  }
}

// ratio = dy * y / scale
extern "C" __global__ void lrn_ratio(int n, const float* __restrict__ dy,
    const float* __restrict__ y, const float* __restrict__ scale, float* __restrict__ ratio) {
  CL_LOOP(i, n) { ratio[i] = (dy[i] * y[i]) / scale[i]; }
}

// dx = dy * scale_pow - coef * acc * x   (dx may be dy)
extern "C" __global__ void lrn_backward(int n, const float* dy,
    const float* __restrict__ scale_pow, const float* __restrict__ acc,
    const float* __restrict__ x, float coef, float* dx) {
  CL_LOOP(i, n) {
    float a = acc[i] * coef;
    a = a * x[i];
    dx[i] = dy[i] * scale_pow[i] - a;
  }
}
