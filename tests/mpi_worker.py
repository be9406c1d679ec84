"""Run by tests/test_parallel.py under `mpirun -n N`: every check that needs several ranks, in
one launch (MPI start-up is slow).  argv: a JSON file of cases, an output directory.  Each
rank writes OUT/<case>_rank<r>.npz; the test compares them with one process.

Case kinds:
  "train": build the solver (after parallel.init(), so data layers are sharded), set the
           given masks, optionally attach gradual pruning, attach DataParallel, step;
           save weights, history and masks.
  "shards": build a TRAIN net and save the labels (record ids) of each batch its data layer
           reads.
  "mask_mismatch": rank 1 prunes one more weight before training: the ParallelError text.
  "diverge": rank 1 prunes one more weight mid-run (a pruning decision rank 0 did not make);
           save weights and masks after training (rank 0's decision must hold everywhere).
  "nccl": as "train", registered the way pycaffe's train.py registers caffe.NCCL.
  "drift": rank 1's weights change behind the solver's back; a snapshot follows."""
import json
import os
import sys

import numpy as np


def set_masks(solver, seed, live=0.6):
    """The same random masks on every rank (`live`: the fraction kept) on every prunable
    weight."""
    g = np.random.default_rng(seed)
    for blob in solver.net.learnable_params:
        if blob.has_mask:
            blob.mask = g.random(blob.shape) < live
            blob.apply_mask()


def save_solver(path, solver, dp=None):
    arrays = {} if dp is None else {"sent_bytes": np.array(dp.buckets.nbytes)}
    for i, b in enumerate(solver.net.learnable_params):
        arrays[f"w{i}"] = b.cpu_data
        if b.has_mask:
            arrays[f"m{i}"] = b.cpu_mask
    for i, h in enumerate(solver.history):
        arrays[f"h{i}"] = h
    np.savez(path, **arrays)


def feed(net, case):
    if case.get("memory"):
        z = np.load(case["memory"])
        net.set_input_arrays(z["x"], z["y"])


def run(case, out, rank):
    import caffe_lite
    from caffe_lite import parallel
    from caffe_lite.errors import ParallelError
    from caffe_lite.solvers import get_solver
    kind, name = case["kind"], case["name"]
    caffe_lite.set_random_seed(case.get("seed", 1))
    if kind == "shards":
        net = caffe_lite.Net(case["net"], caffe_lite.TRAIN)
        feed(net, case)
        labels = []
        for _ in range(case["batches"]):
            net.forward()
            labels.append(net.blobs[case["top"]].data.copy())
        np.savez(os.path.join(out, f"{name}_rank{rank}.npz"), labels=np.array(labels))
        net.close()
        return
    solver = get_solver(case["solver"])
    feed(solver.net, case)
    set_masks(solver, 7, case.get("live", 0.6))
    if kind == "mask_mismatch" and rank == 1:
        blob = solver.net.params["ip1"][0]
        blob.mask.reshape(-1)[np.flatnonzero(blob.cpu_mask)[0]] = 0
    if case.get("pruner"):
        from caffe_lite.pruning import GradualPruner
        GradualPruner(solver, case["pruner"]).attach()
    if kind == "nccl":  # pycaffe's train.py shape, registered after another callback
        solver.add_callback(lambda: None, lambda: None)
        dp = caffe_lite.NCCL(solver, caffe_lite.NCCL.new_uid())
        dp.bcast()
        solver.add_callback(dp)
        solver.net.after_backward(dp)
    else:
        dp = parallel.DataParallel(solver, bucket_bytes=case.get("bucket_bytes"),
                                   layer_wise=case.get("layer_wise"))
    if kind == "diverge" and rank == 1:
        class Rogue:
            def on_start(self, s):
                if s.iter == 2:
                    blob = s.net.params["ip1"][0]
                    blob.mask.reshape(-1)[np.flatnonzero(blob.cpu_mask)[:3]] = 0
                    blob.apply_mask()
        solver.callbacks.append(Rogue())
    try:
        solver.step(case["iters"])
    except ParallelError as exc:
        with open(os.path.join(out, f"{name}_rank{rank}.txt"), "w") as f:
            f.write(str(exc))
        return
    if kind == "drift":  # as if an MPI gave rank 1 other sums: the snapshot's check mends it
        class Drift:
            def on_start(self, s):
                if s.iter == case["iters"] + 1 and rank == 1:  # in the second step()
                    blob = s.net.params["ip2"][0]
                    blob.data.reshape(-1)[np.flatnonzero(blob.cpu_mask)[0]] += 1e-3
        solver.callbacks.append(Drift())
        solver.step(case["iters"])
        solver.snapshot()
    if kind == "nccl":
        assert solver.callbacks[0] is dp  # moved first: it sums before others see gradients
    save_solver(os.path.join(out, f"{name}_rank{rank}.npz"), solver, dp)
    assert dp.world.size == int(case["ranks"])
    solver.net.close()


def main():
    cases = json.load(open(sys.argv[1]))
    out = sys.argv[2]
    from caffe_lite import parallel
    world = parallel.init()
    with parallel.abort_on_error("mpi_worker", world):
        for case in cases:
            run(case, out, world.rank)
            world.comm.Barrier()


if __name__ == "__main__":
    main()
