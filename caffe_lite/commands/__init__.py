"""CLI verbs, one module per family; importing registers them in commands.registry."""
from . import (caffe_tools, check_tools, compression_tools, darknet_tools, data_tools,  # noqa: F401
               draw, info, interop, prune_tools, sparse_tools)
