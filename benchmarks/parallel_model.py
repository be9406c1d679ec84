"""The communication cost model of docs/distributed.md, as arithmetic that can be rerun:

    python -m benchmarks.parallel_model            prints the tables of the doc (markdown)

Per training step every rank sends and receives 2 (N - 1) / N * S bytes in an allreduce of S
gradient bytes (a ring, or recursive halving + doubling: the same volume), plus a latency term
per bucket: 2 (N - 1) alpha for a flat ring, 2 log2(N) alpha for halving + doubling (what MPI
libraries use for many ranks; NCCL's trees are similar).  Efficiency is compute / (compute +
exposed communication): without overlap all of it is exposed; with the allreduce started
during backward, at best only what does not fit under backward (taken as 2/3 of the step) and
at least the last bucket's share.

The gradient sizes are the learnable parameters of the real prototxts (float32); the per-rank
step times are caffe-lite's on an H200 (docs/gpu.md; AlexNet's is an estimate, see
PER_RANK_STEP_S)."""
import math

# learnable parameters (every blob the solver reduces; BatchNorm's statistics included), as
# caffe-lite builds the prototxts in ../shared/models (tests/test_parallel.py checks LeNet's and
# MobileNet-v1's; AlexNet's is BVLC's well-known 60,965,224)
PARAMS = {"LeNet": 431_080, "MobileNet-v1": 4_253_891, "AlexNet": 60_965_224}
# buckets of 4 MiB (parallel/buckets.py; a parameter blob is never split, so AlexNet's fc6 and
# fc7 weights are buckets of their own)
BUCKETS = {"LeNet": 1, "MobileNet-v1": 4, "AlexNet": 6}
# one rank's training step, batch 64 per rank, caffe-lite on an H200 (docs/gpu.md: MobileNet-v1
# 43.4 ms measured; LeNet forward + backward 2.39 ms measured, + the update; AlexNet NOT
# measured: 3 x 1.45 GFLOP per image x 64 images at an assumed 25 TFLOP/s)
PER_RANK_STEP_S = {"LeNet": 2.5e-3, "MobileNet-v1": 43.4e-3, "AlexNet": 11.1e-3}
# prunable weights (Convolution / InnerProduct), and the fraction Han et al. kept (LeNet-5 8 %,
# AlexNet 11 %): pruned weights send only their live entries (parallel/buckets.py)
PRUNABLE = {"LeNet": 430_500, "AlexNet": 60_954_656}
HAN_DENSITY = {"LeNet": 0.08, "AlexNet": 0.11}
LINKS_GBIT = (25, 100)
RANKS = (8, 64, 512)
ALPHA_S = 5e-6          # per-message latency of the network (RDMA class; TCP is several times)
BACKWARD_SHARE = 2 / 3  # of a training step


def gradient_bytes(model, pruned=False):
    if pruned:  # the live entries of the pruned weights, and every other parameter
        return 4 * (HAN_DENSITY[model] * PRUNABLE[model] + PARAMS[model] - PRUNABLE[model])
    return 4 * PARAMS[model]


def ring_bytes(model, n, pruned=False):
    """Bytes each rank sends (and receives) per step."""
    return 2 * (n - 1) / n * gradient_bytes(model, pruned)


def allreduce_s(model, n, gbit, halving_doubling=True, pruned=False):
    latency = (2 * math.log2(n) if halving_doubling else 2 * (n - 1)) * ALPHA_S
    return ring_bytes(model, n, pruned) / (gbit * 1e9 / 8) + BUCKETS[model] * latency


def efficiency(model, n, gbit, overlap, pruned=False):
    compute = PER_RANK_STEP_S[model]
    comm = allreduce_s(model, n, gbit, pruned=pruned)
    if overlap:
        exposed = max(comm - BACKWARD_SHARE * compute, comm / BUCKETS[model])
    else:
        exposed = comm
    return compute / (compute + exposed)


def tables():
    """The doc's three tables (markdown): bytes, dense efficiency, pruned efficiency."""
    lines = ["| model | gradient MB | bytes per rank per step, N = 8 / 64 / 512 |",
             "| --- | ---: | --- |"]
    for m in PARAMS:
        lines.append(f"| {m} | {gradient_bytes(m) / 1e6:.2f} | " +
                     " / ".join(f"{ring_bytes(m, n) / 1e6:.2f} MB" for n in RANKS) + " |")
    lines += ["", "| model | link | allreduce ms, N = 8 / 64 / 512 | efficiency, no overlap | "
              "efficiency, overlapped |", "| --- | --- | --- | --- | --- |"]
    for m in PARAMS:
        for g in LINKS_GBIT:
            lines.append(
                f"| {m} ({PER_RANK_STEP_S[m] * 1e3:.1f} ms/step) | {g} Gb/s | " +
                " / ".join(f"{allreduce_s(m, n, g) * 1e3:.2f}" for n in RANKS) + " | " +
                " / ".join(f"{efficiency(m, n, g, False):.0%}" for n in RANKS) + " | " +
                " / ".join(f"{efficiency(m, n, g, True):.0%}" for n in RANKS) + " |")
    lines += ["", "| pruned model (Han et al.'s density) | link | gradient MB sent | allreduce ms, "
              "N = 8 / 64 / 512 | efficiency, overlapped |", "| --- | --- | ---: | --- | --- |"]
    for m in HAN_DENSITY:
        for g in LINKS_GBIT:
            lines.append(
                f"| {m} ({HAN_DENSITY[m]:.0%} of weights) | {g} Gb/s | "
                f"{gradient_bytes(m, True) / 1e6:.2f} | " +
                " / ".join(f"{allreduce_s(m, n, g, pruned=True) * 1e3:.2f}" for n in RANKS) +
                " | " + " / ".join(f"{efficiency(m, n, g, True, True):.0%}" for n in RANKS) +
                " |")
    return ["\n".join(t.strip("\n").splitlines()) for t in "\n".join(lines).split("\n\n")]


if __name__ == "__main__":
    print("\n\n".join(tables()))
