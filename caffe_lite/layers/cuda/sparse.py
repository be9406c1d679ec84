"""GPU path of sparse inference (layers/sparse.py decides when it runs): the CSR weight is
copied to the device once per CSR copy (32-bit arrays), and the forward products are the
kernels of layers/kernels/sparse.cu:

  InnerProduct   csr_gemv, one block per (image, output): the batch-1 case is a SpMV;
  Convolution    csr_spmm over the input (1x1) or the GemmGpu engine's im2col columns, one
                 thread per output.

There are no measured break-even densities on a GPU, so mode "auto" stays dense there; mode
"sparse" runs these kernels."""
import weakref

import numpy as np

from ...backend import gpu
from ...backend.kernels import MAX_BLOCKS
from ...errors import DeviceError
from .common import I32, data, elementwise, kernel, launch, mdata, state
from .conv import MAX_SPATIAL_AXES, _engine

_device = weakref.WeakKeyDictionary()   # CSRMatrix -> (indptr, indices, data) on the device


def _upload(csr):
    arrays = _device.get(csr)
    if arrays is None:
        if csr.nnz >= 2 ** 31:
            raise DeviceError(f"a sparse weight of {csr.nnz} nonzeros exceeds the 32-bit "
                              "indexing of the GPU kernels")
        arrays = []
        for host, dtype in ((csr.indptr, np.int32), (csr.indices, np.int32),
                            (csr.data, np.float32)):
            dev = gpu.empty(max(1, host.size), dtype)
            if host.size:
                gpu.upload(host.astype(dtype), dev[:host.size])
            arrays.append(dev)
        _device[csr] = arrays = tuple(arrays)
    return tuple(gpu.ptr(a) for a in arrays)


def _threads(csr):
    per_row = csr.nnz / max(1, csr.shape[0])
    return 32 if per_row <= 64 else 128 if per_row <= 512 else 256


def _offsets(layer, count, step):
    """Device table col_offset[c] = c * step, kept per layer while (count, step) hold."""
    st = state(layer)
    if getattr(st, "sparse_offsets_key", None) != (count, step):
        arr = st.array("sparse_offsets", count, np.int32)
        arr.set(np.arange(count, dtype=np.int32) * np.int32(step))
        st.sparse_offsets_key = (count, step)
    return st.buf("sparse_offsets", count, np.int32)


def inner_product(layer, csr, bottom, top):
    ptr, idx, val = _upload(csr)
    rows = csr.shape[0]
    pairs = layer.M * rows
    if pairs == 0:
        return
    bias = data(layer.blobs[1]) if layer.bias_term else 0
    fn = kernel("sparse", "csr_gemv", "iiiPPPPPP")
    launch(fn, (min(pairs, MAX_BLOCKS), 1, 1), (_threads(csr), 1, 1), I32(pairs), I32(rows),
           I32(layer.K), ptr, idx, val, data(bottom[0]), bias, mdata(top[0]))


def convolution(layer, csr, bottom, top):
    if layer.num_spatial_axes > MAX_SPATIAL_AXES:
        layer.forward_cpu(bottom, top)
        return
    eng = _engine(layer)
    ptr, idx, val = _upload(csr)
    rows, kc = csr.shape
    p = eng.out_count
    bias = data(layer.blobs[1]) if layer.bias_term else 0
    offsets = _offsets(layer, kc, p)
    sig = "iiiiPPPPPPP"
    for b, t in zip(bottom, top):
        x, y = data(b), mdata(t)
        if eng.geom.is_1x1:
            elementwise("sparse", "csr_spmm", sig, eng.num * rows * p, I32(rows), I32(p),
                        I32(kc * p), ptr, idx, val, offsets, x, bias, y)
            continue
        for n0, n1 in eng._chunks():
            col = eng.st.buf("col", (n1 - n0) * kc * p)
            eng._im2col(x, n0, n1, col, kc * p, p)
            elementwise("sparse", "csr_spmm", sig, (n1 - n0) * rows * p, I32(rows), I32(p),
                        I32(kc * p), ptr, idx, val, offsets, col, bias,
                        y + 4 * n0 * rows * p)
