"""Every CUDA source of the package compiles with nvcc -- to PTX for compute_80 (what CI
checks on every run), to cubins for sm_80 and sm_90 with warnings as errors (ptxas's too: no
register spills or local memory), and to a cubin for sm_90 through caffe-lite's own
compile-and-cache path.  Skips where nvcc is absent."""
import concurrent.futures
import subprocess

import pytest

from caffe_lite.backend import kernels

SOURCES = kernels.all_sources()
NVCC = kernels.find_nvcc()
need_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA compiler) is not installed")

EXPECTED = {"common", "neuron", "conv", "depthwise", "pooling", "normalization", "scale_bias",
            "softmax_loss", "solvers", "sparse"}


def test_the_expected_sources_exist():
    assert {p.stem for p in SOURCES} == EXPECTED


def _ptx(path, out_dir):
    out = out_dir / f"{path.stem}.ptx"
    cmd = kernels.nvcc_command(NVCC, path, out, "compute_80", target="ptx")
    cmd[1:1] = ["-Werror", "all-warnings"]
    return path, subprocess.run(cmd, capture_output=True, text=True), out


@need_nvcc
def test_every_kernel_source_compiles_to_ptx(tmp_path):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: _ptx(p, tmp_path), SOURCES))
    for path, res, out in results:
        assert res.returncode == 0, f"{path.name}:\n{res.stderr}"
        assert out.stat().st_size > 0
        text = out.read_text()
        for name in _kernel_names(path):
            assert f".entry {name}(" in text, f"{path.name}: kernel {name} missing from the PTX"


def _cubin(path, arch, out_dir):
    out = out_dir / f"{path.stem}-{arch}.cubin"
    cmd = kernels.nvcc_command(NVCC, path, out, arch)
    # warnings are errors, ptxas's included: no register spills, no local memory
    cmd[1:1] = ["-Werror", "all-warnings", "-Xptxas", "-warn-spills,-warn-lmem-usage,-Werror"]
    return path, arch, subprocess.run(cmd, capture_output=True, text=True)


@need_nvcc
def test_every_kernel_source_compiles_to_cubins_without_warnings(tmp_path):
    jobs = [(p, a) for p in SOURCES for a in ("sm_80", "sm_90")]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda j: _cubin(*j, tmp_path), jobs))
    for path, arch, res in results:
        assert res.returncode == 0, f"{path.name} for {arch}:\n{res.stderr}"


@need_nvcc
def test_compile_source_builds_and_caches_cubins(tmp_path):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        blobs = list(pool.map(lambda p: kernels.compile_source(p, "sm_90", directory=tmp_path),
                              SOURCES))
    assert all(b[:4] == b"\x7fELF" for b in blobs)
    cached = sorted(tmp_path.glob("*.cubin"))
    assert len(cached) == len(SOURCES)
    # a second compile is a cache hit: same bytes, no new file
    again = kernels.compile_source(SOURCES[0], "sm_90", directory=tmp_path)
    assert again == blobs[0] and len(list(tmp_path.glob("*.cubin"))) == len(SOURCES)
    assert not list(tmp_path.glob("*.tmp"))


@need_nvcc
def test_compile_errors_are_reported(tmp_path):
    bad = tmp_path / "bad.cu"
    bad.write_text('extern "C" __global__ void k(float* x) { x[0] = undefined_name; }\n')
    with pytest.raises(kernels.DeviceError, match="nvcc failed to compile bad.cu"):
        kernels.compile_source(bad, "sm_90", directory=tmp_path / "cache")


def _kernel_names(path):
    """The kernels a source defines, macros expanded (nvcc's preprocessor)."""
    import re
    res = subprocess.run([NVCC, "-E", "-x", "cu", str(path)], capture_output=True, text=True,
                         check=True)
    names = re.findall(r'extern\s+"C"\s+(?:__global__|__attribute__\(\(global\)\))\s+void\s+'
                       r'(\w+)', res.stdout)
    assert names, f"{path.name}: no kernels found"
    return names
