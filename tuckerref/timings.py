"""What a timing backend returns: duration statistics, per-layer timings and a network's profile,
and the checks of a timing run's arguments.

Shared by the engine's own backend (:mod:`tuckerref.profile`) and the exported C code's
(:mod:`tuckerref.export.timing`), which both build a :class:`NetworkProfile`; neither imports the other
for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .flops import find_record
from .nn import Module


@dataclass
class Stats:
    """Median, mean and standard deviation (population) of a list of durations in seconds."""

    samples: list

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples))

    @property
    def std(self) -> float:
        return float(np.std(self.samples))

    def as_dict(self) -> dict:
        return {"median": self.median, "mean": self.mean, "std": self.std, "samples": list(self.samples)}


@dataclass
class LayerTiming:
    """Wall and CPU time of one layer; ``children`` hold its sub-layers' timings when it is a Sequential."""

    name: str
    kind: str
    wall: Stats
    cpu: Stats
    children: list = field(default_factory=list)

    def clock(self, which: str) -> Stats:
        if which not in ("wall", "cpu"):
            raise ValueError(f"clock must be 'wall' or 'cpu', got {which!r}")
        return self.wall if which == "wall" else self.cpu

    def walk(self):
        yield self
        for c in self.children:
            yield from c.walk()

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "wall": self.wall.as_dict(), "cpu": self.cpu.as_dict(),
                "children": [c.as_dict() for c in self.children]}


@dataclass
class NetworkProfile:
    """Timings of every top-level layer (``layers``) and of the whole forward pass (``total``)."""

    layers: list
    total: LayerTiming
    input_shape: tuple
    repeats: int
    warmup: int
    threads: int
    backend: str = "numba"
    #: The same pass as a compiled inference program (:mod:`tuckerref.nn.program`), when the backend has one.
    program: LayerTiming | None = None

    def __getitem__(self, name: str) -> LayerTiming:
        """Timing by dotted name ("c1", "c1.0", ...)."""
        return find_record(self.layers, name, "timed layer")

    def names(self) -> list:
        return [rec.name for layer in self.layers for rec in layer.walk()]

    def as_dict(self) -> dict:
        return {"backend": self.backend, "input_shape": list(self.input_shape), "repeats": self.repeats,
                "warmup": self.warmup, "threads": self.threads, "total": self.total.as_dict(),
                "program": None if self.program is None else self.program.as_dict(),
                "layers": [t.as_dict() for t in self.layers]}


def check_repeats(repeats, warmup) -> tuple[int, int]:
    if isinstance(repeats, bool) or int(repeats) != repeats or int(repeats) < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    if isinstance(warmup, bool) or int(warmup) != warmup or int(warmup) < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
    return int(repeats), int(warmup)


def check_input(net: Module, x) -> np.ndarray:
    """``x`` must be a float batch whose per-sample shape the network accepts (and records, if it does)."""
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise ValueError(f"input must be a float numpy array, got {type(x).__name__} "
                         f"{getattr(x, 'dtype', '')}".rstrip())
    expected = getattr(net, "input_shape", None)
    if x.ndim < 2:
        raise ValueError(f"input must be a batch (N, ...), got shape {x.shape}")
    if expected is not None and tuple(x.shape[1:]) != tuple(expected):
        raise ValueError(f"input shape {x.shape} does not match the network's input shape (N,) + {tuple(expected)}")
    try:
        net.output_shape(x.shape[1:])
    except ValueError as exc:
        raise ValueError(f"input shape {x.shape} does not fit the network: {exc}") from None
    return np.ascontiguousarray(x)
