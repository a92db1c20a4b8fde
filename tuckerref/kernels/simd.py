"""Register tiles: explicit SIMD vectors for Numba kernels.

LLVM's loop vectoriser turns a loop over output positions into vector code, but it keeps one
accumulator chain per output vector, so a convolution's long multiply-add reduction waits on
the FMA latency (about half of the machine's peak here). The fix of every fast convolution or
matrix product is a *register tile*: a block of accumulators (output rows x channels x SIMD
vectors of positions) that stays in registers for the whole reduction. Each step loads each
input vector once, broadcasts one weight per row and channel, and issues
``rows x channels x vectors`` independent FMAs:

    acc[r, k, v] += broadcast(w[w_start - r*w_row_step + k]) * x[x_start + v*L : ... + L]

With one row, each input vector feeds ``channels`` FMAs. With several rows (a convolution with
unit height stride), output row r takes the same input row through kernel row j - r, so each
input vector also feeds every row: that is what keeps a one-channel tile from being limited by
loads rather than FMAs.

Numba has no vector type, so this module adds one (``Vector``: an LLVM ``<L x float>`` of 32
or 64 bytes, as the tile says; :data:`VECTOR_BYTES` is the widest this target has) and
intrinsics that work on a tuple of them: :func:`tile_broadcast`
(fill from one value per channel, e.g. the bias), :func:`tile_fma` (one reduction step) and
:func:`tile_fma_rows` (the same on some of the tile's rows), :func:`tile_store`, and
:func:`tile_mix_store` (a 1x1x1 convolution of the tile's channels, for a Tucker-2 block's last
factor, eq. 10, stored as it is computed). A :class:`RegisterTile` argument fixes the tile's
shape at compile time, so each shape is its own (cached) specialisation and LLVM allocates
the accumulators to registers; :mod:`.tiling` picks the shapes for the target's register file
(:data:`VECTOR_REGISTERS`). Everything is plain LLVM IR (``llvm.fmuladd``), so the code is
portable: a target without vectors of the tile's width splits each vector in two or four.

On targets with AVX-512F the tiles can use 64-byte vectors (zmm): the same accumulators then
cover twice the columns with half the instructions and loads per FMA. A tile's vector width is
part of its type (:class:`RegisterTile`), so each width is its own cached specialisation.

The intrinsics index flat, C-contiguous arrays with element offsets and do no bounds checks;
the callers guarantee that every vector read or written lies inside its array.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import RequireLiteralValue
from numba.extending import (NativeValue, intrinsic, models, overload_attribute, register_model, typeof_impl,
                             unbox)

#: Bytes per SIMD vector a register tile may use: 256-bit vectors on every x86 target with AVX2,
#: 512-bit ones where the target has AVX-512F.
VECTOR_WIDTHS = (32, 64)

#: The most vector registers of any target (x86 with AVX-512): no tile may need more.
MAX_VECTOR_REGISTERS = 32


def _target_features(features):
    """The LLVM feature string given, else the one Numba compiles with (``NUMBA_CPU_FEATURES`` when
    set, else the host's), as a set of "+feature" / "-feature" entries."""
    if features is None:
        from numba.core import config
        from numba.core.codegen import get_host_cpu_features
        features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return set(str(features).split(","))


def vector_registers(features: str | None = None) -> int:
    """Vector registers of the target Numba compiles for: 32 with AVX-512VL (whose EVEX encoding
    reaches ymm16-ymm31, and zmm16-zmm31), else 16.

    ``features`` is an LLVM feature string ("+avx2,+avx512vl,..."); by default the one Numba
    compiles with (``NUMBA_CPU_FEATURES`` when set, else the host's).
    """
    return 32 if "+avx512vl" in _target_features(features) else 16


def vector_bytes(features: str | None = None) -> int:
    """The widest SIMD vector the register tiles use on the target (``features`` as in
    :func:`vector_registers`): 64 bytes with AVX-512F and AVX-512VL (32 zmm registers), else 32."""
    have = _target_features(features)
    return 64 if {"+avx512f", "+avx512vl"} <= have else 32


#: Vector registers of this target; the tile shapes of :mod:`.tiling` are chosen for it.
VECTOR_REGISTERS = vector_registers()

#: The widest vector of this target, in bytes; :func:`.tiling.row_cover` picks each convolution's.
VECTOR_BYTES = vector_bytes()


def lanes(dtype, vector_bytes: int = 32) -> int:
    """Lanes of one SIMD vector of ``vector_bytes`` bytes of ``dtype`` (a NumPy or Numba float type)."""
    bits = dtype.bitwidth if isinstance(dtype, types.Number) else dtype.itemsize * 8
    return vector_bytes * 8 // bits


class RegisterTile:
    """Shape of a register tile: ``rows`` output rows x ``channels`` channels x ``vectors`` SIMD
    vectors of ``vector_bytes`` bytes each.

    Passed to a kernel as an argument, it makes the shape a compile-time constant.
    """

    def __init__(self, channels: int, vectors: int, rows: int = 1, vector_bytes: int = 32):
        if min(channels, vectors, rows) < 1:
            raise ValueError(f"a register tile needs >= 1 row, channel and vector, got "
                             f"rows={rows}, channels={channels}, vectors={vectors}")
        if rows * channels * (vectors + 1) + 1 > MAX_VECTOR_REGISTERS:
            raise ValueError(f"tile of {rows} x {channels} x {vectors} needs more than {MAX_VECTOR_REGISTERS} "
                             f"vector registers")
        if vector_bytes not in VECTOR_WIDTHS:
            raise ValueError(f"a register tile's vectors are {VECTOR_WIDTHS} bytes wide, got {vector_bytes}")
        self.channels, self.vectors, self.rows, self.vector_bytes = channels, vectors, rows, vector_bytes
        # Numba types this object on every kernel call; the type is built once, here.
        self._numba_type_ = RegisterTileType(channels, vectors, rows, vector_bytes)

    def __repr__(self):
        return f"RegisterTile({self.channels}, {self.vectors}, rows={self.rows}, vector_bytes={self.vector_bytes})"


class Vector(types.Type):
    """Numba type of one SIMD vector: ``lanes`` values of ``dtype``."""

    def __init__(self, dtype, lanes):
        self.dtype, self.lanes = dtype, lanes
        super().__init__(name=f"Vector({dtype}, {lanes})")


class RegisterTileType(types.Type):
    def __init__(self, channels, vectors, rows, vector_bytes):
        self.channels, self.vectors, self.rows, self.vector_bytes = channels, vectors, rows, vector_bytes
        super().__init__(name=f"RegisterTile({channels}, {vectors}, rows={rows}, vector_bytes={vector_bytes})")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.lanes))


register_model(RegisterTileType)(models.OpaqueModel)


@typeof_impl.register(RegisterTile)
def _typeof_register_tile(value, context):
    return value._numba_type_


@unbox(RegisterTileType)
def _unbox_register_tile(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())  # the shape lives in the type alone


@overload_attribute(RegisterTileType, "channels")
def _tile_channels(tile):
    channels = tile.channels
    return lambda tile: channels


@overload_attribute(RegisterTileType, "vectors")
def _tile_vectors(tile):
    vectors = tile.vectors
    return lambda tile: vectors


@overload_attribute(RegisterTileType, "rows")
def _tile_rows(tile):
    rows = tile.rows
    return lambda tile: rows


def _accumulators(tile, dtype):
    return types.UniTuple(Vector(dtype, lanes(dtype, tile.vector_bytes)), tile.rows * tile.channels * tile.vectors)


def _address(context, builder, array_type, array, offset):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [offset], inbounds=True)


def _step(builder, pointer, count):
    return builder.gep(pointer, [ir.Constant(ir.IntType(64), count)], inbounds=True)


def _broadcast(builder, scalar, n):
    vector = builder.insert_element(ir.Constant(ir.VectorType(scalar.type, n), ir.Undefined), scalar,
                                    ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(vector, vector, ir.Constant(ir.VectorType(ir.IntType(32), n), [0] * n))


def _fmuladd(context, builder, vector):
    """The LLVM intrinsic llvm.fmuladd on the ``vector`` type: a*b + c, fused where the target has FMA."""
    vty = context.get_value_type(vector)
    suffix = "f32" if vector.dtype.bitwidth == 32 else "f64"
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3),
                                          f"llvm.fmuladd.v{vector.lanes}{suffix}")


def _vector_pointer(builder, pointer, n):
    return builder.bitcast(pointer, ir.VectorType(pointer.type.pointee, n).as_pointer())


def _check_flat(name, array):
    if not (isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C"
            and isinstance(array.dtype, types.Float)):
        raise TypeError(f"{name} must be a 1-D C-contiguous float array, got {array}")


@intrinsic
def tile_broadcast(typingctx, tile, values, start):
    """acc[r, k, v] = broadcast(values[start + k]) for every row r, channel k and vector v."""
    _check_flat("values", values)
    acc = _accumulators(tile, values.dtype)
    n = acc.dtype.lanes

    def codegen(context, builder, sig, args):
        _, array, first = args
        base = _address(context, builder, sig.args[1], array, first)
        channel = [_broadcast(builder, builder.load(_step(builder, base, k)), n) for k in range(tile.channels)]
        out = [channel[k] for _ in range(tile.rows) for k in range(tile.channels) for _ in range(tile.vectors)]
        return context.make_tuple(builder, acc, out)

    return acc(tile, values, start), codegen


def _fma_rows(tile, acc, w, x, first_row, end_row):
    """Typing and code of one reduction step on the tile rows first_row <= r < end_row (see tile_fma)."""
    _check_flat("w", w)
    _check_flat("x", x)
    n = acc.dtype.lanes
    align = acc.dtype.dtype.bitwidth // 8
    C, V = tile.channels, tile.vectors
    rows = range(max(first_row, 0), min(end_row, tile.rows))

    def codegen(context, builder, sig, args):
        tiles, warr, wfirst, wstep, xarr, xfirst = args[-6:]
        fmuladd = _fmuladd(context, builder, acc.dtype)
        weights = {}
        for r in rows:
            first = builder.sub(wfirst, builder.mul(wstep, ir.Constant(wstep.type, r)))
            wbase = _address(context, builder, sig.args[-5], warr, first)
            weights[r] = [_broadcast(builder, builder.load(_step(builder, wbase, k)), n) for k in range(C)]
        xbase = _address(context, builder, sig.args[-2], xarr, xfirst)
        out = [builder.extract_value(tiles, i) for i in range(tile.rows * C * V)]
        for v in range(V):
            if not rows:
                break
            xv = builder.load(_vector_pointer(builder, _step(builder, xbase, v * n), n), align=align)
            for r in rows:
                for k in range(C):
                    i = (r * C + k) * V + v
                    out[i] = builder.call(fmuladd, [weights[r][k], xv, out[i]])
        return context.make_tuple(builder, acc, out)

    return codegen


@intrinsic
def tile_fma(typingctx, tile, acc, w, w_start, w_row_step, x, x_start):
    """One reduction step: acc[r, k, v] += broadcast(w[w_start - r*w_row_step + k]) * x[x_start + v*L : ... + L]."""
    return acc(tile, acc, w, w_start, w_row_step, x, x_start), _fma_rows(tile, acc, w, x, 0, tile.rows)


@intrinsic
def tile_fma_rows(typingctx, tile, first_row, end_row, acc, w, w_start, w_row_step, x, x_start):
    """:func:`tile_fma` on the tile rows first_row <= r < end_row only (compile-time constants).

    The other rows keep their values: no multiply-add is issued for them, so a row whose kernel
    row lies outside the kernel costs nothing and never multiplies an input by a zero weight.
    """
    for bound in (first_row, end_row):
        if not isinstance(bound, types.IntegerLiteral):
            raise RequireLiteralValue(bound)
    sig = acc(tile, first_row, end_row, acc, w, w_start, w_row_step, x, x_start)
    return sig, _fma_rows(tile, acc, w, x, first_row.literal_value, end_row.literal_value)


def _store(builder, value, pointer, align, maximum):
    """Store a vector; with ``maximum``, store max(old, value) instead, NaN propagating as
    pool._nan_max(old, value) does: the new value when it is greater or NaN, else the old one.

    The comparisons carry no fast-math flags; callers must not be compiled with fastmath (its
    pass would flag them and let LLVM drop the NaN test).
    """
    if maximum:
        old = builder.load(pointer, align=align)
        take = builder.or_(builder.fcmp_ordered(">", value, old), builder.fcmp_unordered("uno", value, value))
        value = builder.select(take, value, old)
    builder.store(value, pointer, align=align)


def _mix_store(tile, acc, w, b, out, maximum):
    """Typing and code of tile_mix_store (``maximum``: tile_mix_max_store)."""
    _check_flat("w", w)
    _check_flat("b", b)
    _check_flat("out", out)
    n = acc.dtype.lanes
    align = acc.dtype.dtype.bitwidth // 8
    C, V, R = tile.channels, tile.vectors, tile.rows

    def codegen(context, builder, sig, args):
        _, tiles, warr, wfirst, barr, bfirst, oarr, ofirst, rstride = args
        fmuladd = _fmuladd(context, builder, acc.dtype)
        wbase = _address(context, builder, sig.args[2], warr, wfirst)
        weights = [_broadcast(builder, builder.load(_step(builder, wbase, k)), n) for k in range(C)]
        bias = _broadcast(builder, builder.load(_address(context, builder, sig.args[4], barr, bfirst)), n)
        base = _address(context, builder, sig.args[6], oarr, ofirst)
        for r in range(R):
            row = builder.gep(base, [builder.mul(rstride, ir.Constant(rstride.type, r))], inbounds=True)
            for v in range(V):
                y = bias
                for k in range(C):
                    y = builder.call(fmuladd, [weights[k], builder.extract_value(tiles, (r * C + k) * V + v), y])
                _store(builder, y, _vector_pointer(builder, _step(builder, row, v * n), n), align, maximum)
        return context.get_dummy_value()

    return codegen


@intrinsic
def tile_mix_store(typingctx, tile, acc, w, w_start, b, b_start, out, start, row_stride):
    """Mix the channels of a tile into one and store it (eq. (10) on a tile):

        out[start + r*row_stride + v*L : ... + L] = b[b_start] + sum_k w[w_start + k] * acc[r, k, v]

    summed in channel order from the bias, as a 1x1x1 convolution does. Each vector is stored as
    soon as it is mixed, so only the tile, the C weights and the bias occupy registers.
    """
    sig = types.none(tile, acc, w, w_start, b, b_start, out, start, row_stride)
    return sig, _mix_store(tile, acc, w, b, out, False)


@intrinsic
def tile_mix_max_store(typingctx, tile, acc, w, w_start, b, b_start, out, start, row_stride):
    """:func:`tile_mix_store` into a running maximum: out = max(out, mixed), NaN propagating."""
    sig = types.none(tile, acc, w, w_start, b, b_start, out, start, row_stride)
    return sig, _mix_store(tile, acc, w, b, out, True)


def _tile_store(tile, acc, out, maximum):
    """Typing and code of tile_store (``maximum``: tile_max_store)."""
    _check_flat("out", out)
    n = acc.dtype.lanes
    align = acc.dtype.dtype.bitwidth // 8
    C, V = tile.channels, tile.vectors

    def codegen(context, builder, sig, args):
        _, tiles, oarr, first, cstride, rstride = args
        base = _address(context, builder, sig.args[2], oarr, first)
        for r in range(tile.rows):
            for k in range(C):
                offset = builder.add(builder.mul(rstride, ir.Constant(rstride.type, r)),
                                     builder.mul(cstride, ir.Constant(cstride.type, k)))
                row = builder.gep(base, [offset], inbounds=True)
                for v in range(V):
                    _store(builder, builder.extract_value(tiles, (r * C + k) * V + v),
                           _vector_pointer(builder, _step(builder, row, v * n), n), align, maximum)
        return context.get_dummy_value()

    return codegen


@intrinsic
def tile_store(typingctx, tile, acc, out, start, channel_stride, row_stride):
    """out[start + r*row_stride + k*channel_stride + v*L : ... + L] = acc[r, k, v]."""
    return types.none(tile, acc, out, start, channel_stride, row_stride), _tile_store(tile, acc, out, False)


@intrinsic
def tile_max_store(typingctx, tile, acc, out, start, channel_stride, row_stride):
    """:func:`tile_store` into a running maximum: out[...] = max(out[...], acc[r, k, v]), NaN propagating
    (rows or channels may share addresses: each is merged in turn)."""
    return types.none(tile, acc, out, start, channel_stride, row_stride), _tile_store(tile, acc, out, True)



@intrinsic
def tile_load(typingctx, tile, values, start, channel_stride, row_stride):
    """acc[r, k, v] = values[start + r*row_stride + k*channel_stride + v*L : ... + L], the inverse of
    :func:`tile_store`: a tile resumes a reduction that an earlier pass stored (a blocked sum)."""
    _check_flat("values", values)
    acc = _accumulators(tile, values.dtype)
    n = acc.dtype.lanes
    align = acc.dtype.dtype.bitwidth // 8
    C, V = tile.channels, tile.vectors

    def codegen(context, builder, sig, args):
        _, array, first, cstride, rstride = args
        base = _address(context, builder, sig.args[1], array, first)
        out = []
        for r in range(tile.rows):
            for k in range(C):
                offset = builder.add(builder.mul(rstride, ir.Constant(rstride.type, r)),
                                     builder.mul(cstride, ir.Constant(cstride.type, k)))
                row = builder.gep(base, [offset], inbounds=True)
                for v in range(V):
                    out.append(builder.load(_vector_pointer(builder, _step(builder, row, v * n), n), align=align))
        return context.make_tuple(builder, acc, out)

    return acc(tile, values, start, channel_stride, row_stride), codegen
