"""numba kernels of the CPU layers, one module per family (STYLE.md A1); reached through
`layers.jit.kernels(family)`, which returns None without numba or with CAFFE_LITE_JIT=0."""
