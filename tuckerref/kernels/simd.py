"""Register tiles: explicit SIMD vectors for Numba kernels.

LLVM's loop vectoriser turns a loop over output positions into vector code, but it keeps one
accumulator chain per output vector, so a convolution's long multiply-add reduction waits on
the FMA latency (about half of the machine's peak here). The fix of every fast convolution or
matrix product is a *register tile*: a block of accumulators, several output channels by
several vectors of positions, that stays in registers for the whole reduction. Each step then
broadcasts one weight per channel, loads each input vector once, and issues
``channels x vectors`` independent FMAs:

    acc[k, v] += broadcast(w[k]) * x[v*L : (v+1)*L]        k < channels, v < vectors

Numba has no vector type, so this module adds one (``Vector``: an LLVM ``<L x float>`` of
:data:`VECTOR_BYTES` bytes) and three intrinsics that work on a tuple of them:
:func:`tile_broadcast` (fill from one value per channel, e.g. the bias), :func:`tile_fma`
(one reduction step) and :func:`tile_store`. A :class:`RegisterTile` argument fixes the tile's
shape at compile time, so each shape is its own (cached) specialisation and LLVM allocates
the accumulators to registers. Everything is plain LLVM IR (``llvm.fmuladd``), so the code is
portable: a target without 256-bit vectors splits each vector in two.

The intrinsics index flat, C-contiguous arrays with element offsets and do no bounds checks;
the callers guarantee that every vector read or written lies inside its array.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import (NativeValue, intrinsic, models, overload_attribute, register_model, typeof_impl,
                             unbox)

#: Bytes per SIMD vector: AVX2's 256-bit registers (8 float32 or 4 float64 lanes).
VECTOR_BYTES = 32

#: Vector registers the tile shapes are sized for (AVX2 has 16): accumulators, broadcast
#: weights and one input vector must fit, or the tile spills to the stack.
VECTOR_REGISTERS = 16


def lanes(dtype) -> int:
    """Lanes of one SIMD vector of ``dtype`` (a NumPy or Numba float type)."""
    bits = dtype.bitwidth if isinstance(dtype, types.Number) else dtype.itemsize * 8
    return VECTOR_BYTES * 8 // bits


class RegisterTile:
    """Shape of a register tile: ``channels`` output channels by ``vectors`` SIMD vectors.

    Passed to a kernel as an argument, it makes the shape a compile-time constant.
    """

    def __init__(self, channels: int, vectors: int):
        if channels < 1 or vectors < 1:
            raise ValueError(f"a register tile needs >= 1 channel and vector, got ({channels}, {vectors})")
        if channels * vectors + channels + 1 > VECTOR_REGISTERS:
            raise ValueError(f"tile ({channels}, {vectors}) needs more than {VECTOR_REGISTERS} vector registers")
        self.channels, self.vectors = channels, vectors

    def __repr__(self):
        return f"RegisterTile({self.channels}, {self.vectors})"


class Vector(types.Type):
    """Numba type of one SIMD vector: ``lanes`` values of ``dtype``."""

    def __init__(self, dtype, lanes):
        self.dtype, self.lanes = dtype, lanes
        super().__init__(name=f"Vector({dtype}, {lanes})")


class RegisterTileType(types.Type):
    def __init__(self, channels, vectors):
        self.channels, self.vectors = channels, vectors
        super().__init__(name=f"RegisterTile({channels}, {vectors})")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.lanes))


register_model(RegisterTileType)(models.OpaqueModel)


@typeof_impl.register(RegisterTile)
def _typeof_register_tile(value, context):
    return RegisterTileType(value.channels, value.vectors)


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


def _accumulators(tile, dtype):
    return types.UniTuple(Vector(dtype, lanes(dtype)), tile.channels * tile.vectors)


def _address(context, builder, array_type, array, offset):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [offset], inbounds=True)


def _step(builder, pointer, count):
    return builder.gep(pointer, [ir.Constant(ir.IntType(64), count)], inbounds=True)


def _broadcast(builder, scalar, n):
    vector = builder.insert_element(ir.Constant(ir.VectorType(scalar.type, n), ir.Undefined), scalar,
                                    ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(vector, vector, ir.Constant(ir.VectorType(ir.IntType(32), n), [0] * n))


def _vector_pointer(builder, pointer, n):
    return builder.bitcast(pointer, ir.VectorType(pointer.type.pointee, n).as_pointer())


def _check_flat(name, array):
    if not (isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C"
            and isinstance(array.dtype, types.Float)):
        raise TypeError(f"{name} must be a 1-D C-contiguous float array, got {array}")


@intrinsic
def tile_broadcast(typingctx, tile, values, start):
    """acc[k, v] = broadcast(values[start + k]) for every channel k and vector v."""
    _check_flat("values", values)
    acc = _accumulators(tile, values.dtype)
    n = lanes(values.dtype)

    def codegen(context, builder, sig, args):
        _, array, first = args
        base = _address(context, builder, sig.args[1], array, first)
        out = []
        for k in range(tile.channels):
            out += [_broadcast(builder, builder.load(_step(builder, base, k)), n)] * tile.vectors
        return context.make_tuple(builder, acc, out)

    return acc(tile, values, start), codegen


@intrinsic
def tile_fma(typingctx, tile, acc, w, w_start, x, x_start):
    """One reduction step: acc[k, v] += broadcast(w[w_start + k]) * x[x_start + v*L : ... + L]."""
    _check_flat("w", w)
    _check_flat("x", x)
    n = acc.dtype.lanes
    align = acc.dtype.dtype.bitwidth // 8

    def codegen(context, builder, sig, args):
        _, tiles, warr, wfirst, xarr, xfirst = args
        vty = context.get_value_type(acc.dtype)
        suffix = "f32" if acc.dtype.dtype.bitwidth == 32 else "f64"
        fmuladd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3),
                                                 f"llvm.fmuladd.v{n}{suffix}")
        wbase = _address(context, builder, sig.args[2], warr, wfirst)
        weights = [_broadcast(builder, builder.load(_step(builder, wbase, k)), n) for k in range(tile.channels)]
        xbase = _address(context, builder, sig.args[4], xarr, xfirst)
        out = [None] * (tile.channels * tile.vectors)
        for v in range(tile.vectors):
            xv = builder.load(_vector_pointer(builder, _step(builder, xbase, v * n), n), align=align)
            for k in range(tile.channels):
                i = k * tile.vectors + v
                out[i] = builder.call(fmuladd, [weights[k], xv, builder.extract_value(tiles, i)])
        return context.make_tuple(builder, acc, out)

    return acc(tile, acc, w, w_start, x, x_start), codegen


@intrinsic
def tile_store(typingctx, tile, acc, out, start, channel_stride):
    """out[start + k*channel_stride + v*L : ... + L] = acc[k, v]."""
    _check_flat("out", out)
    n = acc.dtype.lanes
    align = acc.dtype.dtype.bitwidth // 8

    def codegen(context, builder, sig, args):
        _, tiles, oarr, first, stride = args
        base = _address(context, builder, sig.args[2], oarr, first)
        for k in range(tile.channels):
            row = builder.gep(base, [builder.mul(stride, ir.Constant(stride.type, k))], inbounds=True)
            for v in range(tile.vectors):
                builder.store(builder.extract_value(tiles, k * tile.vectors + v),
                              _vector_pointer(builder, _step(builder, row, v * n), n), align=align)
        return context.get_dummy_value()

    return types.none(tile, acc, out, start, channel_stride), codegen
