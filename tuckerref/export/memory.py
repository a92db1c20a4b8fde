"""Static memory plan of an exported network: fused units, one scratch arena, and the footprint.

:func:`plan_units` groups the computing steps of :func:`tuckerref.export.plan.plan_network` into
the units ``net_forward`` runs, fusing wherever no full-resolution intermediate has to be stored:

* a *stream* unit is a convolution (eq. (1) or the core of eq. (9)), optionally preceded by a
  1x1x1 convolution (the first factor of a Tucker-2 block, eq. (8)) or by the copy of the clip into
  padded rows (:func:`pad_input`), optionally followed by a 1x1x1 convolution (the last
  factor, eq. (10)), optionally followed by a max pooling with ReLUs on either side of it
  (ReLU commutes with max). It runs frame by frame: the first factor's output is kept only for
  the frames the core's window needs (a ring of min(kD, D) frames), the core's output and the
  last factor's output one frame at a time, and the max pooling accumulates each finished frame
  into its output, so that neither the convolution's full output nor any factor's is stored;
* every other computing step is a unit of its own (a convolution with nothing to fuse among them,
  ReLU and an unfolded BatchNorm3d in place).

:func:`place_units` places every unit's input, output and working buffers in one caller-provided
scratch arena. The rule: unit k needs ``live_k = in_k + work_k + out_k`` floats at once (the
network's input and logits belong to the caller and count 0; an in-place unit's output is its
input), and a chain of units can be laid out in exactly ``max_k live_k`` floats by alternating
ends: the output of unit k goes to the end of the arena opposite its input, its working buffers
right after whichever of the two lies at the start. Since each unit holds all of ``live_k`` while
it runs, no layout of the same units is smaller: the plan is the least for that unit order.

:func:`footprint` reports per unit and in total the parameter bytes (flash), the scratch floats
(RAM), an upper bound on the stack of its C function and the helpers it calls, and its
multiply-accumulates.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .plan import IDENTITY, IN_PLACE_KINDS, Step

#: Stack bytes bounded for any generated layer function besides its convolution tile (scalars,
#: spilled registers, the saved return address); checked with gcc -fstack-usage.
STACK_BASE_BYTES = 256
#: (channel, row) pairs of a convolution's register tile (the C template's CT x R); each pair accumulates
#: two vectors of columns (the halves of the tile's VW columns), so that where AVX registers hold the
#: tile its 8 independent accumulators hide the multiply-add's latency, and each input vector loaded
#: feeds CT x R of them.
TILE_PAIRS = 4
#: Floats such a tile accumulates (the C macro NET_TILE_FLOATS): where the target has AVX, and else.
TILE_AVX_FLOATS, TILE_MAX_FLOATS = 64, 128
#: Padded input rows are a multiple of this many floats long (64 bytes: a cache line).
ROW_ALIGN_FLOATS = 16


def tile_shape(step: Step) -> tuple:
    """(CT, R): output channels (a divisor of T) and output rows of convolution ``step``'s register tile,
    the most (channel, row) pairs up to TILE_PAIRS, and of those the most channels. Rows only with stride
    1 along H (input row h feeds output rows h - j for the kernel rows j, so that each input vector
    loaded feeds every pair), at most kH and OH."""
    m, T = step.module, step.out_shape[0]
    best = (0, 0)
    for ct in (c for c in range(1, min(T, TILE_PAIRS) + 1) if T % c == 0):
        rows = max(1, min(TILE_PAIRS // ct, m.kernel_size[1], step.out_shape[2])) if m.stride[1] == 1 else 1
        best = max(best, (ct * rows, ct))
    return best[1], best[0] // best[1]


def tile_columns(channels: int, tile_floats: int = TILE_MAX_FLOATS) -> int:
    """Output columns of a tile of ``channels`` (channel, row) pairs: the C macro NET_TILE_COLUMNS, i.e.
    tile_floats / channels rounded down to a multiple of 8, clamped to 8..32."""
    return min(32, max(8, tile_floats // channels // 8 * 8))


def conv_tile_bytes(step: Step) -> int:
    """Stack bytes of a convolution's tile at its largest: the accumulators and the edge row copy."""
    ct, rows = tile_shape(step)
    vw = max(tile_columns(ct * rows, f) for f in (TILE_AVX_FLOATS, TILE_MAX_FLOATS))
    span = (vw - 1) * step.module.stride[2] + step.module.kernel_size[2]
    return 4 * (rows * ct * vw + span)


def pool_row_bytes(step: Step) -> int:
    """Stack bytes of a max pooling's layer function: one input row of running maxima (0 for other steps)."""
    return 4 * step.in_shape[-1] if step.kind == "maxpool3d" else 0


def row_padding(step: Step) -> tuple:
    """(left, right) zero columns around each input row that let every tile of convolution ``step`` read
    its input row segment in place (no edge copy), for the tile widths the C macros choose with and
    without AVX whose taps reach at most half a row past it: left pad_W, right what the last tile's taps
    reach past the row, and then up to a row of a whole number of ROW_ALIGN_FLOATS (a core 2 -> 2,
    5x11x11 on 120 x 160 frames took 46.6 ms with rows of 170 floats, 40.2 ms with rows of 176). Where a
    wider tile reaches further, its last tile copies its edges. (0, 0) when no width's taps stay within
    that (narrow rows, where the pads would cost more than the copies)."""
    m = step.module
    (KW, SW, PW), W, OW = (m.kernel_size[2], m.stride[2], m.padding[2]), step.in_shape[-1], step.out_shape[-1]
    ct, rows = tile_shape(step)
    left, right = PW, None
    for vw in {tile_columns(ct * rows, f) for f in (TILE_AVX_FLOATS, TILE_MAX_FLOATS)}:
        last = (OW - 1) // vw * vw * SW - PW  # input column of the last tile's first tap
        reach = max(0, last + (vw - 1) * SW + KW - W)
        if left + reach <= W // 2:
            right = reach if right is None else max(right, reach)
    if right is None or left + right == 0:
        return (0, 0)
    # rows a whole number of cache lines long, so that every row starts at the same alignment
    return left, -(-(left + W + right) // ROW_ALIGN_FLOATS) * ROW_ALIGN_FLOATS - left - W


#: Path of the step that copies the caller's clip into padded rows (:func:`pad_input`); not a module path.
INPUT_PAD = "input_pad"


def pad_input(steps: list) -> list:
    """``steps`` with a step of kind "pad" before a first computing step that is a convolution whose rows
    :func:`row_padding` pads: it copies the caller's clip into zero-padded rows, so that the convolution
    (the original network's first, eq. (1)) reads its input as a Tucker core reads its first factor's
    output, without edge copies. The copy costs the padded clip in RAM (a ring of kD frames of it when
    the convolution runs fused); ``steps`` unchanged where there is nothing to pad."""
    computing = [s for s in steps if s.kind != IDENTITY]
    if not computing or computing[0].kind != "conv3d" or row_padding(computing[0]) == (0, 0):
        return steps
    if any(s.path == INPUT_PAD for s in steps):
        raise ValueError(f"the network has a layer named {INPUT_PAD!r}, the name of the input padding step; "
                         "rename it or export without pad_input")
    conv = computing[0]
    first = steps.index(conv)
    pad = Step(INPUT_PAD, "pad", None, conv.in_shape, conv.in_shape, 0)
    return steps[:first] + [pad] + steps[first:]


def pad_rows(steps: list) -> list:
    """Give every convolution fed directly by a 1x1x1 convolution (the core of a Tucker-2 block after its
    first factor, eq. (8)) or by the input padding step (:func:`pad_input`) an input of zero-padded rows
    (:func:`row_padding`), which that step writes at no extra pass: the convolution's tiles then never
    copy an edge. Sets the convolution's ``in_pad`` and the step's ``out_pad``; returns ``steps``."""
    computing = [s for s in steps if s.kind != IDENTITY]
    for before, step in zip(computing, computing[1:]):
        if step.kind == "conv3d" and before.kind in ("pointwise", "pad"):
            step.in_pad = before.out_pad = row_padding(step)
    return steps


@dataclass
class Unit:
    """What ``net_forward`` runs at one time: one computing step, or a fused stream of them."""

    steps: list                   # the computing steps it covers, in order
    kind: str                     # "stream" or the single step's kind
    pre: Step | None = None       # stream: 1x1x1 convolution (or the input padding) before the convolution
    conv: Step | None = None      # stream: the convolution
    post: Step | None = None      # stream: 1x1x1 convolution after it
    pool: Step | None = None      # stream: max pooling fused in
    relu: bool = False            # stream: a ReLU before or after the pooling
    work: dict = field(default_factory=dict)  # working buffer name -> floats
    src: object = None            # "input" or a float offset in the scratch arena
    dst: object = None            # "logits" or a float offset
    work_at: int = 0              # float offset of the working buffers

    @property
    def name(self) -> str:
        return "+".join(s.path for s in self.steps)

    @property
    def in_shape(self) -> tuple:
        return self.steps[0].in_shape

    @property
    def out_shape(self) -> tuple:
        return self.steps[-1].out_shape

    @property
    def in_size(self) -> int:
        return self.steps[0].in_size

    @property
    def out_size(self) -> int:
        return self.steps[-1].out_size

    @property
    def in_place(self) -> bool:
        return self.kind in IN_PLACE_KINDS

    @property
    def work_size(self) -> int:
        return sum(self.work.values())

    def live(self, first: bool, last: bool) -> int:
        """Floats of the arena this unit holds while it runs (input, working buffers, output)."""
        src = 0 if first else self.in_size
        dst = 0 if last or (self.in_place and not first) else self.out_size
        return src + self.work_size + dst

    @property
    def macs(self) -> int:
        return sum(step_macs(s) for s in self.steps)

    @property
    def param_floats(self) -> int:
        return sum(int(d.size) for s in self.steps for _, d in s.params)

    @property
    def stack_bytes(self) -> int:
        """Bound on the stack of this unit's C function and the helpers it calls."""
        tile = max([conv_tile_bytes(s) for s in self.steps if s.kind == "conv3d"] or [0])
        if self.kind == "stream":  # its pooling runs frame by frame (no row of maxima)
            return 2 * STACK_BASE_BYTES + tile
        return STACK_BASE_BYTES + tile + sum(pool_row_bytes(s) for s in self.steps)


def step_macs(step: Step) -> int:
    """Multiply-accumulates of one step: a convolution T*S*kD*kH*kW per output position (taps in the
    padding included), a 1x1x1 convolution T*S per position, a linear layer in*out; others 0."""
    m = step.module
    if step.kind == "conv3d":
        return int(np.prod(step.out_shape)) * m.in_channels * int(np.prod(m.kernel_size))
    if step.kind == "pointwise":
        return int(np.prod(step.out_shape)) * step.in_shape[0]
    if step.kind == "linear":
        return step.in_size * step.out_size
    return 0


def _stream(computing: list, k: int):
    """(unit, next index) for a stream starting at computing[k], or None when none starts there."""
    kinds = [s.kind for s in computing]
    pre = None
    if kinds[k] in ("pointwise", "pad") and k + 1 < len(kinds) and kinds[k + 1] == "conv3d":
        pre, k = computing[k], k + 1
    if kinds[k] != "conv3d":
        return None
    conv, k = computing[k], k + 1
    post = None
    if k < len(kinds) and kinds[k] == "pointwise":
        post, k = computing[k], k + 1
    # ReLUs, then a max pooling, then ReLUs: all fused, or none of them
    j, relu = k, False
    while j < len(kinds) and kinds[j] == "relu":
        j, relu = j + 1, True
    pool = None
    if j < len(kinds) and kinds[j] == "maxpool3d":
        pool, j = computing[j], j + 1
        while j < len(kinds) and kinds[j] == "relu":
            j, relu = j + 1, True
        k = j
    else:
        relu = False
    if pre is None and post is None and pool is None:
        return None  # a convolution alone writes its output directly: nothing to fuse
    steps = [s for s in computing[computing.index(pre or conv):k]]
    unit = Unit(steps, "stream", pre=pre, conv=conv, post=post, pool=pool, relu=relu)
    S, D, H, W = conv.in_shape
    T, OD, OH, OW = conv.out_shape
    if pre is not None:  # the frames of conv's input, padded rows included
        unit.work["ring"] = min(conv.module.kernel_size[0], D) * (conv.in_size // D)
    if post is not None or pool is not None:
        unit.work["frame"] = T * OH * OW
    if post is not None and pool is not None:
        unit.work["post_frame"] = post.out_shape[0] * OH * OW
    return unit, k


def plan_units(steps: list, fuse: bool = True) -> list:
    """The units of ``steps`` in execution order (``fuse=False``: one unit per computing step)."""
    computing = [s for s in steps if s.kind != IDENTITY]
    units, k = [], 0
    while k < len(computing):
        found = _stream(computing, k) if fuse else None
        if found is None:
            units.append(Unit([computing[k]], computing[k].kind))
            k += 1
        else:
            unit, k = found
            units.append(unit)
    return units


def place_units(units: list) -> int:
    """Set every unit's ``src``, ``dst`` and ``work_at``; returns the arena's floats, max_k live_k."""
    n = len(units)
    size = max(u.live(k == 0, k == n - 1) for k, u in enumerate(units)) if units else 0
    src, src_at_start = "input", True  # the caller's input is outside the arena
    for k, u in enumerate(units):
        last = k == n - 1
        u.src = src
        if last:
            u.dst, dst_at_start = "logits", not src_at_start
        elif u.in_place and src != "input":
            u.dst, dst_at_start = src, src_at_start
        elif src == "input" or not src_at_start:
            u.dst, dst_at_start = 0, True
        else:
            u.dst, dst_at_start = size - u.out_size, False
        # working buffers right after the tensor at the start of the arena
        if src != "input" and src_at_start:
            u.work_at = u.in_size
        elif u.dst != "logits" and dst_at_start:
            u.work_at = u.out_size
        else:
            u.work_at = 0
        src, src_at_start = u.dst, dst_at_start
    return size


def footprint(units: list, scratch: int, input_shape, layerwise_scratch: int | None = None) -> dict:
    """Per unit and in total: flash (parameter bytes), RAM (scratch floats and bytes, stack bound), MACs."""
    n = len(units)
    rows = [{"unit": u.name, "layers": [s.path for s in u.steps], "kind": u.kind,
             "out_shape": list(u.out_shape), "param_bytes": 4 * u.param_floats,
             "scratch_floats": u.live(k == 0, k == n - 1), "work_floats": dict(u.work),
             "stack_bytes": u.stack_bytes, "macs": u.macs} for k, u in enumerate(units)]
    total = {"param_bytes": sum(r["param_bytes"] for r in rows), "scratch_floats": scratch,
             "scratch_bytes": 4 * scratch, "stack_bytes": max([r["stack_bytes"] for r in rows] or [0]),
             "macs": sum(r["macs"] for r in rows),
             "input_floats": int(np.prod(input_shape)), "output_floats": units[-1].out_size if units else 0}
    if layerwise_scratch is not None:
        total["layerwise_scratch_floats"] = layerwise_scratch
    return {"units": rows, "total": total}


def format_footprint(fp: dict) -> str:
    """The footprint as a text table."""
    lines = [f"{'unit':<34} {'kind':<10} {'flash B':>10} {'scratch floats':>15} {'stack B':>8} {'MACs':>16}"]
    for r in fp["units"]:
        name = r["unit"] if len(r["unit"]) <= 34 else r["unit"][:31] + "..."
        lines.append(f"{name:<34} {r['kind']:<10} {r['param_bytes']:>10,} {r['scratch_floats']:>15,} "
                     f"{r['stack_bytes']:>8,} {r['macs']:>16,}")
    t = fp["total"]
    lines.append(f"{'total (scratch: the arena, max)':<34} {'':<10} {t['param_bytes']:>10,} "
                 f"{t['scratch_floats']:>15,} {t['stack_bytes']:>8,} {t['macs']:>16,}")
    return "\n".join(lines)
