"""Typed errors.  Every message names the file, layer, blob and values involved, so the CLI can
print it as one line and a user can act on it without a traceback.

Where pycaffe (or Python itself) raises a built-in exception for the same mistake, the
caffe-lite error is also an instance of that built-in (ValueError for a wrong shape, TypeError
for a wrong argument type, FileNotFoundError for a missing file, ...), so `except ValueError:`
in existing code keeps working; docs/pycaffe.md lists them."""


class CaffeLiteError(Exception):
    """Base of every error caffe-lite raises for bad input."""


class PrototxtError(CaffeLiteError):
    """A text-format prototxt that does not parse.  Carries file, line and column."""

    def __init__(self, path, line, column, detail):
        self.path, self.line, self.column, self.detail = path, line, column, detail
        where = f"{path}:{line}:{column}" if line else str(path)
        super().__init__(f"{where}: {detail}")


class ModelFileError(CaffeLiteError, ValueError):
    """A binary file (caffemodel, solverstate, binaryproto) that is truncated, corrupt or of the
    wrong kind.  A ValueError, as pycaffe's io.blobproto_to_array raises for such blobs."""


class UnknownLayerTypeError(CaffeLiteError):
    def __init__(self, layer_name, layer_type, known):
        self.layer_name, self.layer_type = layer_name, layer_type
        super().__init__(
            f"layer '{layer_name}': unsupported layer type '{layer_type}'; "
            f"known types: {', '.join(sorted(known))}")


class NetError(CaffeLiteError):
    """A net whose structure is wrong: a bottom nobody produces, a duplicate top, ..."""


class LayerSetupError(CaffeLiteError):
    """A layer whose parameters or input shapes are invalid."""

    def __init__(self, layer, detail):
        name = getattr(layer, "name", layer)
        typ = getattr(layer, "type", None)
        self.layer_name = name
        prefix = f"layer '{name}' ({typ})" if typ else f"layer '{name}'"
        super().__init__(f"{prefix}: {detail}")


class ShapeMismatchError(CaffeLiteError, ValueError):
    """Two shapes that must agree do not, e.g. a caffemodel blob vs. the net's parameter.  A
    ValueError, as numpy and pycaffe raise for arrays of the wrong shape."""


class SolverError(CaffeLiteError):
    """A solver configuration that cannot run."""


class NumericalError(CaffeLiteError):
    """A NaN or infinite loss or value during training."""


class ParallelError(CaffeLiteError):
    """Data-parallel training that cannot go on: MPI missing, or ranks that disagree (masks,
    data layers, solver settings)."""


class DataError(CaffeLiteError):
    """A data source (LMDB, HDF5, image list) that is missing, empty or corrupt."""


class BlobSizeError(CaffeLiteError):
    """A blob shape beyond Caffe's limits: a negative dimension, more than 32 axes, or 2^31
    elements or more (checked before any memory is allocated)."""


class OutOfMemoryError(CaffeLiteError):
    """Memory a net, a layer or a data set needs could not be allocated."""


class DeviceError(CaffeLiteError):
    """The GPU was requested but PyCUDA or a device is missing."""


class MissingFileError(CaffeLiteError, FileNotFoundError, RuntimeError):
    """A file that does not exist (prototxt, caffemodel, image).  A FileNotFoundError (IOError)
    as Python's file functions raise, and a RuntimeError as pycaffe's Net() raises ("Could not
    open file")."""


class ArgumentTypeError(CaffeLiteError, TypeError):
    """An argument of the wrong type (pycaffe raises TypeError: a NetSpec bottom that is not a
    Top, a Net() argument that is neither a phase nor a weights file)."""


class NameNotFoundError(CaffeLiteError, ValueError, KeyError):
    """A layer or blob name the net does not have.  A ValueError as pycaffe's
    forward(start=, end=) raises, and a KeyError as looking the name up in net.blobs would."""
    __str__ = CaffeLiteError.__str__  # not KeyError's repr-quoted message


class PythonLayerImportError(LayerSetupError, ImportError):
    """A Python layer's module or class that cannot be imported (pycaffe lets the ImportError or
    AttributeError through)."""
    __str__ = CaffeLiteError.__str__  # the message in args (ImportError's own str is `msg`)


class MissingDataError(DataError, MissingFileError):
    """A data file (an image, a list, an LMDB) that does not exist."""


class DataShapeError(DataError, ShapeMismatchError):
    """An image or array of the wrong shape given to a data function (pycaffe's io functions and
    numpy raise ValueError)."""


class UnknownNameError(CaffeLiteError, AttributeError, KeyError):
    """A name that is not there: a protobuf field NetSpec was asked to set (an AttributeError,
    as pycaffe's assign_proto raises) or a top a NetSpec does not hold (a KeyError, as pycaffe's
    NetSpec raises, and an AttributeError so hasattr() works)."""
    __str__ = CaffeLiteError.__str__
