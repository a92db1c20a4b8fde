"""Generate and write the C99 sources of a network: net.h, net.c, weights, main.c and a Makefile.

The numbers come from :mod:`tuckerref.export.plan`, the C text from
:mod:`tuckerref.export.templates`. Output is deterministic (no dates, parameters in
``named_parameters`` order) and every file is written atomically.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import atomic_path
from ..nn import AdaptiveAvgPool3d, AvgPool3d, BatchNorm3d, Conv3d, Linear, MaxPool3d
from . import templates as tpl
from .memory import footprint, pad_input as pad_clip, pad_rows, place_units, plan_units, tile_shape
from .plan import IDENTITY, Step, c_identifier, place_buffers, plan_network

WEIGHTS_FORMATS = ("array", "blob")
BLOB_MAGIC = b"TKREFW1\0"
_VALUES_PER_LINE = 6


@dataclass
class ExportResult:
    """What :func:`export_c` wrote and the sizes the C code was generated for."""

    outdir: Path
    files: list
    steps: list
    scratch_floats: int
    param_floats: int
    units: list = None          # the fused units net_forward runs (tuckerref.export.memory)
    footprint: dict = None      # footprint.json's contents
    layerwise_scratch_floats: int = 0  # the arena net_run_layer needs, one layer at a time
    functions: dict = None      # computing step path -> its C function (net_run_layer's callee)

    @property
    def folded(self) -> list:
        """[(Conv3d path, BatchNorm3d path)] of the batch normalisations folded into their convolutions."""
        return [(s.folded_with, s.path) for s in self.steps if s.kind == IDENTITY and s.folded_with]


def _dims(shape) -> str:
    return " x ".join(str(v) for v in shape)


def _float_literal(v: float) -> str:
    """A C float constant that reads back as exactly the float32 ``v`` (9 significant digits)."""
    text = "%.9g" % v
    if text.lstrip("-").isdigit():
        text += ".0"
    return text + "f"


def _array_values(data: np.ndarray) -> str:
    values = [_float_literal(v) for v in data.ravel().tolist()]
    lines = (", ".join(values[k:k + _VALUES_PER_LINE]) for k in range(0, len(values), _VALUES_PER_LINE))
    return ",\n".join("    " + line for line in lines)


def _buffer(place: str, size: int) -> str:
    return {"input": "input", "logits": "logits", "a": "scratch",
            "b": f"scratch + (NET_LAYERWISE_SCRATCH_FLOATS - {size})"}[place]


def _arena(place, size) -> str:
    """C expression of a unit's buffer: the caller's input or logits, or an offset into the arena."""
    if place in ("input", "logits"):
        return place
    return f"scratch + {place}" if place else "scratch"



def _description(step: Step) -> str:
    m = step.module
    if isinstance(m, Conv3d):
        folded = f" ({step.folded_with} folded in)" if step.folded_with else ""
        return (f"Conv3d {m.in_channels} -> {m.out_channels}, kernel {m.kernel_size}, stride {m.stride}, "
                f"padding {m.padding}, {'with' if m.bias is not None else 'no'} bias{folded}")
    if isinstance(m, Linear):
        return f"Linear {m.in_features} -> {m.out_features}, {'with' if m.bias is not None else 'no'} bias"
    if isinstance(m, MaxPool3d):
        return f"MaxPool3d kernel {m.kernel_size}, stride {m.stride}, padding {m.padding}"
    if isinstance(m, AvgPool3d):
        return (f"AvgPool3d kernel {m.kernel_size}, stride {m.stride}, padding {m.padding}, "
                f"count_include_pad={m.count_include_pad}, divisor_override={m.divisor_override}")
    if isinstance(m, AdaptiveAvgPool3d):
        return f"AdaptiveAvgPool3d output {step.out_shape[1:]}"
    if isinstance(m, BatchNorm3d):
        return f"BatchNorm3d {m.num_features} channels, eps {m.eps:g}, running statistics"
    return step.layer_type


def _identity_note(step: Step) -> str:
    """Why an identity step generates no code."""
    return f"folded into {step.folded_with}" if step.folded_with else "identity at inference"


def _avgpool_divisor(m) -> str:
    """AVGPOOL3D's declaration of its divisor n for ``m``'s options (PyTorch avg_pool3d)."""
    if m.divisor_override:
        return tpl.AVGPOOL3D_DIVISOR["override"].format(value=_float_literal(float(m.divisor_override)))
    # floor mode: every window lies inside the padded input, so counting the padding gives the window size
    return tpl.AVGPOOL3D_DIVISOR["window" if m.count_include_pad else "inside"]


def _macro_block(rows) -> str:
    """#define lines with their values and comments in aligned columns."""
    name_w = max(len(name) for name, _, _ in rows)
    value_w = max(len(str(value)) for _, value, _ in rows)
    return "\n".join(f"#define {name:<{name_w}} {value!s:<{value_w}}  /* {comment} */" if comment
                     else f"#define {name:<{name_w}} {value}" for name, value, comment in rows)


def _tile_block(ct: int, rows: tuple, kw: int, pad: str, partial: bool) -> list:
    """C lines of one tile block: input row r's KW taps into the output rows ``rows`` (kernel rows r - q)
    of all ct channels, in two variants chosen by the macro NET_TILE_TAPS: one tap per pass over the
    accumulators, or two (l, l + 1; then the last tap of an odd row), so that where the compiler keeps
    the tile in memory each accumulator is read and written once per two multiply-adds. The column loop
    runs over the tile's two halves at once (columns v and VH + v, VH = VW / 2), so that each weight
    broadcast feeds two vectors and each input vector loaded (NET_KEEP) feeds every (channel, row) pair
    of the block. A ``partial`` block (fewer rows than the tile's) has few statements per column, and
    NET_NO_UNROLL keeps GCC from unrolling its column loop completely before vectorising it."""
    pairs = [(q, c) for q in rows for c in range(ct)]
    halves = ("v", "v + VH")  # the columns of each half

    def loop(head, first_line, taps):
        lines = [pad + head] + ([f"{pad}    {first_line}"] if first_line else [])
        for q, c in pairs:
            at = f"kr[{c} * TS + l" if q == 0 else f"kr[{c} * TS - {q} * KW + l"
            lines.append(f"{pad}    const float " + ", ".join(
                f"{t}{q}_{c} = {at}{' + 1' if t == 'b' else ''}]" for t in taps) + ";")
        if partial:
            lines.append(f"{pad}    NET_NO_UNROLL")
        lines.append(f"{pad}    for (v = 0; v < VH; ++v) {{")
        lines.append(f"{pad}        const float " + ", ".join(
            f"x{n}{h} = NET_KEEP(xb[l{' + 1' if t == 'b' else ''} + ({col}) * SW])"
            for h, col in enumerate(halves) for n, t in enumerate(taps)) + ";")
        for h, at in enumerate(halves):
            for q, c in pairs:
                expr = f"acc[{q}][{c}][{at}]"
                for n, t in enumerate(taps):
                    expr = f"NET_MADD({t}{q}_{c}, x{n}{h}, {expr})"
                lines.append(f"{pad}        acc[{q}][{c}][{at}] = {expr};")
        return lines + [f"{pad}    }}", f"{pad}}}"]

    two = []
    if kw >= 2:
        two += loop("for (l = 0; l + 1 < KW; l += 2) {", None, ("a", "b"))
    if kw % 2:
        two += loop("{  /* the last tap of an odd row */", "l = KW - 1;", ("a",))
    return ["#if NET_TILE_TAPS == 2"] + two + ["#else"] + loop("for (l = 0; l < KW; ++l) {", None, ("a",)) + ["#endif"]


def _tile_taps(ct: int, kh: int, kw: int, rows: int, indent: int = 36) -> str:
    """The C code of a convolution tile for one input row r of its window: its KW taps into every output
    row q of the tile that row r reaches (kernel row j = r - q in 0..KH-1), in one block per set of
    rows: all of them (the rows of the window's middle), or fewer (its first and last rows)."""
    pad = " " * indent
    head = f"{pad}const float *const kr = k + r * KW;  /* K(t0, s, i, r, 0): kernel row r - q of output row q at kr - q*KW */"
    if rows == 1:
        return "".join(line + "\n" for line in [head] + _tile_block(ct, (0,), kw, pad, False))
    cases = []
    for r in range(rows - 1 + kh):
        case = (max(0, r - kh + 1), min(rows - 1, r))
        if case not in cases:
            cases.append(case)
    cases.sort(key=lambda case: case != (0, rows - 1))  # the full tile first: most rows take it
    lines = [head, f"{pad}const int qa = r - KH + 1 > 0 ? r - KH + 1 : 0, qb = r < R - 1 ? r : R - 1;  "
                   "/* output rows qa..qb */"]
    for n, (qa, qb) in enumerate(cases):
        lines.append(f"{pad}{'if' if n == 0 else '} else if'} (qa == {qa} && qb == {qb}) {{")
        lines += _tile_block(ct, tuple(range(qa, qb + 1)), kw, pad + "    ", (qa, qb) != (0, rows - 1))
    lines.append(pad + "}")
    return "".join(line + "\n" for line in lines)


def _conv_windows(tile_taps: str, indent: int = 20) -> dict:
    """CONV3D's two copies of its window loops (:data:`.templates.CONV3D_WINDOW`): the tile's taps reading
    each row segment in place, and reading an edge copy of it."""
    pad = " " * indent
    copy = (f"{pad}            row = plane + h * XW + XL;  /* column 0 of input row h */\n"
            f"{pad}            for (n = ea; n < eb; ++n)\n"
            f"{pad}                xe[n] = row[w0 + n];\n")
    return {"window_in_place": tpl.CONV3D_WINDOW.substitute(pad=pad, row_declaration="", row_copy="",
                                                           xb="plane + h * XW + XL + w0", tile_taps=tile_taps),
            "window_edge": tpl.CONV3D_WINDOW.substitute(pad=pad, row_declaration=f"{pad}            const float *row;\n",
                                                       row_copy=copy, xb="xe", tile_taps=tile_taps)}


class _Generator:
    """Renders one network; holds the identifiers chosen for its layers and parameters."""

    def __init__(self, net, input_shape, weights_format, fold=True, fuse=True, pad_input=False):
        if weights_format not in WEIGHTS_FORMATS:
            raise ValueError(f"weights_format must be one of {WEIGHTS_FORMATS}, got {weights_format!r}")
        self.format = weights_format
        self.input_shape = tuple(int(v) for v in input_shape)
        steps = plan_network(net, self.input_shape, fold)
        self.steps = pad_rows(pad_clip(steps) if pad_input else steps)
        self.placements, self.layerwise_scratch = place_buffers(self.steps)
        self.units = plan_units(self.steps, fuse)
        self.scratch = place_units(self.units)
        self.computing = [s for s in self.steps if s.kind != IDENTITY]
        self.params = [(name, data) for s in self.steps for name, data in s.params]
        self.param_floats = sum(int(d.size) for _, d in self.params)
        taken: set = set()
        self.param_ident = {name: c_identifier(name, "param_", taken) for name, _ in self.params}
        self.func_ident = {s.path: c_identifier(s.path, "layer_", taken) for s in self.computing}
        self.unit_ident = [c_identifier(u.name.replace("+", "__"), "fused_", taken) if u.kind == "stream" else
                           self.func_ident[u.steps[0].path] for u in self.units]
        self.pooled = {u.pool.path for u in self.units if u.pool is not None}
        self.title = (f"network of {len(self.computing)} computing layers and {self.param_floats:,} parameters "
                      f"for clips {_dims(self.input_shape)}")

    # -- layer functions ---------------------------------------------------------------------
    def _weight(self, step: Step, which: str):
        name = next((n for n, _ in step.params if n.endswith("." + which) or n == which), None)
        return None if name is None else self.param_ident[name]

    def _init(self, step: Step, index: str, which: str = "bias", default: str = "0.0f") -> str:
        bias = self._weight(step, which)
        return f"{bias}[{index}]" if bias else default

    def layer_function(self, step: Step) -> str:
        func = self.func_ident[step.path]
        m = step.module
        if step.kind == "conv3d":
            (S, D, H, W), (T, OD, OH, OW) = step.in_shape, step.out_shape
            (KD, KH, KW), (SD, SH, SW), (PD, PH, PW) = m.kernel_size, m.stride, m.padding
            ct, rows = tile_shape(step)
            body = tpl.CONV3D.substitute(func=func, S=S, D=D, H=H, W=W, T=T, OD=OD, OH=OH, OW=OW, KD=KD, KH=KH,
                                         KW=KW, SD=SD, SH=SH, SW=SW, PD=PD, PH=PH, PW=PW,
                                         weight=self._weight(step, "weight"), init=self._init(step, "t0 + c"),
                                         XL=step.in_pad[0], XR=step.in_pad[1], XW=W + sum(step.in_pad),
                                         CT=ct, R=rows, CTR=ct * rows, **_conv_windows(_tile_taps(ct, KH, KW, rows)))
            equation = tpl.CONV3D_EQUATION
        elif step.kind == "pointwise":
            (S, D, H, W), T, P = step.in_shape, step.out_shape[0], int(np.prod(step.in_shape[1:]))
            body = tpl.POINTWISE_ROWS.substitute(func=func, S=S, T=T, weight=self._weight(step, "weight"),
                                                 init=self._init(step, "t"))
            if step.out_pad == (0, 0):
                body += tpl.POINTWISE_LAYER.substitute(func=func, P=P)
            else:  # the next convolution reads rows padded with zeros (memory.pad_rows)
                body += tpl.POINTWISE_PADDED.substitute(func=func, T=T, W=W, WP=W + sum(step.out_pad),
                                                        PL=step.out_pad[0], P=P, PP=step.out_size // T, ROWS=D * H)
            equation = tpl.POINTWISE_EQUATION
        elif step.kind == "linear":
            body = tpl.LINEAR.substitute(func=func, IN=step.in_size, OUT=step.out_size,
                                         weight=self._weight(step, "weight"), init=self._init(step, "o"))
            equation = tpl.LINEAR_EQUATION
        elif step.kind == "maxpool3d":
            (C, D, H, W), (_, OD, OH, OW) = step.in_shape, step.out_shape
            (KD, KH, KW), (SD, SH, SW), (PD, PH, PW) = m.kernel_size, m.stride, m.padding
            sizes = dict(func=func, C=C, D=D, H=H, W=W, OD=OD, OH=OH, OW=OW, KD=KD, KH=KH, KW=KW, SD=SD, SH=SH,
                         SW=SW, PD=PD, PH=PH, PW=PW)
            body = tpl.MAXPOOL3D.substitute(sizes)
            if step.path in self.pooled:
                body += "\n" + tpl.MAXPOOL3D_FRAME.substitute(sizes)
            equation = tpl.MAXPOOL3D_EQUATION
        elif step.kind == "avgpool3d":
            (C, D, H, W), (_, OD, OH, OW) = step.in_shape, step.out_shape
            (KD, KH, KW), (SD, SH, SW), (PD, PH, PW) = m.kernel_size, m.stride, m.padding
            body = tpl.AVGPOOL3D.substitute(func=func, C=C, D=D, H=H, W=W, OD=OD, OH=OH, OW=OW, KD=KD, KH=KH,
                                            KW=KW, SD=SD, SH=SH, SW=SW, PD=PD, PH=PH, PW=PW,
                                            divisor=_avgpool_divisor(m))
            equation = tpl.AVGPOOL3D_EQUATION
        elif step.kind == "adaptive_avgpool3d":
            (C, D, H, W), (_, OD, OH, OW) = step.in_shape, step.out_shape
            body = tpl.ADAPTIVE_AVGPOOL3D.substitute(func=func, C=C, D=D, H=H, W=W, OD=OD, OH=OH, OW=OW)
            equation = tpl.ADAPTIVE_AVGPOOL3D_EQUATION
        elif step.kind == "batchnorm3d":
            body = tpl.BATCHNORM3D.substitute(func=func, C=step.in_shape[0], P=int(np.prod(step.in_shape[1:])),
                                              eps=_float_literal(np.float32(m.eps)),
                                              mean=self._weight(step, "running_mean"),
                                              var=self._weight(step, "running_var"),
                                              gamma=self._init(step, "c", "weight", "1.0f"),
                                              beta=self._init(step, "c", "bias", "0.0f"))
            equation = tpl.BATCHNORM3D_EQUATION
        elif step.kind == "relu":
            body, equation = tpl.RELU.substitute(func=func, N=step.in_size), tpl.RELU_EQUATION
        elif step.kind == "pad":
            (S, D, H, W), P = step.in_shape, int(np.prod(step.in_shape[1:]))
            body = tpl.PAD.substitute(func=func, S=S, W=W, WP=W + sum(step.out_pad), PL=step.out_pad[0], P=P,
                                      PP=step.out_size // S, ROWS=D * H)
            equation = tpl.PAD_EQUATION
        else:  # copy
            body, equation = tpl.COPY.substitute(func=func, N=step.in_size), tpl.COPY_EQUATION
        header = tpl.LAYER_HEADER.substitute(path=step.path, description=_description(step),
                                             in_dims=_dims(step.in_shape), out_dims=_dims(step.out_shape),
                                             flops=f"{step.flops:,}", equation=equation)
        return header + body

    # -- net.h -------------------------------------------------------------------------------
    def net_h(self) -> str:
        rows, index = [], 0
        type_w = max([10] + [len(s.layer_type) for s in self.steps])
        for step in self.steps:
            label = "-" if step.kind == IDENTITY else str(index)
            index += step.kind != IDENTITY
            flops = _identity_note(step) if step.kind == IDENTITY else f"{step.flops:>18,}"
            rows.append(f" *   {label:>3}  {step.path:<16} {step.layer_type:<{type_w}} "
                        f"{_dims(step.out_shape):<22} {flops}")
        rows.append(f" *        {'total':<16} {'':<{type_w}} {'':<22} {self.total_flops:>18,}")
        flops = _macro_block([(f"NET_FLOPS_{self.func_ident[s.path][len('layer_'):].upper()}", f"{s.flops}.0", "")
                              for s in self.computing])
        c, f, h, w = self.input_shape
        blob = self.format == "blob"
        sizes = [("NET_INPUT_C", c, "clip channels"), ("NET_INPUT_F", f, "frames"), ("NET_INPUT_H", h, "height"),
                 ("NET_INPUT_W", w, "width"),
                 ("NET_INPUT_SIZE", int(np.prod(self.input_shape)), "floats in one input clip"),
                 ("NET_OUTPUT_SIZE", self.steps[-1].out_size, "logits per clip"),
                 ("NET_SCRATCH_FLOATS", self.scratch, "scratch floats net_forward needs (the static plan)"),
                 ("NET_LAYERWISE_SCRATCH_FLOATS", self.layerwise_scratch, "scratch floats net_run_layer needs"),
                 ("NET_PARAM_FLOATS", self.param_floats, "floats of all parameters"),
                 ("NET_NUM_LAYERS", len(self.computing), "layers that compute (identities, folded batch norms do not)"),
                 ("NET_TOTAL_FLOPS", f"{self.total_flops}.0", "FLOPs of one forward pass")]
        if blob:
            sizes.append(("NET_WEIGHTS_BLOB", 1, "parameters come from a file: call net_load_weights first"))
        return tpl.NET_H.substitute(
            title=self.title, input_dims=_dims(self.input_shape), layer_table="\n".join(rows),
            size_macros=_macro_block(sizes), flops_macros=flops, load_prototype=tpl.LOAD_PROTOTYPE if blob else "")

    @property
    def total_flops(self) -> int:
        return sum(s.flops for s in self.steps)

    # -- net.c -------------------------------------------------------------------------------
    def _parameters_section(self) -> str:
        if self.format == "array":
            return tpl.ARRAY_PARAMETERS
        offset, pointers = 0, []
        for name, data in self.params:
            pointers.append(tpl.BLOB_POINTER.substitute(ident=self.param_ident[name], offset=offset, name=name,
                                                        shape=tuple(data.shape)))
            offset += int(data.size)
        return tpl.BLOB_PARAMETERS.substitute(pointers="".join(pointers))

    def _dispatch(self) -> str:
        lines, index = [], 0
        for step, place in zip(self.steps, self.placements):
            if place is None:
                lines.append(f"    /* {step.path}: {step.layer_type}, {_identity_note(step)} */")
                continue
            func = self.func_ident[step.path]
            src, dst = _buffer(place.src, step.in_size), _buffer(place.dst, step.out_size)
            lines += [f"    case {index}:  /* {step.path}: {step.layer_type}, "
                      f"{_dims(step.in_shape)} -> {_dims(step.out_shape)} */",
                      f"        {func}({src}, {dst});", "        break;"]
            index += 1
        return "\n".join(lines)

    def stream_function(self, unit, func: str) -> str:
        """The C function of a fused stream unit: (input, output, working buffers)."""
        conv = unit.conv
        S, D, H, W = conv.in_shape
        T, OD, OH, OW = conv.out_shape
        KD, SD, PD = conv.module.kernel_size[0], conv.module.stride[0], conv.module.padding[0]
        decl, setup, body, offset = [], [], [], 0
        if unit.pre is not None:
            ring = min(KD, D)
            pre = self.func_ident[unit.pre.path]
            XW = W + sum(conv.in_pad)  # floats per row of the ring's frames
            rows = f"padded rows of {XW}" if conv.in_pad != (0, 0) else "rows"
            what = "the padded clip" if unit.pre.kind == "pad" else "the first factor's output"
            decl += [f"    const int D = {D}, HW = {H * W}, KD = {KD}, SD = {SD}, PD = {PD};  /* input frames, window */",
                     f"    const int XHW = {H * XW};  /* floats per frame of the ring */",
                     f"    float *const ring = work + {offset};  /* {ring} frames of {S} x {H} {rows}: {what} */",
                     "    int next = 0, f;  /* next: the first input frame not yet computed */"]
            offset += unit.work["ring"]
            fill = (f"{pre}_padded_rows(x + f * HW, D * HW, ring + (f % {ring}) * {S} * XHW, XHW, {H});"
                    if conv.in_pad != (0, 0) else f"{pre}_rows(x + f * HW, D * HW, ring + (f % {ring}) * {S} * XHW, XHW, HW);")
            body += ["        const int lo = od * SD - PD < 0 ? 0 : od * SD - PD;  /* od's window: frames lo..hi-1 */",
                     "        const int hi = od * SD - PD + KD < D ? od * SD - PD + KD : D;",
                     "        for (f = next > lo ? next : lo; f < hi; ++f)",
                     f"            {fill}",
                     "        if (hi > next)",
                     "            next = hi;"]
            source = f"ring, XHW, {S} * XHW, {ring}"
        else:
            source = f"x, {D * H * W}, {H * W}, {D}"
        conv_func = self.func_ident[conv.path] + "_frame"
        if unit.post is None and unit.pool is None:
            body.append(f"        {conv_func}({source}, od, y + od * FRAME, OD * FRAME);")
        else:
            decl.append(f"    float *const frame = work + {offset};  /* one frame of {conv.path}'s output */")
            offset += unit.work["frame"]
            body.append(f"        {conv_func}({source}, od, frame, FRAME);")
            last = "frame"
            if unit.post is not None:
                post = self.func_ident[unit.post.path]
                if unit.pool is None and unit.post.out_pad != (0, 0):  # the next convolution reads padded rows
                    yf = OH * (OW + sum(unit.post.out_pad))
                    body.append(f"        {post}_padded_rows(frame, FRAME, y + od * {yf}, OD * {yf}, {OH});")
                elif unit.pool is None:
                    body.append(f"        {post}_rows(frame, FRAME, y + od * FRAME, OD * FRAME, FRAME);")
                else:
                    decl.append(f"    float *const post_frame = work + {offset};  /* one frame of {unit.post.path}'s output */")
                    offset += unit.work["post_frame"]
                    body.append(f"        {post}_rows(frame, FRAME, post_frame, FRAME, FRAME);")
                    last = "post_frame"
            if unit.pool is not None:
                start = "0.0f" if unit.relu else "-INFINITY"
                decl.append("    int n;")
                setup += [f"    for (n = 0; n < {unit.out_size}; ++n)  /* the pooled maxima start at {start} */",
                          f"        y[n] = {start};"]
                body.append(f"        {self.func_ident[unit.pool.path]}_frame({last}, od, y);")
        if offset == 0:
            decl.append("    (void)work;")
        header = tpl.LAYER_HEADER.substitute(
            path=unit.name, description=f"fused, working buffers {unit.work_size:,} floats",
            in_dims=_dims(unit.in_shape), out_dims=_dims(unit.out_shape),
            flops=f"{sum(s.flops for s in unit.steps):,}", equation=tpl.STREAM_EQUATION)
        return header + tpl.STREAM.substitute(func=func, OD=OD, FRAME=OH * OW,
                                              declarations="".join(line + "\n" for line in decl),
                                              setup="".join(line + "\n" for line in setup),
                                              body="".join(line + "\n" for line in body))

    def _forward_calls(self) -> str:
        lines = []
        for unit, func in zip(self.units, self.unit_ident):
            src, dst = _arena(unit.src, unit.in_size), _arena(unit.dst, unit.out_size)
            work = f", {_arena(unit.work_at, 0)}" if unit.kind == "stream" else ""
            lines.append(f"    {func}({src}, {dst}{work});  /* {unit.name}: {_dims(unit.in_shape)} -> "
                         f"{_dims(unit.out_shape)} */")
        return "\n".join(lines)

    def net_c(self) -> str:
        records = ",\n".join(f'    {{"{s.path}", "{s.layer_type}", {s.flops}.0}}' for s in self.computing)
        includes = "#include <stdio.h>\n#include <string.h>" if self.format == "blob" else ""
        helpers = tpl.TILE_HELPERS if any(s.kind == "conv3d" for s in self.computing) else ""
        return tpl.NET_C.substitute(
            title=self.title, includes=includes, parameters=self._parameters_section(), helpers=helpers,
            layer_functions="".join(self.layer_function(s) for s in self.computing)
            + "".join(self.stream_function(u, f) for u, f in zip(self.units, self.unit_ident) if u.kind == "stream"),
            layer_records=records, dispatch=self._dispatch(), forward_calls=self._forward_calls())

    # -- weights -----------------------------------------------------------------------------
    def weights_h(self) -> str:
        decls = "".join(f"extern const float {self.param_ident[name]}[{data.size}];  /* {name} {tuple(data.shape)} */\n"
                        for name, data in self.params)
        return tpl.WEIGHTS_H.substitute(title=self.title, declarations=decls)

    def weights_c(self) -> str:
        arrays = "".join(tpl.WEIGHT_ARRAY.substitute(name=name, shape=tuple(data.shape), ident=self.param_ident[name],
                                                     size=data.size, values=_array_values(data))
                         for name, data in self.params)
        return tpl.WEIGHTS_C.substitute(title=self.title, arrays=arrays)

    def weights_blob(self) -> bytes:
        data = b"".join(np.asarray(d, dtype="<f4").tobytes() for _, d in self.params)
        return BLOB_MAGIC + struct.pack("<If", self.param_floats, 1.0) + data

    def footprint(self) -> dict:
        return footprint(self.units, self.scratch, self.input_shape, self.layerwise_scratch)

    # -- main.c, Makefile --------------------------------------------------------------------
    def main_c(self) -> str:
        return tpl.MAIN_C.substitute(weights_usage=" [-w WEIGHTS.bin]" if self.format == "blob" else "")

    def makefile(self) -> str:
        if self.format == "array":
            return tpl.MAKEFILE.substitute(sources="main.c net.c weights.c", headers="net.h weights.h")
        return tpl.MAKEFILE.substitute(sources="main.c net.c", headers="net.h")

    def files(self) -> dict:
        """File name -> contents (str or bytes)."""
        out = {"net.h": self.net_h(), "net.c": self.net_c(), "main.c": self.main_c(), "Makefile": self.makefile(),
               "footprint.json": json.dumps(self.footprint(), indent=1) + "\n"}
        if self.format == "array":
            out["weights.h"] = self.weights_h()
            out["weights.c"] = self.weights_c()
        else:
            out["weights.bin"] = self.weights_blob()
        return out


def export_c(net, outdir, input_shape=None, weights_format="array", fold=True, fuse=True,
             pad_input=False) -> ExportResult:
    """Write a standalone C99 implementation of ``net`` (inference, float32, batch 1) into ``outdir``.

    ``input_shape`` is the per-sample (C, F, H, W) clip shape, by default ``net.input_shape``.
    ``weights_format`` "array" compiles the parameters in (weights.h/weights.c, one ``const float``
    array per PyTorch parameter); "blob" writes weights.bin, read at run time by ``net_load_weights``.
    The layers implement eq. (1) (convolution), eqs. (8)/(10) (1x1x1 convolution), linear layers,
    max, average and adaptive average pooling, batch normalisation with running statistics and ReLU;
    dropout, identity and flatten are the identity at inference. With ``fold`` (the default) each
    BatchNorm3d right after a Conv3d is folded into it (``ExportResult.folded`` lists the pairs).
    ``net_forward`` runs the static memory plan of :mod:`tuckerref.export.memory` (``fuse=False``:
    one unit per layer), whose footprint is written to footprint.json. With ``pad_input`` a first
    convolution reads the clip from a copy in zero-padded rows (``tuckerref.export.memory.pad_input``):
    faster (its tiles copy no edge), at the cost of that copy in the scratch arena (a ring of kD padded
    frames when fused); off by default, since RAM is what a small device lacks.
    """
    if input_shape is None:
        input_shape = getattr(net, "input_shape", None)
        if input_shape is None:
            raise ValueError("the network records no input shape; pass input_shape=(C, F, H, W)")
    gen = _Generator(net, input_shape, weights_format, fold, fuse, pad_input)
    contents = gen.files()  # render everything before writing anything
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise ValueError(f"output directory {outdir} exists and is not a directory")
    written = []
    for name, text in contents.items():
        with atomic_path(outdir / name) as tmp:
            if isinstance(text, bytes):
                tmp.write_bytes(text)
            else:
                tmp.write_text(text, encoding="utf-8")
        written.append(outdir / name)
    return ExportResult(outdir, written, gen.steps, gen.scratch, gen.param_floats, gen.units, gen.footprint(),
                        gen.layerwise_scratch, dict(gen.func_ident))
