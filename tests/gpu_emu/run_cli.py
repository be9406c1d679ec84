"""`caffe-lite ARGS` with the GPU path on the CPU emulator of the kernels (for tests that need a
fresh process): python tests/gpu_emu/run_cli.py train -solver S -gpu 0, with tests/gpu_emu and
the repository root on PYTHONPATH."""
import sys

import gpu_emu_plugin
from caffe_lite.cli import main

if __name__ == "__main__":
    gpu_emu_plugin.install()
    sys.exit(main(sys.argv[1:]))
