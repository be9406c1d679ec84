// caffe-lite: im2col / col2im for the GEMM convolution (Convolution, Deconvolution), and the
// bias broadcast.  Python side: caffe_lite/layers/cuda/conv.py.
//
// Geometry is 3-D (depth, height, width); 1-D and 2-D convolutions pass leading sizes of 1
// (kernel 1, stride 1, pad 0, dilation 1).  For one image the column matrix has a row per
// (channel, tap) -- tap = (kd * KH + kh) * KW + kw, the weight's own order -- and a column
// per output position p = (od * OH + oh) * OW + ow.  Where the rows of several images go is
// up to the caller: element (img, row, p) is written at img * img_stride + row * row_stride + p
// (img_stride = rows * P, row_stride = P: one image after the other; img_stride = P,
// row_stride = images * P: the images of a row side by side, for the weight gradient).

#define CL_LOOP(i, n) \
  for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < (n); \
       i += (int)(blockDim.x * gridDim.x))

// One thread per (image, channel, output position): writes that position's K values.
extern "C" __global__ void im2col_3d(int n, int channels, int D, int H, int W,
    int KD, int KH, int KW, int PD, int PH, int PW, int SD, int SH, int SW,
    int DD, int DH, int DW, int OD, int OH, int OW, int img_stride, int row_stride,
    const float* __restrict__ x, float* __restrict__ col) {
  CL_LOOP(index, n) {
    const int P = OD * OH * OW;
    const int p = index % P;
    const int ic = index / P;              // image * channels + channel
    const int c = ic % channels;
    const int img = ic / channels;
    const int ow = p % OW;
    const int oh = (p / OW) % OH;
    const int od = p / (OW * OH);
    const float* xc = x + (long long)ic * D * H * W;
    const int K = KD * KH * KW;
    float* out = col + (long long)img * img_stride + (long long)c * K * row_stride + p;
    for (int kd = 0; kd < KD; ++kd) {
      const int d = od * SD - PD + kd * DD;
      for (int kh = 0; kh < KH; ++kh) {
        const int h = oh * SH - PH + kh * DH;
        for (int kw = 0; kw < KW; ++kw) {
          const int w = ow * SW - PW + kw * DW;
          const bool inside = d >= 0 && d < D && h >= 0 && h < H && w >= 0 && w < W;
          *out = inside ? xc[((long long)d * H + h) * W + w] : 0.0f;
          out += row_stride;
        }
      }
    }
  }
}

// One thread per input element (image, channel, d, h, w): the sum of the column entries of
// every (tap, output) pair that reads it.  Overwrites x; no atomics.  Columns in the
// one-image-after-the-other layout (img_stride = channels * K * P, row_stride = P).
extern "C" __global__ void col2im_3d(int n, int channels, int D, int H, int W,
    int KD, int KH, int KW, int PD, int PH, int PW, int SD, int SH, int SW,
    int DD, int DH, int DW, int OD, int OH, int OW,
    const float* __restrict__ col, float* __restrict__ x) {
  CL_LOOP(index, n) {
    const int w = index % W;
    const int h = (index / W) % H;
    const int d = (index / (W * H)) % D;
    const int ic = index / (W * H * D);    // image * channels + channel
    const int K = KD * KH * KW;
    const int P = OD * OH * OW;
    const float* cc = col + (long long)ic * K * P;
    float val = 0.0f;
    for (int kd = 0; kd < KD; ++kd) {
      const int td = d + PD - kd * DD;
      if (td < 0 || td % SD != 0) continue;
      const int od = td / SD;
      if (od >= OD) continue;
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
          const int tap = (kd * KH + kh) * KW + kw;
          val += cc[(long long)tap * P + (od * OH + oh) * OW + ow];
        }
      }
    }
    x[index] = val;
  }
}

// y[(img, c, p)] += bias[c] for y seen as (num, channels, spatial).
extern "C" __global__ void add_bias(int n, int channels, int spatial,
                                    const float* __restrict__ bias, float* __restrict__ y) {
  CL_LOOP(i, n) { y[i] += bias[(i / spatial) % channels]; }
}

// y[(img, c, p)] = bias[c]: the top of a convolution whose products are empty.
extern "C" __global__ void set_bias(int n, int channels, int spatial,
                                    const float* __restrict__ bias, float* __restrict__ y) {
  CL_LOOP(i, n) { y[i] = bias[(i / spatial) % channels]; }
}
