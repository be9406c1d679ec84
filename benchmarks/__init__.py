"""caffe-lite's CPU benchmarks against PyTorch: `python -m benchmarks --help`."""
