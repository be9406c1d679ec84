"""A small cuBLAS binding: ctypes over libcublas, taking device addresses (ints) from PyCUDA.

Only what caffe-lite needs: SGEMM, strided-batched SGEMM and SGEMV, in ROW-MAJOR terms.
cuBLAS is column-major; a row-major matrix is the transpose of the column-major matrix on the
same memory, so the row-major product C = op(A) op(B) is computed as the column-major
C^T = op(B)^T op(A)^T: the operands are swapped, and so are M and N (`gemm_args`, a pure
function tested without a GPU).

One handle per device, created on first use in the context PyCUDA made current (cuBLAS uses
that same primary context), on the default (NULL) stream that PyCUDA's launches also use, so
kernels and products run in program order without extra synchronisation.

By default cuBLAS computes in plain FP32.  CAFFE_LITE_TF32=1 lets it use TF32 tensor cores
(faster on Ampere and later, ~1e-3 relative error), as PyTorch does for convolutions."""
import ctypes
import ctypes.util
import glob
import os
import sys

from ..errors import DeviceError

OP_N, OP_T = 0, 1              # cublasOperation_t
DEFAULT_MATH, TF32_MATH = 0, 3  # cublasMath_t

_STATUS = {0: "SUCCESS", 1: "NOT_INITIALIZED", 3: "ALLOC_FAILED", 7: "INVALID_VALUE",
           8: "ARCH_MISMATCH", 11: "MAPPING_ERROR", 13: "EXECUTION_FAILED",
           14: "INTERNAL_ERROR", 15: "NOT_SUPPORTED", 16: "LICENSE_ERROR"}


# --- the row-major -> column-major mapping (pure) --------------------------------------------
def gemm_args(trans_a, trans_b, m, n, k, lda=None, ldb=None, ldc=None):
    """cuBLAS arguments for the row-major C(m x n) = op(A)(m x k) . op(B)(k x n).

    A is stored row-major as (m, k), or (k, m) when trans_a; B as (k, n), or (n, k) when
    trans_b; C as (m, n).  Leading dimensions default to the stored row lengths.  Returns
    (opB, opA, n, m, k, ldb, lda, ldc): call cublasSgemm(handle, opB, opA, n, m, k, alpha, B,
    ldb, A, lda, beta, C, ldc) -- the column-major C^T = op(B)^T op(A)^T."""
    if lda is None:
        lda = m if trans_a else k
    if ldb is None:
        ldb = k if trans_b else n
    if ldc is None:
        ldc = n
    return (OP_T if trans_b else OP_N, OP_T if trans_a else OP_N, n, m, k, ldb, lda, ldc)


def gemv_args(trans_a, m, n, lda=None):
    """cuBLAS arguments for the row-major y = op(A) x with A stored (m, n): y has m entries
    (n when trans_a).  Row-major A is column-major A^T (n x m, leading dimension n), so
    'no transpose' becomes OP_T.  Returns (op, rows, cols, lda) for cublasSgemv."""
    if lda is None:
        lda = n
    return (OP_N if trans_a else OP_T, n, m, lda)


# --- the library ------------------------------------------------------------------------------
def library_candidates():
    """Where libcublas may be: $CUDA_HOME and /usr/local/cuda, the linker's path, and the
    nvidia-cublas wheels (installed with PyTorch) in sys.path."""
    names = []
    for env in ("CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"):
        root = os.environ.get(env)
        if root:
            names += sorted(glob.glob(os.path.join(root, "lib64", "libcublas.so*")), reverse=True)
            names += sorted(glob.glob(os.path.join(root, "lib", "libcublas.so*")), reverse=True)
    found = ctypes.util.find_library("cublas")
    if found:
        names.append(found)
    for root in ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib",
                 "/usr/lib/x86_64-linux-gnu"):
        names += sorted(glob.glob(os.path.join(root, "libcublas.so*")), reverse=True)
    for p in sys.path:
        names += sorted(glob.glob(os.path.join(p, "nvidia", "cublas", "lib", "libcublas.so*")),
                        reverse=True)
    seen, result = set(), []
    for n in names:
        if n not in seen and "Lt" not in os.path.basename(n):
            seen.add(n)
            result.append(n)
    return result


_P, _I, _F = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)
_PROTOTYPES = {
    "cublasCreate_v2": [ctypes.POINTER(ctypes.c_void_p)],
    "cublasDestroy_v2": [_P],
    "cublasSetStream_v2": [_P, _P],
    "cublasSetMathMode": [_P, _I],
    "cublasGetVersion_v2": [_P, ctypes.POINTER(ctypes.c_int)],
    "cublasSgemm_v2": [_P, _I, _I, _I, _I, _I, _F, _P, _I, _P, _I, _F, _P, _I],
    "cublasSgemmStridedBatched": [_P, _I, _I, _I, _I, _I, _F, _P, _I, ctypes.c_longlong,
                                  _P, _I, ctypes.c_longlong, _F, _P, _I, ctypes.c_longlong,
                                  _I],
    "cublasSgemv_v2": [_P, _I, _I, _I, _F, _P, _I, _P, _I, _F, _P, _I],
}


class CublasApi:
    """The raw calls, with Python numbers in and status checks.  Tests replace this object
    with a numpy implementation of the same column-major semantics (tests/gpu_emu)."""

    def __init__(self, path=None):
        errors = []
        self.lib = None
        for cand in ([path] if path else library_candidates()):
            try:
                self.lib = ctypes.CDLL(cand)
                self.path = cand
                break
            except OSError as exc:
                errors.append(f"{cand}: {exc}")
        if self.lib is None:
            raise DeviceError("libcublas was not found (looked in $CUDA_HOME, /usr/local/cuda, "
                              "the linker path and the nvidia-cublas wheels): "
                              + ("; ".join(errors) or "no candidates"))
        for name, argtypes in _PROTOTYPES.items():
            f = getattr(self.lib, name)
            f.argtypes = argtypes
            f.restype = ctypes.c_int

    def _check(self, status, what):
        if status != 0:
            raise DeviceError(f"cuBLAS {what} failed: CUBLAS_STATUS_{_STATUS.get(status, status)}")

    def create(self):
        h = ctypes.c_void_p()
        self._check(self.lib.cublasCreate_v2(ctypes.byref(h)), "cublasCreate")
        self._check(self.lib.cublasSetStream_v2(h, None), "cublasSetStream")
        if os.environ.get("CAFFE_LITE_TF32") == "1":
            self._check(self.lib.cublasSetMathMode(h, TF32_MATH), "cublasSetMathMode")
        return h

    def destroy(self, handle):
        self.lib.cublasDestroy_v2(handle)

    def sgemm(self, h, opa, opb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        al, be = ctypes.c_float(alpha), ctypes.c_float(beta)
        self._check(self.lib.cublasSgemm_v2(h, opa, opb, m, n, k, ctypes.pointer(al), a, lda,
                                             b, ldb, ctypes.pointer(be), c, ldc), "Sgemm")

    def sgemm_strided_batched(self, h, opa, opb, m, n, k, alpha, a, lda, stride_a, b, ldb,
                              stride_b, beta, c, ldc, stride_c, batch):
        al, be = ctypes.c_float(alpha), ctypes.c_float(beta)
        self._check(self.lib.cublasSgemmStridedBatched(
            h, opa, opb, m, n, k, ctypes.pointer(al), a, lda, stride_a, b, ldb, stride_b,
            ctypes.pointer(be), c, ldc, stride_c, batch), "SgemmStridedBatched")

    def sgemv(self, h, op, m, n, alpha, a, lda, x, incx, beta, y, incy):
        al, be = ctypes.c_float(alpha), ctypes.c_float(beta)
        self._check(self.lib.cublasSgemv_v2(h, op, m, n, ctypes.pointer(al), a, lda, x, incx,
                                            ctypes.pointer(be), y, incy), "Sgemv")


api = None        # the CublasApi in use (created on first use; tests may preset it)
_handles = {}     # device id -> handle


def _handle():
    global api
    from . import gpu
    dev = gpu.current_device()
    h = _handles.get(dev)
    if h is None:
        if api is None:
            api = CublasApi()
        h = _handles[dev] = api.create()
    return h


# --- row-major operations (pointers are device addresses as ints) -----------------------------
def gemm(trans_a, trans_b, m, n, k, alpha, a, b, beta, c, lda=None, ldb=None, ldc=None):
    """C(m x n) = alpha op(A) op(B) + beta C, all row-major (see gemm_args)."""
    if m == 0 or n == 0:
        return
    if k == 0:
        _scale_c(m, n, beta, c, ldc)
        return
    h = _handle()
    opb, opa, cm, cn, ck, cldb, clda, cldc = gemm_args(trans_a, trans_b, m, n, k, lda, ldb, ldc)
    api.sgemm(h, opb, opa, cm, cn, ck, alpha, b, cldb, a, clda, beta, c, cldc)


def gemm_strided_batched(trans_a, trans_b, m, n, k, alpha, a, stride_a, b, stride_b, beta, c,
                         stride_c, batch, lda=None, ldb=None, ldc=None):
    """For i < batch: C_i = alpha op(A_i) op(B_i) + beta C_i, X_i = X + i * stride_X (elements);
    a stride of 0 reuses one matrix for every product."""
    if m == 0 or n == 0 or batch == 0:
        return
    if k == 0:
        for i in range(batch):
            _scale_c(m, n, beta, c + 4 * i * stride_c, ldc)
        return
    h = _handle()
    opb, opa, cm, cn, ck, cldb, clda, cldc = gemm_args(trans_a, trans_b, m, n, k, lda, ldb, ldc)
    if batch == 1:
        api.sgemm(h, opb, opa, cm, cn, ck, alpha, b, cldb, a, clda, beta, c, cldc)
        return
    api.sgemm_strided_batched(h, opb, opa, cm, cn, ck, alpha, b, cldb, stride_b, a, clda,
                              stride_a, beta, c, cldc, stride_c, batch)


def gemv(trans_a, m, n, alpha, a, x, beta, y, lda=None):
    """y = alpha op(A) x + beta y with A stored row-major (m, n)."""
    if m == 0 or n == 0:
        return
    h = _handle()
    op, rows, cols, clda = gemv_args(trans_a, m, n, lda)
    api.sgemv(h, op, rows, cols, alpha, a, clda, x, 1, beta, y, 1)


def _scale_c(m, n, beta, c, ldc):
    """C *= beta for a product over an empty inner dimension (cuBLAS rejects its lda)."""
    if ldc not in (None, n):
        raise DeviceError("a product over an empty inner dimension needs a contiguous C")
    from . import ops
    if beta == 0:   # as cuBLAS: C is not read when beta is 0
        ops.fill(m * n, 0.0, c)
    else:
        ops.scale(m * n, beta, c, c)


def reset():
    """Forget handles (tests; after the context is gone)."""
    _handles.clear()
