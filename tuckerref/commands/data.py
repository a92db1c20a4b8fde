"""``tuckerref data ...``: build clip data sets in the shared HDF5 format (:mod:`tuckerref.data.store`).

Each subcommand group lives in a module ``tuckerref/commands/data_<name>.py`` exposing
``register(data_subparsers)``; adding one is a one-line change to :data:`SUBCOMMAND_MODULES`.
"""
from __future__ import annotations

import importlib

# Subcommand modules, in the order their subcommands appear in ``tuckerref data --help``.
SUBCOMMAND_MODULES = ["data_thetis", "data_synth", "data_digits"]


def register(sub):
    p = sub.add_parser("data", help="build clip data sets (THETIS import, ...)",
                       description="Build clip data sets in the shared HDF5 format (tuckerref.data.store).")
    data_sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data_sub.required = True
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(data_sub)
