"""GPU depthwise convolution (group == input channels, 1-D or 2-D): tile plans and launches
for the kernels of layers/kernels/depthwise.cu.

The tiled kernels (3x3 and 5x5 filters, stride 1 or 2, dilation 1) work on units that fit
the kernels' shared-memory tile (DW_SMEM floats): a band of TH rows of one plane, or PB whole
small planes.  `plan_*` choose TH and PB per shape (pure Python, tested without a GPU): a
unit should hold about TARGET_ITEMS thread items (DW_R outputs each) so that a block has
enough work for its threads and little halo to re-read.  Shapes no plan fits run the direct
kernels.  Both give the same numbers up to float32 rounding (the sum order over the taps is
the same: kh outer, kw inner).  See docs/gpu.md for the bytes each pass moves."""
import collections

from ...backend import ops
from .common import I32, elementwise, kernel, launch, launch_1d

M = "depthwise"
DW_R = 4              # as depthwise.cu: outputs per thread item
SMEM_FLOATS = 6144    # as depthwise.cu's DW_SMEM (tests/test_gpu_depthwise.py checks both)
TARGET_ITEMS = 1024   # thread items a unit aims for
MIN_UNITS = 2048      # units (blocks) a grid should have when the planes allow: a few waves
                      # over a 132-SM GPU, so the last one's idle SMs cost little
FILTER_BLOCKS = 2048  # blocks the backward-filter grid aims for
FILTER_THREADS = 256  # its block reduction needs exactly CL_THREADS
TILED = {(3, 3, 1, 1): "k3s1", (3, 3, 2, 2): "k3s2", (5, 5, 1, 1): "k5s1", (5, 5, 2, 2): "k5s2"}

Plan = collections.namedtuple("Plan", "TH PB bands RS shift units threads extra")


def _round_up(v, m):
    return -(-v // m) * m


def _threads(items):
    return min(256, max(64, _round_up(-(-items // 2), 32)))


def _choose(height, width_items, rows_per_plane, rs, planes, min_units=MIN_UNITS):
    """(TH, PB) for units over `planes` planes of `height` rows: whole planes, several per
    unit when they are small (but at least about min_units units), else bands of TH rows;
    None when not even DW_R rows fit."""
    full = _round_up(height, DW_R)

    def fits(th):
        return rows_per_plane(th) * rs <= SMEM_FLOATS

    def items(th):
        return th // DW_R * width_items
    if fits(full) and items(full) <= TARGET_ITEMS:
        pb = min(SMEM_FLOATS // (rows_per_plane(full) * rs), max(1, TARGET_ITEMS // items(full)),
                 planes, max(1, planes // max(min_units, 1)))
        return full, max(1, pb)
    th = full
    while th > DW_R and not (fits(th) and items(th) <= TARGET_ITEMS):
        th -= DW_R
    if not fits(th):
        return None
    # as many bands as that needs, rows spread evenly over them (less work past the end)
    bands = -(-height // th)
    return _round_up(-(-height // bands), DW_R), 1


def _tile_forward(g):
    """Staged x rows for output bands: (rs, shift, rows(TH)) (input column 0 at shift + PW)."""
    shift = (-g["PW"]) % 4
    need = max((g["OW"] - 1) * g["SW"] + g["KW"], g["PW"] + g["W"])
    rs = _round_up(shift + need, 4)
    return rs, shift, lambda th: (th - 1) * g["SH"] + g["KH"]


def plan_forward(g):
    """Units over the N*C*M output planes (bands of output rows)."""
    rs, shift, rows = _tile_forward(g)
    planes = g["N"] * g["C"] * g["M"]
    got = _choose(g["OH"], g["OW"], rows, rs, planes)
    if got is None:
        return None
    th, pb = got
    bands = -(-g["OH"] // th)
    units = -(-planes // pb) * bands
    return Plan(th, pb, bands, rs, shift, units, _threads(pb * th // DW_R * g["OW"]), ())


def plan_backward_data(g):
    """Units over the N*C input planes (bands of input rows); extra = (owlo, TR)."""
    owlo = -((g["KW"] - 1 - g["PW"]) // g["SW"])       # ceil((PW - KW + 1) / SW)
    owhi = (g["W"] - 1 + g["PW"]) // g["SW"]
    shift = owlo % 4
    rs = _round_up(shift + owhi - owlo + 1, 4)

    def tr(th):
        return (th + g["KH"] - 2) // g["SH"] + 1
    planes = g["N"] * g["C"]
    got = _choose(g["H"], g["W"], lambda th: g["M"] * tr(th), rs, planes)
    if got is None:
        return None
    th, pb = got
    bands = -(-g["H"] // th)
    units = -(-planes // pb) * bands
    return Plan(th, pb, bands, rs, shift, units, _threads(pb * th // DW_R * g["W"]),
                (owlo, tr(th)))


def plan_filter(g):
    """Units per output channel over images (bands of output rows, or PB images' whole
    planes); extra = (splits,): blocks per channel, each summing every splits-th unit."""
    rs, shift, rows = _tile_forward(g)
    # (the grid's size comes from splits over the channels, not from the units)
    got = _choose(g["OH"], g["OW"], rows, rs, g["N"], min_units=0)
    if got is None:
        return None
    th, pb = got
    bands = -(-g["OH"] // th)
    per_channel = -(-g["N"] // pb) * bands
    channels = g["C"] * g["M"]
    splits = max(1, min(-(-FILTER_BLOCKS // channels), per_channel))
    splits = -(-per_channel // -(-per_channel // splits))   # every block walks as many units
    return Plan(th, pb, bands, rs, shift, per_channel, FILTER_THREADS, (splits,))


def tiled_name(g):
    """The tiled kernels' suffix for this geometry, or None (direct kernels)."""
    if g["DH"] != 1 or g["DW"] != 1:
        return None
    return TILED.get((g["KH"], g["KW"], g["SH"], g["SW"]))


class DepthwiseGpu:
    """The conv engine interface (forward / backward_data / backward_weight on device
    addresses; see cuda/conv.py) for group == input channels."""

    def __init__(self, layer, st):
        self.geom = layer.geom
        self.channels = layer.conv_in
        self.multiplier = layer.conv_out // layer.conv_in
        self.st = st

    def reshape(self, num, in_spatial, out_spatial):
        g = self.geom
        H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW = g.pack(
            "input", "output", "kernel", "stride", "pad", "dilation", axes=2, input=in_spatial,
            output=out_spatial)
        C, Mu = self.channels, self.multiplier
        self.num, self.W, self.OW = num, W, OW
        self.geometry = dict(N=num, C=C, M=Mu, H=H, W=W, OH=OH, OW=OW, KH=KH, KW=KW, SH=SH,
                             SW=SW, PH=PH, PW=PW, DH=DH, DW=DW)
        self.direct_args = tuple(I32(v) for v in (C, Mu, H, W, OH, OW, KH, KW, SH, SW, PH, PW,
                                                  DH, DW))
        self.out_elements = num * C * Mu * OH * OW
        self.in_elements = num * C * H * W
        name = tiled_name(self.geometry)
        self.fwd = self.bwd = self.flt = None
        if name is None or num == 0:
            return
        head = tuple(I32(v) for v in (num, C, Mu, H, W, OH, OW, PH, PW))
        p = plan_forward(self.geometry)
        if p is not None:
            self.fwd = (kernel(M, f"dw_forward_{name}", "i" * 15 + "PPPP"), p,
                        head + tuple(I32(v) for v in (p.TH, p.PB, p.bands, p.RS, p.shift)))
        p = plan_backward_data(self.geometry)
        if p is not None:
            self.bwd = (kernel(M, f"dw_backward_data_{name}", "i" * 17 + "PPP"), p,
                        head + tuple(I32(v) for v in (p.TH, p.PB, p.bands, p.RS, p.shift)
                                     + p.extra))
        p = plan_filter(self.geometry)
        if p is not None:
            splits = p.extra[0]
            k = KH * KW
            self.flt = (kernel(M, f"dw_filter_{name}", "i" * 16 + "PPP"), p,
                        head + tuple(I32(v) for v in (p.TH, p.PB, p.bands, p.RS, p.shift)),
                        (C * Mu * k, k, splits))

    def forward(self, x, w, b, y):
        if self.fwd is None:
            elementwise(M, "dw_forward", "i" + "i" * 14 + "PPPP", self.out_elements,
                        *self.direct_args, x, w, b, y)
            return
        fn, p, args = self.fwd
        vec = I32(self.W % 4 == 0 and x % 16 == 0)
        launch(fn, (p.units, 1, 1), (p.threads, 1, 1), *args, vec, x, w, b, y)

    def backward_data(self, dy, w, dx):
        if self.bwd is None:
            elementwise(M, "dw_backward_data", "i" + "i" * 14 + "PPP", self.in_elements,
                        *self.direct_args, dy, w, dx)
            return
        fn, p, args = self.bwd
        vec = I32(self.OW % 4 == 0 and dy % 16 == 0)
        launch(fn, (p.units, 1, 1), (p.threads, 1, 1), *args, vec, dy, w, dx)

    def backward_weight(self, x, dy, dw):
        if self.flt is None:
            g = self.geometry
            fn = kernel(M, "dw_backward_filter", "i" + "i" * 14 + "PPP")
            launch(fn, (g["KH"] * g["KW"], g["C"] * g["M"], 1), (FILTER_THREADS, 1, 1),
                   I32(self.num), *self.direct_args, x, dy, dw)
            return
        fn, p, args, (n, k, splits) = self.flt
        partial = ops.scratch("depthwise_partial", n * splits)[1]   # lives within this call
        vec = I32(self.W % 4 == 0 and x % 16 == 0)
        launch(fn, (splits, self.channels * self.multiplier, 1), (p.threads, 1, 1), *args, vec,
               I32(splits), x, dy, partial)
        launch_1d(kernel(M, "dw_filter_finish", "iiiPP"), n, I32(n), I32(k), I32(splits),
                  partial, dw)
