"""Seeded fuzzing of every file format caffe-lite reads (tests/test_fuzz.py runs a few hundred
cases per format; tests/fuzz_large.py runs many more and prints the counts).

A case is (format, seed, index): it mutates a small valid file of that format, loads and uses
it as a user would, and ends in one class:
  ok         it loaded and ran (a mutation may leave a file valid);
  typed      a CaffeLiteError: what bad input must give;
  traceback  any other exception: a defect;
  crash      the process died (a signal, an abort inside a C library) or hung: a defect.

Cases run in worker processes, many per worker.  A worker prints "BEGIN i" before case i and
"END i <class> <detail>" after it, so when a worker dies the parent knows which case killed
it, records a crash for it, and starts a new worker at the next case.

    python tests/fuzzing.py one FORMAT SEED INDEX     # re-run one case, with its traceback
"""
import collections
import contextlib
import json
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLASSES = ("ok", "typed", "traceback", "crash")
MEMORY_LIMIT = 3 << 29       # a worker's address space: a huge allocation fails fast
CASE_TIMEOUT = 60.0          # seconds without an END line: the case hangs

# --------------------------------------------------------------------------------------------
# mutation helpers
INTERESTING_INTS = [0, 1, -1, 2, 3, 7, 255, 256, 65535, 65536, 2**31 - 1, -2**31, 2**31,
                    2**32 - 1, 2**32, 2**63 - 1, -2**63, 10**12]
INTERESTING_FLOATS = ["0", "-0.0", "1e-45", "1e-38", "0.5", "-0.5", "1e10", "1e38", "3.5e38",
                      "-1e38", "1e300", "nan", "inf", "-inf"]


def interesting(rnd):
    if rnd.random() < 0.6:
        return str(rnd.choice(INTERESTING_INTS))
    return rnd.choice(INTERESTING_FLOATS)


def _numbers(text):
    import re
    return [m.span() for m in re.finditer(r"(?<![\w.])-?\d+(\.\d+)?(e-?\d+)?(?![\w.])", text)]


def mutate_text(text, rnd, inject=(), idents=()):
    """One random edit of a text-format file; returns (text, description)."""
    if not text:
        return rnd.choice(["\n", "{", "x: 1"]), "replace an empty file"
    lines = text.split("\n")
    kind = rnd.choice(["number", "number", "number", "inject", "inject", "inject", "ident",
                       "drop", "dup", "swap", "chars", "truncate"])
    if kind == "number":
        spans = _numbers(text)
        if spans:
            a, b = rnd.choice(spans)
            v = interesting(rnd)
            return text[:a] + v + text[b:], f"number {text[a:b]!r} -> {v}"
        kind = "inject"
    if kind == "inject" and inject:
        opens = [i for i, ln in enumerate(lines) if ln.rstrip().endswith("{")]
        i = rnd.choice(opens) if opens else 0
        field = rnd.choice(inject).replace("{v}", interesting(rnd))
        lines.insert(i + 1, "  " + field)
        return "\n".join(lines), f"inject '{field}' after line {i + 1}"
    if kind == "ident" and idents:
        old, new = rnd.choice(idents), rnd.choice(idents)
        if old in text:
            return text.replace(old, new, 1), f"ident {old!r} -> {new!r}"
        kind = "drop"
    if kind in ("drop", "dup", "swap", "inject", "ident"):
        i, j = rnd.randrange(len(lines)), rnd.randrange(len(lines))
        if kind == "dup":
            lines.insert(i, lines[i])
            return "\n".join(lines), f"duplicate line {i + 1}"
        if kind == "swap":
            lines[i], lines[j] = lines[j], lines[i]
            return "\n".join(lines), f"swap lines {i + 1} and {j + 1}"
        del lines[i]
        return "\n".join(lines), f"drop line {i + 1}"
    if kind == "chars":
        chars = list(text)
        for _ in range(rnd.randint(1, 4)):
            pos = rnd.randrange(len(chars))
            chars[pos] = chr(rnd.choice([0, 9, 10, 34, 35, 45, 46, 58, 92, 123, 125, 0xe9,
                                         rnd.randrange(32, 127)]))
        return "".join(chars), "replace characters"
    cut = rnd.randrange(len(text))
    return text[:cut], f"truncate at {cut}"


def mutate_bytes(data, rnd):
    """One random byte-level edit; returns (bytes, description)."""
    data = bytearray(data)
    kind = rnd.choice(["flip", "flip", "set", "truncate", "insert", "delete", "append"])
    if not data:
        return bytes(rnd.randrange(256) for _ in range(8)), "random bytes"
    if kind == "flip":
        n = rnd.randint(1, 8)
        for _ in range(n):
            pos = rnd.randrange(len(data))
            data[pos] ^= 1 << rnd.randrange(8)
        return bytes(data), f"flip {n} bits"
    if kind == "set":
        pos = rnd.randrange(len(data))
        v = rnd.choice([0, 0xff, 0x7f, 0x80, rnd.randrange(256)])
        n = rnd.randint(1, 8)
        data[pos:pos + n] = bytes([v]) * n
        return bytes(data), f"set {n} bytes at {pos} to {v:#x}"
    if kind == "truncate":
        cut = rnd.randrange(len(data))
        return bytes(data[:cut]), f"truncate at {cut} of {len(data)}"
    if kind == "insert":
        pos = rnd.randrange(len(data))
        chunk = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 16)))
        return bytes(data[:pos] + chunk + data[pos:]), f"insert {len(chunk)} bytes at {pos}"
    if kind == "delete":
        pos = rnd.randrange(len(data))
        n = rnd.randint(1, 16)
        return bytes(data[:pos] + data[pos + n:]), f"delete {n} bytes at {pos}"
    chunk = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 64)))
    return bytes(data) + chunk, f"append {len(chunk)} bytes"


def _varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _int_field(num, value):
    """Wire bytes of a varint field (a way to put values protobuf's API would refuse)."""
    return _varint(num << 3) + _varint(value)


def mutate_blobproto(bp, rnd):
    """A structural edit of a BlobProto; returns a description."""
    kind = rnd.choice(["dim", "dim", "legacy", "clear_data", "extra_data", "double", "diff",
                       "add_dim", "drop_dim"])
    if kind == "dim" and len(bp.shape.dim):
        i = rnd.randrange(len(bp.shape.dim))
        v = rnd.choice([0, -1, -5, 2**31, 2**31 - 1, 2**62, 2**63 - 1, -2**63, 3])
        bp.shape.dim[i] = v
        return f"shape.dim[{i}] = {v}"
    if kind == "legacy" or kind == "dim":
        f = rnd.choice(["num", "channels", "height", "width"])
        v = rnd.choice([0, -1, 1, 3, 2**31 - 1, -2**31])
        setattr(bp, f, v)
        return f"{f} = {v}"
    if kind == "clear_data":
        bp.ClearField("data")
        return "clear data"
    if kind == "extra_data":
        bp.data.extend([rnd.choice([1.0, float("nan"), float("inf"), -3e38])
                        for _ in range(rnd.randint(1, 5))])
        return "extra data"
    if kind == "double":
        bp.double_data.extend([1.0] * rnd.choice([1, len(bp.data)]))
        return "double_data"
    if kind == "diff":
        bp.diff.extend([0.5] * rnd.choice([1, len(bp.data)]))
        return "diff"
    if kind == "add_dim":
        bp.shape.dim.append(rnd.choice([1, 2, 0, 2**40]))
        return "add dim"
    if len(bp.shape.dim):
        del bp.shape.dim[rnd.randrange(len(bp.shape.dim))]
    return "drop dim"


# --------------------------------------------------------------------------------------------
# base files
NET = """name: "fuzz"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 stride: 1 pad: 1 dilation: 1 group: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1"
  batch_norm_param { eps: 1e-05 moving_average_fraction: 0.999 } }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1"
  scale_param { axis: 1 num_axes: 1 bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 0 } }
layer { name: "dw" type: "ConvolutionDepthwise" bottom: "pool1" top: "dw"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1 group: 4
    weight_filler { type: "msra" } } }
layer { name: "lrn" type: "LRN" bottom: "dw" top: "lrn"
  lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 k: 1 } }
layer { name: "deconv" type: "Deconvolution" bottom: "lrn" top: "deconv"
  convolution_param { num_output: 2 kernel_size: 2 stride: 2
    weight_filler { type: "bilinear" } } }
layer { name: "crop" type: "Crop" bottom: "deconv" bottom: "data" top: "crop"
  crop_param { axis: 2 offset: 0 } }
layer { name: "concat" type: "Concat" bottom: "crop" bottom: "data" top: "concat"
  concat_param { axis: 1 } }
layer { name: "slice" type: "Slice" bottom: "concat" top: "s1" top: "s2"
  slice_param { axis: 1 slice_point: 2 } }
layer { name: "elt" type: "Eltwise" bottom: "s2" bottom: "data" top: "elt"
  eltwise_param { operation: SUM coeff: 1 coeff: -0.5 } }
layer { name: "prelu" type: "PReLU" bottom: "elt" top: "elt" prelu_param { channel_shared: false } }
layer { name: "power" type: "Power" bottom: "elt" top: "pw" power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "log" type: "Log" bottom: "pw" top: "lg" log_param { base: -1 scale: 1 shift: 1 } }
layer { name: "exp" type: "Exp" bottom: "s1" top: "ex" exp_param { base: -1 scale: 0.1 shift: 0 } }
layer { name: "clip" type: "Clip" bottom: "ex" top: "ex" clip_param { min: -2 max: 2 } }
layer { name: "bias" type: "Bias" bottom: "ex" top: "bi" bias_param { axis: 1 num_axes: 1 } }
layer { name: "sig" type: "Sigmoid" bottom: "bi" top: "sg" }
layer { name: "elu" type: "ELU" bottom: "lg" top: "el" elu_param { alpha: 1 } }
layer { name: "swish" type: "Swish" bottom: "el" top: "sw" swish_param { beta: 1 } }
layer { name: "drop" type: "Dropout" bottom: "sw" top: "sw" dropout_param { dropout_ratio: 0.5 } }
layer { name: "perm" type: "Permute" bottom: "sw" top: "pm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "flat" type: "Flatten" bottom: "pm" top: "flat" flatten_param { axis: 1 end_axis: -1 } }
layer { name: "reshape" type: "Reshape" bottom: "sg" top: "rs"
  reshape_param { shape { dim: 0 dim: -1 } axis: 0 num_axes: -1 } }
layer { name: "cat2" type: "Concat" bottom: "flat" bottom: "rs" top: "feat" concat_param { axis: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "feat" top: "ip"
  inner_product_param { num_output: 5 axis: 1 weight_filler { type: "xavier" }
    bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "tanh" type: "TanH" bottom: "ip" top: "ip" }
layer { name: "thr" type: "Threshold" bottom: "ip" top: "thr" threshold_param { threshold: 0 } }
layer { name: "abs" type: "AbsVal" bottom: "thr" top: "abs" }
layer { name: "bnll" type: "BNLL" bottom: "abs" top: "bnll" }
layer { name: "sil" type: "Silence" bottom: "bnll" }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" softmax_param { axis: 1 } }
layer { name: "argmax" type: "ArgMax" bottom: "prob" top: "am" argmax_param { top_k: 1 axis: 1 } }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc"
  accuracy_param { top_k: 1 axis: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss"
  loss_param { normalization: VALID } loss_weight: 1 }
layer { name: "eloss" type: "EuclideanLoss" bottom: "ip" bottom: "prob" top: "eloss" loss_weight: 0.1 }
layer { name: "hloss" type: "HingeLoss" bottom: "ip" bottom: "label" top: "hloss" loss_weight: 0.1 }
layer { name: "sloss" type: "SigmoidCrossEntropyLoss" bottom: "ip" bottom: "prob" top: "sloss" loss_weight: 0.1
  propagate_down: true propagate_down: false }
"""

NET_INJECT = [
    "axis: {v}", "num_axes: {v}", "group: {v}", "stride: {v}", "kernel_size: {v}",
    "kernel_h: {v}", "kernel_w: {v}", "stride_h: {v}", "stride_w: {v}", "pad_h: {v}",
    "pad_w: {v}", "pad: {v}", "dilation: {v}", "num_output: {v}", "global_pooling: true",
    "top_k: {v}", "slice_point: {v}", "offset: {v}", "engine: CUDNN", "round_mode: FLOOR",
    "pool: AVE", "pool: STOCHASTIC", "use_global_stats: true", "bias_term: false",
    "channel_shared: true", "operation: PROD", "operation: MAX", "coeff: {v}",
    "norm_region: WITHIN_CHANNEL", "transpose: true", "ignore_label: {v}",
    "normalization: NONE", "normalization: BATCH_SIZE", "out_max_val: true", "dim: {v}",
    "order: {v}", "negative_slope: {v}", "alpha: {v}", "base: {v}", "threshold: {v}",
    "min: {v}", "max: {v}", "scale: {v}", "shift: {v}", "power: {v}", "eps: {v}",
    "moving_average_fraction: {v}", "local_size: {v}", "beta: {v}", "k: {v}",
    "dropout_ratio: {v}", "loss_weight: {v}", "propagate_down: false", "sparse: {v}",
    "std: {v}", "mean: {v}", "value: {v}", "variance_norm: AVERAGE", "type: \"msra\"",
    "type: \"positive_unitball\"", "type: \"uniform\"", "end_axis: {v}", "concat_dim: {v}",
    "slice_dim: {v}", "stable_prod_grad: false", "shape { dim: {v} }",
    "weight_filler { type: \"gaussian\" std: {v} sparse: {v} }",
    "bias_filler { type: \"constant\" value: {v} }", "input_dim: {v}",
    "param { lr_mult: {v} decay_mult: {v} }", "include { phase: TEST }",
    "exclude { phase: TRAIN }", "include { min_level: {v} }",
]
NET_IDENTS = ['"Convolution"', '"Pooling"', '"InnerProduct"', '"BatchNorm"', '"Scale"',
              '"Deconvolution"', '"ConvolutionDepthwise"', '"Concat"', '"Slice"', '"Eltwise"',
              '"Crop"', '"Reshape"', '"Flatten"', '"Softmax"', '"LRN"', '"Permute"',
              '"xavier"', '"msra"', '"bilinear"', '"constant"', '"gaussian"', "MAX", "AVE",
              "SUM", "PROD", '"data"', '"label"', '"conv1"', '"ip"', '"s1"', '"s2"', '"elt"',
              "VALID", "FULL", "NONE"]

TINY_NET = """name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 dim: 4 dim: 4 } shape { dim: 4 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "drop" type: "Dropout" bottom: "conv" top: "conv" dropout_param { dropout_ratio: 0.3 } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""

SOLVER = """net_param { %s }
base_lr: 0.01
lr_policy: "step"
gamma: 0.1
stepsize: 2
power: 0.75
stepvalue: 1
stepvalue: 2
momentum: 0.9
weight_decay: 0.0005
regularization_type: "L2"
clip_gradients: 10
max_iter: 4
display: 1
average_loss: 1
iter_size: 1
test_iter: 1
test_interval: 2
snapshot: 0
snapshot_prefix: "snap/fz"
type: "SGD"
delta: 1e-08
momentum2: 0.999
rms_decay: 0.98
random_seed: 1
solver_mode: CPU
""" % TINY_NET.replace("\n", " ")

SOLVER_INJECT = [
    'lr_policy: "fixed"', 'lr_policy: "exp"', 'lr_policy: "inv"', 'lr_policy: "multistep"',
    'lr_policy: "poly"', 'lr_policy: "sigmoid"', 'lr_policy: "bogus"', 'type: "Adam"',
    'type: "Nesterov"', 'type: "AdaGrad"', 'type: "RMSProp"', 'type: "AdaDelta"',
    'type: "Bogus"', "gamma: {v}", "power: {v}", "stepsize: {v}", "stepvalue: {v}",
    "base_lr: {v}", "momentum: {v}", "momentum2: {v}", "delta: {v}", "rms_decay: {v}",
    "weight_decay: {v}", "clip_gradients: {v}", "iter_size: {v}", "average_loss: {v}",
    "max_iter: {v}", "test_iter: {v}", "test_interval: {v}", "display: {v}", "snapshot: {v}",
    'regularization_type: "L1"', 'regularization_type: "L3"', "random_seed: {v}",
    "solver_type: ADAM", "snapshot_format: HDF5", "test_initialization: false",
    "device_id: {v}", 'snapshot_prefix: "a\\000b"', 'snapshot_prefix: ""',
    'snapshot_prefix: "snap/"', 'snapshot_prefix: "snap/x\\n"', 'snapshot_prefix: "snap/%s%n"',
    'snapshot_prefix: "snap/\\377\\376"', 'snapshot_prefix: "snap/nodir/x"',
    'snapshot_prefix: "snap/x/"', "snapshot_diff: true", "test_compute_loss: true",
]
SOLVER_IDENTS = ['"step"', '"fixed"', '"inv"', '"poly"', '"multistep"', '"SGD"', '"Adam"',
                 '"L2"', "CPU", "GPU"]


# --------------------------------------------------------------------------------------------
# formats: each builds its base files once per worker (`setup(dir)`), then for case i mutates
# a copy and runs it (`case(dir, rnd)` returns a description; raising is the outcome)
class Format:
    name = None

    def setup(self, d):
        pass

    def case(self, d, rnd):
        raise NotImplementedError


def _write(path, data):
    with open(path, "wb" if isinstance(data, (bytes, bytearray)) else "w") as f:
        f.write(data)


def _net(source, phase="TRAIN"):
    import caffe_lite
    return caffe_lite.Net(source, getattr(caffe_lite, phase))


def _run_net(net, iters=1, backward=True):
    with contextlib.closing(net):
        for _ in range(iters):
            net.forward()
            if backward:
                net.backward()


class NetFormat(Format):
    name = "net"

    def case(self, d, rnd):
        text, desc = NET, []
        for _ in range(rnd.randint(1, 3)):
            text, what = mutate_text(text, rnd, NET_INJECT, NET_IDENTS)
            desc.append(what)
        path = os.path.join(d, "net.prototxt")
        _write(path, text)
        _run_net(_net(path, rnd.choice(["TRAIN", "TEST"])))
        return "; ".join(desc)


class SolverFormat(Format):
    name = "solver"

    def case(self, d, rnd):
        from caffe_lite.solvers import get_solver
        from caffe_lite.solvers.lr_policy import learning_rate
        text, desc = SOLVER, []
        for _ in range(rnd.randint(1, 3)):
            text, what = mutate_text(text, rnd, SOLVER_INJECT, SOLVER_IDENTS)
            desc.append(what)
        path = os.path.join(d, "solver.prototxt")
        _write(path, text)
        s = get_solver(path)
        with contextlib.ExitStack() as stack:
            for n in [s.net] + s.test_nets:
                stack.enter_context(contextlib.closing(n))
            # what the file asks may just be long (test_iter: 2^31 - 1 is valid)
            s.param.test_iter[:] = [min(n, 2) for n in s.param.test_iter]
            s.param.iter_size = min(s.param.iter_size, 2)
            s.step(2)
            learning_rate(s.param, s.param.max_iter, 0)
            prefix = s.param.snapshot_prefix
            wrote = "snapshot" in " ".join(desc) or rnd.random() < 0.1
            if wrote and prefix.startswith("snap/") and ".." not in prefix:
                s.snapshot()
        return "; ".join(desc)


class _SnapshotFormat(Format):
    """Base files: a snapshot of the tiny solver after 2 iterations."""

    def setup(self, d):
        from caffe_lite.solvers import get_solver
        import caffe_lite
        caffe_lite.set_random_seed(1)
        os.makedirs(os.path.join(d, "base"), exist_ok=True)
        text = SOLVER.replace('snapshot_prefix: "snap/fz"',
                              f'snapshot_prefix: "{d}/base/fz"')
        _write(os.path.join(d, "base", "solver.prototxt"), text)
        s = get_solver(os.path.join(d, "base", "solver.prototxt"))
        s.step(2)
        s.snapshot()
        s.net.close()
        for n in s.test_nets:
            n.close()

    def restore(self, d, mutate):
        from caffe_lite.solvers import get_solver
        work = os.path.join(d, "case")
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(os.path.join(d, "base"), work)
        state = os.path.join(work, "fz_iter_2.solverstate")
        desc = mutate(work, state)
        s = get_solver(os.path.join(d, "base", "solver.prototxt"))
        with contextlib.ExitStack() as stack:
            for n in [s.net] + s.test_nets:
                stack.enter_context(contextlib.closing(n))
            s.restore(state)
            s.step(1)
        return desc


class SolverStateFormat(_SnapshotFormat):
    name = "solverstate"

    def case(self, d, rnd):
        def mutate(work, state):
            from caffe_lite.proto import caffe_pb2
            with open(state, "rb") as f:
                data = f.read()
            if rnd.random() < 0.5:
                data, desc = mutate_bytes(data, rnd)
            else:
                s = caffe_pb2.SolverState.FromString(data)
                kind = rnd.choice(["iter", "step", "history", "learned", "drop"])
                if kind == "iter":
                    v = rnd.choice([-1, -1000000, 2**31 - 1, -2**31])
                    s.iter = v
                    desc = f"iter = {v}"
                elif kind == "step":
                    v = rnd.choice([-1, 2**31 - 1, 99])
                    s.current_step = v
                    desc = f"current_step = {v}"
                elif kind == "history" and len(s.history):
                    desc = "history: " + mutate_blobproto(rnd.choice(s.history), rnd)
                elif kind == "learned":
                    s.learned_net = rnd.choice(["", "missing.caffemodel", work, "\x00x",
                                                state])
                    desc = f"learned_net = {s.learned_net!r}"
                else:
                    if len(s.history):
                        del s.history[rnd.randrange(len(s.history))]
                    desc = "drop a history blob"
                data = s.SerializeToString()
            _write(state, data)
            return desc
        return self.restore(d, mutate)


class MasksFormat(_SnapshotFormat):
    name = "masks"

    def case(self, d, rnd):
        def mutate(work, state):
            from caffe_lite.proto import caffe_lite_pb2
            path = state[: -len(".solverstate")] + ".masks"
            with open(path, "rb") as f:
                data = f.read()
            if rnd.random() < 0.4:
                data, desc = mutate_bytes(data, rnd)
            else:
                ex = caffe_lite_pb2.SolverExtras.FromString(data)
                kind = rnd.choice(["shape", "bits", "layer", "index", "rng", "layer_state",
                                   "callback"])
                junk = rnd.choice(["", "{", "[]", "null", "1e999", '{"x": 1}', "\"s\"",
                                   '{"bit_generator": "PCG64", "state": {}}',
                                   '{"train/drop": {"rng": 5}}', '{"train/drop": []}'])
                if kind == "shape" and len(ex.mask):
                    m = rnd.choice(ex.mask)
                    m.shape[rnd.randrange(len(m.shape))] = rnd.choice([0, 2**40, 1])
                    desc = "mask shape"
                elif kind == "bits" and len(ex.mask):
                    m = rnd.choice(ex.mask)
                    m.bits = m.bits[:rnd.randrange(len(m.bits) + 1)]
                    desc = "mask bits cut"
                elif kind == "layer" and len(ex.mask):
                    rnd.choice(ex.mask).layer = rnd.choice(["", "nope", "loss"])
                    desc = "mask layer name"
                elif kind == "index" and len(ex.mask):
                    rnd.choice(ex.mask).param_index = rnd.choice([1, 5, 2**31 - 1])
                    desc = "mask param_index"
                elif kind == "rng":
                    ex.rng_state = junk
                    desc = f"rng_state = {junk!r}"
                elif kind == "layer_state":
                    ex.layer_state = junk
                    desc = f"layer_state = {junk!r}"
                else:
                    ex.callback.add(key="GradualPruner", json=junk)
                    desc = f"callback json = {junk!r}"
                data = ex.SerializeToString()
            _write(path, data)
            return desc
        return self.restore(d, mutate)


class CaffemodelFormat(Format):
    name = "caffemodel"

    def setup(self, d):
        import caffe_lite
        caffe_lite.set_random_seed(1)
        _write(os.path.join(d, "net.prototxt"), NET)
        net = _net(os.path.join(d, "net.prototxt"), "TEST")
        self.base = net.to_proto().SerializeToString()
        net.close()

    def case(self, d, rnd):
        from caffe_lite.io.caffemodel import load_weights
        from caffe_lite.proto import caffe_pb2
        if rnd.random() < 0.4:
            data, desc = mutate_bytes(self.base, rnd)
        else:
            p = caffe_pb2.NetParameter.FromString(self.base)
            with_blobs = [lp for lp in p.layer if len(lp.blobs)]
            lp = rnd.choice(with_blobs)
            kind = rnd.choice(["blob", "blob", "blob", "name", "type", "drop_blob", "add_blob",
                               "dup", "v1"])
            if kind == "blob":
                desc = f"{lp.name}: " + mutate_blobproto(rnd.choice(lp.blobs), rnd)
            elif kind == "name":
                lp.name = rnd.choice(["", "conv", "ip ", "\x00"])
                desc = "rename a layer"
            elif kind == "type":
                lp.type = rnd.choice(["InnerProduct", "Convolution", "Nope", ""])
                desc = f"{lp.name}: type {lp.type!r}"
            elif kind == "drop_blob":
                del lp.blobs[-1]
                desc = f"{lp.name}: drop a blob"
            elif kind == "add_blob":
                lp.blobs.add().CopyFrom(lp.blobs[0])
                desc = f"{lp.name}: extra blob"
            elif kind == "dup":
                p.layer.add().CopyFrom(lp)
                desc = f"{lp.name}: duplicated"
            else:
                v1 = p.layers.add()
                v1.name = lp.name
                v1.type = rnd.choice([0, 4, 14])
                desc = "a V1 layer too"
            data = p.SerializeToString()
        path = os.path.join(d, "w.caffemodel")
        _write(path, data)
        load_weights(path)
        net = _net(os.path.join(d, "net.prototxt"), "TEST")
        with contextlib.closing(net):
            net.copy_from(path)
            net.forward()
        return desc


class BinaryprotoFormat(Format):
    name = "binaryproto"

    def setup(self, d):
        import numpy as np
        from caffe_lite.io import array_to_blobproto
        arr = np.arange(3 * 8 * 8, dtype=np.float32).reshape(1, 3, 8, 8)
        bp = array_to_blobproto(arr)
        bp.ClearField("shape")
        bp.num, bp.channels, bp.height, bp.width = 1, 3, 8, 8  # compute_image_mean's form
        self.base = bp.SerializeToString()

    def case(self, d, rnd):
        import numpy as np
        from caffe_lite.data.transformer import DataTransformer
        from caffe_lite.proto import caffe_pb2
        if rnd.random() < 0.4:
            data, desc = mutate_bytes(self.base, rnd)
        else:
            bp = caffe_pb2.BlobProto.FromString(self.base)
            if rnd.random() < 0.5:
                bp.ClearField("num")
                bp.ClearField("channels")
                bp.ClearField("height")
                bp.ClearField("width")
                bp.shape.dim.extend([1, 3, 8, 8])
            desc = mutate_blobproto(bp, rnd)
            data = bp.SerializeToString()
            if rnd.random() < 0.2:  # a dim past int64, written on the wire by hand
                data = _int_field(7, 0) + data
        path = os.path.join(d, "mean.binaryproto")
        _write(path, data)
        tp = caffe_pb2.TransformationParameter(mean_file=path, crop_size=rnd.choice([0, 4]))
        t = DataTransformer(tp, caffe_pb2.TRAIN, "fuzz")
        t.transform(np.ones((2, 3, 8, 8), np.uint8))
        return desc


class LMDBFormat(Format):
    name = "lmdb"

    def setup(self, d):
        import lmdb
        import numpy as np
        from caffe_lite.io import array_to_datum
        r = np.random.default_rng(0)
        for name, n, shape in (("small", 300, (1, 6, 6)), ("big", 24, (1, 48, 48))):
            env = lmdb.open(os.path.join(d, name), map_size=1 << 24)
            with env.begin(write=True) as txn:
                for i in range(n):
                    a = r.integers(0, 256, shape).astype(np.uint8)
                    txn.put(b"%08d" % i, array_to_datum(a, i % 10).SerializeToString())
            env.close()

    def case(self, d, rnd):
        import lmdb
        from caffe_lite.data.check_db import check_db
        from caffe_lite.data.convert import compute_mean
        src = os.path.join(d, rnd.choice(["small", "big"]))
        work = os.path.join(d, "case")
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work)
        path = os.path.join(work, "data.mdb")
        size = os.path.getsize(path)
        psize, pages = 4096, size // 4096
        kind = rnd.choice(["truncate", "zero_page", "zero_page", "flip", "page_header",
                           "node_area", "garbage_page", "swap_pages", "value"])
        with open(path, "r+b") as f:
            if kind == "truncate":
                cut = rnd.choice([rnd.randrange(size), rnd.randrange(pages) * psize])
                f.truncate(cut)
                desc = f"truncate at {cut} of {size}"
            elif kind in ("zero_page", "garbage_page"):
                pg = rnd.randrange(pages)
                f.seek(pg * psize)
                f.write(bytes(psize) if kind == "zero_page" else
                        bytes(rnd.randrange(256) for _ in range(psize)))
                desc = f"{kind} {pg}"
            elif kind == "swap_pages":
                a, b = rnd.randrange(pages), rnd.randrange(pages)
                f.seek(a * psize)
                pa = f.read(psize)
                f.seek(b * psize)
                pb = f.read(psize)
                f.seek(a * psize)
                f.write(pb)
                f.seek(b * psize)
                f.write(pa)
                desc = f"swap pages {a} and {b}"
            elif kind == "value":
                desc = "value"
            else:
                n = rnd.randint(1, 6)
                for _ in range(n):
                    if kind == "flip":
                        pos = rnd.randrange(size)
                    elif kind == "page_header":
                        pos = rnd.randrange(pages) * psize + rnd.randrange(64)
                    else:
                        pos = rnd.randrange(pages) * psize + psize - 1 - rnd.randrange(1024)
                    f.seek(pos)
                    f.write(bytes([rnd.randrange(256)]))
                desc = f"{kind}: {n} bytes"
        if kind == "value":  # a damaged record in an intact database
            env = lmdb.open(work, map_size=1 << 24)
            with env.begin(write=True) as txn:
                key = b"%08d" % rnd.randrange(24)
                old = txn.get(key)
                new, what = mutate_bytes(old, rnd)
                txn.put(key, new)
            env.close()
            desc = f"value of {key!r}: {what}"
        try:
            check_db(work, liblmdb=False)
        finally:
            net = _net("layer { name: 'd' type: 'Data' top: 'data' top: 'label' "
                       f"data_param {{ source: '{work}' batch_size: 7 backend: LMDB }} }}",
                       "TRAIN")
            _run_net(net, iters=rnd.choice([1, 50]), backward=False)
            compute_mean(work)
        return desc


class HDF5Format(Format):
    name = "hdf5"

    def setup(self, d):
        self._base(d)

    @staticmethod
    def _base(d):
        import h5py
        import numpy as np
        with h5py.File(os.path.join(d, "base.h5"), "w") as f:
            f["data"] = np.arange(10 * 16, dtype=np.float32).reshape(10, 1, 4, 4)
            f["label"] = np.arange(10, dtype=np.float32)

    def case(self, d, rnd):
        import h5py
        import numpy as np
        h5 = os.path.join(d, "data.h5")
        shutil.copy(os.path.join(d, "base.h5"), h5)
        lst = os.path.join(d, "list.txt")
        listing = h5 + "\n"
        kind = rnd.choice(["bytes", "bytes", "dataset", "dataset", "dataset", "list"])
        if kind == "bytes":
            with open(h5, "rb") as f:
                data, desc = mutate_bytes(f.read(), rnd)
            _write(h5, data)
        elif kind == "dataset":
            with h5py.File(h5, "a") as f:
                name = rnd.choice(["data", "label"])
                del f[name]
                choice = rnd.choice(["strings", "complex", "bool", "int8", "rows", "empty",
                                     "scalar", "nan", "group", "missing", "big", "5d"])
                val = {"strings": lambda: np.array([b"a"] * 10),
                       "complex": lambda: np.ones(10, np.complex64),
                       "bool": lambda: np.ones((10, 2), bool),
                       "int8": lambda: np.ones((10, 1, 4, 4), np.int8),
                       "rows": lambda: np.ones((7, 1, 4, 4), np.float32),
                       "empty": lambda: np.ones((0, 1, 4, 4), np.float32),
                       "scalar": lambda: np.float32(3),
                       "nan": lambda: np.full((10, 1, 4, 4), np.nan, np.float32),
                       "big": lambda: np.ones((10, 2**16), np.float32),
                       "5d": lambda: np.ones((10, 1, 1, 1, 2), np.float64)}.get(choice)
                if choice == "group":
                    f.create_group(name)
                elif val is not None:
                    f[name] = val()
                desc = f"{name}: {choice}"
        else:
            listing, desc = mutate_text(listing + rnd.choice(["", h5 + "\n", "nope.h5\n",
                                                              d + "\n", lst + "\n"]), rnd)
        _write(lst, listing)
        net = _net(f"layer {{ name: 'h' type: 'HDF5Data' top: 'data' top: 'label' "
                   f"hdf5_data_param {{ source: '{lst}' batch_size: 4 "
                   f"shuffle: {rnd.choice(['true', 'false'])} }} }}", "TRAIN")
        _run_net(net, iters=4, backward=False)
        return desc


class ImageListFormat(Format):
    name = "imagelist"

    def setup(self, d):
        import numpy as np
        from caffe_lite.data.images import encode_image
        os.makedirs(os.path.join(d, "img"), exist_ok=True)
        r = np.random.default_rng(0)
        for i in range(6):
            img = r.integers(0, 256, (8 + i % 2, 8, 3)).astype(np.uint8)
            _write(os.path.join(d, "img", f"{i}.png"), encode_image(img, "png"))

    def case(self, d, rnd):
        work = os.path.join(d, "case")
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(os.path.join(d, "img"), work)
        listing = "".join(f"{i}.png {i % 3}\n" for i in range(6))
        kind = rnd.choice(["list", "list", "image", "image", "param"])
        params = "new_height: 8 new_width: 8"
        if kind == "list":
            listing, desc = mutate_text(listing, rnd)
        elif kind == "image":
            victim = os.path.join(work, f"{rnd.randrange(6)}.png")
            how = rnd.choice(["bytes", "bytes", "empty", "dir", "text"])
            if how == "bytes":
                with open(victim, "rb") as f:
                    data, desc = mutate_bytes(f.read(), rnd)
                _write(victim, data)
            elif how == "dir":
                os.remove(victim)
                os.mkdir(victim)
                desc = "image is a directory"
            else:
                _write(victim, b"" if how == "empty" else b"not an image\n")
                desc = f"image {how}"
        else:
            params = rnd.choice(["", "new_height: 8", "new_height: 100000 new_width: 100000",
                                 "new_height: 8 new_width: 8 is_color: false",
                                 "shuffle: true new_height: 8 new_width: 8 rand_skip: 100",
                                 "new_height: 8 new_width: 8 root_folder: '/nonexistent/'"])
            desc = f"params {params!r}"
        lst = os.path.join(work, "list.txt")
        _write(lst, listing)
        crop = rnd.choice([0, 0, 4, 9])
        net = _net(f"layer {{ name: 'i' type: 'ImageData' top: 'data' top: 'label' "
                   f"transform_param {{ crop_size: {crop} mirror: true }} "
                   f"image_data_param {{ source: '{lst}' root_folder: '{work}/' batch_size: 4 "
                   f"{params} }} }}", "TRAIN")
        _run_net(net, iters=3, backward=False)
        return desc


class SelfTestFormat(Format):
    """Cases that misbehave on purpose, to show the harness classifies each outcome: case i
    does KINDS[i % 6]."""
    name = "selftest"
    KINDS = ("typed", "traceback", "abort", "segfault", "ok", "hang")

    def case(self, d, rnd):
        from caffe_lite.errors import DataError
        kind = self.KINDS[rnd.case_index % len(self.KINDS)]
        if kind == "typed":
            raise DataError("a typed error")
        if kind == "traceback":
            raise ValueError("an untyped error")
        if kind == "abort":
            os.abort()
        if kind == "segfault":
            os.kill(os.getpid(), signal.SIGSEGV)
        if kind == "hang":
            time.sleep(3600)
        return "fine"


FORMATS = {f.name: f for f in (NetFormat(), SolverFormat(), CaffemodelFormat(),
                               BinaryprotoFormat(), SolverStateFormat(), MasksFormat(),
                               LMDBFormat(), HDF5Format(), ImageListFormat(), SelfTestFormat())}


# --------------------------------------------------------------------------------------------
# one case, in this process
def case_rng(fmt, seed, index):
    return random.Random(f"{fmt}:{seed}:{index}")


def run_case(fmt, d, seed, index):
    """(class, detail, description) of one case run here."""
    from caffe_lite.errors import CaffeLiteError
    import caffe_lite
    caffe_lite.set_mode_cpu()
    caffe_lite.set_random_seed(index)
    rnd = case_rng(fmt.name, seed, index)
    rnd.case_index = index
    desc = ""
    try:
        desc = fmt.case(d, rnd) or ""
        return "ok", "", desc
    except CaffeLiteError as exc:
        text = str(exc)
        if "\n" in text.strip():
            return "traceback", f"multi-line error message: {text[:200]!r}", desc
        return "typed", f"{type(exc).__name__}: {text[:300]}", desc
    except Exception as exc:  # noqa: BLE001  (classifying is the point)
        tb = traceback.extract_tb(exc.__traceback__)
        where = f"{os.path.relpath(tb[-1].filename, ROOT)}:{tb[-1].lineno}" if tb else "?"
        return "traceback", f"{type(exc).__name__} at {where}: {str(exc)[:200]}", desc


def _limit_memory():
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ImportError, ValueError, OSError):
        pass


def worker(seed, plan, d):
    """Run the cases of `plan` ("fmt:start:stop,fmt:start:stop,...") in order."""
    import logging
    import warnings
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    os.makedirs(d, exist_ok=True)
    os.chdir(d)
    out = sys.stdout
    limited = False
    for part in plan.split(","):
        name, start, stop = part.split(":")
        fmt = FORMATS[name]
        fd = os.path.join(d, name)
        os.makedirs(fd, exist_ok=True)
        fmt.setup(fd)
        if not limited:
            _limit_memory()
            limited = True
        for i in range(int(start), int(stop)):
            out.write(f"BEGIN {name} {i}\n")
            out.flush()
            cls, detail, desc = run_case(fmt, fd, seed, i)
            out.write("END " + json.dumps([name, i, cls, detail, desc]) + "\n")
            out.flush()
    return 0


# --------------------------------------------------------------------------------------------
# the parent: workers in subprocesses, each crash attributed to its case
def _worker_env():
    env = dict(os.environ)
    env.update(CAFFE_LITE_JIT="0", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    env.pop("PYTHONFAULTHANDLER", None)
    return env


def _signal_name(rc):
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def run_plan(plan, seed=0, timeout=CASE_TIMEOUT):
    """Run [(format, count)] in worker processes, one after the other, starting a new worker
    after a case that kills one.  Returns {format: (Counter of classes, [failures])}, a
    failure being (index, class, detail, description)."""
    results = {f: (collections.Counter(), []) for f, _ in plan}
    todo = [(f, 0, n) for f, n in plan if n > 0]
    workdir = tempfile.mkdtemp(prefix="fuzz-")
    try:
        run = 0
        while todo:
            d = os.path.join(workdir, f"w{run}")
            run += 1
            spec = ",".join(f"{f}:{a}:{b}" for f, a, b in todo)
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "worker",
                                     str(seed), spec, d], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=_worker_env(), cwd=ROOT)
            current, hung, buf = None, False, b""
            sel = selectors.DefaultSelector()
            sel.register(proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout + 60   # the worker's start-up too
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    hung = True
                    proc.kill()
                    break
                if not sel.select(timeout=min(left, 1.0)):
                    if proc.poll() is not None:
                        break
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    text = line.decode("utf-8", "replace")
                    if text.startswith("BEGIN "):
                        _, name, idx = text.split()
                        current = (name, int(idx))
                        deadline = time.monotonic() + timeout
                    elif text.startswith("END "):
                        name, idx, cls, detail, desc = json.loads(text[4:])
                        counts, failures = results[name]
                        counts[cls] += 1
                        if cls in ("traceback", "crash"):
                            failures.append((idx, cls, detail, desc))
                        current = None
                        todo = [(f, idx + 1 if f == name else a, b) for f, a, b in todo]
                        todo = [t for t in todo if t[1] < t[2]]
            sel.close()
            proc.wait()
            err = proc.stderr.read().decode("utf-8", "replace")
            proc.stdout.close()
            proc.stderr.close()
            if current is not None:
                name, idx = current
                rc = proc.returncode
                how = (f"no result after {timeout:.0f} s (hang)" if hung else
                       f"killed by {_signal_name(rc)}" if rc < 0 else
                       f"worker exited with status {rc}")
                tail = err.strip().splitlines()[-1:] or [""]
                counts, failures = results[name]
                counts["crash"] += 1
                failures.append((idx, "crash", f"{how} {tail[0][:200]}".strip(), ""))
                todo = [(f, idx + 1 if f == name else a, b) for f, a, b in todo]
                todo = [t for t in todo if t[1] < t[2]]
            elif proc.returncode != 0 and todo:
                tail = err.strip().splitlines()[-3:]
                raise RuntimeError(f"fuzz worker failed outside a case (status "
                                   f"{proc.returncode}): {' | '.join(tail)}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


# relative cost of a case, to share the formats out between workers
COST = {"net": 3, "solver": 5, "caffemodel": 2, "binaryproto": 1, "solverstate": 3,
        "masks": 3, "lmdb": 4, "hdf5": 3, "imagelist": 3, "selftest": 1}


def run(formats, count, seed=0, jobs=2, timeout=CASE_TIMEOUT):
    """{format: (Counter, failures)} for `count` cases of every format, in `jobs` parallel
    workers (formats shared out by cost)."""
    from concurrent.futures import ThreadPoolExecutor
    groups = [[] for _ in range(max(1, jobs))]
    for f in sorted(formats, key=lambda f: -COST.get(f, 3)):
        min(groups, key=lambda g: sum(COST.get(x, 3) for x in g)).append(f)
    results = {}
    with ThreadPoolExecutor(len(groups)) as pool:
        for r in pool.map(lambda g: run_plan([(f, count) for f in g], seed, timeout),
                          [g for g in groups if g]):
            results.update(r)
    return {f: results[f] for f in formats}


def main(argv):
    if argv[:1] == ["worker"]:
        seed, plan, d = argv[1:4]
        return worker(int(seed), plan, d)
    if argv[:1] == ["one"]:
        fmt, seed, index = argv[1], int(argv[2]), int(argv[3])
        d = tempfile.mkdtemp(prefix="fuzz-one-")
        os.chdir(d)
        FORMATS[fmt].setup(d)
        rnd = case_rng(fmt, seed, index)
        import caffe_lite
        caffe_lite.set_random_seed(index)
        try:
            print("case:", FORMATS[fmt].case(d, rnd))
        finally:
            shutil.rmtree(d, ignore_errors=True)
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
