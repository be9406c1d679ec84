"""darknet's .cfg text: `[section]` headers and `key=value` options, read as darknet reads them
(whitespace removed everywhere, `#` and `;` lines are comments) and written back."""
import os

from ...errors import CaffeLiteError
from ...util.atomic import atomic_write_text

# darknet's short section names (parser.c accepts both spellings)
ALIASES = {"conv": "convolutional", "conn": "connected", "max": "maxpool", "avg": "avgpool",
           "soft": "softmax", "network": "net", "deconv": "deconvolutional",
           "normalization": "lrn"}

REQUIRED = object()


class DarknetError(CaffeLiteError):
    """A darknet cfg or model that cannot be read, converted or written; names the file, the
    darknet layer (index and section) and the values involved."""


class Section:
    """One `[kind]` block.  `index` is darknet's layer index (-1 for [net]); `options` keeps
    the raw strings in file order."""

    def __init__(self, kind, line, path, index=-1, options=None):
        self.kind, self.line, self.path, self.index = kind, line, path, index
        self.options = dict(options or {})
        self.option_lines = {}

    def where(self):
        at = f"{self.path}:{self.line}: " if self.line else (f"{self.path}: " if self.path
                                                             else "")
        if self.kind == "net":
            return f"{at}[net]"
        return f"{at}layer {self.index} [{self.kind}]"

    def error(self, detail):
        return DarknetError(f"{self.where()}: {detail}")

    def has(self, key):
        return key in self.options

    def _get(self, key, default, conv, what):
        if key not in self.options:
            if default is REQUIRED:
                raise self.error(f"needs '{key}='")
            return default
        raw = self.options[key]
        try:
            return conv(raw)
        except ValueError:
            raise self.error(f"'{key}={raw}' is not {what}") from None

    def int(self, key, default=REQUIRED):
        return self._get(key, default, int, "an integer")

    def float(self, key, default=REQUIRED):
        return self._get(key, default, float, "a number")

    def str(self, key, default=REQUIRED):
        return self._get(key, default, str, "text")

    def ints(self, key, default=REQUIRED):
        return self._get(key, default, lambda s: [int(v) for v in s.split(",") if v],
                         "a list of integers")

    def floats(self, key, default=REQUIRED):
        return self._get(key, default, lambda s: [float(v) for v in s.split(",") if v],
                         "a list of numbers")

    def check_keys(self, known, ignored=()):
        """Refuse options this converter does not implement (darknet would use them), so
        nothing is silently computed differently.  `ignored` are training-only options."""
        unknown = [k for k in self.options if k not in known and k not in ignored]
        if unknown:
            raise self.error(f"unsupported option(s) {', '.join(unknown)} (this converter "
                             f"knows: {', '.join(sorted(known))})")


def parse_cfg(text, path="<cfg>"):
    """[Section]: the first is [net]; the others get darknet's layer indices 0, 1, ..."""
    sections = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = "".join(raw.split())  # darknet's strip(): every space and tab goes
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise DarknetError(f"{path}:{lineno}: malformed section header '{raw.strip()}'")
            kind = line[1:-1].lower()
            kind = ALIASES.get(kind, kind)
            sections.append(Section(kind, lineno, path, index=len(sections) - 1))
            continue
        for mark in "#;":  # a trailing comment (darknet would keep it in the value)
            line = line.split(mark, 1)[0]
        key, eq, value = line.partition("=")
        if not eq or not key:
            raise DarknetError(f"{path}:{lineno}: expected 'key=value' or '[section]', got "
                               f"'{raw.strip()}'")
        if not sections:
            raise DarknetError(f"{path}:{lineno}: option '{key}' before the first [section]")
        sections[-1].options[key] = value
        sections[-1].option_lines[key] = lineno
    if not sections:
        raise DarknetError(f"{path}: no sections: not a darknet cfg")
    if sections[0].kind != "net":
        raise DarknetError(f"{sections[0].where()}: the first section must be [net] (or "
                           "[network])")
    for s in sections[1:]:
        if s.kind == "net":
            raise DarknetError(f"{s.path}:{s.line}: a second [net] section")
    return sections


def read_cfg(path):
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        raise CaffeLiteError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CaffeLiteError(f"{path}: is a directory, expected a darknet .cfg") from None
    if "\x00" in text[:4096]:
        raise DarknetError(f"{path}: binary content: not a darknet cfg (a .weights file?)")
    return parse_cfg(text, path)


def format_cfg(sections, header_comment=None):
    out = []
    if header_comment:
        out += [f"# {line}" if line else "#" for line in header_comment.splitlines()]
    for s in sections:
        if out:
            out.append("")
        out.append(f"[{s.kind}]")
        out += [f"{k}={v}" for k, v in s.options.items()]
    return "\n".join(out) + "\n"


def write_cfg(path, sections, header_comment=None, overwrite=True):
    atomic_write_text(path, format_cfg(sections, header_comment), overwrite=overwrite)


def number(v):
    """A number as a cfg writes it: `1`, `0.1` (the shortest text that reads back as the same
    float32, which is what darknet parses it into)."""
    import numpy as np
    f = np.float32(v)
    if float(f).is_integer() and abs(f) < 1e9:
        return str(int(f))
    return np.format_float_positional(f, unique=True, trim="-")
