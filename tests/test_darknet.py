"""darknet -> caffe-lite: every section against darknet's formulas (tests/darknet_ref.py, an
independent evaluation), hand-computed cases for the rules Caffe lacks, the MobileNet cfgs in
../shared/models/darknet against OpenCV's readNetFromDarknet, the weights file format."""
import struct

import numpy as np
import pytest

import caffe_lite
import darknet_ref as ref
from caffe_lite.io import darknet
from caffe_lite.errors import ModelFileError
from caffe_lite.io.darknet import bn as dbn
from caffe_lite.io.darknet.layers import ACTIVATIONS
from caffe_lite.io.darknet.weights import Header

NET = "[net]\nheight={h}\nwidth={w}\nchannels={c}\n"


def run(tmp_path, cfg, arrays=None, x=None, seed=0, reorg="pjreddie", header=None):
    """(caffe-lite's output, the reference's output of the last layer, Conversion)."""
    p = tmp_path / "net.cfg"
    p.write_text(cfg)
    arrays = ref.random_arrays(cfg, seed, reorg=reorg) if arrays is None else arrays
    wp = tmp_path / "net.weights"
    ref.write_weights(wp, cfg, arrays, header, reorg)
    conv = darknet.convert(p, wp if arrays else None, reorg=reorg)
    net = conv.net()
    in_shape = net.blobs["data"].shape
    if x is None:
        x = np.random.default_rng(seed + 1).uniform(-1, 1, in_shape).astype(np.float32)
    out = net.forward(data=x)
    outs = ref.forward(cfg, arrays, x, reorg)
    return out, outs, conv


def last(out):
    assert len(out) == 1
    return next(iter(out.values()))


def close(a, b, rtol=2e-5, atol=1e-5):
    a = np.asarray(a, np.float64).reshape(np.shape(b))
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


# --- maxpool: darknet's window rule --------------------------------------------------------------
def test_maxpool_hand_computed_size2_stride1(tmp_path):
    # yolov3-tiny's [maxpool] size=2 stride=1: padding defaults to size-1 = 1, all of it on the
    # right/bottom; the output keeps the input size (Caffe alone would give 2x2)
    cfg = NET.format(h=3, w=3, c=1) + "[maxpool]\nsize=2\nstride=1\n"
    x = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    out, _, _ = run(tmp_path, cfg, arrays={}, x=x)
    np.testing.assert_array_equal(last(out)[0, 0], [[5, 6, 6], [8, 9, 9], [8, 9, 9]])


def test_maxpool_hand_computed_size3_stride2(tmp_path):
    # size=3 stride=2 padding=2 (default): windows start at -1, 1; out = (4 + 2 - 3) / 2 + 1 = 2
    # (Caffe with pad 1 would make 3 windows)
    cfg = NET.format(h=4, w=4, c=1) + "[maxpool]\nsize=3\nstride=2\n"
    x = -np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)  # larger values top-left
    out, _, _ = run(tmp_path, cfg, arrays={}, x=x)
    np.testing.assert_array_equal(last(out)[0, 0], [[0, -1], [-4, -5]])


@pytest.mark.parametrize("n,size,stride,padding", [
    (7, 2, 2, None), (8, 2, 2, None), (7, 2, 1, None), (6, 3, 1, None), (9, 3, 2, None),
    (8, 3, 2, None), (13, 5, 1, None), (10, 3, 3, None), (10, 2, 2, 0), (9, 3, 2, 0),
    (8, 3, 2, 1), (7, 4, 2, 3), (11, 5, 3, None), (5, 1, 1, None), (6, 2, 2, 2)])
def test_maxpool_matches_darknet_rule(tmp_path, n, size, stride, padding):
    body = f"[maxpool]\nsize={size}\nstride={stride}\n"
    if padding is not None:
        body += f"padding={padding}\n"
    cfg = NET.format(h=n, w=n + 1, c=2) + body
    out, outs, conv = run(tmp_path, cfg, arrays={})
    pad = size - 1 if padding is None else padding
    expect = (int((n + pad - size) / stride) + 1, int((n + 1 + pad - size) / stride) + 1)
    assert last(out).shape[2:] == expect
    np.testing.assert_array_equal(last(out), outs[0].astype(np.float32))


def test_maxpool_unplaceable_windows_are_refused(tmp_path):
    # padding 9 > size: darknet's first window would start 4 pixels outside the input
    cfg = NET.format(h=6, w=6, c=1) + "[maxpool]\nsize=2\nstride=1\npadding=9\n"
    (tmp_path / "a.cfg").write_text(cfg)
    with pytest.raises(darknet.DarknetError, match=r"layer 0 \[maxpool\].*cannot place"):
        darknet.convert(tmp_path / "a.cfg")


# --- route, shortcut, upsample, reorg: hand-computed ----------------------------------------------
IDENTITY = "[maxpool]\nsize=1\nstride=1\n"  # darknet layer 0 = the input itself


def test_route_groups_takes_the_group_id_th_channel_group(tmp_path):
    cfg = (NET.format(h=2, w=2, c=4) + IDENTITY + "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n"
           + "[route]\nlayers=0,-1\ngroups=2\ngroup_id=0\n")
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 2, 2)
    out, outs, conv = run(tmp_path, cfg, arrays={}, x=x)
    y = last(out)
    # layer 1 = channels 2, 3 of the input; layer 2 = group 0 of layer 0 (ch 0, 1) and of
    # layer 1 (ch 2 of the input)
    np.testing.assert_array_equal(y[0], x[0, [0, 1, 2]])
    np.testing.assert_array_equal(y, outs[2])


def test_shortcut_alpha_beta_activation(tmp_path):
    cfg = (NET.format(h=1, w=3, c=1) + IDENTITY + IDENTITY
           + "[shortcut]\nfrom=-2\nalpha=2\nbeta=-3\nactivation=leaky\n")
    x = np.array([[[[1, -2, 4]]]], np.float32)
    out, outs, _ = run(tmp_path, cfg, arrays={}, x=x)
    # 2 * x + (-3) * x = -x, then leaky
    np.testing.assert_allclose(last(out)[0, 0, 0], [-0.1, 2, -0.4], rtol=1e-6)


def test_upsample_nearest_with_scale(tmp_path):
    cfg = NET.format(h=2, w=2, c=1) + "[upsample]\nstride=2\nscale=0.5\n"
    x = np.array([[[[1, 2], [3, 4]]]], np.float32)
    out, outs, _ = run(tmp_path, cfg, arrays={}, x=x)
    np.testing.assert_array_equal(last(out)[0, 0], 0.5 * np.array(
        [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]))


def test_reorg_pjreddie_hand_computed(tmp_path):
    # reorg_cpu with the input's sizes reads the (4, 2, 2) input as (1, 4, 4): output channel k
    # at (j, i) is element (2j + k // 2, 2i + k % 2) of that view
    cfg = NET.format(h=2, w=2, c=4) + "[reorg]\nstride=2\n"
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 2, 2)
    out, outs, _ = run(tmp_path, cfg, arrays={}, x=x)
    np.testing.assert_array_equal(last(out).ravel(),
                                  [0, 2, 8, 10, 1, 3, 9, 11, 4, 6, 12, 14, 5, 7, 13, 15])
    np.testing.assert_array_equal(last(out), outs[0])


def test_reorg_alexeyab_is_space_to_depth(tmp_path):
    cfg = NET.format(h=2, w=2, c=1) + "[reorg]\nstride=2\n"
    x = np.array([[[[1, 2], [3, 4]]]], np.float32)
    out, outs, _ = run(tmp_path, cfg, arrays={}, x=x, reorg="alexeyab")
    np.testing.assert_array_equal(last(out).ravel(), [1, 2, 3, 4])


@pytest.mark.parametrize("semantics", ["pjreddie", "alexeyab"])
def test_reorg_matches_reorg_cpu(tmp_path, semantics):
    cfg = NET.format(h=6, w=4, c=8) + "[reorg]\nstride=2\n"
    out, outs, _ = run(tmp_path, cfg, arrays={}, reorg=semantics)
    np.testing.assert_array_equal(last(out), outs[0].astype(np.float32))


# --- batch norm: darknet's sqrt(var) + 1e-6 -------------------------------------------------------
def test_batch_norm_matches_darknets_divisor_to_float32_rounding(tmp_path):
    var = np.array([0, 1e-14, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 0.01, 0.5, 1, 3, 1e4], np.float32)
    c = len(var)
    cfg = (NET.format(h=1, w=4, c=c) + f"[convolutional]\nfilters={c}\nsize=1\ngroups={c}\n"
           "batch_normalize=1\nactivation=linear\n")
    rng = np.random.default_rng(3)
    arrays = {0: {"biases": rng.uniform(-1, 1, c).astype(np.float32),
                  "scales": rng.uniform(0.5, 2, c).astype(np.float32),
                  "rolling_mean": rng.uniform(-1e-3, 1e-3, c).astype(np.float32),
                  "rolling_variance": var,
                  "weights": np.ones((c, 1, 1, 1), np.float32)}}
    x = rng.uniform(-1e-3, 1e-3, (1, c, 1, 4)).astype(np.float32)
    out, _, _ = run(tmp_path, cfg, arrays=arrays, x=x)
    a = arrays[0]
    f = np.float32
    # darknet, in float32: normalize_cpu, scale_bias, add_bias
    sh = (1, c, 1, 1)
    y = (x - a["rolling_mean"].reshape(sh)) / (np.sqrt(var).reshape(sh) + f(1e-6))
    y = y * a["scales"].reshape(sh) + a["biases"].reshape(sh)
    got = last(out)
    ulp = np.spacing(np.abs(y).astype(np.float32))
    assert np.max(np.abs(got - y) / ulp) <= 4
    # Caffe's usual sqrt(var + 1e-5) would be off by far more for the small variances
    naive = (x - a["rolling_mean"].reshape(sh)) / np.sqrt(var.reshape(sh) + f(1e-5))
    naive = naive * a["scales"].reshape(sh) + a["biases"].reshape(sh)
    assert np.max(np.abs(naive - y) / ulp) > 1000


def test_bn_arrays_survive_the_caffe_form_bit_for_bit():
    # variances around powers of two and tiny ones, where any float32 map var -> var' would
    # merge neighbours; the converter keeps them as they are
    rng = np.random.default_rng(0)
    base = np.float32(2.0) ** rng.integers(-40, 10, 20000).astype(np.float32)
    var = np.concatenate([base, np.nextafter(base, np.float32(0)), np.zeros(3, np.float32),
                          rng.uniform(0, 1e-10, 1000).astype(np.float32)])
    scales = rng.uniform(-2, 2, var.size).astype(np.float32)
    bias = rng.uniform(-2, 2, var.size).astype(np.float32)
    mean = rng.uniform(-2, 2, var.size).astype(np.float32)
    c = dbn.correction(var)
    s2, m2, v2, b2 = dbn.to_darknet(mean, var, np.float32(dbn.EPS), 1.0, [c, scales], bias)
    for got, want in ((s2, scales), (m2, mean), (v2, var), (b2, bias)):
        assert got.dtype == np.float32 and got.tobytes() == want.tobytes()


def test_bn_fold_of_a_caffe_batchnorm_matches_caffe():
    # a Caffe BatchNorm(eps 1e-5, moving-average factor 2) -> Scale: darknet's numbers for it
    rng = np.random.default_rng(1)
    mean, var = rng.uniform(-1, 1, 50), rng.uniform(1e-6, 2, 50)
    s, b = rng.uniform(0.5, 2, 50), rng.uniform(-1, 1, 50)
    f = np.float32
    sd, md, vd, bd = dbn.to_darknet(f(2 * mean), f(2 * var), f(1e-5), 2.0, [f(s)], f(b))
    x = rng.uniform(-2, 2, 50)
    caffe = (x - f(mean)) / np.sqrt(f(var) + f(1e-5)) * f(s) + f(b)
    dark = (x - md) / (np.sqrt(vd.astype(np.float64)) + 1e-6) * sd + bd
    np.testing.assert_allclose(dark, caffe, rtol=1e-6)


# --- activations ----------------------------------------------------------------------------------
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activations_match_darknet(tmp_path, act):
    cfg = (NET.format(h=4, w=5, c=3) + "[convolutional]\nfilters=3\nsize=1\n"
           f"activation={act}\n[activation]\nactivation={act}\n")
    x = np.random.default_rng(2).uniform(-8, 8, (1, 3, 4, 5)).astype(np.float32)
    out, outs, _ = run(tmp_path, cfg, x=x)
    close(last(out), outs[1], rtol=1e-5, atol=2e-6)


def test_unsupported_activation_is_refused_by_name(tmp_path):
    (tmp_path / "a.cfg").write_text(NET.format(h=4, w=4, c=1)
                                    + "[convolutional]\nfilters=1\nactivation=selu\n")
    with pytest.raises(darknet.DarknetError, match=r"a.cfg:\d+: layer 0 \[convolutional\]: "
                                                   r"activation 'selu'"):
        darknet.convert(tmp_path / "a.cfg")


# --- a net with every section, against the reference ---------------------------------------------
EVERYTHING = NET.format(h=12, w=12, c=3) + """
[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=mish

[maxpool]
size=2
stride=2

[depthwise_convolutional]
size=3
stride=1
pad=1
batch_normalize=1
activation=relu6

[convolutional]
filters=8
size=1
groups=2
activation=swish

[shortcut]
from=-3
activation=leaky

[route]
layers=-1,-4
groups=2
group_id=1

[reorg]
stride=2

[convolutional]
filters=6
size=3
stride=2
padding=1
batch_normalize=1
activation=logistic

[upsample]
stride=3

[maxpool]
size=2
stride=1

[route]
layers=-1,1

[dropout]
probability=.3

[connected]
output=12
batch_normalize=1
activation=tanh

[connected]
output=10
activation=elu

[softmax]
groups=2
temperature=2

[cost]
type=sse
"""


def test_every_section_matches_darknet(tmp_path):
    out, outs, conv = run(tmp_path, EVERYTHING, seed=5)
    close(last(out), outs[max(outs)], rtol=1e-5, atol=1e-7)
    # and the intermediate blobs of the darknet layers too
    net = conv.net()
    x = np.random.default_rng(6).uniform(-1, 1, (2, 3, 12, 12)).astype(np.float32)
    net.blobs["data"].reshape(*x.shape)
    net.reshape()
    net.forward(data=x)
    arrays = ref.random_arrays(EVERYTHING, 5)
    r = ref.forward(EVERYTHING, arrays, x)
    for name, i in (("conv0/mish", 0), ("conv7", 7), ("reorg6", 6), ("route10", 10)):
        close(net.blobs[name].data, r[i], rtol=1e-5, atol=1e-6)


def test_detection_heads_are_left_as_outputs(tmp_path, caplog):
    cfg = NET.format(h=8, w=8, c=3) + """
[convolutional]
filters=18
size=1
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=1
num=3

[route]
layers=-2

[convolutional]
filters=18
size=1
stride=2
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=1
num=3
"""
    out, outs, conv = run(tmp_path, cfg)
    assert sorted(out) == ["yolo1", "yolo4"]
    close(out["yolo1"], outs[0])
    close(out["yolo4"], outs[3])
    assert any("layer 1 [yolo] is a detection head, left to the user" in n and "classes=1" in n
               for n in conv.notes)
    assert "detection head" in conv.prototxt()


# --- MobileNets from ../shared/models/darknet -------------------------------------------------
MOBILENETS = ["mobilenet_v1.cfg", "mobilenet_v2_imagenet.cfg"]


def _mobilenet(models_dir, name, size=64):
    return ref.small((models_dir / "darknet" / name).read_text(), size)


@pytest.mark.parametrize("name", MOBILENETS)
def test_mobilenet_matches_opencv_and_its_groups_twin(tmp_path, models_dir, name):
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (the test extra) is absent")
    cfg = _mobilenet(models_dir, name)
    twin = ref.groups_twin(cfg)
    assert "[depthwise_convolutional]" in cfg and "[depthwise_convolutional]" not in twin
    # logits and probabilities: the cfg as it is, and without its [softmax]
    for text in (cfg, cfg[:cfg.rindex("[softmax]")]):
        arrays = ref.random_arrays(text, seed=7)
        wp = tmp_path / "w.weights"
        ref.write_weights(wp, text, arrays)
        (tmp_path / "dw.cfg").write_text(text)
        (tmp_path / "g.cfg").write_text(ref.groups_twin(text))
        x = np.random.default_rng(8).uniform(0, 1, (2, 3, 64, 64)).astype(np.float32)
        cv = cv2.dnn.readNetFromDarknet(str(tmp_path / "g.cfg"), str(wp))
        cv.setInput(x)
        expect = cv.forward()
        dw = last(darknet.load(tmp_path / "dw.cfg", wp).forward(data=x))
        grouped = last(darknet.load(tmp_path / "g.cfg", wp).forward(data=x))
        np.testing.assert_array_equal(dw, grouped)
        scale = np.abs(expect).max()
        np.testing.assert_allclose(dw.reshape(expect.shape), expect, rtol=1e-4,
                                   atol=1e-5 * scale)


TINY_YOLO_LIKE = NET.format(h=16, w=16, c=3) + """
[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=1

[convolutional]
filters=16
size=1
stride=1
activation=linear

[shortcut]
from=-2
activation=leaky

[reorg]
stride=2

[route]
layers=-1

[convolutional]
filters=8
size=1
activation=logistic

[upsample]
stride=2

[route]
layers=-1,-8

[maxpool]
size=3
stride=2

[convolutional]
filters=10
size=1
activation=linear
"""


def test_maxpool_reorg_upsample_route_shortcut_match_opencv(tmp_path):
    # OpenCV's darknet reader, a second implementation of these sections (its [reorg] is
    # pjreddie's; its batch norm divides by sqrt(var + 1e-6), hence the tolerance)
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (the test extra) is absent")
    out, outs, conv = run(tmp_path, TINY_YOLO_LIKE, seed=3)
    cv = cv2.dnn.readNetFromDarknet(str(tmp_path / "net.cfg"), str(tmp_path / "net.weights"))
    x = np.random.default_rng(4).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
    cv.setInput(x)
    expect = cv.forward()
    got = last(conv.net().forward(data=x))
    np.testing.assert_allclose(got.reshape(expect.shape), expect, rtol=1e-4,
                               atol=1e-5 * np.abs(expect).max())
    close(last(out), outs[max(outs)])


@pytest.mark.parametrize("name", MOBILENETS)
def test_mobilenet_matches_the_reference(tmp_path, models_dir, name):
    cfg = _mobilenet(models_dir, name, size=32)
    cfg = cfg[:cfg.rindex("[softmax]")]
    out, outs, conv = run(tmp_path, cfg, seed=9)
    y = outs[max(outs)]
    close(last(out), y, rtol=1e-4, atol=1e-5 * np.abs(y).max())


@pytest.mark.parametrize("name", MOBILENETS)
def test_mobilenet_cfg_converts_at_its_own_size(models_dir, name):
    conv = darknet.convert(models_dir / "darknet" / name)
    dims = list(conv.param.layer[0].input_param.shape[0].dim)
    assert dims[2:] == ([256, 256] if "v1" in name else [224, 224])
    assert [ly.kind for ly in conv.layers].count("depthwise_convolutional") == \
        (13 if "v1" in name else 17)
    assert conv.layers[-1].out_shape == (1000, 1, 1)


# --- the weights file -----------------------------------------------------------------------------
SMALL = NET.format(h=4, w=4, c=2) + """
[convolutional]
filters=3
size=3
pad=1
batch_normalize=1
activation=leaky

[connected]
output=5
activation=linear
"""


@pytest.mark.parametrize("version,seen_bits", [((0, 1, 0), 32), ((0, 2, 0), 64), ((0, 2, 5), 64),
                                               ((1, 0, 0), 64), ((0, 1001, 0), 32)])
def test_header_versions(tmp_path, version, seen_bits):
    arrays = ref.random_arrays(SMALL, 1)
    header = Header(*version, seen=123456)
    out, outs, conv = run(tmp_path, SMALL, arrays=arrays, header=header)
    data = (tmp_path / "net.weights").read_bytes()
    assert struct.unpack_from("<iii", data) == version
    assert conv.header == header and conv.header.size == 12 + seen_bits // 8
    seen = struct.unpack_from("<Q" if seen_bits == 64 else "<i", data, 12)[0]
    assert seen == 123456
    close(last(out), outs[1])
    if version[1] > 1000:  # connected weights stored inputs x outputs
        w = np.frombuffer(data, "<f4")[-(5 * 48):].reshape(48, 5)
        np.testing.assert_array_equal(w.T, arrays[1]["weights"])


def test_weights_order_is_darknets(tmp_path):
    arrays = ref.random_arrays(SMALL, 2)
    data = ref.write_weights(tmp_path / "w", SMALL, arrays)
    floats = np.frombuffer(data, "<f4", offset=20)
    a, b = arrays[0], arrays[1]
    order = [a["biases"], a["scales"], a["rolling_mean"], a["rolling_variance"], a["weights"],
             b["biases"], b["weights"]]  # conv: biases, BN, weights; connected: biases, weights
    np.testing.assert_array_equal(floats, np.concatenate([v.ravel() for v in order]))


def test_truncated_and_oversized_weights_are_errors(tmp_path):
    (tmp_path / "n.cfg").write_text(SMALL)
    data = ref.write_weights(tmp_path / "w", SMALL, ref.random_arrays(SMALL, 3))
    (tmp_path / "t.weights").write_bytes(data[:-8])
    with pytest.raises(ModelFileError, match=r"truncated: layer 1 \[connected\] "
                                                              r"needs 240 floats for its weights"):
        darknet.convert(tmp_path / "n.cfg", tmp_path / "t.weights")
    (tmp_path / "o.weights").write_bytes(data + b"\0" * 8)
    with pytest.raises(ModelFileError, match="8 bytes .2 floats. left after the last layer"):
        darknet.convert(tmp_path / "n.cfg", tmp_path / "o.weights")
    (tmp_path / "h.weights").write_bytes(data[:10])
    with pytest.raises(ModelFileError, match="too short for a darknet weights header"):
        darknet.convert(tmp_path / "n.cfg", tmp_path / "h.weights")


def test_partial_weights_file_loads_the_layers_it_has(tmp_path, caplog):
    arrays = ref.random_arrays(SMALL, 4)
    data = ref.write_weights(tmp_path / "w", SMALL, arrays)
    (tmp_path / "n.cfg").write_text(SMALL)
    (tmp_path / "p.weights").write_bytes(data[:20 + 4 * (4 * 3 + 54)])  # layer 0 only
    net = darknet.load(tmp_path / "n.cfg", tmp_path / "p.weights")
    assert "partial weights file" in caplog.text and "1 [connected]" in caplog.text
    np.testing.assert_array_equal(net.params["conv0"][0].data, arrays[0]["weights"])


# --- cfg errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text,match", [
    ("[net]\nheight=4\nwidth=4\nchannels=1\n[convolutional\n", r":5: malformed section header"),
    ("[net]\nheight=4\nwidth=4\nchannels=1\nfilters\n", r":5: expected 'key=value'"),
    ("[convolutional]\nfilters=1\n", r"the first section must be \[net\]"),
    ("[net]\nheight=4\nwidth=4\nchannels=1\n[lstm]\n", r"layer 0 \[lstm\]: no caffe-lite eq"),
    ("[net]\nheight=4\nwidth=4\nchannels=1\n[convolutional]\nfilters=x\n",
     r"'filters=x' is not an integer"),
    ("[net]\nheight=4\nwidth=4\nchannels=1\n[convolutional]\nfilters=2\ndilation=2\n",
     r"'dilation=2' is not supported"),
    ("[net]\nheight=4\nwidth=4\nchannels=1\n[maxpool]\nsize=2\nfoo=1\n",
     r"unsupported option\(s\) foo"),
    ("[net]\nheight=4\nwidth=4\nchannels=1\n[route]\nlayers=-3\n",
     r"layers refers to layer -3, which is not an earlier layer"),
    ("[net]\n", r"no input size"),
])
def test_cfg_errors_name_file_line_and_layer(tmp_path, text, match):
    (tmp_path / "bad.cfg").write_text(text)
    with pytest.raises(darknet.DarknetError, match=match):
        darknet.convert(tmp_path / "bad.cfg")


def test_darknet_parsing_rules():
    # spaces anywhere are dropped, ';' and '#' lines are comments, short section names
    s = darknet.parse_cfg("[network]\n h e i g h t = 4 \n;x\n#y\nwidth=4\nchannels=1\n[conv]\n"
                          "filters=2 # two\n[max]\n")
    assert [x.kind for x in s] == ["net", "convolutional", "maxpool"]
    assert s[0].int("height") == 4 and s[1].options["filters"] == "2"


def test_converted_net_backpropagates_through_every_construction(tmp_path):
    # fine-tuning needs gradients through the Slice crops, the Concat upsample, the Permute
    # reorg, route groups and mish: central differences on the input of a loss over the output
    from caffe_lite.proto import caffe_pb2
    cfg = EVERYTHING
    (tmp_path / "e.cfg").write_text(cfg)
    ref.write_weights(tmp_path / "e.weights", cfg, ref.random_arrays(cfg, 1))
    conv = darknet.convert(tmp_path / "e.cfg", tmp_path / "e.weights")
    p = caffe_pb2.NetParameter()
    p.CopyFrom(conv.param)
    p.force_backward = True
    out = p.layer[-1].top[0]
    t = p.layer.add(name="target", type="DummyData", top=["target"])
    t.dummy_data_param.shape.add().dim.extend([1, 2, 5])
    p.layer.add(name="loss", type="EuclideanLoss", bottom=[out, "target"], top=["loss"])
    net = caffe_lite.Net(p, caffe_lite.TEST)
    for name, arrays in conv.values.items():
        for blob, a in zip(net.layer_dict[name].blobs, arrays):
            blob.data[...] = a.reshape(blob.shape)
    x = np.random.default_rng(0).uniform(-1, 1, net.blobs["data"].shape).astype(np.float32)

    def loss(v):
        net.blobs["data"].data[...] = v
        net.forward()
        return float(net.blobs["loss"].data)

    loss(x)
    net.backward()
    grad = net.blobs["data"].diff.copy()
    assert np.abs(grad).max() > 1e-4
    rng = np.random.default_rng(1)
    for _ in range(6):
        i = tuple(int(rng.integers(0, s)) for s in x.shape)
        xp, xm = x.copy(), x.copy()
        xp[i] += 1e-2
        xm[i] -= 1e-2
        assert grad[i] == pytest.approx((loss(xp) - loss(xm)) / 2e-2, rel=3e-2, abs=3e-6)
