"""Tucker-2 / Tucker-1 replacement of layers and one-shot whole-network compression (the paper's Sections 3.1
and 3.2, Algorithm 1; docs/method.md sections 3, 4 and 9).

Layer replacements (weights in our layout: conv (T, S, kD, kH, kW), linear (out, in)):

* :func:`tucker2_conv`, eqs. (5) and (8)-(10): K = C x_s U_s x_t U_t over the channel modes (our modes 1
  and 0) becomes Sequential[Conv3d S->R_s 1x1x1 (weight U_s^T, no bias), Conv3d R_s->R_t with the original
  kernel size, stride and padding (weight C, no bias), Conv3d R_t->T 1x1x1 (weight U_t, original bias)].
  The first convolution commutes with zero padding (it maps zeros to zeros), so the sequence equals
  the convolution with the reconstructed kernel exactly.
* :func:`tucker1_conv`: K = C x_t U_t (output mode only) -> [Conv3d S->R original kernel (weight C),
  Conv3d R->T 1x1x1 (weight U_t, original bias)].
* :func:`tucker1_linear`: W = U_t C -> [Linear in->R (weight C, no bias), Linear R->out (weight U_t, bias)],
  the truncated SVD of W.
* :func:`tucker2_linear_as_conv`: Linear(C·D·H·W -> out) acting on a flattened C x D x H x W volume is
  Conv3d(C -> out, kernel (D, H, W)) on the unflattened volume (C-order flatten is the kernel layout),
  whose Tucker-2 gives three convolutions with a (N, out, 1, 1, 1) output.

Decompositions run in float64 (:mod:`tuckerref.tucker`); the new layers get the original layer's dtype.
Ranks of Tucker-2 are written (R_s, R_t), input mode first, as in the paper's Table 2.

Whole network (:func:`compress_network`), the paper's Section 3.2 / Algorithm 1, two plans:

* ``"table2"`` (what the paper's Table 2 and the authors' code did): Tucker-2 on every convolution,
  Tucker-2 on the first linear layer as a convolution, Tucker-1 on the middle linear layers,
  the output layer untouched;
* ``"algorithm1"`` (as the paper's Algorithm 1 is written): Tucker-1 on the first convolution,
  Tucker-2 on the others and on the first linear layer (as a convolution), Tucker-1 on every other
  linear layer including the output layer.

Ranks: ``"vbmf"`` (EVBMF rank of each mode unfolding, :mod:`tuckerref.vbmf`; Tucker-2 uses modes S and T,
Tucker-1 the output mode, which for a matrix has the same EVBMF rank as the input mode), ``"paper"``
(:data:`PAPER_RANKS`, plan ``"table2"`` only), or a dict {layer name: ranks} (layers not named get VBMF
ranks; ``None`` leaves a layer untouched).
"""
from __future__ import annotations

import copy
import json
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass
from math import prod

import numpy as np

from .nn import Conv3d, Flatten, Linear, Module, Sequential, feature_volume
from .tucker import check_rank, partial_tucker, relative_error
from .vbmf import estimate_ranks

PLANS = ("table2", "algorithm1")
#: The paper's Table 2: (R_s, R_t) for Tucker-2 layers, R for Tucker-1 layers.
PAPER_RANKS = {"c1": (2, 2), "c2": (2, 3), "l1": (4, 7), "l2": 1}
#: Tucker-2 over the channel modes of a (T, S, kD, kH, kW) kernel: input mode S (1) first, then T (0).
CHANNEL_MODES = (1, 0)
OUTPUT_MODE = 0


# -- layer replacements --------------------------------------------------------------------------------------
@dataclass
class Decomposition:
    """A decomposed kernel (float64): core, factors over ``modes``, and its relative error ||K - K_hat|| / ||K||."""

    core: np.ndarray
    factors: list
    modes: tuple
    rel_error: float


def _require(layer, cls, what):
    if not isinstance(layer, cls):
        raise ValueError(f"{what} needs a {cls.__name__} layer, got {type(layer).__name__} ({layer!r})")


def _decompose(kernel, modes, ranks, method, what):
    kernel = np.asarray(kernel, dtype=np.float64)
    if not np.isfinite(kernel).all():
        raise ValueError(f"{what}: the kernel of shape {kernel.shape} holds NaN or infinite values")
    for m, r in zip(modes, ranks):
        check_rank(r, m, kernel.shape, f"{what}: ")
    core, factors = partial_tucker(kernel, modes, ranks, method=method)
    return Decomposition(core, factors, tuple(modes), relative_error(kernel, core, factors, modes))


def _conv(weight, dtype, stride=1, padding=0, bias=None):
    T, S = weight.shape[:2]
    m = Conv3d(S, T, weight.shape[2:], stride=stride, padding=padding, bias=bias is not None, rng=0, dtype=dtype)
    m.weight.data = np.ascontiguousarray(weight, dtype=dtype)
    if bias is not None:
        m.bias.data = np.array(bias, dtype=dtype)
    return m


def _linear(weight, dtype, bias=None):
    out_f, in_f = weight.shape
    m = Linear(in_f, out_f, bias=bias is not None, rng=0, dtype=dtype)
    m.weight.data = np.ascontiguousarray(weight, dtype=dtype)
    if bias is not None:
        m.bias.data = np.array(bias, dtype=dtype)
    return m


def _pair(ranks, what):
    try:
        rs, rt = ranks
    except (TypeError, ValueError):
        raise ValueError(f"{what}: Tucker-2 ranks must be a pair (R_s, R_t), got {ranks!r}") from None
    return rs, rt


def _single(rank, what):
    if not np.isscalar(rank):
        rank = tuple(rank)
        if len(rank) != 1:
            raise ValueError(f"{what}: a Tucker-1 rank must be one integer, got {rank!r}")
        rank = rank[0]
    return rank


def tucker2_conv_decomposed(layer: Conv3d, ranks, method="hooi"):
    """(three-convolution Sequential, :class:`Decomposition`) of :func:`tucker2_conv`."""
    _require(layer, Conv3d, "tucker2_conv")
    rs, rt = _pair(ranks, "tucker2_conv")
    dec = _decompose(layer.weight.data, CHANNEL_MODES, (rs, rt), method, f"tucker2_conv of {layer!r}")
    (u_s, u_t), dtype = dec.factors, layer.weight.data.dtype
    bias = None if layer.bias is None else layer.bias.data
    seq = Sequential(_conv(u_s.T[:, :, None, None, None], dtype),                       # eq. (8)
                     _conv(dec.core, dtype, stride=layer.stride, padding=layer.padding),  # eq. (9)
                     _conv(u_t[:, :, None, None, None], dtype, bias=bias))                # eq. (10)
    return seq, dec


def tucker2_conv(layer: Conv3d, ranks, method="hooi") -> Sequential:
    """Tucker-2 of a Conv3d, eqs. (8)-(10): [1x1x1 S->R_s, original kernel R_s->R_t, 1x1x1 R_t->T + bias]."""
    return tucker2_conv_decomposed(layer, ranks, method)[0]


def tucker1_conv_decomposed(layer: Conv3d, rank, method="hooi"):
    """(two-convolution Sequential, :class:`Decomposition`) of :func:`tucker1_conv`."""
    _require(layer, Conv3d, "tucker1_conv")
    rank = _single(rank, "tucker1_conv")
    dec = _decompose(layer.weight.data, (OUTPUT_MODE,), (rank,), method, f"tucker1_conv of {layer!r}")
    (u_t,), dtype = dec.factors, layer.weight.data.dtype
    bias = None if layer.bias is None else layer.bias.data
    seq = Sequential(_conv(dec.core, dtype, stride=layer.stride, padding=layer.padding),
                     _conv(u_t[:, :, None, None, None], dtype, bias=bias))
    return seq, dec


def tucker1_conv(layer: Conv3d, rank, method="hooi") -> Sequential:
    """Tucker-1 (output mode) of a Conv3d: [original kernel S->R (no bias), 1x1x1 R->T + bias]."""
    return tucker1_conv_decomposed(layer, rank, method)[0]


def tucker1_linear_decomposed(layer: Linear, rank, method="hooi"):
    """(two-linear Sequential, :class:`Decomposition`) of :func:`tucker1_linear`."""
    _require(layer, Linear, "tucker1_linear")
    rank = _single(rank, "tucker1_linear")
    dec = _decompose(layer.weight.data, (OUTPUT_MODE,), (rank,), method, f"tucker1_linear of {layer!r}")
    (u_t,), dtype = dec.factors, layer.weight.data.dtype
    bias = None if layer.bias is None else layer.bias.data
    return Sequential(_linear(dec.core, dtype), _linear(u_t, dtype, bias=bias)), dec


def tucker1_linear(layer: Linear, rank, method="hooi") -> Sequential:
    """Tucker-1 of a Linear (truncated SVD W = U_t C): [Linear in->R (no bias), Linear R->out + bias]."""
    return tucker1_linear_decomposed(layer, rank, method)[0]


def linear_as_conv(layer: Linear, in_volume) -> Conv3d:
    """The Conv3d(C -> out, kernel (D, H, W)) equal to ``layer`` on the unflattened C x D x H x W volume."""
    _require(layer, Linear, "linear_as_conv")
    try:
        volume = tuple(int(v) for v in in_volume)
    except TypeError:
        volume = ()
    if len(volume) != 4 or min(volume) < 1 or prod(volume) != layer.in_features:
        raise ValueError(f"in_volume must be (C, D, H, W) with C·D·H·W = {layer.in_features} "
                         f"(the in_features of {layer!r}), got {in_volume!r}")
    weight = layer.weight.data.reshape((layer.out_features,) + volume)
    bias = None if layer.bias is None else layer.bias.data
    return _conv(weight, layer.weight.data.dtype, bias=bias)


def tucker2_linear_as_conv_decomposed(layer: Linear, in_volume, ranks, method="hooi"):
    """(three-convolution Sequential, :class:`Decomposition`) of :func:`tucker2_linear_as_conv`."""
    return tucker2_conv_decomposed(linear_as_conv(layer, in_volume), ranks, method)


def tucker2_linear_as_conv(layer: Linear, in_volume, ranks, method="hooi") -> Sequential:
    """Tucker-2 of a Linear seen as Conv3d(C -> out, kernel (D, H, W)) on its unflattened input volume;
    the result maps (N, C, D, H, W) to (N, out, 1, 1, 1) (follow it with a Flatten)."""
    return tucker2_linear_as_conv_decomposed(layer, in_volume, ranks, method)[0]


# -- whole network ----------------------------------------------------------------------------------------
@dataclass
class LayerReport:
    """One row of the per-layer compression report."""

    name: str
    method: str            # "tucker2", "tucker2-as-conv", "tucker1", "none"
    ranks: tuple           # (R_s, R_t), (R,) or ()
    rank_source: str       # "vbmf", "paper", "given", "-"
    params_before: int
    params_after: int
    rel_error: float       # ||K - K_hat||_F / ||K||_F of the kernel (0 for an untouched layer)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ranks"] = list(self.ranks)
        return d


def plan_methods(net: Sequential, plan: str) -> "OrderedDict[str, str]":
    """{child name: method} of every Conv3d/Linear child of ``net`` under ``plan`` (docs/method.md section 9)."""
    if plan not in PLANS:
        raise ValueError(f"plan must be one of {PLANS}, got {plan!r}")
    if not isinstance(net, Sequential):
        raise ValueError(f"compress_network expects a Sequential network, got {type(net).__name__}")
    names = net.names()
    convs = [n for n in names if isinstance(net[n], Conv3d)]
    linears = [n for n in names if isinstance(net[n], Linear)]
    others = [n for n in names if net[n].parameters() and n not in convs and n not in linears]
    if others:
        raise ValueError(f"compress_network handles Conv3d and Linear children only; {others} are "
                         f"{[type(net[n]).__name__ for n in others]} (already compressed?)")
    methods = OrderedDict()
    for i, n in enumerate(convs):
        methods[n] = "tucker1" if (plan == "algorithm1" and i == 0) else "tucker2"
    for i, n in enumerate(linears):
        if i == 0:
            methods[n] = "tucker2-as-conv"
        elif plan == "algorithm1" or i < len(linears) - 1:
            methods[n] = "tucker1"
        else:
            methods[n] = "none"
    if linears:
        first = names.index(linears[0])
        if first == 0 or not isinstance(net[names[first - 1]], Flatten):
            raise ValueError(f"the first linear layer {linears[0]!r} must directly follow a Flatten to be "
                             f"compressed as a convolution (children: {names})")
    return methods


def _kernel(layer, method, volume):
    if method == "tucker2-as-conv":
        return linear_as_conv(layer, volume).weight.data
    return layer.weight.data


def _vbmf_ranks(name, layer, method, volume):
    kernel = np.asarray(_kernel(layer, method, volume), dtype=np.float64)
    if not np.isfinite(kernel).all():
        raise ValueError(f"layer {name!r}: the kernel of shape {kernel.shape} holds NaN or infinite values")
    modes = CHANNEL_MODES if method.startswith("tucker2") else (OUTPUT_MODE,)
    ranks = list(estimate_ranks(kernel, modes))
    for k, (m, r) in enumerate(zip(modes, ranks)):
        if r == 0:
            warnings.warn(f"layer {name!r}: VBMF estimated rank 0 for mode {m} "
                          f"({'input' if m == 1 else 'output'} channels); using rank 1", stacklevel=3)
            ranks[k] = 1
    return tuple(ranks)


def _choose_ranks(ranks, plan, methods):
    """{name: (ranks tuple or None, source)} for every layer of the plan."""
    if isinstance(ranks, str):
        if ranks == "vbmf":
            return {n: ((), "-") if m == "none" else (None, "vbmf") for n, m in methods.items()}
        if ranks == "paper":
            if plan != "table2":
                raise ValueError("ranks='paper' gives the ranks of the paper's Table 2, "
                                 f"which used plan 'table2'; for plan {plan!r} pass 'vbmf' or a dict of ranks")
            compressed = {n for n, m in methods.items() if m != "none"}
            if compressed != set(PAPER_RANKS):
                raise ValueError(f"ranks='paper' needs exactly the paper's layers {sorted(PAPER_RANKS)} compressed "
                                 f"by plan 'table2'; this network's plan is {dict(methods)}")
            out = {n: ((), "-") for n in methods}
            out.update({n: (r, "paper") for n, r in PAPER_RANKS.items()})
            return out
        raise ValueError(f"ranks must be 'vbmf', 'paper' or a dict {{layer: ranks}}, got {ranks!r}")
    if not isinstance(ranks, dict):
        raise ValueError(f"ranks must be 'vbmf', 'paper' or a dict {{layer: ranks}}, got {type(ranks).__name__}")
    unknown = [n for n in ranks if n not in methods]
    if unknown:
        raise ValueError(f"ranks given for {unknown}, which are not Conv3d/Linear layers of the network "
                         f"(layers: {list(methods)})")
    fixed = [n for n, r in ranks.items() if r is not None and methods[n] == "none"]
    if fixed:
        raise ValueError(f"plan {plan!r} leaves {fixed} uncompressed; give them no ranks (or None)")
    out = {n: ((), "-") if m == "none" else (None, "vbmf") for n, m in methods.items()}
    for n, r in ranks.items():
        out[n] = ((), "given") if r is None else (r, "given")
    return out


def _replace(layer, how, ranks, volume, method):
    if how == "tucker2":
        return tucker2_conv_decomposed(layer, ranks, method)
    if how == "tucker2-as-conv":
        return tucker2_linear_as_conv_decomposed(layer, volume, ranks, method)
    if isinstance(layer, Conv3d):
        return tucker1_conv_decomposed(layer, ranks, method)
    return tucker1_linear_decomposed(layer, ranks, method)


def compress_network(net: Sequential, plan: str = "table2", ranks="vbmf", input_shape=None,
                     method: str = "hooi", report: bool = False):
    """One-shot whole-network Tucker compression (the paper's Section 3.2); the original ``net`` is left untouched.

    Returns the new network, or ``(network, [LayerReport, ...])`` with ``report=True``. Compressed
    layers become Sequentials (state_dict names ``c1.0.weight`` ... ``c1.2.bias``); the first linear
    layer becomes three convolutions on the unflattened volume, so the Flatten before it moves right
    after it. ``input_shape`` (default ``net.input_shape``) gives that volume. A VBMF rank of 0 becomes 1
    with a warning naming the layer. At full ranks the output equals the original's.
    """
    methods = plan_methods(net, plan)
    chosen = _choose_ranks(ranks, plan, methods)
    if input_shape is None:
        input_shape = getattr(net, "input_shape", None)
    volume = None
    if any(m == "tucker2-as-conv" for m in methods.values()):
        if input_shape is None:
            raise ValueError("compress_network needs input_shape (the network does not record one) "
                             "to unflatten the first linear layer's input")
        first_linear = next(n for n, m in methods.items() if m == "tucker2-as-conv")
        volume = feature_volume(net, tuple(input_shape), first_linear)

    layers, rows, pending_flatten = OrderedDict(), [], None
    names = net.names()
    for i, name in enumerate(names):
        child = net[name]
        nxt = names[i + 1] if i + 1 < len(names) else None
        if isinstance(child, Flatten) and nxt is not None and methods.get(nxt) == "tucker2-as-conv" \
                and chosen[nxt][0] != ():
            pending_flatten = name  # moves after the convolutional l1
            continue
        if name not in methods or chosen[name][0] == ():
            layers[name] = copy.deepcopy(child)
            if name in methods:
                n = child.num_parameters()
                rows.append(LayerReport(name, "none", (), "-", n, n, 0.0))
            continue
        how = methods[name]
        r, source = chosen[name]
        if r is None:
            r = _vbmf_ranks(name, child, how, volume)
        try:
            new, dec = _replace(child, how, r, volume, method)
        except ValueError as exc:
            raise ValueError(f"layer {name!r}: {exc}") from None
        layers[name] = new
        if how == "tucker2-as-conv":
            layers[pending_flatten or "flatten"] = Flatten()
        rows.append(LayerReport(name, how, tuple(f.shape[1] for f in dec.factors), source,
                                child.num_parameters(), new.num_parameters(), dec.rel_error))
    out = Sequential(layers)
    out.input_shape = None if input_shape is None else tuple(input_shape)
    first = next((m for m in out if m.parameters()), None)
    if first is not None:
        first.needs_input_grad = False
    out.train(net.training)
    return (out, rows) if report else out


def parse_ranks(text: str):
    """CLI ``--ranks``: 'vbmf', 'paper' or a JSON object {"c1": [2, 2], "l2": 1, ...}."""
    if text in ("vbmf", "paper"):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--ranks must be 'vbmf', 'paper' or a JSON object of ranks, got {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"--ranks JSON must be an object {{layer: ranks}}, got {text!r}")
    return value


def format_report(rows) -> str:
    """The per-layer table printed by ``tuckerref compress``."""
    lines = [f"{'layer':<8} {'method':<16} {'ranks':<10} {'source':<6} {'params':>10} {'->':^4} {'params':<10} "
             f"{'x':>7} {'rel.err':>9}"]
    before = after = 0
    for r in rows:
        ranks = ",".join(str(v) for v in r.ranks) or "-"
        lines.append(f"{r.name:<8} {r.method:<16} {ranks:<10} {r.rank_source:<6} {r.params_before:>10,} {'->':^4} "
                     f"{r.params_after:<10,} {r.params_before / max(r.params_after, 1):>7.2f} {r.rel_error:>9.4f}")
        before += r.params_before
        after += r.params_after
    lines.append(f"{'total':<8} {'':<16} {'':<10} {'':<6} {before:>10,} {'->':^4} {after:<10,} "
                 f"{before / max(after, 1):>7.2f}")
    return "\n".join(lines)


__all__ = ["tucker2_conv", "tucker1_conv", "tucker1_linear", "tucker2_linear_as_conv", "linear_as_conv",
           "compress_network", "plan_methods", "LayerReport", "Decomposition", "PAPER_RANKS", "PLANS",
           "parse_ranks", "format_report"]
