"""A Tucker-2 convolution block in one pass: eqs. (8)-(10) of the paper, for inference.

A Tucker-2 layer replaces K by three convolutions,

    Z = U_s^T * X                 (eq. 8: 1x1x1, S -> R_s)
    Z' = C conv Z                 (eq. 9: the core, R_s -> R_t, the original kernel, stride and padding)
    Y(t) = b(t) + sum_r U_t(t, r) Z'(r)   (eq. 10: 1x1x1, R_t -> T)

Run one after the other, Z is copied into a zero-padded buffer for the core, the core writes Z'
out and the last 1x1x1 convolution reads it back and writes Y: passes over memory that the
FLOP count does not see, and in a compressed network they weigh as much as a tenth of the core.
When one register tile holds all R_t core channels (R_t <= 3, or R_t <= 6 on a target with 32
vector registers; the paper's ranks are 2 and 3), U_s writes Z straight into the padded buffer
and each core tile mixes its channels by U_t before it stores, so Z' never reaches memory
(:func:`tuckerref.kernels.simd.tile_mix_store`). Followed by a max pooling (c1 and c2 of the
paper), the block is a single parallel pass: the core's tile tasks compute the padded planes of Z
they read, and Z never reaches memory either. Each output is summed in
the same order as the three convolutions would sum it. Otherwise, and for shapes the register
tiles do not cover, the three convolutions run in turn, or, followed by a max pooling, a group of
frames at a time (:mod:`.stream_pool`), which a Tucker-1 block (the core and U_t only) with its
pooling also takes (:func:`tucker1_conv3d`).

Gradients are not part of this: a network being trained runs its three layers one by one.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from ._checks import as_triple, common_dtype, float_array, require_finite
from . import simd
from .conv3d import conv3d_into, conv_geometry, pooled_dims
from .conv3d_tiles import PaddedTileConvolution, tiles_fit, tiles_hold_all_channels
from .stream_pool import streamed_block_pool


def _check_factor(name, weight, layout):
    weight = float_array(weight, name, 5, layout=layout)
    if weight.shape[2:] != (1, 1, 1):
        raise ValueError(f"{name} must be a 1x1x1 kernel ({layout}, 1, 1, 1), got shape {weight.shape}")
    return weight


def tucker2_conv3d(x, first, core, last, bias=None, stride=1, padding=0, *, pool=None, relu=False,
                   check_finite=True):
    """Y = last * (core conv (first * x)) + bias, eqs. (8)-(10), as one convolution block.

    ``first`` (R_s, S, 1, 1, 1) is U_s^T, ``core`` (R_t, R_s, kD, kH, kW) the core with the
    original layer's ``stride`` and ``padding``, ``last`` (T, R_t, 1, 1, 1) is U_t, ``bias`` (T,)
    the original layer's bias: the weights of the three Conv3d layers of a Tucker-2 block.
    Returns (N, T, D', H', W'), the same values as the three convolutions in turn; with ``pool``
    (kd, kh, kw), the max pooling of Y with that kernel and stride (no padding), and with ``relu``
    max(., 0) of that, in the same pass when the tiles mix (as
    :func:`tuckerref.kernels.conv_pool.conv3d_max_pool3d` does for a plain convolution).
    """
    if relu and pool is None:
        raise ValueError("relu is fused only after a pooling (pool=...)")
    x = float_array(x, "x", 5, layout="N, C, D, H, W")
    first = _check_factor("first", first, "R_s, S")
    last = _check_factor("last", last, "T, R_t")
    core = float_array(core, "core", 5, layout="R_t, R_s, kD, kH, kW")
    bias = None if bias is None else float_array(bias, "bias", 1)
    dtype = common_dtype(x, first, core, last, bias)
    g = block_geometry(x.shape, first.shape, core.shape, last.shape, None if bias is None else bias.shape,
                       as_triple(stride, "stride", minimum=1), as_triple(padding, "padding", minimum=0),
                       None if pool is None else as_triple(pool, "pool", minimum=1), dtype, simd.VECTOR_REGISTERS)
    if check_finite:
        for name, a in (("first", first), ("core", core), ("last", last), ("bias", bias), ("x", x)):
            if a is not None:
                require_finite(a, name)
    x, first, core, last = (a.astype(dtype, copy=False) for a in (x, first, core, last))
    bias = None if bias is None else bias.astype(dtype, copy=False)
    if g.fused:
        return fused_block(g, first, core, last, bias, relu)(x)
    N, T, R_s, R_t = x.shape[0], last.shape[0], first.shape[0], core.shape[0]
    stride, padding, pool, z_dims, out_dims = g.stride, g.padding, g.pool, g.z_dims, g.out_dims
    if pool is not None:
        return streamed_block_pool(x, first.reshape(R_s, -1), core, last.reshape(T, R_t),
                                   np.zeros(T, dtype) if bias is None else bias, stride, padding, pool, relu)
    out = np.empty((N, T) + out_dims, dtype)
    z = np.empty((N, R_s) + z_dims, dtype)
    y = np.empty((N, R_t) + out_dims, dtype)
    one, zero = (1, 1, 1), (0, 0, 0)
    for inp, weight, b, s, p, res in ((x, first, None, one, zero, z), (z, core, None, stride, padding, y),
                                      (y, last, bias, one, zero, out)):
        conv3d_into(inp, weight, b, s, p, res)
    return out


def tucker1_conv3d(x, core, last, bias=None, stride=1, padding=0, *, pool, relu=False, check_finite=True):
    """max_pool(U_t * (core conv x) + b), then max(., 0) with ``relu``: a Tucker-1 block (the input mode
    kept, as for C3D's 3-channel first layer: eq. (9) on x itself, then eq. (10)) and the max pooling
    with kernel = stride = ``pool`` after it, streamed (:func:`.stream_pool.streamed_block_pool`).

    ``core`` (R_t, S, kD, kH, kW) with the layer's ``stride`` and ``padding``, ``last`` (T, R_t, 1, 1, 1)
    U_t, ``bias`` (T,): the weights of the block's two Conv3d layers. The same values as the layers in turn.
    """
    x = float_array(x, "x", 5, layout="N, C, D, H, W")
    core = float_array(core, "core", 5, layout="R_t, S, kD, kH, kW")
    last = _check_factor("last", last, "T, R_t")
    bias = None if bias is None else float_array(bias, "bias", 1)
    if x.shape[1] != core.shape[1] or last.shape[1] != core.shape[0]:
        raise ValueError(f"Tucker-1 block shapes do not chain: x {x.shape}, core {core.shape}, last {last.shape} "
                         f"(need x (N, S, ...), core (R_t, S, ...), last (T, R_t))")
    T, R_t = last.shape[:2]
    if bias is not None and bias.shape != (T,):
        raise ValueError(f"bias has shape {bias.shape} but last has {T} output channels")
    dtype = common_dtype(x, core, last, bias)
    pool = as_triple(pool, "pool", minimum=1)
    stride, padding, out_dims = conv_geometry(x.shape[2:], core.shape[2:], stride, padding, "x")
    pooled_dims(out_dims, pool)  # raises, naming the shapes, when no whole window fits
    if check_finite:
        for name, a in (("core", core), ("last", last), ("bias", bias), ("x", x)):
            if a is not None:
                require_finite(a, name)
    x, core, last = (np.ascontiguousarray(a, dtype) for a in (x, core, last))
    bias = np.zeros(T, dtype) if bias is None else bias.astype(dtype, copy=False)
    return streamed_block_pool(x, None, core, last.reshape(T, R_t), bias, stride, padding, pool, relu)


def fused_block(g, first, core, last, bias, relu=False, keep_buffers=False):
    """The fused Tucker-2 block of geometry ``g`` (:func:`block_geometry`, ``g.fused``), prepared:
    U_s writes straight into the zero-padded input of the core, whose tiles mix by U_t
    (:class:`~tuckerref.kernels.conv3d_tiles.PaddedTileConvolution`), then pool (``g.pool``) and,
    with ``relu``, max(., 0); with a pooling, the tile tasks compute the padded planes of U_s's
    output themselves, just before they read them. Checked arrays of one dtype."""
    T, R_t = last.shape[:2]
    dtype = core.dtype
    mix = (last.reshape(T, R_t), np.zeros(T, dtype) if bias is None else bias)
    return PaddedTileConvolution(g.x_shape, core, None, g.stride, g.padding, g.out_shape,
                                 first=first.reshape(first.shape[0], -1), mix=mix, pool=g.pool, relu=relu,
                                 dtype=dtype, fill_work=g.first_work, tile_work=g.core_work,
                                 keep_buffers=keep_buffers)


class BlockGeometry(NamedTuple):
    """What a Tucker-2 block's shapes decide, checked once per geometry by :func:`block_geometry`."""

    x_shape: tuple
    stride: tuple
    padding: tuple
    pool: tuple | None
    z_dims: tuple           # spatial dims of Z = U_s^T X (those of x)
    out_dims: tuple         # spatial dims of the core's output
    out_shape: tuple        # the block's result (pooled when pool is set, on the fused path)
    fused: bool             # U_s into the padded input, then the core's tiles mix by U_t
    first_work: int         # multiply-accumulates of U_s and of the core (thread policy)
    core_work: int


@lru_cache(maxsize=128)
def block_geometry(x_shape, first_shape, core_shape, last_shape, bias_shape, stride, padding, pool, dtype,
                   registers):
    """Check that a Tucker-2 block's shapes chain and give its :class:`BlockGeometry`.

    Arguments: the shapes of the input x (N, S, D, H, W), of the three weights (first (R_s, S, 1, 1, 1),
    core (R_t, R_s, kD, kH, kW), last (T, R_t, 1, 1, 1)) and of the bias (None or (T,)), the core's
    ``stride`` and ``padding`` and the ``pool`` kernel (3-tuples of ints, ``pool`` None for no pooling),
    the compute ``dtype`` and the target's number of vector registers
    (:data:`tuckerref.kernels.simd.VECTOR_REGISTERS`); all hashable.

    A pure function of shapes (and of the target's vector registers, which decide whether one
    tile holds the core's R_t channels), cached: a network calls each block with the same shapes every
    time, and at batch 1 a compressed network's small blocks cost more in these checks than in
    arithmetic. Raises ValueError naming the shapes at fault. With ``g.fused``, :func:`fused_block`
    prepares the block; otherwise :func:`tucker2_conv3d` runs its three convolutions in turn.
    """
    if x_shape[1] != first_shape[1]:
        raise ValueError(f"channel mismatch: x has {x_shape[1]} channels (shape {x_shape}) but first expects "
                         f"{first_shape[1]} (shape {first_shape})")
    if core_shape[1] != first_shape[0] or last_shape[1] != core_shape[0]:
        raise ValueError(f"Tucker-2 factor shapes do not chain: first {first_shape}, core {core_shape}, "
                         f"last {last_shape} (need first (R_s, S), core (R_t, R_s, ...), last (T, R_t))")
    if bias_shape is not None and bias_shape[0] != last_shape[0]:
        raise ValueError(f"bias has shape {bias_shape} but last has {last_shape[0]} output channels")
    if min(x_shape) == 0 or min(core_shape) == 0 or min(first_shape) == 0 or min(last_shape) == 0:
        raise ValueError(f"empty array: x shape {x_shape}, factor shapes {first_shape}, {core_shape}, {last_shape}")
    N, S, T, R_s, R_t = x_shape[0], x_shape[1], last_shape[0], first_shape[0], core_shape[0]
    z_dims = tuple(x_shape[2:])
    stride, padding, out_dims = conv_geometry(z_dims, core_shape[2:], stride, padding, "the core's input")
    pooled = out_dims if pool is None else pooled_dims(out_dims, pool)
    fused = tiles_fit(stride, out_dims[2], dtype) and tiles_hold_all_channels(R_t, registers)
    return BlockGeometry(tuple(x_shape), stride, padding, pool, z_dims, out_dims,
                         (N, T) + (pooled if fused else out_dims), fused,
                         N * R_s * math.prod(z_dims) * S, N * R_t * math.prod(out_dims) * math.prod(core_shape[1:]))
