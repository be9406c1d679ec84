"""Structured pruning criteria side by side: accuracy against parameter and FLOP reduction.

    python -m benchmarks.pruning_criteria [--workdir runs/criteria] [--finetune 300]
        [--models lenet,mobilenet] [--quick]

For LeNet (BVLC's lenet_train_test.prototxt) and a small MobileNet-v1 (Caffe's form: depthwise
Convolution with group = channels, BatchNorm + Scale + ReLU; width 0.25, one 512-block instead
of five, 28x28 input), both trained on the 5,000-image MNIST subset in ../shared/data/mnist:

  1. train the dense model (seeded; cached in the work dir);
  2. for every criterion (l1-filter, l2-filter, fpgm, taylor, apoz, bn-scale; bn-scale needs
     BatchNorm + Scale, so MobileNet only) and every ratio (30 / 50 / 70 % of every prunable
     layer's filters), prune a copy of the dense model, fine-tune it the same number of
     iterations at the same learning rate, and score it on all 10,000 test images;
  3. the same with automatic per-layer ratios (l1-filter scores, one global ranking) for
     target_flops 0.7 / 0.5 / 0.3, and, for MobileNet, bn-scale on a model trained with
     network slimming's L1 penalty on gamma;
  4. controls: the dense model, and the dense model fine-tuned with the same budget.

MobileNet's BatchNorm statistics are re-estimated (20 training batches,
netutil.recalibrate_batchnorm) before every score, dense and control included: after pruning
the dense model's statistics describe channels that are gone, and even in plain training
Caffe's moving average (0.999) lags the weights (the dense model scores 94.78 % with its own
statistics and 96.88 % with re-estimated ones).

Parameters and FLOPs are those of the thinned net (ratios.thinned_cost: what `caffe-lite
thin` leaves); wall times are the pruning step (scores, including the taylor / apoz data
batches) and the fine-tuning.  Writes benchmarks/results/pruning-criteria-<date>.json, a
Markdown table on stdout and (with matplotlib) docs/pruning-criteria.png.  The runs are kept
modest (a few hundred fine-tuning iterations) because the machine is shared."""
import argparse
import datetime
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import caffe_lite  # noqa: E402
from caffe_lite.io import load_message, upgrade_net  # noqa: E402
from caffe_lite.proto import caffe_pb2  # noqa: E402
from caffe_lite.pruning import make_plan, prune_net, ratios  # noqa: E402
from caffe_lite.pruning.netutil import recalibrate_batchnorm  # noqa: E402
from caffe_lite.pruning.slimming import BNScalePenalty  # noqa: E402
from caffe_lite.solvers import SGDSolver  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("CAFFE_LITE_SHARED", ROOT.parent / "shared"))
RATIOS = (0.3, 0.5, 0.7)
FLOP_TARGETS = (0.7, 0.5, 0.3)
CRITERIA = ("l1-filter", "l2-filter", "fpgm", "taylor", "apoz", "bn-scale")


# --- data and nets ------------------------------------------------------------------------------
def mnist_lmdbs(workdir):
    from caffe_lite.data.convert import convert_mnist
    mnist = SHARED / "data" / "mnist"
    out = {}
    for split, prefix in (("train", "train5k"), ("test", "t10k")):
        db = workdir / f"mnist_{split}_lmdb"
        if not (db / "data.mdb").exists():
            convert_mnist(str(mnist / f"{prefix}-images-idx3-ubyte.gz"),
                          str(mnist / f"{prefix}-labels-idx1-ubyte.gz"), str(db))
        out[split] = str(db)
    return out


def _data_layers(dbs, train_batch=64, test_batch=100):
    layers = []
    for phase, src, batch in ((caffe_pb2.TRAIN, dbs["train"], train_batch),
                              (caffe_pb2.TEST, dbs["test"], test_batch)):
        lp = caffe_pb2.LayerParameter(name="mnist", type="Data")
        lp.top.extend(["data", "label"])
        lp.include.add().phase = phase
        lp.transform_param.scale = 0.00390625
        lp.data_param.source = src
        lp.data_param.batch_size = batch
        lp.data_param.backend = caffe_pb2.DataParameter.LMDB
        layers.append(lp)
    return layers


def lenet(dbs):
    net, _ = load_message(str(SHARED / "models" / "bvlc_mnist" / "lenet_train_test.prototxt"),
                          caffe_pb2.NetParameter)
    upgrade_net(net)
    out = caffe_pb2.NetParameter(name=net.name)
    out.layer.extend(_data_layers(dbs))
    out.layer.extend(lp for lp in net.layer if lp.type != "Data")
    return out


def _conv(name, bottom, n, k, stride=1, group=1):
    lp = caffe_pb2.LayerParameter(name=name, type="Convolution")
    lp.bottom.append(bottom)
    lp.top.append(name)
    p = lp.convolution_param
    p.num_output, p.group, p.bias_term = n, group, False
    p.kernel_size.append(k)
    p.stride.append(stride)
    p.pad.append(k // 2)
    p.weight_filler.type = "msra"
    return lp


def _bn_scale_relu(net, name, relu):
    bn = net.layer.add(name=f"{name}/bn", type="BatchNorm", bottom=[name], top=[name])
    for _ in range(3):
        bn.param.add(lr_mult=0, decay_mult=0)
    sc = net.layer.add(name=f"{name}/scale", type="Scale", bottom=[name], top=[name])
    sc.scale_param.bias_term = True
    sc.scale_param.filler.value = 1
    net.layer.add(name=relu, type="ReLU", bottom=[name], top=[name])


def mobilenet_small(dbs, width=0.25):
    """MobileNet-v1's pattern (conv1, then depthwise 3x3 + pointwise 1x1 blocks, BatchNorm +
    Scale + ReLU after each) at width 0.25 with one 512-block, for 28x28 input."""
    blocks = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (1024, 2),
              (1024, 1)]
    net = caffe_pb2.NetParameter(name="MobileNetV1-small")
    net.layer.extend(_data_layers(dbs))
    c = int(32 * width)
    net.layer.append(_conv("conv1", "data", c, 3))
    _bn_scale_relu(net, "conv1", "relu1")
    bottom = "conv1"
    for i, (n, stride) in enumerate(blocks):
        tag = f"conv{i + 2}"
        net.layer.append(_conv(f"{tag}/dw", bottom, c, 3, stride, group=c))
        _bn_scale_relu(net, f"{tag}/dw", f"relu{i + 2}/dw")
        c = int(n * width)
        net.layer.append(_conv(f"{tag}/sep", f"{tag}/dw", c, 1))
        _bn_scale_relu(net, f"{tag}/sep", f"relu{i + 2}/sep")
        bottom = f"{tag}/sep"
    pool = net.layer.add(name="pool6", type="Pooling", bottom=[bottom], top=["pool6"])
    pool.pooling_param.pool = caffe_pb2.PoolingParameter.AVE
    pool.pooling_param.global_pooling = True
    fc = net.layer.add(name="fc7", type="InnerProduct", bottom=["pool6"], top=["fc7"])
    fc.inner_product_param.num_output = 10
    fc.inner_product_param.weight_filler.type = "msra"
    net.layer.add(name="loss", type="SoftmaxWithLoss", bottom=["fc7", "label"], top=["loss"])
    acc = net.layer.add(name="accuracy", type="Accuracy", bottom=["fc7", "label"],
                        top=["accuracy"])
    acc.include.add().phase = caffe_pb2.TEST
    return net


MODELS = {
    "lenet": {"net": lenet, "train_iters": 2000, "base_lr": 0.01, "finetune_lr": 0.005,
              "weight_decay": 5e-4},
    "mobilenet": {"net": mobilenet_small, "train_iters": 2000, "base_lr": 0.05,
                  "finetune_lr": 0.01, "weight_decay": 4e-5},
}


def solver_param(net, iters, lr, decay, seed=1701):
    p = caffe_pb2.SolverParameter()
    p.net_param.CopyFrom(net)
    p.test_iter.append(100)                 # 100 x 100 = the 10,000 test images
    p.test_interval = 10 ** 9
    p.test_initialization = False
    p.base_lr, p.momentum, p.weight_decay = lr, 0.9, decay
    p.lr_policy, p.gamma, p.power = "inv", 1e-4, 0.75
    p.max_iter, p.display, p.snapshot, p.snapshot_after_train = iters, 0, 0, False
    p.random_seed = seed
    p.solver_mode = caffe_pb2.SolverParameter.CPU
    return p


# --- runs ---------------------------------------------------------------------------------------
def dense_weights(name, cfg, net, workdir, slimming=0.0):
    tag = f"{name}_dense" + ("_slim" if slimming else "")
    path = workdir / f"{tag}.caffemodel"
    if path.exists():
        return str(path), None
    solver = SGDSolver(solver_param(net, cfg["train_iters"], cfg["base_lr"],
                                    cfg["weight_decay"]))
    if slimming:
        BNScalePenalty(solver, slimming).attach()
    t = time.perf_counter()
    solver.solve()
    seconds = time.perf_counter() - t
    solver.net.save(str(path))
    print(f"  trained {tag}: {seconds:.0f} s", flush=True)
    return str(path), seconds


def one_run(cfg, net, weights, finetune, method, sparsity=None, target_flops=None,
            recalibrate=0):
    solver = SGDSolver(solver_param(net, finetune, cfg["finetune_lr"], cfg["weight_decay"]))
    solver.net.copy_from(weights)
    result = {}
    if method:
        t = time.perf_counter()
        plan = make_plan(solver.net, method=method, sparsity=sparsity,
                         target_flops=target_flops)
        prune_net(solver.net, plan=plan, data=solver.net)
        solver.mask_history()
        result["prune_s"] = time.perf_counter() - t
        result["acc_pruned"] = score(solver, recalibrate)
    (p0, f0), (p1, f1) = ratios.thinned_cost(solver.net)
    t = time.perf_counter()
    solver.step(finetune)
    result.update(finetune_s=time.perf_counter() - t, acc=score(solver, recalibrate),
                  params=p1, params_dense=p0, flops=f1, flops_dense=f0)
    return result


def score(solver, recalibrate):
    """Test accuracy on the 10,000 images, after re-estimating the BatchNorm statistics over
    `recalibrate` training batches (when > 0)."""
    if recalibrate:
        recalibrate_batchnorm(solver.net, recalibrate)
    return solver.test(0)["accuracy"]


def run(args):
    caffe_lite.set_mode_cpu()
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dbs = mnist_lmdbs(workdir)
    rows = []
    for name in args.models.split(","):
        cache = workdir / f"rows_{name}.json"
        if args.reuse and cache.exists():
            rows += json.loads(cache.read_text())
            continue
        first = len(rows)
        cfg = MODELS[name]
        net = cfg["net"](dbs)
        weights, _ = dense_weights(name, cfg, net, workdir)
        recalibrate = args.recalibrate if name == "mobilenet" else 0
        dense = one_run(cfg, net, weights, 0, None, recalibrate=recalibrate)
        control = one_run(cfg, net, weights, args.finetune, None, recalibrate=recalibrate)
        rows.append(dict(model=name, criterion="dense", ratio=0.0, **dense))
        rows.append(dict(model=name, criterion="dense + fine-tuning", ratio=0.0, **control))
        print(f"{name}: dense {dense['acc']:.4f}, +{args.finetune} iterations "
              f"{control['acc']:.4f}", flush=True)
        jobs = [(c, r, None, weights) for c in CRITERIA for r in RATIOS
                if not (c == "bn-scale" and name == "lenet")]
        jobs += [("l1-filter, auto ratios", None, f, weights) for f in FLOP_TARGETS]
        if name == "mobilenet" and args.slimming:
            slim, _ = dense_weights(name, cfg, net, workdir, slimming=args.slimming)
            s = one_run(cfg, net, slim, 0, None, recalibrate=recalibrate)
            rows.append(dict(model=name, criterion="dense, slimming-trained", ratio=0.0, **s))
            jobs += [("bn-scale, slimming-trained", r, None, slim) for r in RATIOS]
        if args.quick:
            jobs = jobs[::4]
        for label, ratio, target, w in jobs:
            method = label.split(",")[0]
            r = one_run(cfg, net, w, args.finetune, method, ratio, target, recalibrate)
            rows.append(dict(model=name, criterion=label, ratio=ratio or 0.0,
                             target_flops=target, **r))
            print(f"  {label:<28} {ratio or target:>4}: params "
                  f"{r['params'] / r['params_dense']:.3f} FLOPs {r['flops'] / r['flops_dense']:.3f} acc {r['acc_pruned']:.4f} -> "
                  f"{r['acc']:.4f} ({r['prune_s']:.1f} s + {r['finetune_s']:.0f} s)", flush=True)
        cache.write_text(json.dumps(rows[first:]))
    return rows


# --- output -------------------------------------------------------------------------------------
def table(rows):
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        ctl = next(r for r in mine if r["criterion"] == "dense + fine-tuning")
        lines += [f"\n**{model}** (dense: {mine[0]['params_dense']:,} parameters, "
                  f"{mine[0]['flops_dense'] / 1e6:.2f} MFLOPs per image)\n",
                  "| criterion | filters pruned | params left | FLOPs left | accuracy, pruned | "
                  "accuracy, fine-tuned | vs control | prune time | fine-tune time |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in mine:
            what = f"{r['ratio']:.0%}" if r.get("ratio") else \
                (f"auto, FLOPs {r['target_flops']:.0%}" if r.get("target_flops") else "-")
            pruned = f"{100 * r['acc_pruned']:.2f} %" if "acc_pruned" in r else "-"
            delta = f"{100 * (r['acc'] - ctl['acc']):+.2f}" if "acc_pruned" in r else "-"
            ptime = f"{r['prune_s']:.2f} s" if "prune_s" in r else "-"
            ftime = f"{r['finetune_s']:.0f} s" if r["finetune_s"] >= 0.5 else "-"
            lines.append(f"| {r['criterion']} | {what} | {r['params'] / r['params_dense']:.1%} | "
                         f"{r['flops'] / r['flops_dense']:.1%} | {pruned} | "
                         f"{100 * r['acc']:.2f} % | {delta} | {ptime} | {ftime} |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = list(dict.fromkeys(r["model"] for r in rows))
    every = [c for c in dict.fromkeys(r["criterion"] for r in rows) if "dense" not in c]
    colour = {c: f"C{i}" for i, c in enumerate(every)}
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4.2 * len(models)), dpi=100,
                             squeeze=False)
    for i, model in enumerate(models):
        mine = [r for r in rows if r["model"] == model]
        ctl = next(r for r in mine if r["criterion"] == "dense + fine-tuning")
        labels = [c for c in dict.fromkeys(r["criterion"] for r in mine) if "dense" not in c]
        for j, (key, base, name) in enumerate((("params", "params_dense", "parameters"),
                                               ("flops", "flops_dense", "FLOPs"))):
            ax = axes[i][j]
            for label in labels:
                pts = sorted((r[key] / r[base], 100 * r["acc"]) for r in mine
                             if r["criterion"] == label)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label,
                        color=colour[label])
            ax.axhline(100 * ctl["acc"], color="grey", ls="--", lw=1,
                       label="dense + same fine-tuning")
            ax.set_xlabel(f"fraction of {name} left (thinned)")
            ax.set_ylabel("test accuracy (%), 10k MNIST")
            ax.set_title(f"{model}: accuracy vs {name}")
            ax.grid(True, alpha=0.3)
            ax.invert_xaxis()
        axes[i][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="runs/criteria")
    p.add_argument("--models", default="lenet,mobilenet")
    p.add_argument("--finetune", type=int, default=300,
                   help="fine-tuning iterations after pruning, the same for every run")
    p.add_argument("--slimming", type=float, default=1e-4,
                   help="MobileNet: also train with this L1 penalty on gamma (0: skip)")
    p.add_argument("--recalibrate", type=int, default=20,
                   help="MobileNet: before every score, re-estimate the BatchNorm statistics "
                        "over this many training batches (netutil.recalibrate_batchnorm; 0: "
                        "keep the moving averages)")
    p.add_argument("--reuse", action="store_true",
                   help="reuse a model's rows from an earlier run in the work dir")
    p.add_argument("--quick", action="store_true", help="a quarter of the runs (a smoke test)")
    p.add_argument("--png", default=str(ROOT / "docs" / "pruning-criteria.png"))
    p.add_argument("--json", default=None)
    p.add_argument("--from-json", default=None,
                   help="only print the table and draw the plot of an earlier run's JSON")
    args = p.parse_args(argv)
    if args.from_json:
        rows = json.loads(pathlib.Path(args.from_json).read_text())["rows"]
        print(table(rows))
        plot(rows, args.png)
        return 0
    from benchmarks.machine import describe
    started = datetime.datetime.now().isoformat(timespec="seconds")
    rows = run(args)
    out = args.json or str(ROOT / "benchmarks" / "results" /
                           f"pruning-criteria-{started[:10]}.json")
    doc = {"started": started, "machine": describe(), "finetune_iters": args.finetune,
           "numpy": np.__version__, "rows": rows}
    pathlib.Path(out).write_text(json.dumps(doc, indent=1))
    print(table(rows))
    try:
        plot(rows, args.png)
        print(f"wrote {out} and {args.png}")
    except ImportError:
        print(f"wrote {out} (no matplotlib: no plot)")


if __name__ == "__main__":
    sys.exit(main())
