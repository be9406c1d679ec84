"""Train BVLC's LeNet on MNIST fed by a Python data layer (mnist_layers.MnistData), and,
with --data both, by Caffe's LMDB Data layer too, from the same seed: the two runs see the
same batches, so they end with the same weights, bit for bit.

    python3 examples/python_layers/train_lenet.py                       # 2,000 iterations
    python3 examples/python_layers/train_lenet.py --data both --iters 200 --test-iters 0

The net is ../shared/models/bvlc_mnist/lenet_train_test.prototxt with its two Data layers
replaced by Python layers of the same name (and the solver lenet_solver.prototxt, seed 1701,
as examples/mnist does); everything else is unchanged."""
import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)  # mnist_layers, as a pycaffe user's PYTHONPATH would have it

from caffe_lite import layers as L  # noqa: E402
from caffe_lite.commands.caffe_tools import override_sources  # noqa: E402
from caffe_lite.data.convert import convert_mnist  # noqa: E402
from caffe_lite.io import load_message, upgrade_net  # noqa: E402
from caffe_lite.proto import caffe_pb2  # noqa: E402
from caffe_lite.solvers import SGDSolver, load_solver_param  # noqa: E402

SHARED = os.environ.get("CAFFE_LITE_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
MODELS = os.path.join(SHARED, "models", "bvlc_mnist")
MNIST = os.path.join(SHARED, "data", "mnist")
TRAIN = ("train5k-images-idx3-ubyte.gz", "train5k-labels-idx1-ubyte.gz")
TEST = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def lenet(data, workdir, testing=True):
    """lenet_train_test.prototxt with Data layers over LMDBs ('lmdb') or Python layers (when
    not testing, the test net reads the training images: it is built but never run)."""
    net, _ = load_message(os.path.join(MODELS, "lenet_train_test.prototxt"),
                          caffe_pb2.NetParameter)
    upgrade_net(net)
    if data == "lmdb":
        train_db = make_lmdb(workdir, "train_lmdb", TRAIN)
        test_db = make_lmdb(workdir, "test_lmdb", TEST) if testing else train_db
        override_sources(net, train_db, test_db)
        return net
    for layer in net.layer:
        if layer.type == "Data":
            phase = layer.include[0].phase
            files = TRAIN if phase == caffe_pb2.TRAIN else TEST
            python = python_layer_param(phase, files, layer.data_param.batch_size,
                                        layer.transform_param.scale)
            layer.type = "Python"
            layer.ClearField("data_param")
            layer.ClearField("transform_param")
            layer.python_param.CopyFrom(python.python_param)
    return net


def make_lmdb(workdir, name, files):
    db = os.path.join(workdir, name)
    if not os.path.exists(db):
        convert_mnist(*(os.path.join(MNIST, f) for f in files), db)
    return db


def python_layer_param(phase, files, batch_size, scale):
    images, labels = (os.path.join(MNIST, f) for f in files)
    param_str = repr({"images": images, "labels": labels, "batch_size": batch_size,
                      "scale": scale})
    data, _ = L.Python(module="mnist_layers", layer="MnistData", param_str=param_str, ntop=2,
                       include=dict(phase=phase))
    return data.to_proto().layer[0]


def train(data, iters, test_iters, workdir, seed=1701):
    param = load_solver_param(os.path.join(MODELS, "lenet_solver.prototxt"))
    param.ClearField("net")
    param.net_param.CopyFrom(lenet(data, workdir, testing=bool(test_iters)))
    param.max_iter = iters
    param.random_seed = seed
    param.display = 0
    param.snapshot = 0
    param.snapshot_after_train = False
    if test_iters:
        param.test_interval, param.test_iter[0] = iters, test_iters
    else:
        param.test_interval = 0
        param.ClearField("test_iter")
        param.test_initialization = False
    solver = SGDSolver(param)
    solver.solve()
    model = os.path.join(workdir, f"lenet_{data}_iter_{iters}.caffemodel")
    solver.net.save(model)
    result = {"data": data, "iters": iters, "model": model,
              "loss": float(solver.smoothed_loss)}
    if solver.test_results:
        result["test_accuracy"] = solver.test_results[-1][2]["accuracy"]
        result["test_images"] = test_iters * 100
    for net in [solver.net] + solver.test_nets:
        net.close()
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=["python", "lmdb", "both"], default="python")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--test-iters", type=int, default=100,
                    help="test batches of 100 after training (100: all 10k images; 0: none)")
    ap.add_argument("--workdir", default=None, help="where LMDBs and models go (a temp dir)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="lenet_python_layer_")
    runs = ["python", "lmdb"] if args.data == "both" else [args.data]
    results = [train(d, args.iters, args.test_iters, workdir) for d in runs]
    if args.json:
        print(json.dumps(results))
        return
    for r in results:
        acc = f", test accuracy {100 * r['test_accuracy']:.2f} % on {r['test_images']} images" \
            if "test_accuracy" in r else ""
        print(f"{r['data']:>6}: {r['iters']} iterations, loss {r['loss']:.4f}{acc} "
              f"({r['model']})")


if __name__ == "__main__":
    main()
