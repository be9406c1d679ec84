"""CLI verbs, one module per family; importing registers them in commands.registry."""
from . import caffe_tools, data_tools, info, prune_tools, sparse_tools  # noqa: F401
