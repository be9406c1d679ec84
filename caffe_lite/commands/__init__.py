"""CLI verbs, one module per family; importing registers them in commands.registry."""
from . import caffe_tools, data_tools, draw, info, prune_tools  # noqa: F401
