"""caffe-lite: Caffe in Python, with pruning masks built into its Blobs.

    import caffe_lite as caffe
    net = caffe.Net("deploy.prototxt", caffe.TEST, weights="model.caffemodel")
    net.forward(data=images)
    net.params["conv1"][0].mask      # 1 where a weight is live, 0 where pruned

Every name of pycaffe's `caffe` package is here with pycaffe's meaning (docs/pycaffe.md):
`caffe_lite.Layer` is the base class of Python layers, `caffe_lite.layers` also serves
NetSpec's layer factories (`L.Convolution(...)`), and `caffe_lite.draw`, `coord_map`,
`classifier`, `detector` and `pycaffe` load on first use.
"""
__version__ = "0.1.0"

for _required, _pip in (("numpy", "numpy>=1.22"), ("google.protobuf", "protobuf>=4.21")):
    try:
        __import__(_required)
    except ImportError as _exc:
        raise ImportError(f"caffe-lite needs {_pip} ({_exc}); install the project with "
                          f"`python3 -m pip install -e .` or `pip install '{_pip}'`") from _exc
del _required, _pip

from .proto import caffe_pb2  # noqa: E402
from .backend import (set_mode_cpu, set_mode_gpu, set_device, set_random_seed,  # noqa: E402
                      gpu_available)
from .blob import Blob  # noqa: E402
from .errors import CaffeLiteError  # noqa: E402
from .layers import layer_type_list  # noqa: E402
from .layers.python import Layer  # noqa: E402  (pycaffe's caffe.Layer: the Python-layer base)
from .net import Net  # noqa: E402
from .solvers import (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,  # noqa: E402
                      AdaDeltaSolver, AdamSolver, get_solver)
from . import io  # noqa: E402
from .net_spec import NetSpec, to_proto, params  # noqa: E402
from .pycaffe import (Timer, NCCL, init_log, log, has_nccl, solver_count,  # noqa: E402
                      set_solver_count, solver_rank, set_solver_rank, set_multiprocess)

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST

__all__ = ["Net", "Blob", "Layer", "TRAIN", "TEST", "SGDSolver", "NesterovSolver",
           "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "get_solver",
           "set_mode_cpu", "set_mode_gpu", "set_device", "set_random_seed", "gpu_available",
           "layer_type_list", "io", "NetSpec", "to_proto", "params", "caffe_pb2", "CaffeLiteError",
           "__version__", "Timer", "NCCL", "init_log", "log", "has_nccl", "solver_count",
           "set_solver_count", "solver_rank", "set_solver_rank", "set_multiprocess",
           "Classifier", "Detector"]

_LAZY_MODULES = ("draw", "coord_map", "classifier", "detector", "pycaffe", "alias")
_LAZY_NAMES = {"Classifier": "classifier", "Detector": "detector"}


def __getattr__(name):
    """pycaffe's modules (and Classifier / Detector) load on first use."""
    import importlib
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'caffe_lite' has no attribute '{name}'")
