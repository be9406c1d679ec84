"""The data pipeline: LMDB / HDF5 / image-list sources, Caffe's DataTransformer, background
prefetching, and the dataset tools (convert_mnist_data, convert_imageset, compute_image_mean).

The optional packages (lmdb, h5py, Pillow) are imported only when used; a missing one gives an
error saying what to pip install.  Names are loaded lazily so that importing caffe_lite stays
cheap."""
import importlib

_EXPORTS = {
    "DataTransformer": "transformer", "load_mean_file": "transformer",
    "derive_rng": "transformer",
    "Prefetcher": "prefetch",
    "DatumDBSource": "sources", "ImageListSource": "sources", "HDF5Source": "sources",
    "read_list_file": "sources",
    "open_db": "lmdb_io", "DBWriter": "lmdb_io",
    "read_idx_images": "mnist", "read_idx_labels": "mnist",
    "write_idx_images": "mnist", "write_idx_labels": "mnist",
    "decode_image": "images", "encode_image": "images", "read_image": "images",
    "resize_linear": "images",
    "convert_mnist": "convert", "convert_imageset": "convert", "compute_mean": "convert",
    "image_to_datum": "convert",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'caffe_lite.data' has no attribute '{name}'")
    return getattr(importlib.import_module(f".{mod}", __name__), name)
