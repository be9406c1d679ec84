"""The `caffe` alias: pycaffe's module layout over caffe-lite, so that code written for BVLC's
pycaffe (`import caffe`, `from caffe import layers as L, params as P`, `caffe.Layer`,
`caffe.io`, `caffe.proto.caffe_pb2`, `import caffe.draw`, ...) runs unchanged.

It is opt-in: `python -m pip install ./alias` (from a checkout) installs the distribution
`caffe-lite-alias`, a top-level `caffe` package of one file that calls `populate`.  That
package warns when a real (BVLC) pycaffe is installed too, since it then hides it (or is
hidden by it, when the real one comes first on sys.path).  Without the alias installed,
`install()` serves the same module for one process, only when no other `caffe` is importable;
caffe-lite does that for Python-layer modules that say `import caffe`.

`caffe.X` is the very object `caffe_lite.X` is (or, for the submodules, the caffe_lite
module), so classes, isinstance checks and module state are shared."""
import glob
import importlib
import importlib.util
import os
import sys
import types
import warnings

# pycaffe's submodules -> caffe-lite's modules
SUBMODULES = {
    "proto": "caffe_lite.proto",
    "proto.caffe_pb2": "caffe_lite.proto.caffe_pb2",
    "io": "caffe_lite.io",
    "draw": "caffe_lite.draw",
    "coord_map": "caffe_lite.coord_map",
    "net_spec": "caffe_lite.net_spec",
    "classifier": "caffe_lite.classifier",
    "detector": "caffe_lite.detector",
    "pycaffe": "caffe_lite.pycaffe",
}


class ShadowedPycaffeWarning(UserWarning):
    """caffe-lite's `caffe` alias and a BVLC pycaffe are both installed."""


def populate(module):
    """Fill `module` (a module object or the name of one in sys.modules) with pycaffe's names,
    and register its submodules (`<name>.io`, `<name>.proto.caffe_pb2`, ...)."""
    if isinstance(module, str):
        module = sys.modules[module]
    import caffe_lite
    from caffe_lite import net_spec
    from caffe_lite.pycaffe import CAFFE_NAMES
    for name in CAFFE_NAMES:
        if name not in ("layers", "params"):
            setattr(module, name, getattr(caffe_lite, name))
    module.layers, module.params = net_spec.layers, net_spec.params  # the NetSpec factories
    module.__caffe_lite_alias__ = True
    for sub, target in SUBMODULES.items():
        mod = importlib.import_module(target)
        sys.modules[f"{module.__name__}.{sub}"] = mod
        if "." not in sub:
            setattr(module, sub, mod)
    return module


def real_pycaffe_locations(exclude=None):
    """Folders on sys.path holding a BVLC pycaffe (a `caffe` package with its compiled
    `_caffe` module), other than `exclude`."""
    found = []
    skip = os.path.realpath(exclude) if exclude else None
    for entry in sys.path:
        pkg = os.path.join(entry or os.getcwd(), "caffe")
        if not os.path.isdir(pkg) or os.path.realpath(pkg) == skip:
            continue
        if any(glob.glob(os.path.join(pkg, f"_caffe*{ext}")) for ext in (".so", ".pyd")):
            found.append(os.path.realpath(pkg))
    return list(dict.fromkeys(found))


def warn_if_shadowing(package_dir):
    """Called by the installed alias: say so when a real pycaffe is installed as well."""
    others = real_pycaffe_locations(exclude=package_dir)
    if others:
        warnings.warn(f"`import caffe` gives caffe-lite's alias ({package_dir}), which hides the "
                      f"BVLC pycaffe at {others[0]}; uninstall one of them (python -m pip "
                      "uninstall caffe-lite-alias) to choose", ShadowedPycaffeWarning,
                      stacklevel=3)


def install(name="caffe"):
    """Serve the alias as `import <name>` in this process when no module of that name is
    importable.  Returns True when `import <name>` now gives the alias."""
    existing = sys.modules.get(name)
    if existing is not None:
        return bool(getattr(existing, "__caffe_lite_alias__", False))
    if importlib.util.find_spec(name) is not None:
        return False
    module = types.ModuleType(name, __doc__)
    module.__path__ = []  # a package: `import caffe.io` finds the registered submodule
    populate(module)
    sys.modules[name] = module
    return True
