"""C99 export of any network of the engine's layers: a standalone, checked C reference.

``export_c(net, outdir)`` writes net.h, net.c (one function per layer, each citing its equation),
the parameters (weights.c arrays or a weights.bin blob), main.c and a Makefile. See
:mod:`tuckerref.export.plan` for the execution plan, :mod:`tuckerref.export.memory` for the fused
units, the static memory plan and the footprint (footprint.json), and
:mod:`tuckerref.export.templates` for the C code itself; :mod:`tuckerref.export.timing` compiles,
runs and times it (the "c" backend of ``tuckerref table2``), :mod:`tuckerref.export.counters` counts it
under Valgrind (``--counter``).
"""
from .memory import Unit, footprint, format_footprint, pad_rows, place_units, plan_units
from .plan import Step, place_buffers, plan_network
from .timing import DEFAULT_CFLAGS, compile_c, profile_c, run_c
from .writer import WEIGHTS_FORMATS, ExportResult, export_c

__all__ = ["export_c", "ExportResult", "WEIGHTS_FORMATS", "plan_network", "place_buffers", "Step",
           "compile_c", "run_c", "profile_c", "DEFAULT_CFLAGS", "Unit", "plan_units", "place_units", "footprint",
           "format_footprint", "pad_rows"]
