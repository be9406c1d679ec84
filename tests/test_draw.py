"""draw: pycaffe's caffe.draw over real prototxts, the phase filter, labels and edge labels,
and caffe-lite's weight-density view (labels, shading, the CLI)."""
import shutil

import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite import cli, draw
from caffe_lite.io import load_message, upgrade_net
from caffe_lite.proto import caffe_pb2

pydot = pytest.importorskip("pydot", reason="drawing needs pydot (pip install "
                                            "'caffe-lite[draw]')")
needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot is not installed (apt-get install graphviz)")


def net_param(path):
    net, _ = load_message(str(path), caffe_pb2.NetParameter)
    upgrade_net(net)
    return net


def nodes_by_label(graph):
    return {n.get("label").strip('"'): n for n in graph.get_nodes() if n.get("label")}


def test_labels_edges_and_phase_filter(models_dir):
    net = net_param(models_dir / "bvlc_mnist" / "lenet_train_test.prototxt")
    g = draw.get_pydot_graph(net, "LR", phase=caffe_pb2.TRAIN)
    assert g.get_rankdir() == "LR"
    labels = nodes_by_label(g)
    assert r"conv1\n(Convolution)\nkernel size: 5\nstride: 1\npad: 0" in labels
    assert r"pool1\n(Pooling MAX)\nkernel size: 2\nstride: 2\npad: 0" in labels
    assert labels[r"conv1\n(Convolution)\nkernel size: 5\nstride: 1\npad: 0"].get(
        "fillcolor") == "#FF5050"
    assert labels[r"relu1\n(ReLU)"].get("fillcolor") == "#90EE90"   # in place
    assert labels["ip1"].get("shape") == "octagon"                    # a blob
    assert r"accuracy\n(Accuracy)" not in labels                       # TEST only
    assert len([lb for lb in labels if lb.startswith(r"mnist\n")]) == 1
    edge_labels = sorted(e.get("label") for e in g.get_edges() if e.get("label") != '""')
    assert edge_labels == ["10", "20", "50", "500", "Batch 64", "Batch 64"]
    g_all = draw.get_pydot_graph(net, "TB")
    assert len([n for n in g_all.get_nodes() if n.get("label") == '"mnist (Data)"']) == 2
    both = nodes_by_label(g_all)                                       # phase=None: all
    assert "conv1 (Convolution) kernel size: 5 stride: 1 pad: 0" in both   # TB: spaces
    test = nodes_by_label(draw.get_pydot_graph(net, "LR", phase=caffe_pb2.TEST))
    assert r"accuracy\n(Accuracy)" in test


def test_display_lrm_and_lr_mult():
    net = caffe_pb2.NetParameter()
    conv = net.layer.add(name="c", type="Convolution", bottom=["d"], top=["c"])
    conv.convolution_param.kernel_size.append(3)
    conv.param.add(lr_mult=1)
    conv.param.add(lr_mult=2)
    assert draw.get_layer_lr_mult(conv) == (1, 2)
    assert draw.get_layer_label(conv, "LR", display_lrm=True).endswith(r'\nlr mult: 1.0, 2.0"')
    with pytest.raises(ValueError):
        draw.get_layer_lr_mult(caffe_pb2.LayerParameter(type="ReLU"))
    assert draw.get_edge_label(conv) == "0" and draw.get_pooling_types_dict()[0] == "MAX"


def pruned_net(tmp_path):
    text = ("name: 'tiny' input: 'data' input_shape { dim: 1 dim: 1 dim: 4 dim: 4 }\n"
            "layer { name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv' "
            "convolution_param { num_output: 2 kernel_size: 3 } }\n"
            "layer { name: 'ip' type: 'InnerProduct' bottom: 'conv' top: 'ip' "
            "inner_product_param { num_output: 4 } }\n")
    model = tmp_path / "tiny.prototxt"
    model.write_text(text)
    net = caffe.Net(str(model), caffe.TEST)
    w = net.params["conv"][0].data
    w[...] = 1
    w.reshape(-1)[:9] = 0                          # conv: 9 of 18 nonzero
    ip = net.params["ip"][0].data
    ip[...] = 0
    ip.reshape(-1)[:2] = 3                          # ip: 2 of 32 nonzero
    weights = tmp_path / "tiny.caffemodel"
    net.save(str(weights))
    return model, weights


def test_weight_densities_label_and_shade(tmp_path):
    model, weights = pruned_net(tmp_path)
    net = net_param(model)
    dens = draw.weight_densities(net, str(weights))
    assert dens == {"conv": 0.5, "ip": 2 / 32}
    labels = nodes_by_label(draw.get_pydot_graph(net, "LR", densities=dens))
    conv = labels[r"conv\n(Convolution)\nkernel size: 3\nstride: 1\npad: 0\ndensity: 50.0 %"]
    assert conv.get("fillcolor") == draw.shade("#FF5050", 0.5) == "#FFA8A8"
    assert labels[r"ip\n(InnerProduct)\ndensity: 6.2 %"].get("fillcolor") == "#FCF2FF"
    assert draw.shade("#CC33FF", 1.0) == "#CC33FF" and draw.shade("#CC33FF", 0) == "#FFFFFF"


def test_raw_is_the_dot_source(models_dir):
    net = net_param(models_dir / "bvlc_mnist" / "lenet.prototxt")
    src = draw.draw_net(net, "BT", ext="raw").decode()
    assert src.startswith("digraph LeNet {") and "rankdir=BT" in src


def net_prototxts(models_dir):
    paths = sorted(p for p in models_dir.rglob("*.prototxt") if "solver" not in p.name)
    assert len(paths) >= 10
    return paths


def test_every_shared_prototxt_makes_a_graph(models_dir):
    for path in net_prototxts(models_dir):
        net = net_param(path)
        g = draw.get_pydot_graph(net, "LR")
        assert len([n for n in g.get_nodes() if n.get("shape") == "record"]) == len(net.layer)


@needs_dot
def test_draws_the_bvlc_prototxts(models_dir):
    """pycaffe's test_draw (every net prototxt draws), for the BVLC nets; all of them in the
    slow run (the MobileNets take Graphviz tens of seconds)."""
    for path in net_prototxts(models_dir):
        if path.parent.name.startswith("bvlc_"):
            assert draw.draw_net(net_param(path), "LR")[:8] == b"\x89PNG\r\n\x1a\n", path


@needs_dot
@pytest.mark.slow
def test_draws_every_shared_prototxt(models_dir):
    for path in net_prototxts(models_dir):
        assert draw.draw_net(net_param(path), "LR")[:8] == b"\x89PNG\r\n\x1a\n", path


@needs_dot
def test_cli_draws_svg_with_densities_and_refuses_to_overwrite(tmp_path, capsys):
    model, weights = pruned_net(tmp_path)
    out = tmp_path / "net.svg"
    assert cli.main(["draw", "-model", str(model), "-weights", str(weights),
                     "-output", str(out), "-rankdir", "TB"]) == 0
    svg = out.read_text()
    assert svg.lstrip().startswith("<?xml") and "density: 50.0 %" in svg
    assert "fill=\"#ffa8a8\"" in svg.lower()
    assert "conv: 50.0 % of weights nonzero" in capsys.readouterr().out
    assert cli.main(["draw", "-model", str(model), "-output", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    # draw_net.py's positional form, with -overwrite
    assert cli.main(["draw", str(model), str(out), "--phase", "TEST", "-overwrite"]) == 0
    assert "density" not in out.read_text()


@needs_dot
def test_draw_net_to_file_png(tmp_path, models_dir):
    out = tmp_path / "lenet.png"
    draw.draw_net_to_file(net_param(models_dir / "bvlc_mnist" / "lenet_train_test.prototxt"),
                          str(out), "LR", caffe_pb2.TRAIN)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = np.frombuffer(data[16:24], ">u4")
    assert width > 3 * height  # a left-to-right drawing is wide
