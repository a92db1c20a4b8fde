"""Command-line entry point: ``tuckerref <command> ...``.

Each command lives in its own module under :mod:`tuckerref.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
taking the parsed arguments and returning an exit status.

Building the parser imports only the standard library: :data:`COMMANDS` lists every command
with its one-line summary, and only the module of the command being run is imported (``--help``
alone imports none). Command modules import NumPy, Numba, SciPy and h5py inside their ``run``
functions, never at module level, so ``tuckerref --help`` and ``tuckerref train --help`` stay quick.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# (command, module under tuckerref.commands, one-line summary), in the order of --help.
COMMANDS = [
    ("info", "info", "print versions, thread count and the paper network's shapes"),
    ("forward", "forward", "time a forward pass of the paper network on a random clip"),
    ("data", "data", "build clip data sets (THETIS import, ...)"),
    ("train", "train", "train the paper network on a clip data set (HDF5)"),
    ("finetune", "train", "continue training a saved (e.g. compressed) network on its training split"),
    ("evaluate", "train", "accuracy and confusion matrix of a saved network on a clip data set"),
    ("fold", "fold", "fold BatchNorm3d layers into the convolutions before them (for inference)"),
    ("compress", "compress", "Tucker-2/Tucker-1 compress a saved network (VBMF or given ranks)"),
    ("demo", "demo", "synthesize -> train -> compress -> fine-tune -> evaluate -> report"),
    ("table2", "table2", "the paper's Table 2: weights, FLOPs and measured time, original vs compressed"),
    ("scaling", "scaling", "time a layer's Tucker-2 replacement at many ranks; fit time = a + b*FLOPs"),
    ("study", "study", "studies over a grid of settings (ranks)"),
    ("export-c", "export_c", "write net.h, net.c, weights, main.c and a Makefile for a saved network"),
    ("import-onnx", "import_onnx", "read an ONNX model (e.g. from torch.onnx.export) into a weights file"),
    ("export-onnx", "export_onnx", "write a saved network as an ONNX model other runtimes can run"),
]
# What bad input raises (every check names the file, option or value at fault): reported in one line,
# exit status 2. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError)
# Kept for code that lists the modules (each appears once, in --help order).
COMMAND_MODULES = list(dict.fromkeys(module for _, module, _ in COMMANDS))


def _chosen_command(argv):
    """The command named in ``argv`` (its first argument that is not an option), or None."""
    names = {name for name, _, _ in COMMANDS}
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg if arg in names else None
    return None


def _register(sub, module_name) -> bool:
    try:
        module = importlib.import_module(f"tuckerref.commands.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"tuckerref.commands.{module_name}":
            return False  # command not built yet
        raise
    module.register(sub)
    return True


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The ``tuckerref`` parser. With ``argv``, only the module of the command it names is imported
    (the other commands appear in ``--help`` with their summaries); without, every module is."""
    parser = argparse.ArgumentParser(prog="tuckerref", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    if argv is None:
        wanted = set(COMMAND_MODULES)
    else:
        chosen = _chosen_command(argv)
        wanted = {module for name, module, _ in COMMANDS if name == chosen}
    registered = set()
    for name, module, summary in COMMANDS:
        if module in wanted and module not in registered:
            registered.add(module)
            if _register(sub, module):
                continue
        if name not in sub.choices:
            sub.add_parser(name, help=summary, add_help=False)  # listed in --help; never run
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    if getattr(args, "func", None) is None:  # a listed command whose module was not loaded: load them all
        args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
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
