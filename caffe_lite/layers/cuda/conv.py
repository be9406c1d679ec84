"""GPU paths of Convolution, Deconvolution and DepthwiseConvolution.

Two engines with the CPU engines' three products, on device addresses:
    forward(x, w, b, y)          y  = conv(x, w) (+ b)          overwrite
    backward_data(dy, w, dx)     dx = conv_transpose(dy, w)     overwrite
    backward_weight(x, dy, dw)   dw += d(sum y*dy)/dw           accumulate
x is the convolution's input (num, conv_in, *in), y its output (num, conv_out, *out);
Deconvolution uses them with its bottom and top exchanged, as on the CPU.

GemmGpu: im2col (layers/kernels/conv.cu) + cuBLAS.  The products of all images of a chunk
are one strided-batched SGEMM per group (the weight's stride is 0).  The weight gradient
sum_n dy_n . col_n^T has two forms, chosen per shape by the bytes each moves beyond the
products' own reads (`weight_gradient_plan`, no atomics either way):
  * "transposed": columns written image-interleaved by im2col and dy transposed to
    (channels, images, positions), so that the sum over images is the inner dimension of one
    strided-batched SGEMM over the groups -- extra passes over x (1x1) and dy;
  * "per_image": one strided-batched SGEMM over the images (and `parts` slices of the
    positions) into partial gradients, read straight from dy and the usual columns (x itself
    for 1x1), then summed in a fixed order (ops.sum_rows_acc) -- extra bytes: the partials.
    Large planes with few channels (MobileNet's first layers) take this form; it also turns
    a product with a tiny output (64 x 32) and a huge inner dimension into many blocks.
1-D, 2-D and 3-D convolutions (more spatial axes run the layer's CPU code).

DepthwiseGpu (group == input channels, 1-D or 2-D): the dedicated kernels of
layers/kernels/depthwise.cu, planned in cuda/depthwise.py."""
import numpy as np

from ...backend import cublas, ops
from ..base import gpu_impl
from ..conv import select_engine
from .common import I32, data, diff, elementwise, mdata, mdiff, state
from .depthwise import DepthwiseGpu

# Floats of column buffer a chunk of images may use (256 MiB).
COL_BUFFER_FLOATS = 1 << 26


def _scratch(name, n):
    """A device buffer of n floats shared by every convolution: columns, transposed dy and
    partial gradients live only within one call, and calls run one after another on the
    stream, so one buffer of each kind (the largest any layer needs) serves the whole net."""
    return ops.scratch(name, n)[1]


class GemmGpu:
    def __init__(self, layer, st):
        self.geom = layer.geom
        self.conv_in, self.conv_out, self.group = layer.conv_in, layer.conv_out, layer.group
        self.st = st

    def reshape(self, num, in_spatial, out_spatial):
        g = self.geom
        self.num = num
        self.in_count = int(np.prod(in_spatial, dtype=np.int64))
        self.out_count = int(np.prod(out_spatial, dtype=np.int64))
        self.K = g.kernel_count
        # (D, H, W, KD, KH, KW, PD, PH, PW, SD, SH, SW, DD, DH, DW, OD, OH, OW), as the kernels take them
        self.geometry = g.pack("input", "kernel", "pad", "stride", "dilation", "output", axes=3,
                               input=in_spatial, output=out_spatial)
        rows = self.conv_in * self.K * self.out_count + self.conv_out * self.out_count
        self.chunk = max(1, min(num, COL_BUFFER_FLOATS // max(1, rows)))

    def _chunks(self):
        return [(a, min(a + self.chunk, self.num)) for a in range(0, self.num, self.chunk)]

    def _im2col(self, x, n0, n1, col, img_stride, row_stride):
        n = (n1 - n0) * self.conv_in * self.out_count
        elementwise("conv", "im2col_3d", "i" + "i" * 21 + "PP", n, I32(self.conv_in),
                    *(I32(v) for v in self.geometry), I32(img_stride), I32(row_stride),
                    x + 4 * n0 * self.conv_in * self.in_count, col)

    def forward(self, x, w, b, y):
        G, P, Kc = self.group, self.out_count, self.conv_in * self.K
        og, cgk = self.conv_out // G, Kc // G
        one_by_one = self.geom.is_1x1
        chunks = [(0, self.num)] if one_by_one else self._chunks()
        for n0, n1 in chunks:
            if one_by_one:
                col = x + 4 * n0 * self.conv_in * self.in_count
            else:
                col = _scratch("conv_col", (n1 - n0) * Kc * P)
                self._im2col(x, n0, n1, col, Kc * P, P)
            for g in range(G):
                cublas.gemm_strided_batched(
                    False, False, og, P, cgk, 1.0,
                    w + 4 * g * og * cgk, 0,
                    col + 4 * g * cgk * P, Kc * P, 0.0,
                    y + 4 * (n0 * self.conv_out * P + g * og * P), self.conv_out * P, n1 - n0)
        if b:
            add_bias(self.num, self.conv_out, P, b, y)

    def backward_data(self, dy, w, dx):
        G, P, Kc = self.group, self.out_count, self.conv_in * self.K
        og, cgk = self.conv_out // G, Kc // G
        one_by_one = self.geom.is_1x1
        chunks = [(0, self.num)] if one_by_one else self._chunks()
        for n0, n1 in chunks:
            if one_by_one:
                col = dx + 4 * n0 * self.conv_in * self.in_count
            else:
                col = _scratch("conv_col", (n1 - n0) * Kc * P)
            for g in range(G):
                cublas.gemm_strided_batched(
                    True, False, cgk, P, og, 1.0,
                    w + 4 * g * og * cgk, 0,
                    dy + 4 * (n0 * self.conv_out * P + g * og * P), self.conv_out * P, 0.0,
                    col + 4 * g * cgk * P, Kc * P, n1 - n0)
            if not one_by_one:
                n = (n1 - n0) * self.conv_in * self.in_count
                elementwise("conv", "col2im_3d", "i" + "i" * 19 + "PP", n, I32(self.conv_in),
                            *(I32(v) for v in self.geometry), col,
                            dx + 4 * n0 * self.conv_in * self.in_count)

    def backward_weight(self, x, dy, dw):
        G, P, Kc = self.group, self.out_count, self.conv_in * self.K
        og, cgk = self.conv_out // G, Kc // G
        O = self.conv_out
        form, parts = weight_gradient_plan(self.chunk, self.conv_in, self.in_count, O, P, Kc, G,
                                           self.geom.is_1x1)
        if form == "per_image":
            self._backward_weight_per_image(x, dy, dw, parts)
            return
        for n0, n1 in self._chunks():
            nc = n1 - n0
            colt = _scratch("conv_col", nc * Kc * P)
            self._im2col(x, n0, n1, colt, P, nc * P)          # (Kc, nc, P)
            dyt = _scratch("conv_dy_t", nc * O * P)             # (O, nc, P)
            ops.copy_nd((nc, O, P), dy + 4 * n0 * O * P, (O * P, P, 1), dyt, (P, nc * P, 1))
            if parts == 1:
                cublas.gemm_strided_batched(
                    False, True, og, cgk, nc * P, 1.0,
                    dyt, og * nc * P, colt, cgk * nc * P, 1.0, dw, og * cgk, G)
                continue
            # split-K by hand: slices of the inner dimension into partials, summed in order
            L = nc * P
            span = -(-L // parts)
            partial = _scratch("conv_dw_partial", parts * O * cgk)
            for g in range(G):
                for first, count in ((0, L // span), (L // span, 1 if L % span else 0)):
                    if not count:
                        continue
                    cublas.gemm_strided_batched(
                        False, True, og, cgk, min(span, L - first * span), 1.0,
                        dyt + 4 * (g * og * L + first * span), span,
                        colt + 4 * (g * cgk * L + first * span), span, 0.0,
                        partial + 4 * (first * O * cgk + g * og * cgk), O * cgk, count,
                        lda=L, ldb=L, ldc=cgk)
            ops.sum_rows_acc(-(-L // span), O * cgk, partial, dw)


    def _backward_weight_per_image(self, x, dy, dw, parts):
        G, P, Kc = self.group, self.out_count, self.conv_in * self.K
        og, cgk = self.conv_out // G, Kc // G
        O = self.conv_out
        span = -(-P // parts)
        one_by_one = self.geom.is_1x1
        for n0, n1 in self._chunks():
            nc = n1 - n0
            if one_by_one:
                col = x + 4 * n0 * self.conv_in * self.in_count     # (nc, Kc, P): x itself
            else:
                col = _scratch("conv_col", nc * Kc * P)
                self._im2col(x, n0, n1, col, Kc * P, P)
            partial = _scratch("conv_dw_partial", parts * nc * O * cgk)
            for part in range(parts):
                p0 = part * span
                k = min(span, P - p0)
                for g in range(G):
                    # partial[part, n, g*og:(g+1)*og, :] = dy_n[g rows, p0:p0+k] . col_n[g rows, p0:p0+k]^T
                    cublas.gemm_strided_batched(
                        False, True, og, cgk, k, 1.0,
                        dy + 4 * (n0 * O * P + g * og * P + p0), O * P,
                        col + 4 * (g * cgk * P + p0), Kc * P, 0.0,
                        partial + 4 * (part * nc * O * cgk + g * og * cgk), O * cgk, nc,
                        lda=P, ldb=P, ldc=cgk)
            ops.sum_rows_acc(parts * nc, O * cgk, partial, dw)


# The weight-gradient planner's model of the GPU (an H100 / H200-class device; only the
# ratios matter, and the plan is the same on every device, so results are too):
SMS = 132                  # multiprocessors
GEMM_FLOPS = 50e12         # what a large FP32 SGEMM reaches (75 % of the H200's 67 TFLOPS)
COPY_BYTES = 4.2e12        # device-memory bytes per second (the H200's measured copy)
TILE = 128                 # output tile of one SGEMM thread block
MIN_SLICE = 256            # shortest inner dimension a product is split into


def _gemm(m, n, k, batch):
    """(thread blocks, expected seconds) of `batch` products m x n x k: the FLOPs at
    GEMM_FLOPS, scaled by the share of the SMs the output tiles occupy and by k / (k + 64)
    (a block's fixed cost of loading and storing its tile over a short inner dimension)."""
    blocks = -(-m // TILE) * -(-n // TILE) * batch
    occupancy = min(1.0, blocks / SMS)
    return blocks, 2.0 * m * n * k * batch / (GEMM_FLOPS * occupancy * k / (k + 64))


def weight_gradient_options(images, channels_in, in_count, channels_out, positions, rows,
                            group, one_by_one):
    """{form: (parts, products, inner per product, blocks, GEMM seconds, extra bytes)} for
    both forms of the weight gradient of a chunk of `images` images (see
    weight_gradient_plan)."""
    og, cgk = channels_out // group, rows // group
    tiles = -(-og // TILE) * -(-cgk // TILE) * group
    want = 2 * SMS
    inner = images * positions
    pt = max(1, min(-(-want // tiles), inner // MIN_SLICE))
    extra_t = 2 * ((images * channels_in * in_count if one_by_one else 0)
                   + images * channels_out * positions
                   + (pt * channels_out * cgk if pt > 1 else 0))
    pi = max(1, min(-(-want // (tiles * images)), positions // MIN_SLICE))
    extra_i = 2 * pi * images * channels_out * cgk
    out = {}
    for form, parts, count, k, extra in (
            ("transposed", pt, pt * group, -(-inner // pt), extra_t),
            ("per_image", pi, pi * images * group, -(-positions // pi), extra_i)):
        blocks, seconds = _gemm(og, cgk, k, count)
        out[form] = (parts, count, k, blocks, seconds, 4 * extra)
    return out


def weight_gradient_plan(images, channels_in, in_count, channels_out, positions, rows, group,
                         one_by_one):
    """(form, parts) for the weight gradient of a chunk of `images` images: the form
    ("transposed" or "per_image", see the module docstring) with the smaller expected time
    (products by _gemm + extra device-memory traffic at COPY_BYTES), each split into `parts`
    slices of its inner dimension (summed by ops.sum_rows_acc) so that the products give
    about 2 * SMS thread blocks -- a product whose output has only a few tiles (64 x 32 for
    MobileNet's first layers) would otherwise run on a few SMs.  Deterministic: the plan
    depends on the shapes only."""
    opts = weight_gradient_options(images, channels_in, in_count, channels_out, positions,
                                   rows, group, one_by_one)

    def cost(form):
        o = opts[form]
        return o[4] + o[5] / COPY_BYTES
    form = "per_image" if cost("per_image") < cost("transposed") else "transposed"
    return form, opts[form][0]


def add_bias(num, channels, spatial, bias, y):
    elementwise("conv", "add_bias", "iiiPP", num * channels * spatial, I32(channels),
                I32(spatial), bias, y)


def _engine(layer):
    """The layer's GPU engine, rebuilt when its shapes changed since the last call."""
    st = state(layer)
    in_sp = tuple(layer.bottom_shape[2:])
    out_sp = tuple(layer.top_shape[2:])
    if layer.reverse_dimensions:
        in_sp, out_sp = out_sp, in_sp
    key = (layer.num, in_sp, out_sp)
    eng = getattr(st, "engine", None)
    if eng is None:
        depthwise = select_engine(layer, "gpu") == "depthwise"
        eng = st.engine = (DepthwiseGpu if depthwise else GemmGpu)(layer, st)
        st.engine_key = None
    if st.engine_key != key:
        eng.reshape(*key)
        st.engine_key = key
    return eng


MAX_SPATIAL_AXES = 3  # the kernels' geometry; more spatial axes run the CPU code


class _GpuOps:
    """The GPU's elementwise pieces of BaseConvolution.forward_one / backward_one (on device
    addresses; a bias of None is none)."""

    @staticmethod
    def set_bias(layer, bias, y):
        n = layer.num * layer.num_output * _spatial(layer)
        if bias is not None:
            elementwise("conv", "set_bias", "iiiPP", n, I32(layer.num_output),
                        I32(_spatial(layer)), bias, y)
        else:
            ops.fill(n, 0.0, y)

    @staticmethod
    def add_bias(layer, bias, y):
        add_bias(layer.num, layer.num_output, _spatial(layer), bias, y)

    @staticmethod
    def bias_gradient(layer, dy, db):
        ops.channel_sum(layer.num, layer.num_output, _spatial(layer), dy, db, beta=1.0)

    @staticmethod
    def zero(layer, dx):
        ops.fill(int(np.prod(layer.bottom_shape, dtype=np.int64)), 0.0, dx)


_GPU_OPS = _GpuOps()


def _spatial(layer):
    return int(np.prod(layer.top_shape[2:], dtype=np.int64))


class _Engine:
    """The engine as BaseConvolution's loop calls it: a bias of None is the kernels' 0."""

    def __init__(self, eng):
        self.eng = eng

    def forward(self, x, w, b, y):
        self.eng.forward(x, w, 0 if b is None else b, y)

    def backward_data(self, dy, w, dx):
        self.eng.backward_data(dy, w, dx)

    def backward_weight(self, x, dy, dw):
        self.eng.backward_weight(x, dy, dw)


@gpu_impl("Convolution", "Deconvolution", "DepthwiseConvolution", "ConvolutionDepthwise")
class Convolution:
    """BaseConvolution's bottom / top loop (forward_one, backward_one) on device addresses."""

    @staticmethod
    def forward(layer, bottom, top):
        if layer.num_spatial_axes > MAX_SPATIAL_AXES:
            layer.forward_cpu(bottom, top)
            return
        eng = _Engine(_engine(layer))
        w = data(layer.blobs[0])
        b = data(layer.blobs[1]) if layer.bias_term else None
        for bb, t in zip(bottom, top):
            layer.forward_one(eng, _GPU_OPS, data(bb), w, b, mdata(t))

    @staticmethod
    def backward(layer, top, propagate_down, bottom):
        if layer.num_spatial_axes > MAX_SPATIAL_AXES:
            layer.backward_cpu(top, propagate_down, bottom)
            return
        eng = _Engine(_engine(layer))
        w = data(layer.blobs[0])
        want_w = layer.param_propagate_down[0]
        want_b = layer.bias_term and layer.param_propagate_down[1]
        for i, (t, bb) in enumerate(zip(top, bottom)):
            layer.backward_one(eng, _GPU_OPS, data(bb) if want_w else None, diff(t), w,
                               mdiff(bb) if propagate_down[i] else None,
                               mdiff(layer.blobs[0]) if want_w else None,
                               mdiff(layer.blobs[1]) if want_b else None)
