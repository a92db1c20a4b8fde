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

Whole network (:func:`compress_network`), the paper's Section 3.2 / Algorithm 1, for any chain network (a Sequential of
Conv3d, BatchNorm3d, ReLU, MaxPool3d, AvgPool3d, AdaptiveAvgPool3d, Dropout, Dropout3d, Identity, Flatten and
Linear layers, e.g. C3D). Each BatchNorm3d right after a convolution is folded into it first. Plans:

* ``"algorithm1"`` (as the paper's Algorithm 1 is written, for any network): Tucker-1 on the first
  convolution, Tucker-2 on every later one and on the first linear layer (as a convolution over the
  feature volume entering it, whatever pooling precedes it), Tucker-1 on every later linear layer
  including the output layer;
* ``"table2"`` (what the paper's Table 2 and the authors' code did, for the paper's network only):
  Tucker-2 on both convolutions, Tucker-2 on the first linear layer as a convolution, Tucker-1 on the
  middle linear layer, the output layer untouched;
* ``"auto"``: ``"table2"`` for the paper's network, ``"algorithm1"`` for any other.

Ranks: ``"vbmf"`` (EVBMF rank of each mode unfolding, :mod:`tuckerref.vbmf`; Tucker-2 uses modes S and T,
Tucker-1 the output mode, which for a matrix has the same EVBMF rank as the input mode), ``"paper"``
(:data:`PAPER_RANKS`, plan ``"table2"`` only), a specification applied to every layer (``"full"``,
``"fraction:F"``), or a dict {layer name: ranks} (layers not named get VBMF ranks; ``None`` leaves a
layer untouched). No layer name matters outside the ``"table2"`` plan's paper ranks.
"""
from __future__ import annotations

import copy
import json
import time
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass
from math import prod

import numpy as np

from .fold import fold_batchnorm
from .kernels import integer_in_range
from .nn import (AdaptiveAvgPool3d, AvgPool3d, BatchNorm3d, Conv3d, Dropout, Flatten, Identity, Linear, MaxPool3d,
                 ReLU, Sequential, feature_volume)
from .tucker import METHODS, check_rank, partial_tucker, relative_error
from .vbmf import estimate_ranks

PLANS = ("auto", "table2", "algorithm1")
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
#: The layers a compressible network may hold, as the children of one flat Sequential (a chain).
CHAIN_LAYERS = (Conv3d, BatchNorm3d, ReLU, MaxPool3d, AvgPool3d, AdaptiveAvgPool3d, Dropout, Identity, Flatten,
                Linear)
#: Element-wise layers that may stand between the Flatten and the first linear layer: they act alike on the
#: flattened vector and on the unflattened volume, so they stay where they are when the Flatten moves.
ELEMENTWISE = (ReLU, Dropout, Identity)
#: ``method="auto"`` runs HOOI on kernels of at most this many elements and HOSVD (HOOI's starting point)
#: on larger ones: on a C3D 512 x 512 x 3 x 3 x 3 kernel (7.1 M elements) one HOOI sweep costs about as
#: much as the whole HOSVD, and HOOI may take up to 100 sweeps; the paper's network's largest kernel
#: (l1 as a convolution, 663,552 elements) stays under the bound.
HOOI_MAX_ELEMENTS = 1 << 20
ALGORITHMS = ("auto",) + METHODS
#: Rank specifications that apply to every compressed layer: "full" (the kernel's mode sizes: exact) and
#: "fraction:F" (round(F * mode size), at least 1, for 0 < F <= 1).
RANK_SPECS = ("full", "fraction:F")


@dataclass
class LayerReport:
    """One row of the per-layer compression report."""

    name: str
    method: str            # "tucker2", "tucker2-as-conv", "tucker1", "none"
    ranks: tuple           # (R_s, R_t), (R,) or ()
    rank_source: str       # "vbmf", "paper", "given", "spec", "-"
    params_before: int     # the layer's parameters (and those of the BatchNorm3d folded into it)
    params_after: int
    rel_error: float       # ||K - K_hat||_F / ||K||_F of the kernel (0 for an untouched layer)
    algorithm: str = "-"   # "hooi" or "hosvd" (Tucker-2), "svd" (Tucker-1: truncated SVD, optimal), "-"
    folded: str = ""       # the BatchNorm3d folded into this convolution before it was decomposed
    seconds: float = 0.0   # rank selection and decomposition time

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ranks"] = list(self.ranks)
        return d


def check_chain(net) -> None:
    """``net`` must be a Sequential whose children are single layers of :data:`CHAIN_LAYERS`."""
    if not isinstance(net, Sequential):
        raise ValueError(f"compress_network expects a Sequential network, got {type(net).__name__}")
    nested = [n for n, m in net.named_children() if isinstance(m, Sequential)]
    if nested:
        raise ValueError(f"compress_network decomposes Conv3d and Linear children only; {nested} are Sequential "
                         f"(already compressed?)")
    foreign = [(n, type(m).__name__) for n, m in net.named_children() if not isinstance(m, CHAIN_LAYERS)]
    if foreign:
        raise ValueError(f"compress_network handles chains of {[c.__name__ for c in CHAIN_LAYERS]}; "
                         f"layer {foreign[0][0]!r} is a {foreign[0][1]}")


def _compressible(net):
    names = net.names()
    return ([n for n in names if isinstance(net[n], Conv3d)], [n for n in names if isinstance(net[n], Linear)])


def fits_table2(net: Sequential) -> bool:
    """True for the paper's Figure 1 network, the one the ``"table2"`` plan is for: its compressible layers
    are two convolutions followed by three linear layers."""
    names = net.names()
    kinds = [type(net[n]) for n in names if isinstance(net[n], (Conv3d, Linear))]
    return kinds == [Conv3d, Conv3d, Linear, Linear, Linear]


def resolve_plan(net: Sequential, plan: str) -> str:
    """``plan``, with ``"auto"`` made ``"table2"`` for the paper's network and ``"algorithm1"`` for any other."""
    if plan not in PLANS:
        raise ValueError(f"plan must be one of {PLANS}, got {plan!r}")
    if plan == "auto":
        return "table2" if fits_table2(net) else "algorithm1"
    if plan == "table2" and not fits_table2(net):
        convs, linears = _compressible(net)
        raise ValueError(f"plan 'table2' is the paper's Table 2 plan for its Figure 1 network (two convolutions, "
                         f"then three linear layers); this network has {len(convs)} convolution(s) and "
                         f"{len(linears)} linear layer(s): use plan 'algorithm1' (or 'auto')")
    return plan


def flatten_before(net: Sequential, name: str) -> str:
    """Name of the Flatten that feeds layer ``name`` (only :data:`ELEMENTWISE` layers between them)."""
    names = net.names()
    i = names.index(name) - 1
    while i >= 0 and type(net[names[i]]) in ELEMENTWISE:
        i -= 1
    if i < 0 or not isinstance(net[names[i]], Flatten):
        raise ValueError(f"the first linear layer {name!r} must follow a Flatten (with only ReLU, Dropout or "
                         f"Identity between) to be compressed as a convolution over its feature volume "
                         f"(children: {names})")
    return names[i]


def plan_methods(net: Sequential, plan: str) -> "OrderedDict[str, str]":
    """{child name: method} of every Conv3d/Linear child of ``net`` under ``plan`` (the paper's Section 3.2, Algorithm 1).

    ``"algorithm1"``: the first convolution Tucker-1, every later one Tucker-2, the first linear layer
    Tucker-2 as a convolution over the feature volume entering it, every later linear layer Tucker-1.
    ``"table2"`` (the paper's network only): Tucker-2 on both convolutions and on the first linear layer
    as a convolution, Tucker-1 on the middle linear layer, the output layer untouched.
    """
    check_chain(net)
    plan = resolve_plan(net, plan)
    names = net.names()
    convs, linears = _compressible(net)
    if convs and linears and names.index(convs[-1]) > names.index(linears[0]):
        raise ValueError(f"convolution {convs[-1]!r} comes after the linear layer {linears[0]!r}: "
                         f"compress_network expects convolutions first, then linear layers")
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
        flatten_before(net, linears[0])
    return methods


def fold_batchnorms(net: Sequential):
    """(copy of ``net`` with every Conv3d + BatchNorm3d pair folded, [(conv name, batchnorm name), ...])."""
    if not any(isinstance(m, BatchNorm3d) for m in net.children()):
        return net, []
    return fold_batchnorm(net, report=True)


def _kernel_shape(layer, how, volume) -> tuple:
    if how == "tucker2-as-conv":
        return (layer.out_features,) + tuple(volume)
    return tuple(layer.weight.data.shape)


def _modes(how) -> tuple:
    return CHANNEL_MODES if how.startswith("tucker2") else (OUTPUT_MODE,)


def _kernel(layer, how, volume):
    if how == "tucker2-as-conv":
        return linear_as_conv(layer, volume).weight.data
    return layer.weight.data


def _vbmf_ranks(name, kernel, modes):
    kernel = np.asarray(kernel, dtype=np.float64)
    if not np.isfinite(kernel).all():
        raise ValueError(f"layer {name!r}: the kernel of shape {kernel.shape} holds NaN or infinite values")
    ranks = list(estimate_ranks(kernel, modes))
    for k, (m, r) in enumerate(zip(modes, ranks)):
        if r == 0:
            warnings.warn(f"layer {name!r}: VBMF estimated rank 0 for mode {m} "
                          f"({'input' if m == 1 else 'output'} channels); using rank 1", stacklevel=3)
            ranks[k] = 1
    return tuple(ranks)


def parse_fraction(spec: str) -> float:
    """F of a "fraction:F" rank specification, 0 < F <= 1."""
    try:
        value = float(spec.split(":", 1)[1])
    except (IndexError, ValueError):
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"a rank specification 'fraction:F' needs 0 < F <= 1, got {spec!r}")
    return value


def spec_ranks(spec: str, shape, modes) -> tuple:
    """Ranks of a kernel of ``shape`` over ``modes`` under a rank specification (:data:`RANK_SPECS`)."""
    if spec == "full":
        return tuple(int(shape[m]) for m in modes)
    fraction = parse_fraction(spec)
    return tuple(max(1, int(round(fraction * shape[m]))) for m in modes)


def _is_spec(ranks) -> bool:
    return isinstance(ranks, str) and (ranks == "full" or ranks.startswith("fraction:"))


def _given_ranks(name, how, r, shape):
    """Given ranks of layer ``name`` as a tuple over its modes, checked against its kernel ``shape``."""
    what = f"layer {name!r} ({how})"
    r = _pair(r, what) if how.startswith("tucker2") else (_single(r, what),)
    axes = {1: "input channels S", 0: "output channels T"}
    return tuple(integer_in_range(v, 1, shape[m], f"{what}: rank {v!r} for mode {m} ({axes[m]})",
                                  f" (kernel shape {tuple(shape)})") for m, v in zip(_modes(how), r))


def _choose_ranks(ranks, plan, methods, shapes):
    """{name: (ranks tuple, None for VBMF, or () to leave the layer, source)} for every layer of the plan;
    given ranks are checked here, before any decomposition starts."""
    untouched = {n: ((), "-") for n, m in methods.items() if m == "none"}
    if isinstance(ranks, str):
        if ranks == "vbmf":
            return {n: untouched.get(n, (None, "vbmf")) for n in methods}
        if _is_spec(ranks):
            if ranks != "full":
                parse_fraction(ranks)
            return {n: untouched.get(n) or (spec_ranks(ranks, shapes[n], _modes(m)), "spec")
                    for n, m in methods.items()}
        if ranks == "paper":
            if plan != "table2":
                raise ValueError("ranks='paper' gives the ranks of the paper's Table 2 (Section 3.2), "
                                 f"which used plan 'table2'; for plan {plan!r} pass 'vbmf', a rank "
                                 f"specification {RANK_SPECS} or a dict of ranks")
            compressed = {n for n, m in methods.items() if m != "none"}
            if compressed != set(PAPER_RANKS):
                raise ValueError(f"ranks='paper' needs exactly the paper's layers {sorted(PAPER_RANKS)} compressed "
                                 f"by plan 'table2'; this network's plan is {dict(methods)}")
            out = dict(untouched)
            out.update({n: (_given_ranks(n, methods[n], r, shapes[n]), "paper") for n, r in PAPER_RANKS.items()})
            return out
        raise ValueError(f"ranks must be 'vbmf', 'paper', a rank specification {RANK_SPECS} or a dict "
                         f"{{layer: ranks}}, got {ranks!r}")
    if not isinstance(ranks, dict):
        raise ValueError(f"ranks must be 'vbmf', 'paper', a rank specification {RANK_SPECS} or a dict "
                         f"{{layer: ranks}}, got {type(ranks).__name__}")
    unknown = [n for n in ranks if n not in methods]
    if unknown:
        raise ValueError(f"ranks given for {unknown}, which are not Conv3d/Linear layers of the network "
                         f"(layers: {list(methods)})")
    fixed = [n for n, r in ranks.items() if r is not None and methods[n] == "none"]
    if fixed:
        raise ValueError(f"plan {plan!r} leaves {fixed} uncompressed; give them no ranks (or None)")
    out = {n: untouched.get(n, (None, "vbmf")) for n in methods}
    for n, r in ranks.items():
        out[n] = ((), "given") if r is None else (_given_ranks(n, methods[n], r, shapes[n]), "given")
    return out


def _algorithm(method, how, kernel_size) -> str:
    if how == "tucker1":
        return "svd"  # one mode: HOSVD is the truncated SVD, already optimal (Eckart-Young); HOOI adds nothing
    if method == "auto":
        return "hooi" if kernel_size <= HOOI_MAX_ELEMENTS else "hosvd"
    return method


def _replace(layer, how, ranks, volume, algorithm):
    method = "hosvd" if algorithm == "svd" else algorithm
    if how == "tucker2":
        return tucker2_conv_decomposed(layer, ranks, method)
    if how == "tucker2-as-conv":
        return tucker2_linear_as_conv_decomposed(layer, volume, ranks, method)
    if isinstance(layer, Conv3d):
        return tucker1_conv_decomposed(layer, ranks, method)
    return tucker1_linear_decomposed(layer, ranks, method)


def compress_network(net: Sequential, plan: str = "auto", ranks="vbmf", input_shape=None,
                     method: str = "auto", report: bool = False):
    """One-shot whole-network Tucker compression (the paper's Section 3.2, Algorithm 1); the original ``net`` is left untouched.

    ``net`` is a chain (:data:`CHAIN_LAYERS`). Every BatchNorm3d right after a Conv3d is folded into it
    first (eval statistics, :func:`tuckerref.fold.fold_batchnorm`); the report names the pairs. ``plan``:
    "auto" (the default: "table2" for the paper's network, "algorithm1" for any other), "table2" or
    "algorithm1" (:func:`plan_methods`). ``ranks``: "vbmf", "paper", "full", "fraction:F" or a dict
    {layer name: ranks} (layers not named get VBMF ranks; ``None`` leaves a layer untouched).
    ``method``: "hooi", "hosvd" or "auto" (HOOI up to :data:`HOOI_MAX_ELEMENTS` kernel elements, HOSVD
    above); the report says which ran on each layer.

    Returns the new network, or ``(network, [LayerReport, ...])`` with ``report=True``. Compressed
    layers become Sequentials (state_dict names ``c1.0.weight`` ... ``c1.2.bias``); the first linear
    layer becomes three convolutions on the unflattened volume, so the Flatten before it moves right
    after it. ``input_shape`` (default ``net.input_shape``) gives that volume. A VBMF rank of 0 becomes 1
    with a warning naming the layer. At full ranks the output equals the original's (eval mode).
    """
    if method not in ALGORITHMS:
        raise ValueError(f"method must be one of {ALGORITHMS}, got {method!r}")
    check_chain(net)
    plan = resolve_plan(net, plan)
    original = net
    net, folded = fold_batchnorms(net)
    folded_into = dict(folded)
    methods = plan_methods(net, plan)
    if input_shape is None:
        input_shape = getattr(original, "input_shape", None)
    volume, flatten = None, None
    first_linear = next((n for n, m in methods.items() if m == "tucker2-as-conv"), None)
    if first_linear is not None:
        if input_shape is None:
            raise ValueError("compress_network needs input_shape (the network does not record one) "
                             "to unflatten the first linear layer's input")
        volume = feature_volume(net, tuple(input_shape), first_linear)
        flatten = flatten_before(net, first_linear)
    shapes = {n: _kernel_shape(net[n], m, volume) for n, m in methods.items() if m != "none"}
    chosen = _choose_ranks(ranks, plan, methods, shapes)
    for name, (r, _) in chosen.items():
        if r != () and not np.isfinite(net[name].weight.data).all():
            raise ValueError(f"layer {name!r}: the kernel of shape {net[name].weight.data.shape} holds NaN or "
                             f"infinite values")
    if first_linear is None or chosen[first_linear][0] == ():
        flatten = None  # the Flatten stays where it is

    layers, rows = OrderedDict(), []
    for name in net.names():
        child = net[name]
        if name == flatten:
            continue  # moves after the first linear layer's convolutions
        before = child.num_parameters()
        if name in folded_into:
            before = original[name].num_parameters() + original[folded_into[name]].num_parameters()
        if name not in methods or chosen[name][0] == ():
            layers[name] = copy.deepcopy(child)
            if name in methods:
                rows.append(LayerReport(name, "none", (), "-", before, before if name not in folded_into
                                        else child.num_parameters(), 0.0, folded=folded_into.get(name, "")))
            continue
        how = methods[name]
        r, source = chosen[name]
        algorithm = _algorithm(method, how, prod(shapes[name]))
        start = time.perf_counter()
        if r is None:
            r = _vbmf_ranks(name, _kernel(child, how, volume), _modes(how))
        try:
            new, dec = _replace(child, how, r, volume, algorithm)
        except ValueError as exc:
            raise ValueError(f"layer {name!r}: {exc}") from None
        layers[name] = new
        if how == "tucker2-as-conv":
            layers[flatten] = Flatten()
        rows.append(LayerReport(name, how, tuple(f.shape[1] for f in dec.factors), source, before,
                                new.num_parameters(), dec.rel_error, algorithm, folded_into.get(name, ""),
                                time.perf_counter() - start))
    out = Sequential(layers)
    out.input_shape = None if input_shape is None else tuple(input_shape)
    first = next((m for m in out if m.parameters()), None)
    if first is not None:
        first.needs_input_grad = False
    out.train(original.training)
    return (out, rows) if report else out


def parse_ranks(text: str):
    """CLI ``--ranks``: 'vbmf', 'paper', 'full', 'fraction:F' or a JSON object {"c1": [2, 2], "l2": 1, ...}."""
    if text in ("vbmf", "paper") or _is_spec(text):
        if text.startswith("fraction:"):
            parse_fraction(text)
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--ranks must be 'vbmf', 'paper', 'full', 'fraction:F' or a JSON object of ranks, "
                         f"got {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"--ranks JSON must be an object {{layer: ranks}}, got {text!r}")
    return value


def format_report(rows) -> str:
    """The per-layer table printed by ``tuckerref compress`` (and the BatchNorm3d layers folded first)."""
    width = max([8] + [len(r.name) for r in rows])
    lines = [f"{'layer':<{width}} {'method':<16} {'ranks':<10} {'source':<6} {'algo':<5} {'params':>10} {'->':^4} "
             f"{'params':<10} {'x':>7} {'rel.err':>9} {'seconds':>8}"]
    before = after = seconds = 0
    for r in rows:
        ranks = ",".join(str(v) for v in r.ranks) or "-"
        lines.append(f"{r.name:<{width}} {r.method:<16} {ranks:<10} {r.rank_source:<6} {r.algorithm:<5} "
                     f"{r.params_before:>10,} {'->':^4} {r.params_after:<10,} "
                     f"{r.params_before / max(r.params_after, 1):>7.2f} {r.rel_error:>9.4f} {r.seconds:>8.2f}")
        before += r.params_before
        after += r.params_after
        seconds += r.seconds
    lines.append(f"{'total':<{width}} {'':<16} {'':<10} {'':<6} {'':<5} {before:>10,} {'->':^4} {after:<10,} "
                 f"{before / max(after, 1):>7.2f} {'':>9} {seconds:>8.2f}")
    folded = [(r.name, r.folded) for r in rows if r.folded]
    if folded:
        lines.append("BatchNorm3d folded into the convolution before it (eval statistics): "
                     + ", ".join(f"{bn} -> {conv}" for conv, bn in folded))
    return "\n".join(lines)


__all__ = ["tucker2_conv", "tucker1_conv", "tucker1_linear", "tucker2_linear_as_conv", "linear_as_conv",
           "compress_network", "plan_methods", "resolve_plan", "fits_table2", "check_chain", "fold_batchnorms",
           "LayerReport", "Decomposition", "PAPER_RANKS", "PLANS", "ALGORITHMS", "RANK_SPECS", "CHAIN_LAYERS",
           "parse_ranks", "format_report"]
