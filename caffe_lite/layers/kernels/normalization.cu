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

// --- BatchNorm -> Scale (-> ReLU) as one step (layers/fusion.py, cuda/fusion.py) ----------------
// x, y seen as (N, C, S).  Forward: bn_scale_stats_partial + bn_scale_stats_finish give the batch
// mean and variance per channel (Welford within a thread, Chan's merge across threads and
// blocks, in a fixed order: deterministic, no atomics); bn_scale_apply writes
// xnorm = (x - mean) / std (kept for backward) and y = max(xnorm * scale + bias, 0).
// Backward: bn_scale_grad_partial + bn_scale_grad_finish sum g * xnorm and g per channel
// (g = dy where the ReLU passed, else 0), bn_scale_grad_apply writes dx.  The ReLU mask is
// recomputed from xnorm with the forward's own fused multiply-add, so it is exactly the mask
// forward applied.  Vector paths (float4) when S % 4 == 0: a plane then starts 16-byte aligned.

#define CL_THREADS 256
#ifndef CL_CHECK_ALIGN
#define CL_CHECK_ALIGN(p)
#endif

__device__ __forceinline__ float4 cl_ld4(const float* p) {
  CL_CHECK_ALIGN(p);
  return *reinterpret_cast<const float4*>(p);
}

__device__ __forceinline__ void cl_st4(float* p, float4 v) {
  CL_CHECK_ALIGN(p);
  *reinterpret_cast<float4*>(p) = v;
}

struct ClMoments { float n, mean, m2; };

// Chan et al.'s pairwise merge of (count, mean, sum of squared deviations).
__device__ __forceinline__ ClMoments cl_merge(ClMoments a, ClMoments b) {
  const float n = a.n + b.n;
  if (n == 0.0f) return a;
  const float d = b.mean - a.mean;
  const float wb = b.n / n;
  ClMoments r;
  r.n = n;
  r.mean = a.mean + d * wb;
  r.m2 = a.m2 + b.m2 + d * d * a.n * wb;
  return r;
}

// The moments of 4 values (mean first, then squared deviations from it).
__device__ __forceinline__ ClMoments cl_moments4(float4 v) {
  ClMoments r;
  r.n = 4.0f;
  r.mean = ((v.x + v.y) + (v.z + v.w)) * 0.25f;
  const float a = v.x - r.mean, b = v.y - r.mean, c = v.z - r.mean, d = v.w - r.mean;
  r.m2 = (a * a + b * b) + (c * c + d * d);
  return r;
}

// grid (C, splits), block CL_THREADS: block (c, s) reduces the s-th of `splits` equal parts
// of channel c's N * S values (part sizes a multiple of 4 when vec) to partial[(c * splits +
// s) * 3 + {0, 1, 2}] = (count, mean, m2).
extern "C" __global__ void bn_scale_stats_partial(int N, int C, int S, int splits, int vec,
    const float* __restrict__ x, float* __restrict__ partial) {
  __shared__ float sn[CL_THREADS];
  __shared__ float smean[CL_THREADS];
  __shared__ float sm2[CL_THREADS];
  const int c = blockIdx.x;
  const int s = blockIdx.y;
  const int total = N * S;
  int per = (total + splits - 1) / splits;
  if (vec) per = (per + 3) & ~3;
  const int begin = s * per < total ? s * per : total;
  const int end = begin + per < total ? begin + per : total;
  ClMoments acc = {0.0f, 0.0f, 0.0f};
  if (vec) {
    for (int j = begin + 4 * (int)threadIdx.x; j < end; j += 4 * CL_THREADS) {
      const int img = j / S;
      const float4 v = cl_ld4(x + ((long long)img * C + c) * S + (j - img * S));
      acc = cl_merge(acc, cl_moments4(v));
    }
  } else {
    for (int j = begin + (int)threadIdx.x; j < end; j += CL_THREADS) {
      const int img = j / S;
      const float v = x[((long long)img * C + c) * S + (j - img * S)];
      acc.n += 1.0f;  // Welford
      const float d = v - acc.mean;
      acc.mean += d / acc.n;
      acc.m2 += d * (v - acc.mean);
    }
  }
  sn[threadIdx.x] = acc.n;
  smean[threadIdx.x] = acc.mean;
  sm2[threadIdx.x] = acc.m2;
  __syncthreads();
  for (int half = CL_THREADS / 2; half > 0; half >>= 1) {
    if ((int)threadIdx.x < half) {
      const int o = threadIdx.x + half;
      ClMoments a = {sn[threadIdx.x], smean[threadIdx.x], sm2[threadIdx.x]};
      ClMoments b = {sn[o], smean[o], sm2[o]};
      a = cl_merge(a, b);
      sn[threadIdx.x] = a.n;
      smean[threadIdx.x] = a.mean;
      sm2[threadIdx.x] = a.m2;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    float* p = partial + ((long long)c * splits + s) * 3;
    p[0] = sn[0];
    p[1] = smean[0];
    p[2] = sm2[0];
  }
}

// One thread per channel: merge the parts (in double, in order), then what BatchNorm's own
// forward leaves: mean, std = sqrt(var + eps), and Caffe's running sums (var biased for the
// normalisation, times m / (m - 1) for the running sum).
extern "C" __global__ void bn_scale_stats_finish(int C, int splits,
    const float* __restrict__ partial, float eps, float maf, float correction,
    float* __restrict__ run_mean, float* __restrict__ run_var, float* __restrict__ run_factor,
    float* __restrict__ mean, float* __restrict__ std_) {
  for (int c = (int)(blockIdx.x * blockDim.x + threadIdx.x); c < C;
       c += (int)(blockDim.x * gridDim.x)) {
    double n = 0.0, mu = 0.0, m2 = 0.0;
    for (int s = 0; s < splits; ++s) {
      const float* p = partial + ((long long)c * splits + s) * 3;
      const double nb = p[0];
      const double tot = n + nb;
      if (tot == 0.0) continue;
      const double d = (double)p[1] - mu;
      mu += d * (nb / tot);
      m2 += (double)p[2] + d * d * n * (nb / tot);
      n = tot;
    }
    const float m = (float)mu;
    const float v = n > 0.0 ? (float)(m2 / n) : 0.0f;
    mean[c] = m;
    std_[c] = sqrtf(v + eps);
    run_mean[c] = run_mean[c] * maf + m;
    run_var[c] = run_var[c] * maf + correction * v;
    if (c == 0) run_factor[0] = run_factor[0] * maf + 1.0f;
  }
}

__device__ __forceinline__ float cl_bn_scale_one(float v, float mu, float sd, float sc,
                                                 float b, int relu, float* xn) {
  const float t = (v - mu) / sd;
  *xn = t;
  const float u = __fmaf_rn(t, sc, b);
  return relu ? fmaxf(u, 0.0f) : u;
}

// Grid-stride over elements (or float4 groups when vec): y = relu(xnorm * scale + bias), xnorm
// kept when not NULL.  Global statistics (global != 0): mean and std come from the running
// sums (stats = run_mean, run_var, run_factor) as BatchNorm computes them, and the first
// element of each channel's first plane also leaves them in mean / std.  Otherwise stats =
// (mean, std) from bn_scale_stats_finish.  y may be x.
extern "C" __global__ void bn_scale_apply(int n, int C, int S, int vec, int global, float eps,
    const float* x, const float* __restrict__ stat_a, const float* __restrict__ stat_b,
    const float* __restrict__ run_factor, float* __restrict__ mean, float* __restrict__ std_,
    const float* __restrict__ scale, const float* __restrict__ bias, int relu, float* y,
    float* __restrict__ xnorm) {
  const int groups = vec ? n / 4 : n;
  const int width = vec ? 4 : 1;
  for (int g = (int)(blockIdx.x * blockDim.x + threadIdx.x); g < groups;
       g += (int)(blockDim.x * gridDim.x)) {
    const int i = g * width;
    const int plane = i / S;
    const int c = plane % C;
    float mu, sd;
    if (global) {
      const float f = run_factor[0] == 0.0f ? 0.0f : 1.0f / run_factor[0];
      mu = stat_a[c] * f;
      sd = sqrtf(stat_b[c] * f + eps);
      if (plane == c && i == plane * S) {
        mean[c] = mu;
        std_[c] = sd;
      }
    } else {
      mu = stat_a[c];
      sd = stat_b[c];
    }
    const float sc = scale[c];
    const float b = bias ? bias[c] : 0.0f;
    float t[4];
    if (vec) {
      const float4 v = cl_ld4(x + i);
      float4 o;
      o.x = cl_bn_scale_one(v.x, mu, sd, sc, b, relu, &t[0]);
      o.y = cl_bn_scale_one(v.y, mu, sd, sc, b, relu, &t[1]);
      o.z = cl_bn_scale_one(v.z, mu, sd, sc, b, relu, &t[2]);
      o.w = cl_bn_scale_one(v.w, mu, sd, sc, b, relu, &t[3]);
      cl_st4(y + i, o);
      if (xnorm) cl_st4(xnorm + i, make_float4(t[0], t[1], t[2], t[3]));
    } else {
      y[i] = cl_bn_scale_one(x[i], mu, sd, sc, b, relu, &t[0]);
      if (xnorm) xnorm[i] = t[0];
    }
  }
}

// g = dy, or 0 where the ReLU gave 0 (recomputed from xnorm as forward computed it).
__device__ __forceinline__ float cl_gate(float d, float xn, float sc, float b, int relu) {
  return (!relu || __fmaf_rn(xn, sc, b) > 0.0f) ? d : 0.0f;
}

// grid (C, splits), block CL_THREADS: partial[(c * splits + s) * 2 + {0, 1}] = the s-th part's
// sums of g * xnorm and of g (fixed-order tree: deterministic).
extern "C" __global__ void bn_scale_grad_partial(int N, int C, int S, int splits, int vec,
    const float* __restrict__ dy, const float* __restrict__ xnorm,
    const float* __restrict__ scale, const float* __restrict__ bias, int relu,
    float* __restrict__ partial) {
  __shared__ float s_gx[CL_THREADS];
  __shared__ float s_g[CL_THREADS];
  const int c = blockIdx.x;
  const int s = blockIdx.y;
  const int total = N * S;
  int per = (total + splits - 1) / splits;
  if (vec) per = (per + 3) & ~3;
  const int begin = s * per < total ? s * per : total;
  const int end = begin + per < total ? begin + per : total;
  const float sc = scale[c];
  const float b = bias ? bias[c] : 0.0f;
  float gx = 0.0f, gs = 0.0f;
  if (vec) {
    for (int j = begin + 4 * (int)threadIdx.x; j < end; j += 4 * CL_THREADS) {
      const int img = j / S;
      const long long at = ((long long)img * C + c) * S + (j - img * S);
      const float4 d = cl_ld4(dy + at);
      const float4 t = cl_ld4(xnorm + at);
      const float g0 = cl_gate(d.x, t.x, sc, b, relu), g1 = cl_gate(d.y, t.y, sc, b, relu);
      const float g2 = cl_gate(d.z, t.z, sc, b, relu), g3 = cl_gate(d.w, t.w, sc, b, relu);
      gx += (g0 * t.x + g1 * t.y) + (g2 * t.z + g3 * t.w);
      gs += (g0 + g1) + (g2 + g3);
    }
  } else {
    for (int j = begin + (int)threadIdx.x; j < end; j += CL_THREADS) {
      const int img = j / S;
      const long long at = ((long long)img * C + c) * S + (j - img * S);
      const float t = xnorm[at];
      const float g = cl_gate(dy[at], t, sc, b, relu);
      gx += g * t;
      gs += g;
    }
  }
  s_gx[threadIdx.x] = gx;
  s_g[threadIdx.x] = gs;
  __syncthreads();
  for (int half = CL_THREADS / 2; half > 0; half >>= 1) {
    if ((int)threadIdx.x < half) {
      s_gx[threadIdx.x] += s_gx[threadIdx.x + half];
      s_g[threadIdx.x] += s_g[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    float* p = partial + ((long long)c * splits + s) * 2;
    p[0] = s_gx[0];
    p[1] = s_g[0];
  }
}

// One thread per channel: t1 = sum g * xnorm, t2 = sum g (in double, in order); Scale's
// parameter gradients accumulate (dscale += t1, dbias += t2; NULL: not wanted); coef[c] =
// (scale * t1 / m, scale * t2 / m), the two means BatchNorm's backward subtracts.
extern "C" __global__ void bn_scale_grad_finish(int C, int splits,
    const float* __restrict__ partial, double inv_m, const float* __restrict__ scale,
    float* __restrict__ dscale, float* __restrict__ dbias, float* __restrict__ coef) {
  for (int c = (int)(blockIdx.x * blockDim.x + threadIdx.x); c < C;
       c += (int)(blockDim.x * gridDim.x)) {
    double t1 = 0.0, t2 = 0.0;
    for (int s = 0; s < splits; ++s) {
      const float* p = partial + ((long long)c * splits + s) * 2;
      t1 += p[0];
      t2 += p[1];
    }
    if (dscale) dscale[c] += (float)t1;
    if (dbias) dbias[c] += (float)t2;
    const double sc = scale[c];
    coef[2 * c] = (float)(sc * t1 * inv_m);
    coef[2 * c + 1] = (float)(sc * t2 * inv_m);
  }
}

__device__ __forceinline__ float cl_bn_scale_grad_one(float d, float xn, float sc, float b,
    int relu, float mdyy, float mdy, float sd, float* dt) {
  const float e = cl_gate(d, xn, sc, b, relu) * sc;
  *dt = e;
  return (e - xn * mdyy - mdy) / sd;
}

// dx = (d - xnorm * coef0 - coef1) / std with d = g * scale; d is also left in dt (the
// diff at Scale's input, as the layers one by one leave it) when dt is not NULL.  dx or dt
// may be dy.
extern "C" __global__ void bn_scale_grad_apply(int n, int C, int S, int vec, const float* dy,
    const float* __restrict__ xnorm, const float* __restrict__ scale,
    const float* __restrict__ bias, int relu, const float* __restrict__ coef,
    const float* __restrict__ std_, float* dt, float* dx) {
  const int groups = vec ? n / 4 : n;
  const int width = vec ? 4 : 1;
  for (int g = (int)(blockIdx.x * blockDim.x + threadIdx.x); g < groups;
       g += (int)(blockDim.x * gridDim.x)) {
    const int i = g * width;
    const int c = (i / S) % C;
    const float sc = scale[c];
    const float b = bias ? bias[c] : 0.0f;
    const float mdyy = coef[2 * c], mdy = coef[2 * c + 1], sd = std_[c];
    float e[4];
    if (vec) {
      const float4 d = cl_ld4(dy + i);
      const float4 t = cl_ld4(xnorm + i);
      float4 o;
      o.x = cl_bn_scale_grad_one(d.x, t.x, sc, b, relu, mdyy, mdy, sd, &e[0]);
      o.y = cl_bn_scale_grad_one(d.y, t.y, sc, b, relu, mdyy, mdy, sd, &e[1]);
      o.z = cl_bn_scale_grad_one(d.z, t.z, sc, b, relu, mdyy, mdy, sd, &e[2]);
      o.w = cl_bn_scale_grad_one(d.w, t.w, sc, b, relu, mdyy, mdy, sd, &e[3]);
      if (dt) cl_st4(dt + i, make_float4(e[0], e[1], e[2], e[3]));
      cl_st4(dx + i, o);
    } else {
      dx[i] = cl_bn_scale_grad_one(dy[i], xnorm[i], sc, b, relu, mdyy, mdy, sd, &e[0]);
      if (dt) dt[i] = e[0];
    }
  }
}
