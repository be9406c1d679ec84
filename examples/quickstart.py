"""caffe-lite in a minute: load a prototxt and a caffemodel, run forward, read the masks.

    python examples/quickstart.py [path/to/lenet.prototxt]

Works offline: without a caffemodel of your own it writes one (LeNet with 90 % of ip1's
weights pruned to exact zeros) and loads it back."""
import os
import sys
import tempfile

import numpy as np

import caffe_lite as caffe

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT = os.path.join(HERE, "..", "..", "shared", "models", "bvlc_mnist", "lenet.prototxt")
LENET = """name: "LeNet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 64 dim: 1 dim: 28 dim: 28 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 20 kernel_size: 5 stride: 1 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 50 kernel_size: 5 stride: 1 weight_filler { type: "xavier" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }
"""


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else (DEFAULT if os.path.exists(DEFAULT) else LENET)
    caffe.set_mode_cpu()
    caffe.set_random_seed(1701)

    # 1. A net from a prototxt (path or text), randomly initialised by its fillers.
    net = caffe.Net(model, caffe.TEST)
    print("blobs: ", {k: v.shape for k, v in net.blobs.items()})

    # 2. Prune 90 % of ip1 by magnitude and save a standard caffemodel with exact zeros
    #    (and, beside it, lenet_pruned.masks with the masks).
    ip1 = net.params["ip1"][0]
    w = ip1.data
    w[np.abs(w) < np.quantile(np.abs(w), 0.9)] = 0
    ip1.mask_from_data()  # the zeros are pruned entries, not live weights that are 0
    path = os.path.join(tempfile.mkdtemp(), "lenet_pruned.caffemodel")
    net.save(path)

    # 3. Load prototxt + caffemodel: masks come from the .masks sidecar (else from the zeros).
    net = caffe.Net(model, caffe.TEST, weights=path)
    mask = net.params["ip1"][0].mask
    print(f"ip1 mask: shape {mask.shape}, {int(mask.sum())} of {mask.size} weights live "
          f"({1 - mask.mean():.1%} pruned)")

    # 4. Forward a batch (any batch size: the input is reshaped).
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    prob = net.forward(data=x)["prob"]
    print("prob:", prob.shape, "argmax", prob.argmax(1).tolist(), "rows sum to",
          np.round(prob.sum(1), 5).tolist())


if __name__ == "__main__":
    main()
