"""CLI verbs, one module per family; importing registers them with caffe_lite.cli."""
from . import caffe_tools, data_tools, info, prune_tools  # noqa: F401
