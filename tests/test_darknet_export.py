"""caffe-lite -> darknet: round trips give the .weights back byte for byte, Caffe-made nets export
to cfgs that darknet's formulas (tests/darknet_ref.py) evaluate to caffe-lite's numbers, pruned
zeros stay, layers darknet lacks are refused by name; the CLI verbs; [net] -> solver."""
import math

import numpy as np
import pytest

import caffe_lite
import darknet_ref as ref
from caffe_lite.cli import main
from caffe_lite.io import darknet
from caffe_lite.io.darknet.layers import describe
from caffe_lite.io.darknet.solver import solver_from_net
from caffe_lite.io.darknet.weights import Header, read_weights
from caffe_lite.solvers.lr_policy import learning_rate
from test_darknet import EVERYTHING, MOBILENETS, SMALL


def convert(tmp_path, cfg, seed=0, header=None, name="a"):
    (tmp_path / f"{name}.cfg").write_text(cfg)
    arrays = ref.random_arrays(cfg, seed)
    data = ref.write_weights(tmp_path / f"{name}.weights", cfg, arrays, header)
    return darknet.convert(tmp_path / f"{name}.cfg", tmp_path / f"{name}.weights"), data


def exported(tmp_path, net, **kw):
    cfg, w = tmp_path / "out.cfg", tmp_path / "out.weights"
    darknet.export(net, cfg, w, **kw)
    return cfg, w


def forward(net, x):
    net.blobs["data"].reshape(*x.shape)
    net.reshape()
    return net.forward(data=x)


# --- round trips ----------------------------------------------------------------------------------
@pytest.mark.parametrize("header", [Header(0, 2, 0, 987654321012), Header(0, 1, 0, 77),
                                    Header(0, 1001, 0, 5)])
def test_round_trip_is_byte_identical(tmp_path, header):
    conv, data = convert(tmp_path, EVERYTHING + "\n" + SMALL.split("\n", 4)[4], seed=3,
                         header=header)
    net = conv.net()
    cfg, w = exported(tmp_path, net, header=conv.header, depthwise=True)
    assert w.read_bytes() == data
    # the cfg reads back as the same layers, and the model computes the same
    _, a = describe(darknet.parse_cfg((tmp_path / "a.cfg").read_text()))
    _, b = describe(darknet.read_cfg(cfg))
    # ([cost] is a training loss: a deploy net has no layer for it)
    assert [(x.kind, x.out_shape, x.p) for x in a if x.kind != "cost"] == \
        [(x.kind, x.out_shape, x.p) for x in b]
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 12, 12)).astype(np.float32)
    back = darknet.load(cfg, w)
    (want,), (got,) = forward(net, x).values(), forward(back, x).values()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", MOBILENETS)
def test_mobilenet_round_trip_is_byte_identical(tmp_path, models_dir, name):
    text = (models_dir / "darknet" / name).read_text()
    conv, data = convert(tmp_path, text, seed=4, header=Header(0, 2, 0, 32013312))
    cfg, w = exported(tmp_path, conv.net(), header=conv.header, depthwise=True)
    assert w.read_bytes() == data
    assert cfg.read_text().count("[depthwise_convolutional]") == text.count(
        "[depthwise_convolutional]")
    # as [convolutional] groups= for pjreddie's / AlexeyAB's darknet: the same bytes
    cfg, w = exported(tmp_path, conv.net(), header=conv.header)
    assert w.read_bytes() == data and "depthwise" not in cfg.read_text()


# --- nets made in Caffe ---------------------------------------------------------------------------
CAFFE_NET = """
name: "made_in_caffe"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "msra" }
                            bias_filler { type: "uniform" min: -1 max: 1 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 1 weight_filler { type: "msra" } } }
layer { name: "sig" type: "Sigmoid" bottom: "conv2" top: "conv2" }
layer { name: "conv3" type: "Convolution" bottom: "pool1" top: "conv3"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 8 bias_term: false
                            weight_filler { type: "msra" } } }
layer { name: "sum" type: "Eltwise" bottom: "conv3" bottom: "conv2" top: "sum"
        eltwise_param { coeff: 0.5 coeff: 2 } }
layer { name: "cat" type: "Concat" bottom: "pool1" bottom: "sum" top: "cat" }
layer { name: "tanh" type: "TanH" bottom: "cat" top: "tanh" }
layer { name: "pool2" type: "Pooling" bottom: "tanh" top: "pool2"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool2" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" }
                              bias_filler { type: "uniform" min: -1 max: 1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def _caffe_net():
    net = caffe_lite.Net(CAFFE_NET, caffe_lite.TEST)
    rng = np.random.default_rng(1)
    bn = net.params["bn1"]
    bn[0].data[...] = rng.uniform(-1, 1, 8) * 3
    bn[1].data[...] = rng.uniform(1e-4, 2, 8) * 3
    bn[2].data[...] = 3  # Caffe's moving-average factor
    net.params["scale1"][0].data[...] = rng.uniform(0.5, 2, 8)
    net.params["scale1"][1].data[...] = rng.uniform(-1, 1, 8)
    return net


def test_caffe_made_net_exports_and_darknet_computes_the_same(tmp_path):
    net = _caffe_net()
    cfg, w = exported(tmp_path, net)
    text = cfg.read_text()
    # Caffe's ceil rounding (8 -> 4 windows, darknet's default would give 3) made explicit
    assert "[maxpool]\nsize=3\nstride=2\npadding=1\n" in text
    sections, layers = describe(darknet.read_cfg(cfg))
    _, arrays = read_weights(w, layers)
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    want = forward(net, x)["prob"]
    outs = ref.forward(text, arrays, x)
    np.testing.assert_allclose(outs[max(outs)].reshape(want.shape), want, rtol=1e-5,
                               atol=1e-7)
    kinds = [ly.kind for ly in layers]
    assert kinds.count("route") >= 2 and "activation" in kinds and "shortcut" in kinds


def test_pruned_zeros_stay_zeros(tmp_path):
    from caffe_lite.pruning import make_plan, prune_net
    conv, _ = convert(tmp_path, ref.small(EVERYTHING, 12), seed=6)
    net = conv.net()
    prune_net(net, plan=make_plan(net, None, "magnitude", 0.6, None))
    cfg, w = exported(tmp_path, net, depthwise=True)
    _, layers = describe(darknet.read_cfg(cfg))
    _, arrays = read_weights(w, layers)
    for ly in layers:
        if ly.weights:
            name = {"connected": "fc"}.get(ly.kind, "conv") + str(ly.index)
            mask = net.params[name][0].mask.reshape(arrays[ly.index]["weights"].shape)
            assert np.all(arrays[ly.index]["weights"][mask == 0] == 0)
            assert (arrays[ly.index]["weights"] == 0).mean() >= 0.55
    x = np.random.default_rng(3).uniform(-1, 1, (1, 3, 12, 12)).astype(np.float32)
    outs = ref.forward(cfg.read_text(), arrays, x)
    want = forward(net, x)
    np.testing.assert_allclose(outs[max(outs)].reshape(-1), next(iter(want.values())).ravel(),
                               rtol=1e-5, atol=1e-7)


def test_layers_darknet_lacks_are_refused_by_name_in_one_line(tmp_path):
    net = caffe_lite.Net("""
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "norm1" type: "LRN" bottom: "data" top: "norm1" }
layer { name: "dil" type: "Convolution" bottom: "data" top: "dil"
        convolution_param { num_output: 2 kernel_size: 3 dilation: 2 } }
layer { name: "ok" type: "Convolution" bottom: "data" top: "ok"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "abs" type: "AbsVal" bottom: "ok" top: "ok" }
""", caffe_lite.TEST)
    with pytest.raises(darknet.DarknetError) as e:
        exported(tmp_path, net)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("'norm1' (LRN): darknet has no LRN layer", "'dil' (Convolution): dilation",
                 "'abs' (AbsVal)"):
        assert part in msg
    assert not (tmp_path / "out.cfg").exists()


# --- the command line ----------------------------------------------------------------------------
def test_cli_convert_then_export_gives_the_weights_back(tmp_path, models_dir, capsys):
    text = ref.small((models_dir / "darknet" / "mobilenet_v2_imagenet.cfg").read_text(), 32)
    (tmp_path / "m.cfg").write_text(text)
    data = ref.write_weights(tmp_path / "m.weights", text, ref.random_arrays(text, 8),
                             Header(0, 2, 5, 4242))
    d = str(tmp_path)
    assert main(["convert-darknet", "-cfg", f"{d}/m.cfg", "-weights", f"{d}/m.weights",
                 "-output_model", f"{d}/deploy.prototxt", "-output", f"{d}/m.caffemodel",
                 "-solver", f"{d}/solver.prototxt"]) == 0
    out = capsys.readouterr().out
    assert "66 darknet layers" in out and "outputs: softmax65" in out
    assert 'net: "deploy.prototxt"' in (tmp_path / "solver.prototxt").read_text()
    assert main(["export-darknet", "-model", f"{d}/deploy.prototxt", "-weights",
                 f"{d}/m.caffemodel", "-output_cfg", f"{d}/back.cfg", "-output_weights",
                 f"{d}/back.weights"]) == 0
    assert (tmp_path / "back.weights").read_bytes() == data  # header 0.2.5, seen 4242 kept
    assert "[depthwise_convolutional]" in (tmp_path / "back.cfg").read_text()
    # nothing a user owns is overwritten
    assert main(["export-darknet", "-model", f"{d}/deploy.prototxt", "-weights",
                 f"{d}/m.caffemodel", "-output_cfg", f"{d}/back.cfg", "-output_weights",
                 f"{d}/b2.weights", "-seen", "0", "-depthwise", "no"]) == 1
    assert "back.cfg already exists" in capsys.readouterr().err
    assert main(["export-darknet", "-model", f"{d}/deploy.prototxt", "-weights",
                 f"{d}/m.caffemodel", "-output_cfg", f"{d}/b2.cfg", "-output_weights",
                 f"{d}/b2.weights", "-seen", "0", "-depthwise", "no"]) == 0
    b2 = (tmp_path / "b2.weights").read_bytes()
    assert b2[:12] == data[:12] and b2[12:20] == bytes(8) and b2[20:] == data[20:]
    assert "depthwise" not in (tmp_path / "b2.cfg").read_text()


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "bad.cfg").write_text("[net]\nheight=4\nwidth=4\nchannels=1\n[lrn]\n")
    d = str(tmp_path)
    assert main(["convert-darknet", "-cfg", f"{d}/bad.cfg", "-output_model",
                 f"{d}/x.prototxt"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "bad.cfg:5: layer 0 [lrn]: no caffe-lite equivalent" in err
    assert not (tmp_path / "x.prototxt").exists()


# --- [net] -> solver ------------------------------------------------------------------------------
def darknet_rate(net_, it):
    """network.c's get_current_rate (after burn-in), with the options as the float fields
    darknet parses them into."""
    f32 = np.float32
    net = type("Floats", (), {"float": lambda _, k, d=0: float(f32(net_.float(k, d))),
                              "int": lambda _, k, d=0: net_.int(k, d),
                              "ints": lambda _, k: net_.ints(k),
                              "floats": lambda _, k: [float(f32(v)) for v in net_.floats(k)],
                              "str": lambda _, k, d=None: net_.str(k, d)})()
    lr, policy = net.float("learning_rate", 0.001), net.str("policy", "constant")
    if policy == "constant":
        return lr
    if policy == "step":
        return lr * net.float("scale", 1) ** (it // net.int("step", 1))
    if policy == "steps":
        rate = lr
        for s, sc in zip(net.ints("steps"), net.floats("scales")):
            if s > it:
                return rate
            rate *= sc
        return rate
    if policy == "exp":
        return lr * net.float("gamma", 1) ** it
    if policy == "poly":
        return lr * (1 - it / net.int("max_batches")) ** net.float("power", 4)
    if policy == "sigmoid":
        return lr / (1 + math.exp(net.float("gamma", 1) * (it - net.int("step", 1))))


@pytest.mark.parametrize("opts", [
    "policy=constant", "policy=step\nstep=300\nscale=.5", "policy=steps\nsteps=100,250,700\n"
    "scales=.1,.1,.1", "policy=exp\ngamma=.999", "policy=poly\npower=3\nmax_batches=1000",
    "policy=sigmoid\ngamma=.01\nstep=400"])
def test_solver_learning_rates_follow_darknets_policy(tmp_path, opts):
    text = (f"[net]\nheight=4\nwidth=4\nchannels=1\nlearning_rate=0.02\nmomentum=0.8\n"
            f"decay=0.001\nmax_batches=1000\nbatch=64\nsubdivisions=4\n{opts}\n")
    net = darknet.parse_cfg(text)[0]
    sp, notes = solver_from_net(net, tmp_path / "deploy.prototxt", tmp_path / "s.prototxt")
    assert (sp.momentum, sp.iter_size, sp.max_iter) == (pytest.approx(0.8), 4, 1000)
    assert sp.weight_decay == pytest.approx(0.001) and sp.net == "deploy.prototxt"
    assert "batch_size 16" in notes[0]
    step = 0
    for it in range(0, 1000, 7):
        rate, step = learning_rate(sp, it, step)
        assert rate == pytest.approx(darknet_rate(net, it), rel=1e-5)


@pytest.mark.parametrize("opts,match", [
    ("policy=steps\nsteps=10,20\nscales=.1,10", "differing scales"),
    ("policy=random", "no Caffe learning-rate policy"),
    ("policy=poly\nmax_batches=0", "needs max_batches")])
def test_solver_refuses_what_caffe_cannot_do(tmp_path, opts, match):
    net = darknet.parse_cfg(f"[net]\nheight=4\nwidth=4\nchannels=1\n{opts}\n")[0]
    with pytest.raises(darknet.DarknetError, match=match):
        solver_from_net(net, tmp_path / "d.prototxt", tmp_path / "s.prototxt")


def test_solver_notes_burn_in(tmp_path):
    net = darknet.parse_cfg("[net]\nheight=4\nwidth=4\nchannels=1\nburn_in=1000\n")[0]
    _, notes = solver_from_net(net, tmp_path / "d.prototxt", tmp_path / "s.prototxt")
    assert any("burn_in=1000" in n and "left out" in n for n in notes)


def test_cli_exports_a_connected_net(tmp_path):
    d = str(tmp_path)
    (tmp_path / "m.prototxt").write_text("""
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 } }
""")
    net = caffe_lite.Net(str(tmp_path / "m.prototxt"), caffe_lite.TEST)
    net.params["ip"][0].data[...] = np.arange(192).reshape(3, 64) / 100
    net.save(str(tmp_path / "m.caffemodel"))
    assert main(["export-darknet", "-model", f"{d}/m.prototxt", "-weights", f"{d}/m.caffemodel",
                 "-output_cfg", f"{d}/o.cfg", "-output_weights", f"{d}/o.weights"]) == 0
    text = (tmp_path / "o.cfg").read_text()
    assert "[connected]\noutput=3\nactivation=linear" in text
    _, layers = describe(darknet.read_cfg(tmp_path / "o.cfg"))
    _, arrays = read_weights(tmp_path / "o.weights", layers)
    np.testing.assert_array_equal(arrays[0]["weights"], net.params["ip"][0].data)


def test_train_val_loss_layers_export_as_softmax_and_cost(tmp_path):
    net = caffe_lite.Net("""
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 4 dim: 1 dim: 1 } shape { dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" }
""", caffe_lite.TEST)
    cfg, w = exported(tmp_path, net)
    _, layers = describe(darknet.read_cfg(cfg))
    assert [ly.kind for ly in layers] == ["connected", "softmax", "cost"]
