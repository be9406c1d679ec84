"""CLI verbs, one module per family; importing registers them in commands.registry."""
from . import caffe_tools, check_tools, data_tools, info, prune_tools  # noqa: F401
