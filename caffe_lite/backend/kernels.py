"""CUDA kernel sources: lookup, compilation with nvcc, an on-disk cache, and loading.

Kernels are plain CUDA C (`extern "C" __global__`) in `.cu` files beside the code that uses
them (caffe_lite/layers/kernels/, caffe_lite/solvers/kernels/).  A source is compiled once per
(source text, options, nvcc version, device architecture) to a cubin kept under
$CAFFE_LITE_CACHE_DIR (default ~/.cache/caffe-lite/kernels), then loaded into the current
context with PyCUDA's module_from_buffer.  Functions are prepared once (argument signature in
PyCUDA's struct notation: "P" pointer, "i" int32, "f" float32) and launched through
`launch` / `launch_1d`.

Only `load_module` and what it calls need PyCUDA; the lookup, cache key and nvcc command are
plain Python (and tested without a GPU)."""
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading

from ..errors import DeviceError

PACKAGE = pathlib.Path(__file__).resolve().parents[1]
SOURCE_DIRS = (PACKAGE / "layers" / "kernels", PACKAGE / "solvers" / "kernels")

# Threads per block for elementwise kernels, and the most blocks a grid-stride launch uses.
THREADS = 256
MAX_BLOCKS = 65535
# nvcc options every kernel is compiled with (part of the cache key).  No --use_fast_math:
# the GPU's expf/logf/tanhf/powf then stay within a few ulp of the CPU path's numbers.
NVCC_OPTIONS = ("-O3", "-std=c++17")

_lock = threading.Lock()
_modules = {}      # (device id, module name) -> loaded module
_functions = {}    # (device id, module name, function name) -> prepared function
_nvcc_version = {}


# --- sources ---------------------------------------------------------------------------------
def all_sources():
    """Every kernel source shipped with the package, sorted by path."""
    return sorted(p for d in SOURCE_DIRS if d.is_dir() for p in d.glob("*.cu"))


def source_path(name):
    """The .cu file of kernel module `name` (its file name without .cu)."""
    for d in SOURCE_DIRS:
        p = d / f"{name}.cu"
        if p.is_file():
            return p
    known = ", ".join(p.stem for p in all_sources())
    raise DeviceError(f"no CUDA kernel source '{name}.cu' in {', '.join(map(str, SOURCE_DIRS))}"
                      f" (known: {known})")


# --- nvcc ------------------------------------------------------------------------------------
def find_nvcc():
    """nvcc from $CUDA_HOME / $CUDA_PATH, the PATH, or /usr/local/cuda; None if absent."""
    for env in ("CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"):
        root = os.environ.get(env)
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    default = "/usr/local/cuda/bin/nvcc"
    return default if os.path.isfile(default) else None


def nvcc_version(nvcc):
    """nvcc's `--version` text (part of the cache key: a new compiler recompiles)."""
    if nvcc not in _nvcc_version:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False)
        _nvcc_version[nvcc] = out.stdout.strip()
    return _nvcc_version[nvcc]


def arch_of(compute_capability):
    """(9, 0) -> 'sm_90': the real architecture nvcc compiles a cubin for."""
    major, minor = compute_capability
    return f"sm_{int(major)}{int(minor)}"


def nvcc_command(nvcc, source, output, arch, target="cubin", options=NVCC_OPTIONS):
    """The nvcc command line that compiles `source` to `output` (target 'cubin' or 'ptx')."""
    if target not in ("cubin", "ptx"):
        raise ValueError(f"target must be 'cubin' or 'ptx', got {target!r}")
    return [str(nvcc), f"--{target}", f"-arch={arch}", *options, "-o", str(output), str(source)]


def cache_dir():
    d = os.environ.get("CAFFE_LITE_CACHE_DIR")
    if d:
        return pathlib.Path(d)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "caffe-lite" / "kernels"


def cache_key(source_text, arch, options=NVCC_OPTIONS, compiler=""):
    """Hex digest naming the compiled form of one source for one architecture."""
    h = hashlib.sha256()
    for part in (source_text, arch, " ".join(options), compiler):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def cache_file(name, source_text, arch, compiler="", target="cubin", directory=None):
    key = cache_key(source_text, arch, compiler=compiler)
    return pathlib.Path(directory or cache_dir()) / f"{name}-{arch}-{key}.{target}"


def compile_source(source, arch, target="cubin", directory=None, nvcc=None):
    """Compile `source` (a path) for `arch`, reusing the cached result; returns its bytes."""
    source = pathlib.Path(source)
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise DeviceError("nvcc (the CUDA compiler) was not found: set CUDA_HOME or put nvcc on "
                          "the PATH; caffe-lite compiles its kernels with it on first use")
    text = source.read_text()
    out = cache_file(source.stem, text, arch, nvcc_version(nvcc), target, directory)
    if out.is_file():
        return out.read_bytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        cmd = nvcc_command(nvcc, source, tmp, arch, target)
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise DeviceError(f"nvcc failed to compile {source.name} for {arch} "
                              f"(exit {res.returncode}): {res.stderr.strip()[-2000:]}")
        os.replace(tmp, out)  # atomic: a concurrent process never sees half a cubin
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out.read_bytes()


# --- loading (needs PyCUDA and a device) -------------------------------------------------------
def _load_cubin(name):
    import pycuda.driver as drv
    from . import gpu
    cubin = compile_source(source_path(name), arch_of(gpu.compute_capability()))
    return drv.module_from_buffer(cubin)


# How a module is built and loaded.  The test suite swaps this for a CPU emulator of the
# kernels (tests/gpu_emu) to run the GPU code paths on machines without a GPU.
loader = _load_cubin


def load_module(name):
    """The kernel module `name` loaded in the current device's context (once per device)."""
    from . import gpu
    key = (gpu.current_device(), name)
    mod = _modules.get(key)
    if mod is None:
        with _lock:
            mod = _modules.get(key)
            if mod is None:
                mod = loader(name)
                _modules[key] = mod
    return mod


def function(module, name, signature):
    """Function `name` of kernel module `module`, prepared with `signature` (e.g. "iPPf")."""
    from . import gpu
    key = (gpu.current_device(), module, name)
    fn = _functions.get(key)
    if fn is None:
        fn = load_module(module).get_function(name)
        fn.prepare(signature)
        _functions[key] = fn
    return fn


def blocks_for(n, threads=THREADS):
    """Blocks for a grid-stride loop over n items (at least one)."""
    return max(1, min(MAX_BLOCKS, (int(n) + threads - 1) // threads))


def launch(fn, grid, block, *args):
    """Launch a prepared function on the default stream.  Pointers are ints, the rest
    Python/numpy numbers matching the signature."""
    fn.prepared_call(tuple(int(g) for g in grid), tuple(int(b) for b in block), *args)


def launch_1d(fn, n, *args, threads=THREADS):
    """Launch a grid-stride kernel over n items; does nothing when n == 0."""
    if n <= 0:
        return
    if n >= 2 ** 31:
        raise DeviceError(f"kernel {getattr(fn, '__name__', fn)}: {n} elements exceed the "
                          "32-bit indexing the kernels use")
    fn.prepared_call((blocks_for(n, threads), 1, 1), (threads, 1, 1), *args)


def clear():
    """Forget loaded modules (after a context change, or in tests)."""
    _modules.clear()
    _functions.clear()
