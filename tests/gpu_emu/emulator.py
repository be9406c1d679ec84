"""Run caffe-lite's CUDA kernels on the CPU, for tests on machines without a GPU.

Each .cu file is compiled with g++ together with emu.h (which defines threadIdx, blockIdx,
__syncthreads, __shared__ ... for the host) and generated launchers, one per
`extern "C" __global__` kernel.  The loaded module looks like a PyCUDA module: get_function,
prepare, prepared_call.  prepared_call checks the prepared signature against the kernel's
declared parameters, the launch shape, and that every pointer argument points into a live
emulated device allocation -- mistakes that on a GPU corrupt memory silently.

A stand-in for the cuBLAS calls (FakeCublas) computes the column-major products with numpy
exactly as the cuBLAS documentation defines them, checking the leading dimensions."""
import ctypes
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import threading

import numpy as np

import emu_memory as memory

HERE = pathlib.Path(__file__).resolve().parent
EMU_H = HERE / "emu.h"

_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)\s*\{', re.S)
_CTYPES = {"P": ctypes.c_void_p, "i": ctypes.c_int, "f": ctypes.c_float, "d": ctypes.c_double}


def compiler():
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")


def available():
    """(True, '') when a C++20 compiler can build the emulator, else (False, reason)."""
    if compiler() is None:
        return False, "no C++ compiler (g++) to build the CPU emulator of the CUDA kernels"
    return True, ""


def _param_kind(decl):
    decl = decl.strip()
    if "*" in decl:
        return "P"
    words = decl.replace("const", "").split()
    typ = " ".join(words[:-1])
    return {"int": "i", "float": "f", "double": "d"}[typ]


_FUNCTION = re.compile(r"\b(\w+)\s*\(((?:[^()]|\([^()]*\))*)\)\s*(?:const\s*)?\{")
_IDENT = re.compile(r"\b\w+\b")


def _body(source, start):
    """The text from `start` (just after an opening brace) to its matching close."""
    depth, i = 1, start
    while depth:
        c = source[i]
        depth += (c == "{") - (c == "}")
        i += 1
    return source[start:i]


def _synchronising(source):
    """Names of the functions whose bodies reach __syncthreads, directly or through the
    functions they call (device helpers and templates included)."""
    bodies = {}
    for m in _FUNCTION.finditer(source):
        if m.group(1) not in ("if", "for", "while", "switch", "return", "sizeof"):
            bodies.setdefault(m.group(1), _body(source, m.end()))
    calls = {f: set(_IDENT.findall(b)) & set(bodies) for f, b in bodies.items()}
    sync = {f for f, b in bodies.items() if "__syncthreads" in b}
    grew = True
    while grew:
        new = {f for f, called in calls.items() if f not in sync and called & sync}
        sync |= new
        grew = bool(new)
    return sync


def parse_kernels(source):
    """{name: (param declarations, signature chars, uses __syncthreads)} of a .cu text."""
    kernels = {}
    sync = _synchronising(source)
    for m in _KERNEL.finditer(source):
        name, params = m.group(1), m.group(2)
        decls = [p.strip() for p in params.split(",") if p.strip()]
        body = _body(source, m.end())
        threaded = "__syncthreads" in body or bool(set(_IDENT.findall(body)) & sync)
        kernels[name] = (decls, "".join(_param_kind(d) for d in decls), threaded)
    return kernels


def preprocess(cu_path):
    """The source after the C preprocessor (macros in signatures and bodies expanded)."""
    res = subprocess.run([compiler(), "-E", "-P", "-x", "c++", str(cu_path)], capture_output=True,
                         text=True)
    if res.returncode:
        raise RuntimeError(f"preprocessing {cu_path} failed:\n{res.stderr}")
    return res.stdout


def _wrapper_source(cu_path, kernels):
    lines = [f'#include "{EMU_H}"', f'#include "{cu_path}"', ""]
    for name, (decls, _, _) in kernels.items():
        args = ", ".join(re.findall(r"(\w+)\s*$", d)[0] for d in decls)
        params = "".join(", " + d for d in decls)
        lines.append(
            f'extern "C" void emu_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, '
            f'unsigned by, unsigned bz, int threaded{params}) {{\n'
            f'  emu_run(dim3{{gx, gy, gz}}, dim3{{bx, by, bz}}, threaded, [&]() {{ {name}({args}); }});\n'
            f'}}')
    return "\n".join(lines) + "\n"


_build_lock = threading.Lock()


def build_dir():
    d = os.environ.get("CAFFE_LITE_EMU_BUILD") or os.path.join(
        tempfile.gettempdir(), f"caffe-lite-emu-{os.getuid()}")
    os.makedirs(d, exist_ok=True)
    return pathlib.Path(d)


def build(cu_path, extra_flags=()):
    """Compile one .cu file for the emulator (cached by content); returns (library, kernels)."""
    cu_path = pathlib.Path(cu_path)
    source = cu_path.read_text()
    kernels = parse_kernels(preprocess(cu_path))
    wrapper = _wrapper_source(cu_path, kernels)
    flags = ["-std=c++17", "-O1", "-g", "-fPIC", "-shared", "-w", *extra_flags]
    if os.environ.get("CAFFE_LITE_EMU_ASAN"):
        # run python with LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0
        flags += ["-fsanitize=address", "-DEMU_UCONTEXT"]
    key = hashlib.sha256("\0".join([source, EMU_H.read_text(), wrapper, " ".join(flags)])
                         .encode()).hexdigest()[:24]
    out = build_dir() / f"{cu_path.stem}-{key}.so"
    with _build_lock:
        if not out.exists():
            src = build_dir() / f"{cu_path.stem}-{key}.cpp"
            src.write_text(wrapper)
            tmp = str(out) + f".{os.getpid()}.tmp"
            res = subprocess.run([compiler(), *flags, "-o", tmp, str(src)], capture_output=True,
                                 text=True)
            if res.returncode:
                raise RuntimeError(f"emulator build of {cu_path.name} failed:\n{res.stderr}")
            os.replace(tmp, out)
    return ctypes.CDLL(str(out)), kernels


class EmuFunction:
    def __init__(self, module, name, lib, decls, sig, threaded):
        self.module, self.name = module, name
        self._fn = getattr(lib, f"emu_{name}")
        self._take_error = lib.emu_take_sync_error
        self.decls, self.declared, self.threaded = decls, sig, threaded
        self.arg_format = None

    def prepare(self, signature):
        sig = "".join(signature)
        if sig != self.declared:
            raise TypeError(f"kernel {self.module}.{self.name} prepared as {sig!r} but declared "
                            f"as {self.declared!r} ({', '.join(self.decls)})")
        self.arg_format = sig
        self._fn.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_int] + [_CTYPES[c] for c in sig]
        self._fn.restype = None
        return self

    def prepared_call(self, grid, block, *args):
        memory.launches += 1
        if memory.null_device:
            return
        if self.arg_format is None:
            raise RuntimeError(f"kernel {self.name} launched before prepare()")
        if len(args) != len(self.arg_format):
            raise TypeError(f"kernel {self.module}.{self.name} takes {len(self.arg_format)} "
                            f"arguments, got {len(args)}")
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        if any(int(g) < 1 for g in grid) or any(int(b) < 1 for b in block):
            raise ValueError(f"kernel {self.name}: empty launch grid {grid} block {block}")
        if block[0] * block[1] * block[2] > 1024 or grid[1] > 65535 or grid[2] > 65535:
            raise ValueError(f"kernel {self.name}: launch shape grid {grid} block {block} "
                             "exceeds CUDA's limits")
        conv = []
        for i, (c, a) in enumerate(zip(self.arg_format, args)):
            if c == "P":
                p = int(a)
                if p != 0:
                    memory.check_pointer(p, f"{self.module}.{self.name} argument {i} "
                                            f"({self.decls[i]})")
                conv.append(p)
            elif c == "i":
                v = int(a)
                if not -2 ** 31 <= v < 2 ** 31:
                    raise OverflowError(f"kernel {self.name} int argument {i} = {v}")
                conv.append(v)
            else:
                conv.append(float(a))
        self._fn(*(int(g) for g in grid), *(int(b) for b in block), int(self.threaded), *conv)
        for c, p in zip(self.arg_format, conv):
            if c == "P" and p:
                memory.check_guards(p, f"{self.module}.{self.name}")
        err = self._take_error()
        if err & 1:
            raise RuntimeError(f"kernel {self.name} called __syncthreads in serial emulation")
        if err & 2:
            raise RuntimeError(f"kernel {self.name}: some threads of a block finished while "
                               "others waited at __syncthreads (divergent barrier)")
        if err & 4:
            raise RuntimeError(f"kernel {self.name}: a float4 access to an address that is not "
                               "16-byte aligned (a misaligned-address fault on a GPU)")


class EmuModule:
    def __init__(self, name, path):
        self.name = name
        self.lib, self.kernels = build(path)

    def get_function(self, name):
        if name not in self.kernels:
            raise LookupError(f"no kernel '{name}' in {self.name}.cu")
        decls, sig, threaded = self.kernels[name]
        return EmuFunction(self.name, name, self.lib, decls, sig, threaded)


def load(name):
    """kernels.loader replacement: the emulated module of kernel source `name`."""
    from caffe_lite.backend.kernels import source_path
    return EmuModule(name, source_path(name))


# --- cuBLAS -----------------------------------------------------------------------------------
def _colmajor(ptr, rows, cols, ld, what):
    """The column-major rows x cols matrix at device address ptr with leading dimension ld."""
    if rows == 0 or cols == 0:
        return np.zeros((rows, cols), np.float32)
    if ld < max(1, rows):
        raise ValueError(f"cuBLAS: {what} leading dimension {ld} < rows {rows} "
                         "(CUBLAS_STATUS_INVALID_VALUE)")
    n = ld * (cols - 1) + rows
    memory.check_pointer(ptr, what, nbytes=4 * n)
    flat = np.ctypeslib.as_array((ctypes.c_float * n).from_address(ptr))
    return np.lib.stride_tricks.as_strided(flat, (rows, cols), (4, 4 * ld))


class FakeCublas:
    """cublas.CublasApi's interface, computed on the host with cuBLAS's definitions."""
    calls = 0

    def create(self):
        return ctypes.c_void_p(1)

    def destroy(self, handle):
        pass

    def sgemm(self, h, opa, opb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        FakeCublas.calls += 1
        if memory.null_device:
            return
        A = _colmajor(a, k, m, lda, "A") if opa else _colmajor(a, m, k, lda, "A")
        B = _colmajor(b, n, k, ldb, "B") if opb else _colmajor(b, k, n, ldb, "B")
        C = _colmajor(c, m, n, ldc, "C")
        opA = A.T if opa else A
        opB = B.T if opb else B
        prod = alpha * (opA.astype(np.float64) @ opB.astype(np.float64))
        if beta != 0:  # cuBLAS does not read C when beta == 0
            prod += beta * C.astype(np.float64)
        C[...] = prod.astype(np.float32)

    def sgemm_strided_batched(self, h, opa, opb, m, n, k, alpha, a, lda, stride_a, b, ldb,
                              stride_b, beta, c, ldc, stride_c, batch):
        if memory.null_device:
            FakeCublas.calls += 1
            return
        for i in range(batch):
            self.sgemm(h, opa, opb, m, n, k, alpha, a + 4 * i * stride_a, lda,
                       b + 4 * i * stride_b, ldb, beta, c + 4 * i * stride_c, ldc)

    def sgemv(self, h, op, m, n, alpha, a, lda, x, incx, beta, y, incy):
        FakeCublas.calls += 1
        if memory.null_device:
            return
        assert incx == 1 and incy == 1
        A = _colmajor(a, m, n, lda, "A")
        opA = A.T if op else A
        lx, ly = opA.shape[1], opA.shape[0]
        memory.check_pointer(x, "x", nbytes=4 * lx)
        memory.check_pointer(y, "y", nbytes=4 * ly)
        X = np.ctypeslib.as_array((ctypes.c_float * lx).from_address(x))
        Y = np.ctypeslib.as_array((ctypes.c_float * ly).from_address(y))
        r = alpha * (opA.astype(np.float64) @ X.astype(np.float64))
        if beta != 0:
            r += beta * Y
        Y[...] = r.astype(np.float32)
