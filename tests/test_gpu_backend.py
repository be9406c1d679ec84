"""The GPU backend's plumbing: optional PyCUDA, the cuBLAS row-major mapping, kernel lookup
and cache keys, the GPU layer registry, and (on a device) SyncedMemory's head states."""
import os
import subprocess
import sys

import numpy as np
import pytest

import caffe_lite
from caffe_lite.backend import cublas, gpu, kernels
from caffe_lite.backend.memory import HEAD_AT_CPU, HEAD_AT_GPU, SYNCED, UNINITIALIZED, SyncedMemory
from caffe_lite.errors import DeviceError


# --- PyCUDA stays optional ----------------------------------------------------------------------
def test_package_imports_without_touching_pycuda():
    code = ("import sys, caffe_lite, caffe_lite.layers.cuda, caffe_lite.solvers.cuda; "
            "assert 'pycuda' not in sys.modules, 'pycuda imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_set_mode_gpu_without_pycuda_raises_a_clear_error():
    ok, reason = gpu.available()
    if ok:
        pytest.skip("PyCUDA and a device are present here")
    with pytest.raises(DeviceError, match="GPU mode requested but unavailable: .*Install PyCUDA"):
        caffe_lite.set_mode_gpu()
    assert caffe_lite.backend.mode() == caffe_lite.backend.CPU
    # the CPU path still works
    net = caffe_lite.Net(
        'name: "t" layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }'
        ' layer { name: "r" type: "ReLU" bottom: "x" top: "y" }', caffe_lite.TEST)
    net.blobs["x"].data[...] = [[-1, 2]]
    assert net.forward()["y"].tolist() == [[0, 2]]


# --- cuBLAS: row-major products through column-major calls ----------------------------------
def _colmajor_sgemm(opa, opb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
    """cuBLAS's definition on flat buffers: C(m x n, col-major, ldc) = alpha op(A) op(B) + beta C."""
    def mat(buf, rows, cols, ld):
        assert ld >= max(1, rows)
        return np.lib.stride_tricks.as_strided(buf, (rows, cols), (4, 4 * ld))
    a = mat(A, k, m, lda).T if opa == cublas.OP_T else mat(A, m, k, lda)
    b = mat(B, n, k, ldb).T if opb == cublas.OP_T else mat(B, k, n, ldb)
    c = mat(C, m, n, ldc)
    c[...] = alpha * (a.astype(np.float64) @ b) + beta * c


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("m,n,k", [(3, 4, 5), (1, 7, 2), (6, 1, 1)])
def test_gemm_args_give_the_row_major_product(ta, tb, m, n, k):
    g = np.random.default_rng(m * 100 + n * 10 + k)
    A = g.normal(size=(k, m) if ta else (m, k)).astype(np.float32)
    B = g.normal(size=(n, k) if tb else (k, n)).astype(np.float32)
    C0 = g.normal(size=(m, n)).astype(np.float32)
    opb, opa, cm, cn, ck, ldb, lda, ldc = cublas.gemm_args(ta, tb, m, n, k)
    C = C0.copy()
    _colmajor_sgemm(opb, opa, cm, cn, ck, 1.5, B.ravel(), ldb, A.ravel(), lda, 0.5, C.ravel(),
                    ldc)
    expect = 1.5 * (A.T if ta else A) @ (B.T if tb else B) + 0.5 * C0
    np.testing.assert_allclose(C, expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ta", [False, True])
def test_gemv_args_give_the_row_major_product(ta):
    g = np.random.default_rng(1)
    A = g.normal(size=(3, 5)).astype(np.float32)
    x = g.normal(size=3 if ta else 5).astype(np.float32)
    op, rows, cols, lda = cublas.gemv_args(ta, 3, 5)
    colmajor = np.lib.stride_tricks.as_strided(A.ravel(), (rows, cols), (4, 4 * lda))
    y = (colmajor.T if op == cublas.OP_T else colmajor) @ x
    np.testing.assert_allclose(y, (A.T if ta else A) @ x, rtol=1e-6)


def test_cublas_library_search_names_libcublas_only():
    for path in cublas.library_candidates():
        assert "libcublas.so" in os.path.basename(path) and "Lt" not in os.path.basename(path)


def test_missing_cublas_is_a_device_error(tmp_path):
    with pytest.raises(DeviceError, match="libcublas was not found"):
        cublas.CublasApi(path=str(tmp_path / "libcublas.so.0"))


# --- kernel sources and the compile cache ---------------------------------------------------------
def test_source_lookup():
    assert kernels.source_path("depthwise").name == "depthwise.cu"
    assert kernels.source_path("solvers").parent.name == "kernels"
    with pytest.raises(DeviceError, match="no CUDA kernel source 'nope.cu'.*known: common"):
        kernels.source_path("nope")


def test_cache_key_changes_with_source_arch_options_and_compiler():
    k = kernels.cache_key("src", "sm_90")
    assert k == kernels.cache_key("src", "sm_90")
    assert len({k, kernels.cache_key("src2", "sm_90"), kernels.cache_key("src", "sm_80"),
                kernels.cache_key("src", "sm_90", options=("-O2",)),
                kernels.cache_key("src", "sm_90", compiler="nvcc 12")}) == 5
    f = kernels.cache_file("conv", "src", "sm_90", directory="/c")
    assert str(f).startswith("/c/conv-sm_90-") and f.suffix == ".cubin"


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CAFFE_LITE_CACHE_DIR", str(tmp_path))
    assert kernels.cache_dir() == tmp_path
    monkeypatch.delenv("CAFFE_LITE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kernels.cache_dir() == tmp_path / "xdg" / "caffe-lite" / "kernels"


def test_nvcc_command_and_arch():
    assert kernels.arch_of((9, 0)) == "sm_90" and kernels.arch_of((8, 6)) == "sm_86"
    cmd = kernels.nvcc_command("nvcc", "a.cu", "a.cubin", "sm_90")
    assert cmd[:3] == ["nvcc", "--cubin", "-arch=sm_90"] and cmd[-3:] == ["-o", "a.cubin", "a.cu"]
    with pytest.raises(ValueError):
        kernels.nvcc_command("nvcc", "a.cu", "a.o", "sm_90", target="obj")


def test_launch_grid_sizes():
    assert kernels.blocks_for(1) == 1 and kernels.blocks_for(256) == 1
    assert kernels.blocks_for(257) == 2 and kernels.blocks_for(10 ** 9) == kernels.MAX_BLOCKS


def test_copy_nd_axis_merging():
    from caffe_lite.backend.ops import collapse, contiguous_strides
    shape = (2, 3, 4, 5)
    s = contiguous_strides(shape)
    assert s == [60, 20, 5, 1]
    assert collapse(shape, s, s) == ([120], [1], [1])           # a plain copy: one axis
    # concat along axis 1 into a blob with 7 channels: (2, 3, 20) with an outer stride of 140
    assert collapse((2, 3, 4, 5), [60, 20, 5, 1], [140, 20, 5, 1]) == ([2, 60], [60, 1], [140, 1])
    # a transpose keeps its axes; size-1 axes disappear
    assert collapse((1, 3, 4), [12, 4, 1], [12, 1, 3]) == ([3, 4], [4, 1], [1, 3])


# --- every layer type of the core issue has a GPU path (or is documented as CPU-only) -----------
CORE = ["Input", "Convolution", "DepthwiseConvolution", "Deconvolution", "InnerProduct",
        "Pooling", "ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "Power", "Exp", "Log",
        "BNLL", "Threshold", "Dropout", "Clip", "Swish", "BatchNorm", "Scale", "Bias", "Eltwise",
        "Concat", "Slice", "Split", "Flatten", "Reshape", "Crop", "LRN", "Softmax",
        "SoftmaxWithLoss", "SigmoidCrossEntropyLoss", "EuclideanLoss", "HingeLoss", "Accuracy",
        "ArgMax", "Silence", "Permute"]
CPU_ONLY = {"Input", "Accuracy", "ArgMax"}   # see docs/gpu.md


def test_gpu_registry_covers_the_core_layers():
    import caffe_lite.layers.cuda  # noqa: F401  (registers; no PyCUDA needed to import)
    from caffe_lite.layers import LAYERS
    from caffe_lite.layers.base import GPU_IMPLS
    assert set(CORE) <= set(LAYERS)
    missing = [t for t in CORE if t not in GPU_IMPLS and t not in CPU_ONLY]
    assert not missing, f"no GPU implementation for {missing}"
    assert not CPU_ONLY & set(GPU_IMPLS)


# --- SyncedMemory on a device -------------------------------------------------------------------
@pytest.mark.gpu
def test_synced_memory_head_states():
    ok, reason = gpu.available()
    if not ok:
        pytest.skip(f"needs PyCUDA and a CUDA device: {reason}")
    caffe_lite.set_mode_gpu()
    try:
        m = SyncedMemory(5)
        assert m.head == UNINITIALIZED
        assert (m.gpu().get() == 0).all() and m.head == HEAD_AT_GPU
        m.mutable_cpu()[:] = np.arange(5)
        assert m.head == HEAD_AT_CPU
        assert m.gpu().get().tolist() == [0, 1, 2, 3, 4] and m.head == SYNCED
        m.cpu()
        assert m.head == SYNCED
        d = m.mutable_gpu()
        assert m.head == HEAD_AT_GPU
        d.set(np.full(5, 7, np.float32))
        assert m.cpu().tolist() == [7] * 5 and m.head == SYNCED
        m2 = SyncedMemory(3)
        m2.mutable_cpu()[:] = 2
        m2.mutable_gpu()
        assert m2.head == HEAD_AT_GPU and m2.cpu().tolist() == [2, 2, 2]
        # blob views on the device and the GPU branches of update / masks
        b = caffe_lite.Blob.from_array(np.array([[1, 2], [3, 4]], np.float32))
        b.init_mask()
        b.mask = np.array([[1, 0], [1, 1]])
        b.diff[...] = 0.5
        assert b.gpu_data.shape == (2, 2)
        b.update()
        assert b.cpu_data.tolist() == [[0.5, 0], [2.5, 3.5]]
    finally:
        caffe_lite.set_mode_cpu()


@pytest.mark.gpu
def test_ops_reductions_and_copies():
    ok, reason = gpu.available()
    if not ok:
        pytest.skip(f"needs PyCUDA and a CUDA device: {reason}")
    from caffe_lite.backend import ops
    caffe_lite.set_mode_gpu()
    try:
        g = np.random.default_rng(0)
        x = g.normal(size=(3, 5, 70)).astype(np.float32)
        y = g.normal(size=(3, 5, 70)).astype(np.float32)
        dx, dy = gpu.empty(x.size), gpu.empty(y.size)
        dx.set(x.ravel())
        dy.set(y.ravel())
        out = gpu.zeros(5)
        out.set(np.ones(5, np.float32))
        ops.channel_sum(3, 5, 70, gpu.ptr(dx), gpu.ptr(out), b=gpu.ptr(dy), alpha=2.0, beta=1.0)
        np.testing.assert_allclose(out.get(), 1 + 2 * (x * y).sum(axis=(0, 2)), rtol=1e-4)
        assert ops.sum_host(x.size, gpu.ptr(dx)) == pytest.approx(float(x.astype(np.float64).sum()))
        t = gpu.empty(x.size)
        ops.copy_nd((3, 5, 70), gpu.ptr(dx), [350, 70, 1], gpu.ptr(t), [70, 210, 1])
        np.testing.assert_array_equal(t.get().reshape(5, 3, 70), x.transpose(1, 0, 2))
        ops.fill(7, 2.5, gpu.ptr(t))
        assert t.get()[:8].tolist() == [2.5] * 7 + [x.transpose(1, 0, 2).ravel()[7]]
    finally:
        caffe_lite.set_mode_cpu()


@pytest.mark.gpu
def test_cublas_row_major_wrappers():
    ok, reason = gpu.available()
    if not ok:
        pytest.skip(f"needs PyCUDA and a CUDA device: {reason}")
    caffe_lite.set_mode_gpu()
    g = np.random.default_rng(2)

    def dev(a):
        d = gpu.empty(a.size)
        d.set(np.ascontiguousarray(a, np.float32).ravel())
        return d
    try:
        m, n, k = 3, 4, 5
        for ta in (False, True):
            for tb in (False, True):
                A = g.normal(size=(k, m) if ta else (m, k)).astype(np.float32)
                B = g.normal(size=(n, k) if tb else (k, n)).astype(np.float32)
                C0 = g.normal(size=(m, n)).astype(np.float32)
                dA, dB, dC = dev(A), dev(B), dev(C0)
                cublas.gemm(ta, tb, m, n, k, 2.0, gpu.ptr(dA), gpu.ptr(dB), 0.5, gpu.ptr(dC))
                expect = 2 * (A.T if ta else A) @ (B.T if tb else B) + 0.5 * C0
                np.testing.assert_allclose(dC.get().reshape(m, n), expect, rtol=1e-5, atol=1e-5)
        # strided batched with a shared A (stride 0), B and C per item
        A = g.normal(size=(m, k)).astype(np.float32)
        B = g.normal(size=(3, k, n)).astype(np.float32)
        dA, dB, dC = dev(A), dev(B), gpu.empty(3 * m * n)
        cublas.gemm_strided_batched(False, False, m, n, k, 1.0, gpu.ptr(dA), 0, gpu.ptr(dB), k * n,
                                    0.0, gpu.ptr(dC), m * n, 3)
        np.testing.assert_allclose(dC.get().reshape(3, m, n), A @ B, rtol=1e-5, atol=1e-5)
        # an empty inner dimension: C = beta C (and 0 when beta is 0, whatever C held)
        dC = dev(np.full(m * n, np.nan, np.float32))
        cublas.gemm(False, False, m, n, 0, 1.0, 0, 0, 0.0, gpu.ptr(dC))
        assert (dC.get() == 0).all()
        # gemv
        A = g.normal(size=(m, n)).astype(np.float32)
        for ta, xlen, ylen in ((False, n, m), (True, m, n)):
            x = g.normal(size=xlen).astype(np.float32)
            dA, dx, dy = dev(A), dev(x), dev(np.ones(ylen, np.float32))
            cublas.gemv(ta, m, n, 1.5, gpu.ptr(dA), gpu.ptr(dx), 1.0, gpu.ptr(dy))
            np.testing.assert_allclose(dy.get(), 1.5 * (A.T if ta else A) @ x + 1, rtol=1e-5)
    finally:
        caffe_lite.set_mode_cpu()
