#!/usr/bin/env bash
# Everything issue 18 asks of the GPU machine, in one call (docs/gpu.md): set up PyCUDA from
# the carried .gpu bundle, compile the kernels, check the new kernels, benchmark every target
# against PyTorch, run the whole -m gpu suite, the README's main job with --gpu, and a
# determinism check; every result goes to $OUT as a file, with summary.md at the end.
#
#   bash benchmarks/gpu/device_run.sh            (from the repository root, .gpu carried)
#
# Each step has its own time limit, and the run keeps to a budget (DEVICE_RUN_BUDGET seconds,
# default 500) so that a hang cannot use up the device time: a step that would not fit is
# skipped and said so.  Steps are ordered by what matters most if time runs short.
# SMALL=1 runs the same steps on tiny shapes (a smoke test of this script).
set -u
OUT=${OUT:-/tmp/device_run_out}
mkdir -p "$OUT"
BUDGET=${DEVICE_RUN_BUDGET:-500}
START=$(date +%s)
STATUS="$OUT/steps.tsv"
: > "$STATUS"
export CAFFE_LITE_CACHE_DIR=${CAFFE_LITE_CACHE_DIR:-/tmp/caffe-lite-kernels}
export CAFFE_LITE_SHARED=${CAFFE_LITE_SHARED:-$PWD/.gpu/shared}
SMALL=${SMALL:-0}
# EMULATOR=1 (development machines, no GPU): the same steps on tests/gpu_emu's CPU emulator of
# the kernels, on tiny shapes; setup and install are skipped.
EMULATOR=${EMULATOR:-0}
if [ "$EMULATOR" = 1 ]; then
  SMALL=1
  site=$(mktemp -d)
  printf 'import gpu_emu_plugin\ngpu_emu_plugin.install()\n' > "$site/sitecustomize.py"
  export PYTHONPATH="$site:$PWD/tests/gpu_emu:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  export CAFFE_LITE_SHARED=${CAFFE_LITE_SHARED_EMU:-$PWD/../shared}
fi

# step NAME SECONDS COMMAND...: run with a limit of min(SECONDS, what the budget has left),
# output to $OUT/NAME.log, status (ok / failed rc / timeout / skipped) to steps.tsv.
step() {
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) - 10 ))
  if [ "$left" -lt 20 ]; then
    printf '%s\tskipped\tno time left in the budget\t0\n' "$name" >> "$STATUS"
    echo "== $name: skipped (budget)"; return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s)"
  local t0=$(date +%s)
  timeout -k 5 "$limit" bash -c "$*" > "$OUT/$name.log" 2>&1
  local rc=$? took=$(( $(date +%s) - t0 ))
  local what=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then what=timeout; elif [ "$rc" -ne 0 ]; then what="failed rc=$rc"; fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$what" "limit ${limit}s" "$took" >> "$STATUS"
  echo "   $what in ${took}s"; tail -n 3 "$OUT/$name.log"
  return 0
}

{ date -u; nvidia-smi 2>&1 | head -n 15; python3 --version; cat .gpu/commit 2>/dev/null
  nproc; free -g | head -n 2; } > "$OUT/environment.txt" 2>&1

# 1. PyCUDA from the bundle (and lmdb for the main job), caffe-lite itself
if [ "$EMULATOR" = 1 ]; then
  printf 'setup\tskipped\temulator\t0\ninstall\tskipped\temulator\t0\n' >> "$STATUS"
else
step setup 90 "source .gpu/setup-on-device.sh && python3 -m pip install -q --no-index --no-deps --target /tmp/gpusite .gpu/wheels/*.whl; python3 -c 'import pycuda, lmdb, torch; print(pycuda.VERSION, lmdb.__version__, torch.__version__)'"
export PYTHONPATH=/tmp/gpusite${PYTHONPATH:+:$PYTHONPATH}
step install 90 "python3 -m pip install -q --no-deps --no-build-isolation -e . && python3 -c 'import caffe_lite; print(caffe_lite.__file__)'"
fi

# 2. every kernel compiled for this device, in parallel (warms the cache the runs use)
[ "$EMULATOR" = 1 ] || step compile 150 "python3 benchmarks/gpu/device_checks.py compile --out $OUT/compile.json"

# 3. the new kernels first: fused BatchNorm, depthwise, weight gradient, host work
step tests_new 150 "python3 -m pytest -q -p no:cacheprovider -m gpu -x --timeout 120 tests/test_gpu_fusion.py tests/test_gpu_depthwise.py tests/test_gpu_conv.py tests/test_gpu_host.py --junitxml=$OUT/tests_new.xml"

# 4. every target of the issue, one run (alternating with PyTorch), with the layer profile
if [ "$SMALL" = 1 ]; then
  step bench 240 "python3 benchmarks/gpu/bench_gpu.py --small --profile --out $OUT/bench_gpu.json"
else
  step bench 240 "python3 benchmarks/gpu/bench_gpu.py --profile --torch-profile --out $OUT/bench_gpu.json"
fi

# 5. the whole GPU suite: every test module with gpu-marked tests (several workers, one GPU);
# on the emulator, the modules tests/test_gpu_emulated.py runs (others start GPU subprocesses)
if [ "$EMULATOR" = 1 ]; then
  GPU_FILES=$(python3 -c "import sys; sys.path.insert(0, 'tests'); import test_gpu_emulated as t; print(' '.join(t.GPU_TESTS))")
else
  GPU_FILES=$(grep -l "mark.gpu" tests/test_*.py | tr '\n' ' ')
fi
step tests_gpu 200 "python3 -m pytest -q -p no:cacheprovider -m gpu -n $([ "$EMULATOR" = 1 ] && echo 2 || echo 8) --timeout 300 $GPU_FILES --junitxml=$OUT/tests_gpu.xml"

# 6. the README's main job on the GPU
if [ "$SMALL" = 1 ]; then
  step main_job 120 "python3 examples/mnist/prune_finetune.py --gpu --shared $CAFFE_LITE_SHARED --workdir /tmp/mnist_gpu --train-iters 20 --finetune-iters 20 --steps 1 --every 10 --test-batches 2 --quantize-iters 5"
else
  step main_job 150 "python3 examples/mnist/prune_finetune.py --gpu --shared $CAFFE_LITE_SHARED --workdir /tmp/mnist_gpu"
fi

# 7. bit-determinism across processes, and the distance to the CPU path
step determinism 90 "python3 benchmarks/gpu/device_checks.py determinism --out $OUT/determinism.json $([ "$SMALL" = 1 ] && echo --small)"

python3 benchmarks/gpu/device_checks.py summary --dir "$OUT" > "$OUT/summary.md" 2>&1
cat "$OUT/summary.md"
echo "total $(( $(date +%s) - START ))s; results in $OUT"
