"""Rank grids for the rank study: parse a grid specification, resolve it against a network, check it.

A grid is a list of items (``tuckerref study ranks --grid ITEM ...``):

* ``evbmf``: EVBMF's ranks (Nakajima et al. 2013; :func:`tuckerref.vbmf.estimate_ranks` of each mode
  unfolding, as :func:`tuckerref.compress.compress_network` chooses them). Always part of a grid.
* ``scale:F1,F2,...``: EVBMF's ranks times each factor, rounded, clipped to [1, the mode's size].
* ``energy:E1,E2,...``: per mode unfolding K_(n), the smallest rank R whose leading singular values
  keep a fraction E of the energy, sum_{i <= R} s_i^2 >= E sum_i s_i^2 (0 < E <= 1).
* a JSON object ``{"c1": [2, 2], "l2": 1}`` (or a JSON list of such objects): explicit ranks,
  (R_s, R_t) for a Tucker-2 layer, R for a Tucker-1 layer; layers not named get EVBMF's ranks.

Ranks are checked against the kernels before anything is trained: an explicit rank must be an
integer in [1, size of its mode] (the layer's input or output channels).
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..compress import CHANNEL_MODES, OUTPUT_MODE, linear_as_conv, plan_methods
from ..nn import feature_volume
from ..tucker import unfold
from ..vbmf import estimate_ranks

KINDS = ("evbmf", "scale", "energy", "ranks")
_MODE_NAMES = {1: "input channels", 0: "output channels"}


@dataclass(frozen=True)
class GridItem:
    """One parsed grid item: ``kind`` and its ``value`` (a factor, an energy fraction, or a ranks dict)."""

    kind: str
    value: object
    text: str


@dataclass(frozen=True)
class GridPoint:
    """One resolved point: a label, how it was chosen, and the ranks of every compressed layer."""

    label: str
    kind: str
    value: object
    ranks: dict  # {layer: tuple of ints}, in the plan's layer order

    @property
    def key(self) -> str:
        """The point's identity: its ranks as canonical JSON (two items giving the same ranks are one point)."""
        return json.dumps({name: list(r) for name, r in self.ranks.items()}, separators=(",", ":"))

    def ranks_for_compress(self) -> dict:
        """The ``ranks`` argument of :func:`tuckerref.compress.compress_network` (Tucker-1 ranks as ints)."""
        return {name: (r[0] if len(r) == 1 else tuple(r)) for name, r in self.ranks.items()}


def _numbers(text, item, lo, hi, what):
    values = []
    for part in text.split(","):
        try:
            v = float(part)
        except ValueError:
            raise ValueError(f"grid item {item!r}: {part.strip()!r} is not a number") from None
        if not (lo < v <= hi) or not np.isfinite(v):
            raise ValueError(f"grid item {item!r}: {what} {v:g} must lie in ({lo:g}, {hi:g}]")
        values.append(v)
    return values


def parse_grid(items) -> list:
    """Parse grid items (strings, see the module docstring) into :class:`GridItem` s; ``evbmf`` comes first."""
    if isinstance(items, str):
        items = [items]
    parsed = [GridItem("evbmf", None, "evbmf")]
    for item in items:
        text = str(item).strip()
        if text == "evbmf":
            continue
        if text.startswith("scale:"):
            parsed += [GridItem("scale", v, text) for v in _numbers(text[6:], text, 0.0, np.inf, "scale factor")]
        elif text.startswith("energy:"):
            parsed += [GridItem("energy", v, text) for v in _numbers(text[7:], text, 0.0, 1.0, "energy fraction")]
        elif text[:1] in "{[":
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"grid item {text!r} is not valid JSON: {exc}") from None
            objects = value if isinstance(value, list) else [value]
            if not objects or not all(isinstance(o, dict) and o for o in objects):
                raise ValueError(f"grid item {text!r}: explicit ranks must be a non-empty JSON object "
                                 f'{{"layer": ranks}} or a list of them')
            parsed += [GridItem("ranks", o, json.dumps(o, separators=(",", ":"))) for o in objects]
        else:
            raise ValueError(f"grid item {text!r} is not 'evbmf', 'scale:F1,F2,...', 'energy:E1,E2,...' "
                             f"or a JSON object of per-layer ranks")
    return parsed


def layer_kernels(net, plan="table2", input_shape=None) -> "OrderedDict[str, tuple]":
    """{layer: (method, kernel float64, modes)} of every layer that ``plan`` compresses."""
    methods = plan_methods(net, plan)
    if input_shape is None:
        input_shape = getattr(net, "input_shape", None)
    out = OrderedDict()
    for name, method in methods.items():
        if method == "none":
            continue
        layer = net[name]
        if method == "tucker2-as-conv":
            if input_shape is None:
                raise ValueError("the network records no input shape, needed to see its first linear layer "
                                 "as a convolution")
            kernel = linear_as_conv(layer, feature_volume(net, tuple(input_shape), name)).weight.data
        else:
            kernel = layer.weight.data
        modes = CHANNEL_MODES if method.startswith("tucker2") else (OUTPUT_MODE,)
        out[name] = (method, np.asarray(kernel, dtype=np.float64), modes)
    return out


def evbmf_ranks(kernels) -> dict:
    """EVBMF's rank of each mode (0 raised to 1, as compress_network does)."""
    return {name: tuple(max(1, int(r)) for r in estimate_ranks(k, modes)) for name, (_, k, modes) in kernels.items()}


def energy_rank(kernel, mode, fraction) -> int:
    """Smallest R with sum_{i <= R} s_i^2 >= fraction * sum_i s_i^2 over the singular values of K_(mode)."""
    s = np.linalg.svd(unfold(kernel, mode), compute_uv=False)
    energy = np.cumsum(s * s)
    if energy[-1] == 0.0:
        return 1
    return int(min(np.searchsorted(energy, fraction * energy[-1] * (1 - 1e-12)) + 1, s.size))


def _explicit(item, kernels, evbmf):
    ranks = dict(evbmf)
    unknown = [n for n in item.value if n not in kernels]
    if unknown:
        raise ValueError(f"grid item {item.text}: {unknown} are not layers this plan compresses "
                         f"(layers: {list(kernels)})")
    for name, value in item.value.items():
        method, kernel, modes = kernels[name]
        values = value if isinstance(value, list) else [value]
        if len(values) != len(modes):
            want = "a pair [R_s, R_t]" if len(modes) == 2 else "one integer R"
            raise ValueError(f"grid item {item.text}: layer {name!r} ({method}) needs {want}, got {value!r}")
        for r, m in zip(values, modes):
            if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= kernel.shape[m]:
                raise ValueError(f"grid item {item.text}: layer {name!r} rank {r!r} for its "
                                 f"{_MODE_NAMES[m]} must be an integer in [1, {kernel.shape[m]}] "
                                 f"(kernel shape {kernel.shape})")
        ranks[name] = tuple(values)
    return ranks


def resolve_grid(items, net, plan="table2", input_shape=None) -> list:
    """The :class:`GridPoint` s of parsed ``items`` for ``net``: EVBMF's first, duplicates (same ranks) dropped."""
    kernels = layer_kernels(net, plan, input_shape)
    if not kernels:
        raise ValueError(f"plan {plan!r} compresses no layer of this network")
    evbmf = evbmf_ranks(kernels)
    points, seen = [], set()
    for item in items:
        if item.kind == "evbmf":
            ranks, label = evbmf, "evbmf"
        elif item.kind == "scale":
            ranks = {n: tuple(int(min(max(1, round(item.value * r)), kernels[n][1].shape[m]))
                              for r, m in zip(evbmf[n], kernels[n][2])) for n in kernels}
            label = f"scale {item.value:g}"
        elif item.kind == "energy":
            ranks = {n: tuple(energy_rank(k, m, item.value) for m in modes) for n, (_, k, modes) in kernels.items()}
            label = f"energy {item.value:g}"
        else:
            ranks, label = _explicit(item, kernels, evbmf), item.text
        point = GridPoint(label, item.kind, item.value, OrderedDict((n, ranks[n]) for n in kernels))
        if point.key not in seen:
            seen.add(point.key)
            points.append(point)
    return points


__all__ = ["GridItem", "GridPoint", "parse_grid", "resolve_grid", "layer_kernels", "evbmf_ranks", "energy_rank",
           "KINDS"]
