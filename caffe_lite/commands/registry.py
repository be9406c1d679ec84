"""The verb registry: a leaf that command modules import, so `cli` imports `commands` and never
the other way round (as Caffe's tools register with a table that includes nothing)."""

COMMANDS = {}


def command(name, help):
    """Register `fn(args)` as a subcommand; `fn.configure(parser)` adds its flags."""
    def deco(fn):
        COMMANDS[name] = (fn, help)
        return fn
    return deco


def flag(parser, name, **kw):
    """Add a Caffe-style flag usable as -name or --name."""
    parser.add_argument(f"-{name}", f"--{name}", dest=name.replace("-", "_"), **kw)
