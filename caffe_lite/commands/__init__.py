"""CLI verbs, one module per family; importing registers them with caffe_lite.cli."""
from . import info  # noqa: F401
