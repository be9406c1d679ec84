"""Typed errors.  Every message names the file, layer, blob and values involved, so the CLI can
print it as one line and a user can act on it without a traceback."""


class CaffeLiteError(Exception):
    """Base of every error caffe-lite raises for bad input."""


class PrototxtError(CaffeLiteError):
    """A text-format prototxt that does not parse.  Carries file, line and column."""

    def __init__(self, path, line, column, detail):
        self.path, self.line, self.column, self.detail = path, line, column, detail
        where = f"{path}:{line}:{column}" if line else str(path)
        super().__init__(f"{where}: {detail}")


class ModelFileError(CaffeLiteError):
    """A binary file (caffemodel, solverstate, binaryproto) that is truncated, corrupt or of the
    wrong kind."""


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


class ShapeMismatchError(CaffeLiteError):
    """Two shapes that must agree do not, e.g. a caffemodel blob vs. the net's parameter."""


class SolverError(CaffeLiteError):
    """A solver configuration that cannot run."""


class NumericalError(CaffeLiteError):
    """A NaN or infinite loss or value during training."""


class DataError(CaffeLiteError):
    """A data source (LMDB, HDF5, image list) that is missing, empty or corrupt."""


class BlobSizeError(CaffeLiteError):
    """A blob shape beyond Caffe's limits: a negative dimension, more than 32 axes, or 2^31
    elements or more (checked before any memory is allocated)."""


class OutOfMemoryError(CaffeLiteError):
    """Memory a net, a layer or a data set needs could not be allocated."""


class DeviceError(CaffeLiteError):
    """The GPU was requested but PyCUDA or a device is missing."""
