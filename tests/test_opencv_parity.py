"""The nets of the OpenCV speed comparison (benchmarks/deploy_nets.py) give OpenCV dnn's outputs
to float32 rounding, through caffe-lite's fused and prepared paths: LeNet-300-100, cifar10_quick,
MTCNN's R-Net and O-Net (PReLU, an in-place Dropout inside a fused group), the face detector
(depthwise blocks with BatchNorm + Scale folded, Permute / Flatten / Concat heads) and
SqueezeNet's fire modules, at batch 1 and 2 (smaller inputs where the net allows); the third
pass runs them as native programs (layers/program.py)."""
import pathlib
import sys

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benchmarks package lives beside the tests
    sys.path.insert(0, str(ROOT))

import caffe_lite as caffe  # noqa: E402
from benchmarks import deploy_nets  # noqa: E402

CASES = {
    "lenet_300_100": lambda b: deploy_nets.lenet_300_100(b),
    "cifar10_quick": lambda b: deploy_nets.cifar10_quick(b),
    "mtcnn_pnet": lambda b: deploy_nets.mtcnn_pnet(b, 24, 30),
    "mtcnn_rnet": lambda b: deploy_nets.mtcnn_rnet(b),
    "mtcnn_onet": lambda b: deploy_nets.mtcnn_onet(b),
    "face_detector_slim": lambda b: deploy_nets.face_detector_slim(b, 64, 80),
    "squeezenet_v1.1": lambda b: deploy_nets.squeezenet_v11(b).replace(
        "dim: 227 dim: 227", "dim: 67 dim: 67"),
}


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", list(CASES))
def test_outputs_equal_opencv(tmp_path, name, batch):
    proto = tmp_path / "net.prototxt"
    proto.write_text(CASES[name](batch))
    net = caffe.Net(str(proto), caffe.TEST)
    deploy_nets.randomize(net, seed=batch)
    weights = tmp_path / "net.caffemodel"
    net.save(str(weights))
    cv_net = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    x = np.random.default_rng(batch).standard_normal(net.blobs["data"].shape,
                                                     dtype=np.float32)
    for _ in range(3):  # the second pass runs the prepared steps, the third programs
        out = net.forward(data=x)
    cv_net.setInput(x)
    theirs = cv_net.forward(net.outputs)
    for name_, b in zip(net.outputs, theirs):
        a = out[name_]
        b = np.asarray(b).reshape(a.shape)
        scale = max(float(np.abs(b).max()), 1e-6)
        assert np.abs(a - b).max() <= 1e-4 * scale, (name_, np.abs(a - b).max(), scale)
        assert a.std() > 1e-3 * scale   # not a saturated, meaningless output
