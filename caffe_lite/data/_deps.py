"""Lazy imports of the optional data packages (`pip install caffe-lite[data]`)."""
import importlib

from ..errors import DataError

_PIP = {"lmdb": "lmdb", "h5py": "h5py", "PIL": "Pillow"}


def require(module, what):
    """Import `module`, or raise a DataError telling the user what to install for `what`."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pip_name = _PIP.get(module, module)
        raise DataError(f"{what} needs the '{pip_name}' package: pip install {pip_name} "
                        "(or pip install 'caffe-lite[data]')") from None


def lmdb(what="reading or writing an LMDB"):
    return require("lmdb", what)


def h5py(what="an HDF5 data file"):
    return require("h5py", what)


def pil_image(what="decoding or encoding an image"):
    require("PIL", what)
    return importlib.import_module("PIL.Image")
