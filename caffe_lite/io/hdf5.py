"""Caffe's HDF5 weights format: /data/<layer name>/<param index> datasets (and /diff/... when
diffs are written).  Layer names containing '/' become nested groups, as HDF5 paths do."""
import os

import numpy as np

from ..errors import CaffeLiteError, ModelFileError
from ..util.atomic import atomic_open


_MAX_PARAMS = 1024   # no layer has more parameter blobs; a larger index is damage


def _h5py(path):
    try:
        import h5py
    except ImportError:
        raise CaffeLiteError(f"{path}: HDF5 weights need h5py (pip install h5py)") from None
    return h5py


def _layer_groups(group, prefix=""):
    """Yield (layer name, group) for every group holding numbered datasets."""
    h5py = _h5py("")
    numbered = [k for k, v in group.items() if isinstance(v, h5py.Dataset) and k.isdigit()]
    if prefix and numbered:
        yield prefix, group
    for k, v in group.items():
        if isinstance(v, h5py.Group):
            yield from _layer_groups(v, f"{prefix}/{k}" if prefix else k)


def load_hdf5_weights(path):
    """[(layer name, [array or None per param index])]; None marks an index the file skips
    (Caffe omits parameters that a layer shares with another)."""
    h5py = _h5py(path)
    out = []
    try:
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise ModelFileError(f"{path}: HDF5 file has no /data group; not a caffemodel")
            for name, g in _layer_groups(f["data"]):
                idx = {int(k): np.asarray(v, dtype=np.float32) for k, v in g.items()
                       if k.isdigit()}
                if max(idx) >= _MAX_PARAMS:
                    raise ModelFileError(f"{path}: layer '{name}' has a parameter numbered "
                                         f"{max(idx)}; not a caffemodel")
                out.append((name, [idx.get(i) for i in range(max(idx) + 1)]))
    except (OSError, RuntimeError, ValueError, TypeError, KeyError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelFileError(f"{path}: unreadable HDF5 caffemodel ({detail})") from None
    return out


def save_net_hdf5(net, path, write_diff=False, overwrite=True):
    path = os.fspath(path)
    _h5py(path)
    with atomic_open(path, "w+b", overwrite=overwrite) as fobj:
        write_net_hdf5(net, fobj, write_diff)


def write_net_hdf5(net, fobj, write_diff=False):
    """Write the net's weights in Caffe's HDF5 layout into an open binary file object."""
    h5py = _h5py(getattr(fobj, "name", "HDF5 file"))
    with h5py.File(fobj, "w") as f:
        data = f.create_group("data")
        diff = f.create_group("diff") if write_diff else None
        for lid, (name, layer) in enumerate(zip(net.layer_names, net.layers)):
            if not layer.blobs:
                continue
            dg = data.require_group(name)
            fg = diff.require_group(name) if diff is not None else None
            for pid, b in enumerate(layer.blobs):
                if net.param_owners[net.param_ids[lid][pid]] == -1:
                    dg.create_dataset(str(pid), data=b.cpu_data)
                if fg is not None:
                    fg.create_dataset(str(pid), data=b.cpu_diff)
