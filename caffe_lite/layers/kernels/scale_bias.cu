// caffe-lite: Scale and Bias (a blob broadcast along the middle of (outer, dim, inner)) and
// Eltwise's MAX / PROD kernels.  Python side: caffe_lite/layers/cuda/scale_bias.py, eltwise.py.

#define CL_LOOP(i, n) \
  for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < (n); \
       i += (int)(blockDim.x * gridDim.x))

// y = x * scale[(i / inner) % dim], then + bias[...] when bias is not NULL  (y may be x)
extern "C" __global__ void scale_forward(int n, int dim, int inner, const float* x,
    const float* __restrict__ scale, const float* __restrict__ bias, float* y) {
  CL_LOOP(i, n) {
    const int d = (i / inner) % dim;
    const float v = x[i] * scale[d];
    y[i] = bias ? v + bias[d] : v;
  }
}

// y = x + bias[(i / inner) % dim]  (y may be x)
extern "C" __global__ void bias_forward(int n, int dim, int inner, const float* x,
                                        const float* __restrict__ bias, float* y) {
  CL_LOOP(i, n) { y[i] = x[i] + bias[(i / inner) % dim]; }
}

// --- Eltwise MAX: idx holds which bottom gave the maximum ----------------------------------
// Between bottoms 0 and 1 a tie goes to bottom 1 (Caffe: a > b picks a, else b).
extern "C" __global__ void eltwise_max_first(int n, const float* a, const float* b, float* y,
                                             int* __restrict__ idx) {
  CL_LOOP(i, n) {
    const float va = a[i], vb = b[i];
    idx[i] = va <= vb ? 1 : 0;
    y[i] = va > vb ? va : vb;
  }
}

// A later bottom must be strictly greater to take over.
extern "C" __global__ void eltwise_max_next(int n, const float* x, int which, float* y,
                                            int* __restrict__ idx) {
  CL_LOOP(i, n) {
    const float v = x[i];
    if (v > y[i]) {
      y[i] = v;
      idx[i] = which;
    }
  }
}

// dx = dy where bottom `which` gave the max, else 0  (dx may be dy)
extern "C" __global__ void eltwise_max_backward(int n, const float* dy,
    const int* __restrict__ idx, int which, float* dx) {
  CL_LOOP(i, n) { dx[i] = idx[i] == which ? dy[i] : 0.0f; }
}

// dx = (y / x) * dy  (PROD without stable_prod_grad; dx may be dy)
extern "C" __global__ void eltwise_prod_grad(int n, const float* y, const float* x,
                                             const float* dy, float* dx) {
  CL_LOOP(i, n) { dx[i] = (y[i] / x[i]) * dy[i]; }
}
