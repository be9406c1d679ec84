"""Python layers (`type: "Python"`): a layer computed by a user's Python class, as pycaffe runs
them.

    layer { name: "data" type: "Python" top: "data" top: "label"
            python_param { module: "mnist_layers" layer: "MnistData" param_str: "{'batch': 64}" } }

    import caffe_lite as caffe            # or `import caffe` with the caffe alias (docs/pycaffe.md)
    class MnistData(caffe.Layer):
        def setup(self, bottom, top): ...            # self.param_str, self.phase are set
        def reshape(self, bottom, top): ...          # called before every forward, as in Caffe
        def forward(self, bottom, top): ...          # bottom / top: lists of Blobs
        def backward(self, top, propagate_down, bottom): ...

The module is imported by name (from sys.path, then from the working directory, as `python -m`
would), the class is built with the LayerParameter, and its four methods are called with
pycaffe's arguments: lists of Blobs (`.data`, `.diff`, `.shape`, `.reshape(*dims)`, `.count`,
`.num`, `.channels`, `.height`, `.width`) and, for backward, one bool per bottom.  Blobs added
with `self.blobs.add_blob(*shape)` in setup are learnable parameters like any layer's: the
solvers update them (with lr_mult / decay_mult from the layer's `param` entries), snapshots
and `net.save` write them, `copy_from` loads them.  A class that sets `prunable = True` has
its blobs[0] treated as a prunable weight (a mask that gradients and updates respect).  A
class may define `state_dict()` / `load_state_dict(d)` (JSON values) to have a solver
snapshot keep its state (a data layer's position), and `close()` to release resources.

`net.layers[i]` is the PythonLayer that runs the user's object; attributes it does not have
itself are the user object's (`solver.net.layers[0].set_roidb(r)` works as in pycaffe), and
`.python` is the object itself.  The user's methods are bound once at setup, so a call costs
what a call to any layer costs.  In a GPU net the layer runs on the host: reading `.data`
brings a blob to the CPU and the next GPU layer copies it back, as Caffe's PythonLayer does.
`share_in_parallel` is read but has no effect (one process, one net per phase)."""
import importlib
import logging
import os
import sys

from ..blob import Blob
from ..errors import PythonLayerImportError
from ..proto import caffe_pb2
from .base import Layer as _BaseLayer
from .registry import register

log = logging.getLogger("caffe_lite")


class BlobVec(list):
    """A Python layer's parameter blobs (pycaffe's BlobVec): a list with `add_blob(*shape)`."""

    def add_blob(self, *shape):
        self.append(Blob(*shape))


class Layer:
    """pycaffe's `caffe.Layer`: the base class of Python layers (`caffe_lite.Layer`).

    Subclasses define setup / reshape / forward / backward (see caffe_lite.layers.python).
    Before setup runs, `param_str` holds python_param.param_str and `phase` the net's phase
    (caffe_lite.TRAIN or TEST); `blobs` is the layer's list of parameter Blobs."""
    type = "Python"
    prunable = False

    def __init__(self, param=None):
        self.param_str = param.python_param.param_str if param is not None else ""
        self.phase = param.phase if param is not None else caffe_pb2.TRAIN
        self.blobs = BlobVec()

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        raise NotImplementedError(f"Python layer class {type(self).__name__} defines no "
                                  "forward(self, bottom, top)")

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise NotImplementedError(f"Python layer class {type(self).__name__} defines no "
                                      "backward(self, top, propagate_down, bottom), but a "
                                      "gradient is needed")


def _module_file(mod):
    return getattr(mod, "__file__", None) or "<no file>"


def _import_module(name, layer):
    """Import python_param.module: from sys.path, else from the working directory; a module
    written for pycaffe that says `import caffe` gets caffe-lite's alias when no other caffe
    is installed."""
    def fail(detail, exc=None):
        err = PythonLayerImportError(layer, detail)
        err.name = name
        raise err from exc

    def attempt(extra_dir):
        if extra_dir is None:
            return importlib.import_module(name)
        sys.path.append(extra_dir)
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(extra_dir)

    cwd = os.getcwd()
    places = [None] + ([cwd] if cwd not in sys.path and "" not in sys.path else [])
    aliased = False
    for extra_dir in places:
        while True:
            try:
                return attempt(extra_dir)
            except ModuleNotFoundError as exc:
                missing = exc.name or ""
                if missing.split(".")[0] == "caffe" and not aliased:
                    from .. import alias
                    aliased = True
                    if alias.install():
                        log.info("layer '%s': module '%s' imports caffe; serving caffe-lite's "
                                 "pycaffe alias (no other caffe is installed)", layer.name, name)
                        continue
                if name == missing or name.startswith(missing + "."):
                    break  # not in this place: try the next
                fail(f"importing python_param.module '{name}' failed: {exc}", exc)
            except Exception as exc:  # a SyntaxError, or an error raised by the module's code
                where = ""
                if isinstance(exc, SyntaxError) and exc.filename:
                    where = f" ({exc.filename}:{exc.lineno})"
                fail(f"importing python_param.module '{name}' raised {type(exc).__name__}"
                     f"{where}: {exc}", exc)
    fail(f"cannot import python_param.module '{name}': no such module on sys.path or in the "
         f"working directory {cwd} (add its folder to PYTHONPATH)")


def load_layer_class(module_name, class_name, layer):
    """The class python_param names, with errors that name the module and what it defines."""
    if not module_name or not class_name:
        raise PythonLayerImportError(layer, "python_param needs both 'module' and 'layer' "
                                            f"(got module '{module_name}', layer '{class_name}')")
    mod = _import_module(module_name, layer)
    cls = getattr(mod, class_name, None)
    if cls is None:
        found = sorted(n for n, v in vars(mod).items()
                       if isinstance(v, type) and issubclass(v, Layer) and v is not Layer)
        raise PythonLayerImportError(
            layer, f"module '{module_name}' ({_module_file(mod)}) has no class '{class_name}'"
                   f"; its Python layer classes: {', '.join(found) or 'none'}")
    if not isinstance(cls, type) or not issubclass(cls, Layer):
        if any(getattr(c, "__module__", "").startswith("caffe._caffe")
               for c in getattr(cls, "__mro__", ())):
            raise PythonLayerImportError(
                layer, f"{module_name}.{class_name} subclasses BVLC pycaffe's caffe.Layer (a "
                       f"pycaffe is installed and imported first); caffe-lite runs subclasses "
                       "of caffe_lite.Layer: see docs/pycaffe.md, 'The caffe alias'")
        if not all(callable(getattr(cls, m, None)) for m in ("setup", "reshape", "forward")):
            raise PythonLayerImportError(
                layer, f"{module_name}.{class_name} is not a Python layer class (subclass "
                       "caffe_lite.Layer, or define setup, reshape, forward and backward)")
    return cls


@register("Python")
class PythonLayer(_BaseLayer):
    """Runs a user's Python layer object (`self.python`); see the module docstring."""
    reshape_each_forward = True  # pycaffe calls the user's reshape before every forward

    def __init__(self, layer_param):
        super().__init__(layer_param)
        p = self.layer_param.python_param
        cls = load_layer_class(p.module, p.layer, self)
        py = cls(self.layer_param)     # pycaffe builds the object when the net is built
        loaded = self.blobs
        self.blobs = BlobVec(loaded)
        py.blobs = self.blobs
        self.python = py
        self.share_in_parallel = p.share_in_parallel

    def __getattr__(self, name):
        # Only reached for names this object lacks: they are the user object's.
        py = self.__dict__.get("python")
        if py is None or name.startswith("__"):
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        return getattr(py, name)

    def __setattr__(self, name, value):
        d = self.__dict__
        py = d.get("python")
        if py is not None and name not in d and not hasattr(type(self), name) \
                and hasattr(py, name):
            setattr(py, name, value)
        else:
            object.__setattr__(self, name, value)

    def layer_setup(self, bottom, top):
        py = self.python
        py.param_str = self.layer_param.python_param.param_str
        py.phase = self.phase
        if not isinstance(getattr(py, "blobs", None), list):
            py.blobs = self.blobs
        py.setup(bottom, top)
        blobs = py.blobs if isinstance(py.blobs, BlobVec) else BlobVec(py.blobs)
        py.blobs = self.blobs = blobs
        for i, b in enumerate(blobs):
            if not isinstance(b, Blob):
                raise self.error(f"blobs[{i}] is a {type(b).__name__}, not a Blob (add "
                                 "parameters with self.blobs.add_blob(*shape))")
            if not b.name:
                b.name = f"{self.name}[{i}]"
        self.prunable = bool(getattr(py, "prunable", False))
        # The user's methods become this layer's, bound once: Layer.forward / backward call
        # them directly, on the CPU path and (through the host copies) the GPU path alike.
        self.reshape = py.reshape
        self.forward_cpu = self.forward_gpu = py.forward
        self.backward_cpu = self.backward_gpu = py.backward

    def reshape(self, bottom, top):
        self.python.reshape(bottom, top)

    def __repr__(self):
        py = self.__dict__.get("python")
        what = f" {type(py).__module__}.{type(py).__name__}" if py is not None else ""
        return f"<PythonLayer '{self.name}'{what}>"
