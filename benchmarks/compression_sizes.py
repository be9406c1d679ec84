"""Model file sizes after Deep Compression's pipeline (pruning, weight sharing, Huffman coding).

    python -m benchmarks.compression_sizes [--only lenet5,lenet300,alexnet] [--workdir DIR]

* lenet5: examples/mnist/prune_finetune.py as it runs by default (BVLC's LeNet trained 2,000
  iterations on the 5k MNIST subset, pruned gradually to Han et al.'s LeNet-5 profile while
  fine-tuning 2,000 iterations, weights shared conv 8 bits / fc 4 bits and fine-tuned 300
  iterations, compressed); accuracy on the 10k test set.
* lenet300: the same pipeline for LeNet-300-100 (examples/mnist/lenet_300_100_train_test
  .prototxt, Han et al.'s profile han_lenet_300_100.prototxt, fc 4 bits).
* alexnet: BVLC AlexNet's deploy net with random weights (Gaussian, the train_val fillers'
  standard deviations), pruned by magnitude to Han et al.'s per-layer profile (conv1-5,
  fc6-8 = 84/38/35/37/37/9/9/25 % remaining), shared conv 8 bits / fc 4 bits (the widths of
  the published AlexNet_compressed.net) and also conv 8 / fc 5 (the paper's); sizes only, no
  ImageNet.  Also what the same model takes in Deep Compression's published layout (4-bit
  relative indices, no Huffman coding).

Sizes are bytes of the files as written (the dense caffemodel is what Net.save writes).  Results
go to benchmarks/results/<date>-compression.json and a table on stdout."""
import argparse
import datetime
import importlib.util
import json
import os
import platform
import socket
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
EXAMPLE = os.path.join(REPO, "examples", "mnist", "prune_finetune.py")
MODELS = os.environ.get("CAFFE_LITE_MODELS", os.path.join(REPO, "..", "shared", "models"))

ALEXNET_PROFILE = {"conv1": 0.84, "conv2": 0.38, "conv3": 0.35, "conv4": 0.37, "conv5": 0.37,
                   "fc6": 0.09, "fc7": 0.09, "fc8": 0.25}
ALEXNET_STD = {"fc6": 0.005, "fc7": 0.005}          # train_val.prototxt's fillers; 0.01 else
ALEXNET_BIAS = {"conv2": 1.0, "conv4": 1.0, "conv5": 1.0, "fc6": 1.0, "fc7": 1.0}


def _example():
    spec = importlib.util.spec_from_file_location("prune_finetune", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def lenet5(workdir, shared):
    ex = _example()
    out = ex.main(["--shared", shared, "--workdir", os.path.join(workdir, "lenet5")])
    c = out["compressed"]
    return {"dense_accuracy": out["dense"], "pruned_accuracy": out["finetuned"],
            "quantized_accuracy": c["quantized"], "loaded_accuracy": c["loaded"],
            "bits": "conv=8,fc=4", "shared_values": c["values"], "sizes": c["sizes"],
            "ratio": c["sizes"]["dense"] / c["sizes"]["compressed"],
            "nonzeros": out["report"]["total"]["nonzeros"],
            "params": out["report"]["total"]["params"]}


def lenet300(workdir, shared, bits="fc=4", seed=1701):
    """LeNet-300-100 through the example's steps, with its own net and profile."""
    import gzip
    import caffe_lite
    from caffe_lite.compression import WeightSharing, compress
    from caffe_lite.io import load_message, upgrade_net
    from caffe_lite.commands.caffe_tools import override_sources
    from caffe_lite.proto import caffe_pb2
    from caffe_lite.pruning import GradualPruner, load_spec, sparsity_report
    from caffe_lite.solvers import SGDSolver
    ex = _example()
    caffe_lite.set_mode_cpu()
    work = os.path.join(workdir, "lenet300")
    os.makedirs(work, exist_ok=True)
    dbs = ex.prepare_data(shared, work)
    net, _ = load_message(os.path.join(REPO, "examples", "mnist",
                                       "lenet_300_100_train_test.prototxt"),
                          caffe_pb2.NetParameter)
    upgrade_net(net)
    override_sources(net, dbs["train"], dbs["test"])

    def solver(iters, lr, prefix):
        p = ex.solver_param(shared, dbs, iters, lr, seed, os.path.join(work, prefix))
        p.net_param.CopyFrom(net)
        return SGDSolver(p)

    s = solver(2000, 0.01, "dense")
    s.solve()
    acc_dense = ex.accuracy(s)
    dense_path = os.path.join(work, "dense.caffemodel")
    s.net.save(dense_path)
    s.net.close()
    s = solver(2000, 0.005, "pruned")
    s.net.copy_from(dense_path)
    spec = load_spec(os.path.join(REPO, "examples", "mnist", "han_lenet_300_100.prototxt"))
    GradualPruner(s, spec, gradual={"begin_iter": 0, "num_steps": 10, "frequency": 100}).attach()
    s.solve()
    acc_pruned = ex.accuracy(s)
    pruned_path = os.path.join(work, "pruned.caffemodel")
    s.net.save(pruned_path)
    rep = sparsity_report(s.net)
    s.net.close()
    s = solver(300, 1e-4, "quantized")
    s.net.copy_from(pruned_path)
    ws = WeightSharing(s, bits).attach()
    s.solve()
    acc_q = ex.accuracy(s)
    q_path = os.path.join(work, "quantized.caffemodel")
    c_path = os.path.join(work, "compressed.cmodel")
    s.net.save(q_path)
    compress(q_path, c_path)
    s.net.copy_from(c_path)
    acc_loaded = ex.accuracy(s)
    values = {n: b.size for n, b in ws.codebooks().items()}
    s.net.close()
    with open(pruned_path, "rb") as f:
        gz = len(gzip.compress(f.read(), 9))
    sizes = {"dense": os.path.getsize(dense_path), "pruned": os.path.getsize(pruned_path),
             "pruned_gzip": gz, "quantized": os.path.getsize(q_path),
             "compressed": os.path.getsize(c_path)}
    return {"dense_accuracy": acc_dense, "pruned_accuracy": acc_pruned,
            "quantized_accuracy": acc_q, "loaded_accuracy": acc_loaded, "bits": bits,
            "shared_values": values, "sizes": sizes,
            "ratio": sizes["dense"] / sizes["compressed"],
            "nonzeros": rep["total"]["nonzeros"], "params": rep["total"]["params"],
            "sparsity": {r["name"]: r["sparsity"] for r in rep["layers"]}}


def deep_compression_layout_bytes(net):
    """Bytes the net would take in Deep Compression's published layout (deepcompression.py):
    codebooks of 2^8 (conv) / 2^4 values, float32 biases, one byte (conv) or half a byte per
    entry for the codebook index, half a byte per entry for the 4-bit relative index, entries
    counting the padding ones."""
    from caffe_lite.compression import deepcompression, positions
    layers = deepcompression.layers_of(net)
    nz = []
    for _, layer, _ in layers:
        pos = np.flatnonzero(layer.blobs[0].cpu_data.ravel())
        _, n_pad = positions.histogram(pos, 4)
        nz.append(pos.size + n_pad)
    return deepcompression.expected_size(nz, layers)


def alexnet(seed=1701):
    import caffe_lite
    from caffe_lite.compression import format as F
    from caffe_lite.compression.quantize import quantize_net
    from caffe_lite.pruning import prune_net
    caffe_lite.set_mode_cpu()
    deploy = os.path.join(MODELS, "bvlc_alexnet", "deploy.prototxt")
    text = open(deploy).read().replace("dim: 10", "dim: 1", 1)
    rng = np.random.default_rng(seed)
    results = {}
    for bits in ("conv=8,fc=4", "conv=8,fc=5"):
        net = caffe_lite.Net(text, caffe_lite.TEST)
        for name, (w, b) in ((n, p) for n, p in net.params.items()):
            w.data[...] = rng.standard_normal(w.shape, np.float32) * ALEXNET_STD.get(name, 0.01)
            w.init_mask()
            b.data[...] = ALEXNET_BIAS.get(name, 0.0)
        dense_bytes = len(net.to_proto().SerializeToString())
        spec = "".join(f'layer {{ name: "{n}" sparsity: {1 - k:.2f} }} '
                       for n, k in ALEXNET_PROFILE.items())
        prune_net(net, spec)
        t = time.perf_counter()
        books = quantize_net(net, bits)
        t_q = time.perf_counter() - t
        t = time.perf_counter()
        data, stats = F.encode_net(net)
        t_c = time.perf_counter() - t
        t = time.perf_counter()
        _, arrays = F.decode_arrays(data)
        t_d = time.perf_counter() - t
        for lp, values in zip(_.layer, arrays):    # the file holds the quantised model
            for a, blob in zip(values, net.layer_dict[lp.name].blobs if values else []):
                assert np.array_equal(a, blob.cpu_data), lp.name
        live = {n: int(np.count_nonzero(net.params[n][0].cpu_data)) for n in ALEXNET_PROFILE}
        per_layer = {s.layer: s.nbytes for s in stats if s.index == 0}
        results[bits] = {
            "dense_caffemodel": dense_bytes, "compressed": len(data),
            "ratio": dense_bytes / len(data),
            "deep_compression_layout": deep_compression_layout_bytes(net),
            "live": live, "weight_bytes": per_layer,
            "bias_bytes": sum(s.nbytes for s in stats if s.index == 1),
            "shared_values": {n: b.size for n, b in books.items()},
            "seconds": {"quantize": t_q, "compress": t_c, "decompress": t_d}}
        net.close()
    return results


def _machine():
    import caffe_lite
    info = {"date": datetime.date.today().isoformat(), "host": socket.gethostname(),
            "python": platform.python_version(), "numpy": np.__version__,
            "caffe_lite": caffe_lite.__version__, "cpus": os.cpu_count(),
            "platform": platform.platform()}
    try:
        from benchmarks.machine import _lscpu
        info["cpu"] = _lscpu().get("Model name", "")
    except Exception:  # noqa: BLE001 - the description is optional
        pass
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="lenet5,lenet300,alexnet")
    p.add_argument("--workdir", default=os.path.join("runs", "compression"))
    p.add_argument("--shared", default=os.path.join(REPO, "..", "shared"))
    p.add_argument("--out", default=None, help="JSON file (default benchmarks/results/"
                                               "<date>-compression.json)")
    args = p.parse_args(argv)
    sys.path.insert(0, REPO)
    todo = [x for x in args.only.split(",") if x]
    res = {"machine": _machine()}
    for case in todo:
        t = time.perf_counter()
        if case == "lenet5":
            res[case] = lenet5(args.workdir, os.path.abspath(args.shared))
        elif case == "lenet300":
            res[case] = lenet300(args.workdir, os.path.abspath(args.shared))
        elif case == "alexnet":
            res[case] = alexnet()
        else:
            raise SystemExit(f"unknown case {case}")
        res[case + "_seconds"] = time.perf_counter() - t
    out = args.out or os.path.join(HERE, "results", f"{res['machine']['date']}-compression.json")
    with open(out, "w") as f:
        json.dump(res, f, indent=1, default=float)
    print()
    print(f"{'model':<28} {'dense bytes':>12} {'compressed':>11} {'ratio':>7}  accuracy")
    for case in ("lenet5", "lenet300"):
        if case in res:
            r = res[case]
            print(f"{case:<28} {r['sizes']['dense']:>12,d} {r['sizes']['compressed']:>11,d} "
                  f"{r['ratio']:6.1f}x  {100 * r['dense_accuracy']:.2f} % dense -> "
                  f"{100 * r['quantized_accuracy']:.2f} % ({r['bits']})")
    if "alexnet" in res:
        for bits, r in res["alexnet"].items():
            print(f"{'alexnet ' + bits:<28} {r['dense_caffemodel']:>12,d} "
                  f"{r['compressed']:>11,d} {r['ratio']:6.1f}x  (random weights; Deep "
                  f"Compression layout {r['deep_compression_layout']:,d} bytes)")
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main()
