"""Reading caffe-lite's environment settings (CAFFE_LITE_JIT, CAFFE_LITE_FUSE, ...) cheaply.

Some of them are consulted on every forward pass; `os.environ.get` encodes the key and decodes
the value each time (about a microsecond), so they are read here from the mapping underneath
`os.environ` (the same dictionary, kept up to date by assignments to os.environ and by
monkeypatched tests), each distinct raw value decoded and parsed once."""
import os

_raw = getattr(os.environ, "_data", None)
_encode = getattr(os.environ, "encodekey", None)
_decode = getattr(os.environ, "decodevalue", None)
_keys = {}
_values = {}
_flags = {}


def get(name, default=None):
    """os.environ.get(name, default)."""
    value = _read(name)
    return default if value is None else value


def _read(name):
    if _raw is None or _encode is None or _decode is None:
        return os.environ.get(name)
    key = _keys.get(name)
    if key is None:
        key = _keys[name] = _encode(name)
    raw = _raw.get(key)
    if raw is None:
        return None
    value = _values.get(raw)
    if value is None:
        value = _values[raw] = _decode(raw)
    return value


def flag(name, default=True):
    """A switch: false when set to 0 / false / no / off (any case), else true; `default`
    when unset or empty."""
    value = get(name)
    if not value:
        return default
    known = _flags.get(value)
    if known is None:
        known = _flags[value] = value.lower() not in ("0", "false", "no", "off")
    return known


def raw_reader(names):
    """A callable giving raw_values(names), the names encoded once."""
    if _raw is None or _encode is None:
        return lambda: raw_values(names)
    keys, get = tuple(_encode(n) for n in names), _raw.get
    return lambda: tuple(map(get, keys))


def raw_values(names):
    """The values of the variables `names` (a tuple) as stored, None where unset: what a cache
    keyed on several settings compares (one dictionary lookup each, nothing decoded)."""
    if _raw is None or _encode is None:
        return tuple(os.environ.get(n) for n in names)
    keys = _keys.get(names)
    if keys is None:
        keys = _keys[names] = tuple(_encode(n) for n in names)
    return tuple(map(_raw.get, keys))
