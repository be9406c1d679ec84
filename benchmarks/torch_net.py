"""The same net in PyTorch: a caffe-lite Net translated layer by layer into torch.nn modules,
with caffe-lite's weights copied in.

The translation is the architecture a PyTorch user would write: Convolution (grouped and
depthwise) -> nn.Conv2d, BatchNorm followed by Scale(bias_term) -> one nn.BatchNorm2d with
affine=True (PyTorch's idiom; the arithmetic is Caffe's BatchNorm + Scale), ReLU ->
nn.ReLU(inplace=True), Pooling -> MaxPool2d / AvgPool2d (ceil_mode, as Caffe rounds up) or a
mean for global pooling, InnerProduct -> flatten + nn.Linear, SoftmaxWithLoss ->
F.cross_entropy (mean over the batch = Caffe's VALID normalisation), Eltwise -> add /
multiply / maximum.  Split layers the Net inserted are identities.

`check_parity` runs both nets on the same input and compares loss, output and gradients, so a
benchmark result always compares like with like."""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from caffe_lite.proto import caffe_pb2

_P = caffe_pb2.PoolingParameter
_E = caffe_pb2.EltwiseParameter


def _t(a):
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


class _Op(nn.Module):
    """One translated layer: a module (or a parameter-free function) applied to named blobs."""

    def __init__(self, fn, bottoms, tops, name=""):
        super().__init__()
        self.name = name
        if isinstance(fn, nn.Module):
            self.module, self.fn = fn, None
        else:
            self.module, self.fn = None, fn
        self.bottoms, self.tops = list(bottoms), list(tops)

    def forward(self, blobs):
        f = self.module if self.module is not None else self.fn
        out = f(*[blobs[b] for b in self.bottoms])
        if len(self.tops) == 1:
            blobs[self.tops[0]] = out
        else:
            for name, value in zip(self.tops, out):
                blobs[name] = value


class TorchNet(nn.Module):
    """forward(**inputs) -> dict of every named blob's tensor (the loss under 'loss')."""

    def __init__(self, ops, inputs, loss_name):
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.inputs = inputs
        self.loss_name = loss_name

    def forward(self, **inputs):
        blobs = dict(inputs)
        for op in self.ops:
            op(blobs)
        return blobs

    def loss(self, **inputs):
        return self.forward(**inputs)[self.loss_name]


def _conv(layer):
    p = layer.layer_param.convolution_param
    g = layer.geom
    if layer.num_spatial_axes != 2 or layer.reverse_dimensions:
        raise NotImplementedError(f"layer {layer.name}: only 2-D Convolution is translated")
    conv = nn.Conv2d(layer.channels, layer.num_output, g.kernel, stride=g.stride, padding=g.pad,
                     dilation=g.dilation, groups=layer.group, bias=p.bias_term)
    with torch.no_grad():
        conv.weight.copy_(_t(layer.blobs[0].cpu_data))
        if p.bias_term:
            conv.bias.copy_(_t(layer.blobs[1].cpu_data))
    return conv


def _batch_norm(layer, scale_layer):
    bn = nn.BatchNorm2d(layer.channels, eps=float(layer.eps),
                        momentum=1.0 - float(layer.moving_average_fraction),
                        affine=scale_layer is not None)
    if layer.use_global_stats:
        bn.eval()
    with torch.no_grad():
        s = float(layer.blobs[2].cpu_data[0])
        f = 0.0 if s == 0 else 1.0 / s
        bn.running_mean.copy_(_t(layer.blobs[0].cpu_data * f))
        bn.running_var.copy_(_t(layer.blobs[1].cpu_data * f))
        if scale_layer is not None:
            bn.weight.copy_(_t(scale_layer.blobs[0].cpu_data))
            bn.bias.copy_(_t(scale_layer.blobs[1].cpu_data))
    return bn


class _GlobalPool(nn.Module):
    def __init__(self, average):
        super().__init__()
        self.average = average

    def forward(self, x):
        if self.average:
            return x.mean(dim=(2, 3), keepdim=True)
        return x.amax(dim=(2, 3), keepdim=True)


class _FlattenLinear(nn.Module):
    def __init__(self, axis, in_features, out_features, bias):
        super().__init__()
        self.axis = axis
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, x):
        return self.linear(x.flatten(self.axis))


class _Scale(nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.weight = nn.Parameter(_t(w).reshape(1, -1, 1, 1))
        self.bias = None if b is None else nn.Parameter(_t(b).reshape(1, -1, 1, 1))

    def forward(self, x):
        return x * self.weight if self.bias is None else x * self.weight + self.bias


def _pool(layer):
    if layer.global_pooling:
        return _GlobalPool(layer.pool == _P.AVE)
    k, s = (layer.kernel_h, layer.kernel_w), (layer.stride_h, layer.stride_w)
    p = (layer.pad_h, layer.pad_w)
    if layer.pool == _P.MAX:
        return nn.MaxPool2d(k, s, p, ceil_mode=True)
    if layer.pool == _P.AVE:
        return nn.AvgPool2d(k, s, p, ceil_mode=True, count_include_pad=True)
    raise NotImplementedError(f"layer {layer.name}: STOCHASTIC pooling is not translated")


def _inner_product(layer):
    m = _FlattenLinear(layer.axis, layer.K, layer.num_output, layer.bias_term)
    lin = m.linear
    with torch.no_grad():
        w = layer.blobs[0].cpu_data
        lin.weight.copy_(_t(w.T if layer.transpose else w))
        if layer.bias_term:
            lin.bias.copy_(_t(layer.blobs[1].cpu_data))
    return m


def _eltwise(layer):
    op = layer.op
    if op == _E.SUM:
        c = [float(v) for v in layer.coeffs]
        if all(v == 1 for v in c):
            def f(*xs):
                y = xs[0] + xs[1]
                for x in xs[2:]:
                    y = y + x
                return y
            return f
        return lambda *xs: sum(ci * x for ci, x in zip(c, xs))
    if op == _E.PROD:
        def f(*xs):
            y = xs[0] * xs[1]
            for x in xs[2:]:
                y = y * x
            return y
        return f

    def f(*xs):
        y = torch.maximum(xs[0], xs[1])
        for x in xs[2:]:
            y = torch.maximum(y, x)
        return y
    return f


def translate(net):
    """A TorchNet computing what the caffe-lite `net` computes, with its current weights."""
    ops, inputs, loss_name = [], [], None
    names = net.layer_names
    skip = set()
    for i, layer in enumerate(net.layers):
        if ops and not ops[-1].name:
            ops[-1].name = names[i - 1] if (i - 1) not in skip else names[i - 2]
        if i in skip:
            continue
        bottoms, tops = net.bottom_names[names[i]], net.top_names[names[i]]
        t = layer.type
        if t == "Input":
            inputs.extend(tops)
            continue
        if t in ("Convolution", "DepthwiseConvolution", "ConvolutionDepthwise"):
            ops.append(_Op(_conv(layer), bottoms, tops))
        elif t == "BatchNorm":
            scale = None
            nxt = net.layers[i + 1] if i + 1 < len(net.layers) else None
            if (nxt is not None and nxt.type == "Scale" and len(nxt.blobs) == 2
                    and net.bottom_names[names[i + 1]] == tops
                    and nxt.blobs[0].shape == (layer.channels,)):
                scale = nxt
                skip.add(i + 1)
                tops = net.top_names[names[i + 1]]
            ops.append(_Op(_batch_norm(layer, scale), bottoms, tops))
        elif t == "Scale":
            b = layer.blobs[1].cpu_data if len(layer.blobs) > 1 else None
            ops.append(_Op(_Scale(layer.blobs[0].cpu_data, b), bottoms, tops))
        elif t == "ReLU":
            slope = float(layer.negative_slope)
            m = nn.ReLU(inplace=True) if slope == 0 else nn.LeakyReLU(slope, inplace=True)
            ops.append(_Op(m, bottoms, tops))
        elif t == "Pooling":
            ops.append(_Op(_pool(layer), bottoms, tops))
        elif t == "InnerProduct":
            ops.append(_Op(_inner_product(layer), bottoms, tops))
        elif t == "Split":
            ops.append(_Op(lambda x, n=len(tops): (x,) * n if n > 1 else x, bottoms, tops))
        elif t == "Eltwise":
            ops.append(_Op(_eltwise(layer), bottoms, tops))
        elif t == "Softmax":
            ops.append(_Op(lambda x: torch.softmax(x, dim=1), bottoms, tops))
        elif t == "SoftmaxWithLoss":
            ops.append(_Op(lambda x, y: F.cross_entropy(x.flatten(1), y.long()), bottoms,
                           tops[:1]))
            loss_name = tops[0]
        elif t in ("Flatten",):
            ops.append(_Op(lambda x: x.flatten(1), bottoms, tops))
        else:
            raise NotImplementedError(f"layer {names[i]}: type {t} is not translated")
    if ops and not ops[-1].name:
        ops[-1].name = names[-1] if (len(names) - 1) not in skip else names[-2]
    return TorchNet(ops, inputs, loss_name)


def module_for(tnet, layer_name):
    """The torch module (Conv2d, Linear, BatchNorm2d, ...) translated from a caffe-lite layer."""
    for op in tnet.ops:
        if op.name == layer_name and op.module is not None:
            m = op.module
            return m.linear if isinstance(m, _FlattenLinear) else m
    raise KeyError(layer_name)


def param_groups(net, tnet, base_lr, weight_decay):
    """torch.optim parameter groups with each caffe-lite parameter's lr_mult and decay_mult
    (convolution and inner-product weights and biases, Scale folded into BatchNorm)."""
    groups = []
    for layer, lname in zip(net.layers, net.layer_names):
        if not layer.blobs or layer.type == "BatchNorm":
            continue
        try:
            m = module_for(tnet, lname)
        except KeyError:
            m = None
        if layer.type == "Scale":
            prev = net.layer_names.index(lname) - 1
            m = module_for(tnet, net.layer_names[prev]) if m is None else m
        tensors = [m.weight, m.bias]
        for j, blob in enumerate(layer.blobs[:2]):
            spec = layer.layer_param.param[j] if j < len(layer.layer_param.param) else None
            lr = spec.lr_mult if spec is not None and spec.HasField("lr_mult") else 1.0
            decay = spec.decay_mult if spec is not None and spec.HasField("decay_mult") else 1.0
            if tensors[j] is not None and lr != 0:
                groups.append({"params": [tensors[j]], "lr": base_lr * lr,
                               "weight_decay": weight_decay * decay})
    return groups


def randomize_affine(net, seed=0):
    """Give BatchNorm's Scale parameters and biases non-trivial values (fillers start them at
    1 and 0), so a parity check exercises them."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        if layer.type == "Scale":
            layer.blobs[0].data[...] = rng.uniform(0.5, 1.5, layer.blobs[0].shape)
            if len(layer.blobs) > 1:
                layer.blobs[1].data[...] = rng.uniform(-0.2, 0.2, layer.blobs[1].shape)
        elif layer.type in ("Convolution", "InnerProduct") and len(layer.blobs) > 1:
            layer.blobs[1].data[...] = rng.uniform(-0.1, 0.1, layer.blobs[1].shape)


def weights(tnet):
    """The convolution and inner-product weights, in layer order."""
    out = []
    for op in tnet.ops:
        m = op.module
        if isinstance(m, _FlattenLinear):
            m = m.linear
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            out.append(m.weight)
    return out


def weight_blobs(net):
    return [l.blobs[0] for l in net.layers
            if l.type in ("Convolution", "DepthwiseConvolution", "ConvolutionDepthwise",
                          "InnerProduct")]


def _run_torch(tnet, inputs, dtype):
    import copy
    m = copy.deepcopy(tnet).to(dtype)
    m.train()
    x = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in inputs.items()}
    data_name = tnet.inputs[0]
    x[data_name] = x[data_name].to(dtype).requires_grad_(True)
    loss = m.loss(**x)
    loss.backward()
    grads = {"loss": np.float64(loss.item()),
             "input gradient": x[data_name].grad.double().numpy()}
    for i, w in enumerate(weights(m)):
        grads[i] = w.grad.double().numpy()
    return grads


def check_parity(net, tnet, inputs, rtol=3e-2):
    """Forward + backward the caffe-lite net and its translation on `inputs` ({name: array})
    and compare the loss, the input gradient and every weight gradient with PyTorch run in
    float64, as relative L2 errors ||a - ref|| / ||ref||.  Float32 arithmetic alone leaves
    differences: deep BatchNorm nets amplify them, and an activation within rounding of a
    ReLU's kink may fall on the other side (a MobileNet at batch 2 has a few pre-activations
    of size 1e-6; one that flips moves every gradient below it by 0.5-1 %).  So caffe-lite
    must be within max(rtol, 3 x PyTorch-float32's largest error) of the float64 result; a
    wrong layer gives errors of order 1 (tests/test_torch_parity.py).
    Raises AssertionError otherwise; returns {quantity: (caffe-lite error, torch32 error)}."""
    for name, a in inputs.items():
        net.blobs[name].data[...] = a
    for p in net.learnable_params:
        p.diff[...] = 0
    loss = net.forward_from_to()
    net.backward_from_to()
    ref = _run_torch(tnet, inputs, torch.float64)
    t32 = _run_torch(tnet, inputs, torch.float32)
    weights = weight_blobs(net)
    ours = {"loss": loss, "input gradient": net.blobs[tnet.inputs[0]].cpu_diff}
    for i, b in enumerate(weights):
        ours[i] = b.cpu_diff
    errors = {}
    for key, r in ref.items():
        scale = max(float(np.linalg.norm(r)), 1e-30)
        err = float(np.linalg.norm(np.asarray(ours[key], np.float64) - r) / scale)
        err32 = float(np.linalg.norm(t32[key] - r) / scale)
        errors[key if isinstance(key, str) else f"{weights[key].name} gradient"] = (err, err32)
    floor = max(e32 for _, e32 in errors.values())
    for what, (err, err32) in errors.items():
        if err > max(rtol, 3 * floor):
            raise AssertionError(f"caffe-lite and PyTorch differ in {what}: relative error "
                                 f"{err:.3g} against float64 (PyTorch float32: {err32:.3g}, "
                                 f"at most {floor:.3g} elsewhere)")
    return errors
