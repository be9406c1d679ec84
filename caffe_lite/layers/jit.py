"""Optional compiled CPU kernels (numba), one module per layer family (STYLE.md A1).

A few layers have loops that whole-array numpy cannot run at memory speed: the depthwise
convolution (nine strided taps over small planes), im2col, pooling, the per-channel
reductions of BatchNorm and Scale.  When numba is installed (`pip install caffe-lite[fast]`)
those layers use the kernels of `layers/numba/<family>.py` (the SGD update's are in
`solvers/numba_sgd.py`, beside the solver); without it they run their numpy code, with the
same results within float32 rounding.  CAFFE_LITE_JIT=0 turns the kernels off.

    k = jit.kernels("pooling")      # the module, or None (no numba, or CAFFE_LITE_JIT=0)

The kernels are compiled on first use and cached on disk (numba's cache=True), so only the
first run on a machine pays the compile time; `caffe_lite.warmup.warm_up()` compiles them
ahead of time.  numba keys a kernel's cached code on its own file only, while the families
call the shared helpers of `layers/numba/_planes.py` (and their native tasks those of
`_native.py`): when those files' contents change, the families' cached code is dropped here
(`_check_shared_cache`), or it would keep running the old helpers."""
import hashlib
import importlib
import pathlib

from ..util import env

# family -> module (relative to this package unless absolute)
_LOCATIONS = {"sgd": "caffe_lite.solvers.numba_sgd"}
_SHARED = [pathlib.Path(__file__).with_name("numba") / f for f in ("_planes.py", "_native.py")]
_families = {}
_numba = None


def enabled():
    return env.flag("CAFFE_LITE_JIT")


def available():
    """Whether compiled kernels run: numba imports and CAFFE_LITE_JIT is not 0."""
    global _numba
    if not enabled():
        return False
    if _numba is None:
        try:
            import numba  # noqa: F401
            _numba = True
        except ImportError:
            _numba = False
    return _numba


def kernels(family):
    """The compiled kernels of `family` (depthwise, im2col, grouped, pooling, batchnorm, scale,
    neuron, sparse, sgd): a module, or None without numba or with CAFFE_LITE_JIT=0."""
    if not available():
        return None
    module = _families.get(family)
    if module is None and family not in _families:
        name = _LOCATIONS.get(family, f".numba.{family}")
        try:
            module = importlib.import_module(name, __package__)
        except ImportError:
            module = None
        else:
            _check_shared_cache(module)
        _families[family] = module
    return module


def _dispatchers(module):
    from numba.core.registry import CPUDispatcher
    return [v for v in vars(module).values()
            if isinstance(v, CPUDispatcher) and v.__module__ == module.__name__]


def _task_caches(module):
    """The on-disk caches of `module`'s native tasks (numba/_native.py), compiled later."""
    from numba.core.caching import FunctionCache
    return [FunctionCache(v) for v in vars(module).values()
            if getattr(v, "native_task", False) and v.__module__ == module.__name__]


def shared_digest():
    """The digest of the shared helper files a family's cached code depends on."""
    return hashlib.sha256(b"".join(p.read_bytes() for p in _SHARED)).hexdigest()


def _check_shared_cache(module):
    """Drop `module`'s cached kernels when _planes.py or _native.py changed since they were
    cached."""
    try:
        digest = shared_digest()
    except OSError:
        return
    caches = [d._cache for d in _dispatchers(module) if hasattr(d._cache, "_cache_path")]
    caches += _task_caches(module)
    if not caches:
        return
    stamp = pathlib.Path(caches[0]._cache_path) / (module.__name__.rsplit(".", 1)[-1]
                                                    + ".planes-sha256")
    try:
        if stamp.read_text() == digest:
            return
    except OSError:
        pass
    for cache in caches:
        try:
            cache.flush()
        except Exception:  # noqa: BLE001  (an unwritable cache: nothing is saved there)
            pass
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest)
    except OSError:
        pass  # a read-only cache: numba does not write there either
