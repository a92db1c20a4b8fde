"""Execution plan of a network for code generation: its layers in order, their shapes, and buffers.

:func:`plan_network` walks any tree of the engine's layers (nested ``Sequential`` containers of
Conv3d, Linear, MaxPool3d, ReLU, Dropout, Dropout3d and Flatten) depth first, in execution order,
and returns one :class:`Step` per leaf with its per-sample input and output shapes from
``Module.output_shape``. Dropout layers are the identity at inference and Flatten only renames
a C-ordered buffer, so both become "identity" steps that generate no code.

:func:`place_buffers` assigns every computing step a source and a destination. The first reads
the caller's input, the last writes the logits, the others ping-pong between two buffers A and B
carved from one caller-provided scratch array: A starts at its beginning, B ends at its end, so
the scratch must hold, at every step, the live A tensor plus the live B tensor. ReLU runs in
place. The size returned is the maximum of that sum over the steps, the least a two-buffer
schedule can do.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..flops import count_layer
from ..nn import Conv3d, Dropout, Flatten, Linear, MaxPool3d, Module, ReLU, Sequential

#: Step kinds that generate a C function, and the identity kind that does not.
COMPUTE_KINDS = ("conv3d", "pointwise", "linear", "maxpool3d", "relu", "copy")
IDENTITY = "identity"

# C's int indexes every buffer; keep tensors well inside its range.
_MAX_FLOATS = 2**31 - 1


@dataclass
class Step:
    """One leaf layer in execution order."""

    path: str            # PyTorch module path, e.g. "c1" or "c1.0"
    kind: str            # one of COMPUTE_KINDS or IDENTITY
    module: Module | None
    in_shape: tuple      # per-sample input shape
    out_shape: tuple     # per-sample output shape
    flops: int           # authors' counting convention (tuckerref.flops, docs/method.md section 8)
    params: list = field(default_factory=list)  # [(PyTorch name, float32 array)]

    @property
    def layer_type(self) -> str:
        return type(self.module).__name__ if self.module is not None else "Copy"

    @property
    def in_size(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def out_size(self) -> int:
        return int(np.prod(self.out_shape))


@dataclass
class Placement:
    """Where a computing step reads and writes: "input", "a", "b" or "logits"."""

    src: str
    dst: str


def _kind(module: Module, path: str) -> str:
    if isinstance(module, Conv3d):
        pointwise = (module.kernel_size == (1, 1, 1) and module.stride == (1, 1, 1)
                     and module.padding == (0, 0, 0))
        return "pointwise" if pointwise else "conv3d"
    if isinstance(module, Linear):
        return "linear"
    if isinstance(module, MaxPool3d):
        return "maxpool3d"
    if isinstance(module, ReLU):
        return "relu"
    if isinstance(module, (Dropout, Flatten)):  # Dropout3d is a Dropout
        return IDENTITY
    raise ValueError(f"cannot export layer {path!r} of type {type(module).__name__}: the C exporter knows "
                     "Conv3d, Linear, MaxPool3d, ReLU, Dropout, Dropout3d, Flatten and nested Sequential")


def _leaves(module: Module, prefix: str = ""):
    """(path, leaf module) in execution order."""
    if isinstance(module, Sequential):
        for name, child in module.named_children():
            yield from _leaves(child, f"{prefix}.{name}" if prefix else name)
    elif module._modules:
        raise ValueError(f"cannot export {prefix or 'the network'!r} of type {type(module).__name__}: only "
                         "Sequential containers define an execution order")
    else:
        yield prefix, module


def plan_network(net: Module, input_shape) -> list[Step]:
    """Leaf steps of ``net`` for a per-sample ``input_shape`` (C, F, H, W), with float32 parameters."""
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, F, H, W) with positive sizes, got {tuple(input_shape)}")
    steps = []
    for path, module in _leaves(net):
        kind = _kind(module, path)
        count = count_layer(module, shape, path)  # raises ValueError naming the layer for a bad shape
        out_shape = tuple(int(v) for v in count.output_shape)
        params = []
        for name, p in module.named_parameters(path):
            data = np.ascontiguousarray(p.data, dtype=np.float32)
            if not np.isfinite(data).all():
                raise ValueError(f"parameter {name!r} holds non-finite values; cannot export it")
            params.append((name, data))
        steps.append(Step(path, kind, module, shape, out_shape, count.flops, params))
        shape = out_shape
    if not any(s.kind != IDENTITY for s in steps):
        # A network of identities still has to move its input into the logits.
        steps.append(Step("copy", "copy", None, shape, shape, 0))
    for s in steps:
        if max(s.in_size, s.out_size) > _MAX_FLOATS:
            raise ValueError(f"layer {s.path!r} handles {max(s.in_size, s.out_size):,} floats per clip, "
                             "more than a C int can index")
    return steps


def place_buffers(steps: list[Step]) -> tuple[list[Placement | None], int]:
    """Source and destination of each step (None for identities) and the scratch floats needed."""
    computing = [i for i, s in enumerate(steps) if s.kind != IDENTITY]
    placements: list[Placement | None] = [None] * len(steps)
    current = "input"
    scratch = 0
    for k, i in enumerate(computing):
        step = steps[i]
        if k == len(computing) - 1:
            dst = "logits"
        elif step.kind == "relu" and current in ("a", "b"):
            dst = current
        else:
            dst = "b" if current == "a" else "a"
        placements[i] = Placement(current, dst)
        live = {current: step.in_size, dst: step.out_size}
        scratch = max(scratch, sum(n for buf, n in live.items() if buf in ("a", "b")))
        current = dst
    return placements, scratch


def c_identifier(name: str, prefix: str, taken: set) -> str:
    """A unique C identifier ``prefix + name`` with every non-alphanumeric character made '_'."""
    base = prefix + re.sub(r"\W", "_", name, flags=re.ASCII)
    ident, n = base, 2
    while ident in taken:
        ident, n = f"{base}_{n}", n + 1
    taken.add(ident)
    return ident
