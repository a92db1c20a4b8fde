"""Command-line entry point: ``tuckerref <command> ...``.

Each command lives in its own module under :mod:`tuckerref.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
taking the parsed arguments and returning an exit status.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Command modules, in the order their commands appear in --help.
COMMAND_MODULES = ["info", "forward", "data", "train", "compress", "fold", "demo", "table2", "scaling", "export_c"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuckerref", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"tuckerref.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"tuckerref.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"tuckerref {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tuckerref {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `tuckerref info | head`): stop quietly, as a shell tool does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
