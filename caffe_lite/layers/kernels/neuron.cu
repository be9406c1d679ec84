// caffe-lite: neuron (elementwise activation) kernels; Python side caffe_lite/layers/cuda/neuron.py.
// Formulas follow caffe_lite/layers/neuron.py (Caffe's), operation for operation.

#define CL_LOOP(i, n) \
  for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < (n); \
       i += (int)(blockDim.x * gridDim.x))

// --- ReLU / PReLU: y = max(x, 0) + slope * min(x, 0) -------------------------------------
extern "C" __global__ void relu_forward(int n, const float* x, float* y, float slope) {
  CL_LOOP(i, n) {
    float v = x[i];
    y[i] = fmaxf(v, 0.0f) + slope * fminf(v, 0.0f);
  }
}

extern "C" __global__ void relu_backward(int n, const float* x, const float* dy, float* dx,
                                         float slope) {
  CL_LOOP(i, n) {
    float v = x[i];
    dx[i] = dy[i] * ((v > 0.0f ? 1.0f : 0.0f) + (v <= 0.0f ? slope : 0.0f));
  }
}

// Slope of element i: slopes[(i / inner) % channels], or slopes[0] when shared.
extern "C" __global__ void prelu_forward(int n, int channels, int inner, int shared,
                                         const float* x, float* y, const float* slopes) {
  CL_LOOP(i, n) {
    float a = shared ? slopes[0] : slopes[(i / inner) % channels];
    float v = x[i];
    y[i] = fmaxf(v, 0.0f) + a * fminf(v, 0.0f);
  }
}

extern "C" __global__ void prelu_backward(int n, int channels, int inner, int shared,
                                          const float* x, const float* dy, float* dx,
                                          const float* slopes) {
  CL_LOOP(i, n) {
    float a = shared ? slopes[0] : slopes[(i / inner) % channels];
    float v = x[i];
    dx[i] = dy[i] * ((v > 0.0f ? 1.0f : 0.0f) + (v <= 0.0f ? a : 0.0f));
  }
}

// t = dy * min(x, 0): summed per channel into the slope gradient.
extern "C" __global__ void prelu_slope_term(int n, const float* x, const float* dy, float* t) {
  CL_LOOP(i, n) { t[i] = fminf(x[i], 0.0f) * dy[i]; }
}

// --- ELU --------------------------------------------------------------------------------
extern "C" __global__ void elu_forward(int n, const float* x, float* y, float alpha) {
  CL_LOOP(i, n) {
    float v = x[i];
    // Caffe computes exp(x) - 1, not expm1(x)
    float t = (expf(fminf(v, 0.0f)) - 1.0f) * alpha;
    y[i] = fmaxf(v, 0.0f) + t;
  }
}

extern "C" __global__ void elu_backward(int n, const float* x, const float* y, const float* dy,
                                        float* dx, float alpha) {
  CL_LOOP(i, n) {
    float v = x[i];
    float f = (y[i] + alpha) * (v <= 0.0f ? 1.0f : 0.0f) + (v > 0.0f ? 1.0f : 0.0f);
    dx[i] = dy[i] * f;
  }
}

// --- Sigmoid / TanH ------------------------------------------------------------------------
extern "C" __global__ void sigmoid_forward(int n, const float* x, float* y) {
  CL_LOOP(i, n) { y[i] = tanhf(x[i] * 0.5f) * 0.5f + 0.5f; }
}

extern "C" __global__ void sigmoid_backward(int n, const float* y, const float* dy, float* dx) {
  CL_LOOP(i, n) {
    float v = y[i];
    dx[i] = (dy[i] * v) * (1.0f - v);
  }
}

extern "C" __global__ void tanh_forward(int n, const float* x, float* y) {
  CL_LOOP(i, n) { y[i] = tanhf(x[i]); }
}

extern "C" __global__ void tanh_backward(int n, const float* y, const float* dy, float* dx) {
  CL_LOOP(i, n) {
    float v = y[i];
    dx[i] = dy[i] * (1.0f - v * v);
  }
}

// --- AbsVal --------------------------------------------------------------------------------
extern "C" __global__ void abs_forward(int n, const float* x, float* y) {
  CL_LOOP(i, n) { y[i] = fabsf(x[i]); }
}

extern "C" __global__ void abs_backward(int n, const float* x, const float* dy, float* dx) {
  CL_LOOP(i, n) {
    float v = x[i];
    float s = v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : 0.0f);
    dx[i] = dy[i] * s;
  }
}

// --- Power: y = (shift + scale * x) ^ power ------------------------------------------------
extern "C" __global__ void power_forward(int n, const float* x, float* y, float power,
                                         float scale, float shift) {
  CL_LOOP(i, n) {
    float t = x[i];
    if (scale != 1.0f) t *= scale;
    if (shift != 0.0f) t += shift;
    if (power != 1.0f) t = powf(t, power);
    y[i] = t;
  }
}

// mode 1: power == 1, dy/dx = diff_scale
// mode 2: power == 2, dy/dx = (diff_scale * scale) * x + diff_scale * shift   (a, b below)
// mode 3: shift == 0, dy/dx = power * y / x
// mode 4: otherwise,  dy/dx = diff_scale * y / (shift + scale * x)
extern "C" __global__ void power_backward(int n, int mode, const float* x, const float* y,
                                          const float* dy, float* dx, float power, float scale,
                                          float shift, float diff_scale, float a, float b) {
  CL_LOOP(i, n) {
    float t;
    if (mode == 1) {
      t = diff_scale;
    } else if (mode == 2) {
      t = x[i] * a;
      if (shift != 0.0f) t += b;
    } else if (mode == 3) {
      t = (y[i] / x[i]) * power;
    } else {
      t = x[i];
      if (scale != 1.0f) t *= scale;
      t += shift;
      t = y[i] / t;
      if (diff_scale != 1.0f) t *= diff_scale;
    }
    dx[i] = dy[i] * t;
  }
}

// --- Exp / Log -----------------------------------------------------------------------------
extern "C" __global__ void exp_forward(int n, const float* x, float* y, float inner_scale,
                                       float outer_scale) {
  CL_LOOP(i, n) {
    float t = inner_scale == 1.0f ? x[i] : x[i] * inner_scale;
    t = expf(t);
    if (outer_scale != 1.0f) t *= outer_scale;
    y[i] = t;
  }
}

extern "C" __global__ void exp_backward(int n, const float* y, const float* dy, float* dx,
                                        float inner_scale) {
  CL_LOOP(i, n) {
    float t = y[i] * dy[i];
    if (inner_scale != 1.0f) t *= inner_scale;
    dx[i] = t;
  }
}

extern "C" __global__ void log_forward(int n, const float* x, float* y, float scale,
                                       float shift, float base_scale) {
  CL_LOOP(i, n) {
    float t = x[i];
    if (scale != 1.0f) t *= scale;
    if (shift != 0.0f) t += shift;
    t = logf(t);
    if (base_scale != 1.0f) t *= base_scale;
    y[i] = t;
  }
}

extern "C" __global__ void log_backward(int n, const float* x, const float* dy, float* dx,
                                        float scale, float shift, float num_scale) {
  CL_LOOP(i, n) {
    float t = x[i];
    if (scale != 1.0f) t *= scale;
    if (shift != 0.0f) t += shift;
    t = 1.0f / t;
    if (num_scale != 1.0f) t *= num_scale;
    dx[i] = dy[i] * t;
  }
}

// --- BNLL: y = log(1 + exp(x)) as max(x, 0) + log1p(exp(-|x|)) ----------------------------
extern "C" __global__ void bnll_forward(int n, const float* x, float* y) {
  CL_LOOP(i, n) {
    float v = x[i];
    y[i] = fmaxf(v, 0.0f) + log1pf(expf(-fabsf(v)));
  }
}

extern "C" __global__ void bnll_backward(int n, const float* x, const float* dy, float* dx) {
  CL_LOOP(i, n) {
    float e = expf(fminf(x[i], 50.0f));  // Caffe's kBNLL_THRESHOLD
    dx[i] = (dy[i] * e) / (e + 1.0f);
  }
}

// --- Threshold / Clip ----------------------------------------------------------------------
extern "C" __global__ void threshold_forward(int n, const float* x, float* y, float threshold) {
  CL_LOOP(i, n) { y[i] = x[i] > threshold ? 1.0f : 0.0f; }
}

extern "C" __global__ void clip_forward(int n, const float* x, float* y, float lo, float hi) {
  CL_LOOP(i, n) { y[i] = fmaxf(fminf(x[i], hi), lo); }
}

extern "C" __global__ void clip_backward(int n, const float* x, const float* dy, float* dx,
                                         float lo, float hi) {
  CL_LOOP(i, n) {
    float v = x[i];
    dx[i] = dy[i] * ((v >= lo && v <= hi) ? 1.0f : 0.0f);
  }
}

// --- Swish: y = x * sigmoid(beta x); s = sigmoid(beta x) kept for backward -----------------
extern "C" __global__ void swish_forward(int n, const float* x, float* s, float* y,
                                         float half_beta) {
  CL_LOOP(i, n) {
    float v = x[i];
    float sg = tanhf(v * half_beta) * 0.5f + 0.5f;
    s[i] = sg;
    y[i] = v * sg;
  }
}

extern "C" __global__ void swish_backward(int n, const float* y, const float* s,
                                          const float* dy, float* dx, float beta) {
  CL_LOOP(i, n) {
    float by = y[i] * beta;
    float f = (1.0f - by) * s[i] + by;
    dx[i] = dy[i] * f;
  }
}
