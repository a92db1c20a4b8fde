"""Execution plan of a network for code generation: its layers in order, their shapes, and buffers.

:func:`plan_network` walks any tree of the engine's layers (nested ``Sequential`` containers, the
Tucker-2 and Tucker-1 blocks among them, of Conv3d, Linear, MaxPool3d, AvgPool3d,
AdaptiveAvgPool3d, BatchNorm3d, ReLU, Dropout, Dropout3d, Identity and Flatten) depth first, in
execution order, and returns one :class:`Step` per leaf with its per-sample input and output
shapes from ``Module.output_shape``. Dropout and Identity layers are the identity at inference
and Flatten only renames a C-ordered buffer, so they become "identity" steps that generate no
code. A BatchNorm3d right after a Conv3d is folded into it (:func:`tuckerref.fold.fold_batchnorm`:
the convolution gets the folded weight and bias, the BatchNorm3d step becomes an identity step
that names the convolution); any other BatchNorm3d runs as a per-channel affine map with its
running statistics. Unknown layers raise before anything is generated.

:func:`place_buffers` assigns every computing step a source and a destination. The first reads
the caller's input, the last writes the logits, the others ping-pong between two buffers A and B
carved from one caller-provided scratch array: A starts at its beginning, B ends at its end, so
the scratch must hold, at every step, the live A tensor plus the live B tensor. ReLU runs in
place, and so does a BatchNorm3d that is not folded. The size returned is the maximum of that
sum over the steps, the least a two-buffer schedule can do.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..flops import COUNTERS, count_layer
from ..fold import fold_batchnorm
from ..nn import (AdaptiveAvgPool3d, AvgPool3d, BatchNorm3d, Conv3d, Dropout, Flatten, Identity, Linear, MaxPool3d,
                  Module, ReLU, Sequential)

#: Step kinds that generate a C function, and the identity kind that does not.
COMPUTE_KINDS = ("conv3d", "pointwise", "linear", "maxpool3d", "avgpool3d", "adaptive_avgpool3d", "batchnorm3d",
                 "relu", "copy", "pad")
IDENTITY = "identity"
#: Kinds whose C function may read and write the same buffer.
IN_PLACE_KINDS = ("relu", "batchnorm3d")

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
    params: list = field(default_factory=list)  # [(PyTorch name of a parameter or buffer, float32 array)]
    folded_with: str | None = None  # a folded BatchNorm3d: its Conv3d's path; that Conv3d: the BatchNorm3d's
    # (left, right) zero columns around every row of the input (output) tensor, which is then stored in
    # rows of W + left + right floats (tuckerref.export.memory.pad_rows: a convolution fed by a 1x1x1 factor)
    in_pad: tuple = (0, 0)
    out_pad: tuple = (0, 0)

    @property
    def layer_type(self) -> str:
        if self.module is not None:
            return type(self.module).__name__
        return "Pad" if self.kind == "pad" else "Copy"

    @property
    def in_size(self) -> int:
        """Floats the input tensor takes, its row padding included."""
        return _stored_size(self.in_shape, self.in_pad)

    @property
    def out_size(self) -> int:
        """Floats the output tensor takes, its row padding included."""
        return _stored_size(self.out_shape, self.out_pad)


def _stored_size(shape, pad) -> int:
    if pad == (0, 0):
        return int(np.prod(shape))
    *outer, width = shape
    return int(np.prod(outer)) * (width + pad[0] + pad[1])


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
    if isinstance(module, AvgPool3d):
        if getattr(module, "ceil_mode", False):
            raise ValueError(f"cannot export layer {path!r} ({module!r}): ceil_mode=True is not supported")
        return "avgpool3d"
    if isinstance(module, AdaptiveAvgPool3d):
        return "adaptive_avgpool3d"
    if isinstance(module, BatchNorm3d):
        if getattr(module, "running_mean", None) is None or getattr(module, "running_var", None) is None:
            raise ValueError(f"cannot export layer {path!r} ({module!r}): without running statistics "
                             "(track_running_stats=False) it normalises with each batch's own statistics, "
                             "which a one-clip C forward pass cannot reproduce")
        return "batchnorm3d"
    if isinstance(module, ReLU):
        return "relu"
    if isinstance(module, (Dropout, Flatten, Identity)):  # Dropout3d is a Dropout
        return IDENTITY
    raise ValueError(f"cannot export layer {path!r} of type {type(module).__name__}: the C exporter knows "
                     "Conv3d, Linear, MaxPool3d, AvgPool3d, AdaptiveAvgPool3d, BatchNorm3d, ReLU, Dropout, "
                     "Dropout3d, Identity, Flatten and nested Sequential")


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


def _count(module: Module, shape: tuple, path: str) -> tuple[tuple, int]:
    """(per-sample output shape, FLOPs) of leaf ``module``; a ValueError names ``path`` for a bad shape.

    FLOPs follow :mod:`tuckerref.flops`; a layer type it has no counter for costs 0 there, as pooling does.
    """
    if any(cls in COUNTERS for cls in type(module).__mro__):
        count = count_layer(module, shape, path)
        return tuple(int(v) for v in count.output_shape), int(count.flops)
    try:
        return tuple(int(v) for v in module.output_shape(shape)), 0
    except ValueError as exc:
        raise ValueError(f"layer {path!r}: {exc}") from None


def _arrays(module: Module, path: str) -> list:
    """[(PyTorch name, float32 array)] of ``module``'s parameters, then of the buffers its C code reads."""
    named = [(name, p.data) for name, p in module.named_parameters(path)]
    if isinstance(module, BatchNorm3d):
        named += [(name, b) for name, b in module.named_buffers(path) if name.rsplit(".", 1)[-1] in
                  ("running_mean", "running_var")]
    arrays = []
    for name, value in named:
        data = np.ascontiguousarray(value, dtype=np.float32)
        if not np.isfinite(data).all():
            raise ValueError(f"parameter {name!r} holds non-finite values; cannot export it")
        if name.endswith("running_var") and (data < 0).any():
            raise ValueError(f"buffer {name!r} holds negative variances; cannot export it")
        arrays.append((name, data))
    return arrays


def _folded(net: Module, fold: bool) -> tuple[dict, dict]:
    """({path: leaf} of ``net`` with every Conv3d + BatchNorm3d pair folded, {path: partner path} of the pairs)."""
    if not fold or not isinstance(net, Sequential) or not any(isinstance(m, BatchNorm3d) for _, m in _leaves(net)):
        return {}, {}  # nothing to fold: no copy of the network
    folded_net, pairs = fold_batchnorm(net, report=True)
    partner = {}
    for conv, bn in pairs:
        partner[conv], partner[bn] = bn, conv
    return dict(_leaves(folded_net)), partner


def plan_network(net: Module, input_shape, fold: bool = True) -> list[Step]:
    """Leaf steps of ``net`` for a per-sample ``input_shape`` (C, F, H, W), with float32 parameters.

    With ``fold`` (the default) every BatchNorm3d right after a Conv3d is folded into it, as
    :func:`tuckerref.fold.fold_batchnorm` does; ``fold=False`` keeps each one as its own step.
    """
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, F, H, W) with positive sizes, got {tuple(input_shape)}")
    leaves = list(_leaves(net))
    for path, module in leaves:  # every layer known before any folding or counting
        _kind(module, path)
    folded_leaves, partner = _folded(net, fold)
    steps = []
    for path, module in leaves:
        if isinstance(module, BatchNorm3d) and path in partner:  # folded: computes nothing
            out_shape, _ = _count(module, shape, path)
            steps.append(Step(path, IDENTITY, module, shape, out_shape, 0, folded_with=partner[path]))
        else:
            module = folded_leaves[path] if path in partner else module  # a Conv3d with its folded weight, bias
            out_shape, flops = _count(module, shape, path)  # raises ValueError naming the layer for a bad shape
            steps.append(Step(path, _kind(module, path), module, shape, out_shape, flops, _arrays(module, path),
                              partner.get(path)))
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
        elif step.kind in IN_PLACE_KINDS and current in ("a", "b"):
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
