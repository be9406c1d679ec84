"""Text-format prototxt reading and writing, with errors that name file, line and column."""
import os
import re

from google.protobuf import text_format

from ..errors import CaffeLiteError, MissingFileError, PrototxtError
from ..util.atomic import atomic_write_text


def parse_text(text, message, path="<string>"):
    """Merge text-format `text` into `message`.  Like C++ TextFormat::Parse as Caffe uses it,
    a singular field given twice keeps the last value."""
    try:
        text_format.Merge(text, message)
    except text_format.ParseError as exc:
        detail = str(exc)
        line, col = exc.GetLine(), exc.GetColumn()
        # ParseError's text starts with "line:col : "; keep only the explanation.
        if line is not None and detail.startswith(f"{line}:"):
            detail = detail.split(" : ", 1)[-1]
        raise PrototxtError(path, line, col, detail) from None
    return message


def read_text(path, message):
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise MissingFileError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise PrototxtError(path, None, None,
                            "not a text prototxt (binary content; is this a caffemodel?)") from None
    except IsADirectoryError:
        raise CaffeLiteError(f"{path}: is a directory, expected a prototxt file") from None
    return parse_text(text, message, path)


_FIELD_START = re.compile(r"^\s*(#[^\n]*\n\s*)*[a-z_][a-z0-9_]*\s*[:{]")


def looks_like_text_proto(s):
    """True for text-format content (as opposed to a file name that does not exist)."""
    return isinstance(s, str) and ("{" in s or "\n" in s or bool(_FIELD_START.match(s)))


def load_message(source, message_cls, what="prototxt"):
    """A message from a path, a text-format string, or a message instance (copied)."""
    if isinstance(source, message_cls):
        m = message_cls()
        m.CopyFrom(source)
        return m, None
    if isinstance(source, (str, os.PathLike)):
        p = os.fspath(source)
        if os.path.exists(p):
            return read_text(p, message_cls()), p
        if looks_like_text_proto(p):
            return parse_text(p, message_cls()), None
        raise MissingFileError(f"{p}: no such {what} file")
    raise CaffeLiteError(f"expected a {what} path, text or {message_cls.__name__}, "
                         f"got {type(source).__name__}")


def to_text(message):
    return text_format.MessageToString(message)


def write_text(path, message, overwrite=True):
    atomic_write_text(path, to_text(message), overwrite=overwrite)
