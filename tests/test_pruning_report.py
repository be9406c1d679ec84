"""The sparsity report: per-layer rows, zero filters / input channels, totals, formats."""
import csv
import io
import json

import pytest

import caffe_lite
from caffe_lite.pruning import report, sparsity_report

from pruning_nets import FLATNET, build, net_param


def test_rows_totals_and_compression():
    net = build(FLATNET)
    w = net.params["conv1"][0].data          # (6, 2, 3, 3)
    w[1] = 0                                  # a zero filter
    w[:, 0] = 0                               # a zero input channel
    w[3, 1, 0, :2] = 0                        # two more zeros
    ip1 = net.params["ip1"][0].data           # (7, 54)
    ip1[:, :9] = 0                            # conv1's channel 0 is read by columns 0..8
    ip1[4] = 0
    rep = sparsity_report(net)
    conv1, ip1r, ip2r = rep["layers"]
    assert conv1 == {"name": "conv1", "type": "Convolution", "shape": [6, 2, 3, 3],
                     "params": 108, "nonzeros": 108 - 54 - 9 - 2,
                     "sparsity": pytest.approx((54 + 9 + 2) / 108),
                     "zero_filters": 1, "filters": 6,
                     "zero_input_channels": 1, "input_channels": 2,
                     # 3x3 output positions per image, 2 FLOPs per multiply-accumulate
                     "flops": 2 * 108 * 9, "nonzero_flops": 2 * 43 * 9}
    assert ip1r["nonzeros"] == 378 - 63 - 45 and ip1r["zero_filters"] == 1
    assert ip1r["zero_input_channels"] == 9 and ip1r["input_channels"] == 54
    assert ip2r["sparsity"] == 0
    t = rep["total"]
    assert t["params"] == 108 + 378 + 28
    assert t["nonzeros"] == 43 + 270 + 28
    assert t["sparsity"] == pytest.approx(1 - 341 / 514)
    assert t["compression"] == pytest.approx(514 / 341)
    # An InnerProduct applies each weight once per image.
    assert (ip1r["flops"], ip1r["nonzero_flops"]) == (2 * 378, 2 * 270)
    assert (t["flops"], t["nonzero_flops"]) == (2 * (972 + 378 + 28), 2 * (387 + 270 + 28))
    # Sizes: all parameters (biases too) dense, and the CSR estimate.
    assert rep["sizes"]["dense_bytes"] == 4 * (514 + 6 + 7 + 4)
    csr = (43 * 6 + 7 * 4) + (270 * 6 + 8 * 4) + (28 * 6 + 5 * 4)
    assert rep["sizes"]["sparse_bytes_estimate"] == csr + 4 * 17


def test_json_has_exactly_the_documented_keys():
    doc = json.loads(report.to_json(sparsity_report(build(FLATNET))))
    assert set(doc) == {"layers", "total"}
    assert set(doc["total"]) == {"params", "nonzeros", "sparsity", "compression", "flops",
                                 "nonzero_flops"}
    for row in doc["layers"]:
        assert {"name", "type", "shape", "params", "nonzeros", "sparsity"} <= set(row)
    assert [r["name"] for r in doc["layers"]] == ["conv1", "ip1", "ip2"]


def test_csv_and_table():
    net = build(FLATNET)
    net.params["ip2"][0].data[:, :2] = 0
    rep = sparsity_report(net)
    rows = list(csv.reader(io.StringIO(report.to_csv(rep))))
    assert rows[0] == report.COLUMNS
    assert rows[3][:6] == ["ip2", "InnerProduct", "4x7", "28", "20", str(8 / 28)]
    assert rows[-1][0] == "total" and rows[-1][3:5] == ["514", "506"]
    table = report.to_table(rep)
    assert "ip2    InnerProduct  4x7" in table
    assert "28.57 %" in table and "compression (params / nonzeros): 1.02x" in table
    # FLOPs per layer and in total: conv1 1944, ip1 756, ip2 56 (40 of nonzero weights).
    assert "1.94k" in table and "756" in table
    assert "FLOPs per image (2 x multiply-accumulates of these layers' weights): 2.76k, of " \
           "nonzero weights 2.74k (1.01x fewer)" in table


def test_grouped_and_transposed_layers():
    text = ('layer { name: "data" type: "Input" top: "data" '
            'input_param { shape { dim: 1 dim: 4 dim: 3 dim: 3 } } }\n'
            'layer { name: "g" type: "Convolution" bottom: "data" top: "g" '
            'convolution_param { num_output: 6 kernel_size: 1 group: 2 '
            'weight_filler { type: "constant" value: 1 } } }\n'
            'layer { name: "d" type: "Deconvolution" bottom: "g" top: "d" '
            'convolution_param { num_output: 4 kernel_size: 2 group: 2 '
            'weight_filler { type: "constant" value: 1 } } }\n'
            'layer { name: "t" type: "InnerProduct" bottom: "d" top: "t" '
            'inner_product_param { num_output: 3 transpose: true '
            'weight_filler { type: "constant" value: 1 } } }\n')
    net = caffe_lite.Net(net_param(text), caffe_lite.TEST)
    g = net.params["g"][0].data      # (6, 2, 1, 1); group 1 holds filters 3..5, inputs 2..3
    g[3:, 1] = 0                     # input channel 3 (group 1, local 1) unread
    d = net.params["d"][0].data      # (6, 2, 2, 2): inputs 0..2 -> outputs 0..1, 3..5 -> 2..3
    d[3:, 0] = 0                     # output channel 2 (group 1, local 0) zero
    d[1] = 0                         # input channel 1 unread
    t = net.params["t"][0].data      # (K, 3) transposed
    t[:, 2] = 0
    rows = {r["name"]: r for r in sparsity_report(net)["layers"]}
    assert (rows["g"]["zero_filters"], rows["g"]["zero_input_channels"],
            rows["g"]["input_channels"]) == (0, 1, 4)
    assert (rows["d"]["zero_filters"], rows["d"]["filters"], rows["d"]["zero_input_channels"],
            rows["d"]["input_channels"]) == (1, 4, 1, 6)
    assert (rows["t"]["zero_filters"], rows["t"]["filters"]) == (1, 3)
    # FLOPs: g, a 1x1 convolution at 3x3 positions; d, a Deconvolution applying its weights
    # at each of its 3x3 input positions; t, once per image.
    assert rows["g"]["flops"] == 2 * 12 * 9 and rows["d"]["flops"] == 2 * 48 * 9
    assert rows["t"]["flops"] == 2 * 64 * 3
    assert rows["d"]["nonzero_flops"] == 2 * (48 - 12 - 8) * 9
