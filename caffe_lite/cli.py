"""The `caffe-lite` command: Caffe's verbs and flags (single-dash long flags work, as Caffe's
do), plus caffe-lite's own.  User errors print one line and exit non-zero."""
import argparse
import logging
import sys

from . import __version__
from .commands.registry import COMMANDS
from .errors import CaffeLiteError


def build_parser():
    p = argparse.ArgumentParser(
        prog="caffe-lite",
        description="Caffe in Python with pruning masks. Commands take Caffe's flags "
                    "(-solver, -weights, -model, ...).")
    p.add_argument("--version", "-version", action="version",
                   version=f"caffe-lite {__version__}")
    p.add_argument("--log-level", "-log_level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging verbosity")
    sub = p.add_subparsers(dest="command", metavar="<command>")
    for name, (fn, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if hasattr(fn, "configure"):
            fn.configure(sp)
        sp.set_defaults(func=fn)
    return p


def main(argv=None):
    from . import commands  # noqa: F401  (importing the verb modules registers them)
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from .util.glog import install
    install(getattr(logging, args.log_level))
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args) or 0
    except CaffeLiteError as exc:
        text = " ".join(str(exc).split("\n"))  # one line, whatever a library's message held
        print(f"caffe-lite {args.command}: error: {text}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"caffe-lite {args.command}: error: out of memory", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"caffe-lite {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as Unix tools do.
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
