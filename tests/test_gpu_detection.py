"""The SSD fork's layers in a GPU net: PriorBox, DetectionOutput and Normalize have no GPU
kernels and run their CPU code on host copies of the blobs (as Accuracy does).  A small SSD
gives the same detections in GPU mode as in CPU mode, and Normalize's forward and backward
agree between the modes.  Marked `gpu`; test_gpu_emulated.py runs it on the CPU emulator."""
import numpy as np
import pytest

import caffe_lite
from caffe_lite.blob import Blob
from caffe_lite.testing import layer_from_text
from ssd_nets import CASES, PRIOR_A, PRIOR_B, random_weights, small_ssd

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("need_gpu")]



def test_small_ssd_detections_gpu_equal_cpu(tmp_path):
    proto = tmp_path / "small_ssd.prototxt"
    proto.write_text(small_ssd(PRIOR_A, PRIOR_B, CASES["all_nms_kept"]))
    caffe_lite.set_mode_cpu()
    net = caffe_lite.Net(str(proto), caffe_lite.TEST)
    g = random_weights(net, seed=7, conf_gain=2.0)
    weights = tmp_path / "small_ssd.caffemodel"
    net.save(str(weights))
    xs = [g.uniform(-1, 1, (2, 3, 24, 40)).astype(np.float32) for _ in range(2)]
    want = [net.forward(data=x)["detection_out"].copy() for x in xs]
    assert want[0].shape[2] > 100

    caffe_lite.set_mode_gpu()
    gnet = caffe_lite.Net(str(proto), caffe_lite.TEST, weights=str(weights))
    for x, w in zip(xs, want):          # twice: the top is resized between passes
        got = gnet.forward(data=x)["detection_out"]
        assert got.shape == w.shape
        np.testing.assert_array_equal(got[..., :2], w[..., :2])
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gnet.blobs["norm1"].data, net.blobs["norm1"].data, rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("params", ["across_spatial: false channel_shared: false",
                                    "across_spatial: true channel_shared: true"])
def test_normalize_gpu_mode_equals_cpu(params):
    text = (f'type: "Normalize" norm_param {{ {params} '
            'scale_filler { type: "uniform" min: 0.5 max: 2 } }')
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 5, 3, 4)).astype(np.float32)
    dy = rng.uniform(-1, 1, x.shape).astype(np.float32)
    results = []
    for mode in (caffe_lite.set_mode_cpu, caffe_lite.set_mode_gpu):
        mode()
        caffe_lite.set_random_seed(3)
        layer = layer_from_text(text)
        bottom, top = Blob(x.shape), Blob()
        bottom.data[...] = x
        layer.setup([bottom], [top])
        layer.forward([bottom], [top])
        top.diff[...] = dy
        layer.blobs[0].diff[...] = 0.5            # parameter gradients accumulate
        layer.backward([top], [True], [bottom])
        results.append((top.data.copy(), bottom.diff.copy(), layer.blobs[0].diff.copy()))
    for cpu, gpu in zip(*results):
        np.testing.assert_allclose(gpu, cpu, rtol=1e-6, atol=1e-7)
