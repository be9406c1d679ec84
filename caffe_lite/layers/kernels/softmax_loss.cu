// caffe-lite: Softmax and the loss layers (SoftmaxWithLoss, SigmoidCrossEntropyLoss,
// EuclideanLoss, HingeLoss).  Python side: caffe_lite/layers/cuda/softmax_loss.py.
// Softmax works on (outer, C, inner), one thread per (outer, inner) position looping over C.
// Loss values are per-element terms here, summed in double by common.cu's reduction.

#define CL_FLT_MIN 1.175494351e-38F
#define CL_LOOP(i, n) \
  for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < (n); \
       i += (int)(blockDim.x * gridDim.x))

// y = exp(x - max_c x) / sum_c exp(x - max_c x)   (y may be x)
extern "C" __global__ void softmax_forward(int n, int C, int inner, const float* x, float* y) {
  CL_LOOP(i, n) {
    const int o = i / inner;
    const long long base = (long long)o * C * inner + (i - o * inner);
    float m = x[base];
    for (int c = 1; c < C; ++c) m = fmaxf(m, x[base + (long long)c * inner]);
    float s = 0.0f;
    for (int c = 0; c < C; ++c) {
      const float e = expf(x[base + (long long)c * inner] - m);
      y[base + (long long)c * inner] = e;
      s += e;
    }
    for (int c = 0; c < C; ++c) y[base + (long long)c * inner] /= s;
  }
}

// dx = y * (dy - sum_c dy * y)   (dx may be dy)
extern "C" __global__ void softmax_backward(int n, int C, int inner, const float* y,
                                            const float* dy, float* dx) {
  CL_LOOP(i, n) {
    const int o = i / inner;
    const long long base = (long long)o * C * inner + (i - o * inner);
    float dot = 0.0f;
    for (int c = 0; c < C; ++c) dot += dy[base + (long long)c * inner] * y[base + (long long)c * inner];
    for (int c = 0; c < C; ++c) {
      const long long k = base + (long long)c * inner;
      dx[k] = (dy[k] - dot) * y[k];
    }
  }
}

// loss[i] = -log(max(prob[label], FLT_MIN)) at position i (0 where the label is ignored).
extern "C" __global__ void softmax_loss_forward(int n, int C, int inner,
    const float* __restrict__ prob, const float* __restrict__ label, int has_ignore,
    int ignore_label, float* __restrict__ loss) {
  CL_LOOP(i, n) {
    const int lab = (int)label[i];
    if (has_ignore && lab == ignore_label) {
      loss[i] = 0.0f;
    } else {
      const int o = i / inner;
      const float p = prob[((long long)o * C + lab) * inner + (i - o * inner)];
      loss[i] = -logf(fmaxf(p, CL_FLT_MIN));
    }
  }
}

// dx = (prob - onehot(label)) * scale, 0 where the label is ignored   (one thread per position)
extern "C" __global__ void softmax_loss_backward(int n, int C, int inner,
    const float* __restrict__ prob, const float* __restrict__ label, int has_ignore,
    int ignore_label, float scale, float* __restrict__ dx) {
  CL_LOOP(i, n) {
    const int lab = (int)label[i];
    const float f = (has_ignore && lab == ignore_label) ? 0.0f : scale;
    const int o = i / inner;
    const long long base = (long long)o * C * inner + (i - o * inner);
    for (int c = 0; c < C; ++c) {
      const long long k = base + (long long)c * inner;
      float v = prob[k];
      if (c == lab) v -= 1.0f;
      dx[k] = v * f;
    }
  }
}

// SigmoidCrossEntropyLoss: s = sigmoid(x) kept for backward; term = the element's loss
// -(x (t - [x >= 0]) - log(1 + exp(-|x|))), 0 where the target is ignored.
extern "C" __global__ void sigmoid_xent_forward(int n, const float* __restrict__ x,
    const float* __restrict__ t, int has_ignore, int ignore_label, float* __restrict__ s,
    float* __restrict__ term) {
  CL_LOOP(i, n) {
    const float v = x[i], target = t[i];
    s[i] = tanhf(v * 0.5f) * 0.5f + 0.5f;
    const float e = v * (target - (v >= 0.0f ? 1.0f : 0.0f)) - log1pf(expf(-fabsf(v)));
    term[i] = (has_ignore && (int)target == ignore_label) ? 0.0f : -e;
  }
}

extern "C" __global__ void sigmoid_xent_backward(int n, const float* __restrict__ s,
    const float* __restrict__ t, int has_ignore, int ignore_label, float scale,
    float* __restrict__ dx) {
  CL_LOOP(i, n) {
    const float target = t[i];
    float g = s[i] - target;
    if (has_ignore && (int)target == ignore_label) g = 0.0f;
    dx[i] = g * scale;
  }
}

// d = a - b
extern "C" __global__ void subtract(int n, const float* __restrict__ a,
                                    const float* __restrict__ b, float* __restrict__ d) {
  CL_LOOP(i, n) { d[i] = a[i] - b[i]; }
}

// HingeLoss on (num, dim): margin = max(0, 1 + s x), s = -1 at the row's label, else +1.
extern "C" __global__ void hinge_forward(int n, int dim, const float* __restrict__ x,
    const float* __restrict__ label, float* __restrict__ margin) {
  CL_LOOP(i, n) {
    const int row = i / dim;
    float v = x[i];
    if (i - row * dim == (int)label[row]) v = -v;
    margin[i] = fmaxf(v + 1.0f, 0.0f);
  }
}

// L1 (l1 != 0): dx = sign(s * margin) * scale;  L2: dx = s * margin * scale.
extern "C" __global__ void hinge_backward(int n, int dim, const float* __restrict__ margin,
    const float* __restrict__ label, int l1, float scale, float* __restrict__ dx) {
  CL_LOOP(i, n) {
    const int row = i / dim;
    float g = margin[i];
    if (i - row * dim == (int)label[row]) g = -g;
    if (l1) g = g > 0.0f ? 1.0f : (g < 0.0f ? -1.0f : 0.0f);
    dx[i] = g * scale;
  }
}
