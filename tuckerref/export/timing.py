"""Compile and run an exported network, and time it layer by layer: the "c" timing backend.

:func:`compile_c` builds the sources :func:`tuckerref.export.export_c` wrote with the system C
compiler, :func:`run_c` feeds clips through the binary (main.c) and reads back its logits and
per-layer timings (``-t``/``-W``/``-o``), and :func:`profile_c` wraps both into a
:class:`tuckerref.timings.NetworkProfile`, so that ``tuckerref table2 --backend c`` and the
time-versus-FLOPs study run on plain single-threaded C. Its times are process CPU time and wall
time per forward pass of one clip, like the Numba backend's.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..nn import Sequential
from ..timings import LayerTiming, NetworkProfile, Stats, check_input, check_repeats
from .memory import INPUT_PAD
from .plan import IDENTITY
from .writer import export_c

#: The flags the generated Makefile uses by default.
DEFAULT_CFLAGS = ("-O2", "-std=c99", "-Wall", "-Werror")


def find_compiler() -> str:
    """Path of ``$CC`` (default ``cc``); ValueError when there is none."""
    name = os.environ.get("CC", "cc")
    path = shutil.which(name)
    if path is None:
        raise ValueError(f"no C compiler: {name!r} is not on PATH (set CC to one)")
    return path


def compile_c(outdir, cflags=DEFAULT_CFLAGS, output="net") -> Path:
    """Compile the exported sources in ``outdir`` (the Makefile's SOURCES) with ``cflags``; returns the binary."""
    outdir = Path(outdir)
    makefile = outdir / "Makefile"
    if not makefile.exists():
        raise ValueError(f"{outdir} holds no exported network (no Makefile); run export_c first")
    match = re.search(r"^SOURCES = (.+)$", makefile.read_text(), re.M)
    if match is None:
        raise ValueError(f"{makefile} has no SOURCES line")
    cmd = [find_compiler(), *cflags, "-o", output, *match.group(1).split(), "-lm"]
    proc = subprocess.run(cmd, cwd=outdir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling {outdir} failed ({' '.join(cmd)}):\n{proc.stderr}")
    return outdir / output


def run_c(binary, clips, *, repeats=0, warmup=1, weights=None):
    """Run the compiled network on ``clips`` (N, C, F, H, W).

    Returns ``(logits, timings)``: logits (N, classes) float32, and with ``repeats`` > 0 the list
    ``[(layer name, cpu ms per pass, wall ms per pass)]`` of main.c's ``-t`` over the first clip
    (else None).
    """
    binary = Path(binary)
    work = binary.parent
    clips_path, logits_path, csv_path = work / "clips.f32", work / "logits.f32", work / "times.csv"
    clips = np.ascontiguousarray(clips, dtype=np.float32)
    clips.tofile(clips_path)
    cmd = [str(binary.resolve())]
    if repeats:
        cmd += ["-t", str(int(repeats)), "-W", str(int(warmup)), "-o", csv_path.name]
    if weights is not None:
        cmd += ["-w", str(weights)]
    cmd += [clips_path.name, logits_path.name]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{binary} failed with status {proc.returncode}: {proc.stderr.strip()}")
    logits = np.fromfile(logits_path, dtype=np.float32).reshape(len(clips), -1)
    if not repeats:
        return logits, None
    by_layer: dict = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            entry = by_layer.setdefault(int(row["layer"]), (row["name"], [], []))
            entry[1].append(float(row["cpu_ms"]))
            entry[2].append(float(row["wall_ms"]))
    return logits, [by_layer[k] for k in sorted(by_layer)]


def _stats(seconds) -> Stats:
    return Stats([float(v) for v in seconds])


def _timing_tree(module, name, leaf_samples, repeats) -> LayerTiming:
    """LayerTiming of ``module`` from its leaves' per-pass samples (seconds); a Sequential sums its children."""
    if isinstance(module, Sequential):
        children = [_timing_tree(child, f"{name}.{child_name}" if name else child_name, leaf_samples, repeats)
                    for child_name, child in module.named_children()]
        cpu = np.sum([c.cpu.samples for c in children], axis=0) if children else np.zeros(repeats)
        wall = np.sum([c.wall.samples for c in children], axis=0) if children else np.zeros(repeats)
        return LayerTiming(name or "total", "Sequential", _stats(wall), _stats(cpu), children)
    cpu, wall = leaf_samples.get(name, (np.zeros(repeats), np.zeros(repeats)))
    return LayerTiming(name, type(module).__name__, _stats(wall), _stats(cpu))


def profile_c(net: Sequential, x: np.ndarray, *, repeats: int = 10, warmup: int = 1, threads=None,
              cflags=DEFAULT_CFLAGS, workdir=None, weights_format="blob", pad_input=True) -> NetworkProfile:
    """Per-layer times of ``net`` exported to C99 and compiled with ``cflags``, on the single clip ``x`` (1, C, F, H, W).

    Same result type and layer names as :func:`tuckerref.profile.profile_network`; the C code runs
    single-threaded (``threads`` must be None or 1). Dropout and flatten layers cost nothing in C and
    report zero time. The sources and binary go to ``workdir`` (default: a temporary directory).
    ``pad_input`` (default on: every network timed is built as fast as the export builds it, whatever
    its first layer) exports with :func:`export_c`'s ``pad_input``: a first convolution then reads a
    copy of the clip in zero-padded rows, and the copy's time counts as that convolution's.
    """
    repeats, warmup = check_repeats(repeats, warmup)
    if threads not in (None, 1):
        raise ValueError(f"the C backend runs single-threaded; threads must be 1 or None, got {threads!r}")
    x = check_input(net, x)
    if x.shape[0] != 1:
        raise ValueError(f"the C backend times one clip per forward pass; got a batch of {x.shape[0]}")
    with tempfile.TemporaryDirectory(prefix="tuckerref-c-") as tmp:
        outdir = Path(workdir) if workdir is not None else Path(tmp)
        result = export_c(net, outdir, input_shape=x.shape[1:], weights_format=weights_format, pad_input=pad_input)
        binary = compile_c(outdir, cflags)
        _, timings = run_c(binary, x, repeats=repeats, warmup=warmup)
    computing = [s.path for s in result.steps if s.kind != IDENTITY]
    if [name for name, _, _ in timings] != computing:
        raise RuntimeError(f"the C binary timed layers {[n for n, _, _ in timings]}, expected {computing}")
    leaf = {name: (np.asarray(cpu) * 1e-3, np.asarray(wall) * 1e-3) for name, cpu, wall in timings}
    for pad, conv in zip(computing, computing[1:]):  # the input padding is part of its convolution's cost
        if pad == INPUT_PAD:
            leaf[conv] = tuple(a + b for a, b in zip(leaf[conv], leaf.pop(pad)))
    tree = _timing_tree(net, "", leaf, repeats)
    return NetworkProfile(layers=tree.children, total=tree, input_shape=tuple(x.shape), repeats=repeats,
                          warmup=warmup, threads=1, backend="c")


class CTimer:
    """A timer of modules exported to C (the ``timer`` of :func:`tuckerref.commands.scaling.sweep`):
    ``timer(module, x, repeats, warmup) -> (wall Stats, cpu Stats)`` of the sum of its layers' times
    per pass (main.c's ``-t``, single-threaded). Each module is exported and compiled once, on its
    first call, into a temporary directory that :meth:`close` (or leaving a ``with`` block) removes."""

    def __init__(self, cflags=DEFAULT_CFLAGS):
        self.cflags = tuple(cflags)
        self._tmp = tempfile.TemporaryDirectory(prefix="tuckerref-c-")
        self._binaries: dict = {}

    def binary(self, module, input_shape) -> Path:
        key = (id(module), tuple(input_shape))
        if key not in self._binaries:
            outdir = Path(self._tmp.name) / f"m{len(self._binaries)}"
            export_c(module, outdir, input_shape=input_shape, weights_format="blob")
            self._binaries[key] = (module, compile_c(outdir, self.cflags))  # the module kept: its id stays unique
        return self._binaries[key][1]

    def __call__(self, module, x, repeats, warmup):
        x = np.asarray(x)
        if x.ndim != 5 or x.shape[0] != 1:
            raise ValueError(f"the C backend times one clip per pass, shaped (1, C, F, H, W); got {x.shape}")
        _, timings = run_c(self.binary(module, x.shape[1:]), x, repeats=repeats, warmup=warmup)
        cpu = np.sum([t[1] for t in timings], axis=0) * 1e-3
        wall = np.sum([t[2] for t in timings], axis=0) * 1e-3
        return _stats(wall), _stats(cpu)

    def close(self):
        self._tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
