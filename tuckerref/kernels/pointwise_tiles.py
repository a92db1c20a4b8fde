"""1x1x1 convolution with wide channels: a register-tiled matrix product.

    Y(n, t, p) = b(t) + sum_s W(t, s) X(n, s, p)

over all positions p = (f, h, w) of a clip (the first and last factors of a Tucker-2 block,
eqs. (8) and (10), with the ranks of a real network: tens to hundreds of channels). Per clip
this is the matrix product (T x S) @ (S x P). With S and T of 16 or more, each input value
feeds many outputs, so the product is compute bound and needs the register tile of every fast
matrix product (:mod:`.simd`): C output channels x V SIMD vectors of positions stay in
registers while s runs, each step broadcasting C weights W(t, s) and loading V vectors of
X(n, s, :) for C*V independent FMAs.

Blocking: a task owns one clip and a block of :data:`COLUMN_BLOCK` tile columns (C*V*L
positions each, L the vector's lanes); within a column, the S axis runs in blocks of
:data:`S_BLOCK` channels, so that the column's S_BLOCK x (V*L) slice of X stays in the L1 cache
while every channel group of the column streams it; a later S block resumes the stored
accumulators (:func:`.simd.tile_load`). The weights are packed per channel group,
``wp[g, s, k] = W(g*C + k, s)``, so a group's broadcasts read consecutive addresses.

Every output is summed in s order starting from the bias, whatever the blocking. When P is not a
whole number of tile columns, the last column is placed flush with the end of the positions
and overlaps its neighbour in the same task, writing the same values again; T not a multiple
of C leaves channels for one-channel tiles. Clips of fewer than V*L positions take a plain loop.

Narrow layers (S or T under :data:`WIDE_CHANNELS`) stay on :func:`.pointwise.pointwise_forward`,
which is memory bound and faster there (and gives the paper's network its exact bits).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .pointwise import pointwise_forward
from .simd import VECTOR_BYTES, VECTOR_REGISTERS, RegisterTile, lanes, tile_broadcast, tile_fma, tile_load, tile_store
from .tiling import TILE_VECTORS

#: Input and output channels from which :func:`pointwise_mix` takes the register-tiled kernel.
WIDE_CHANNELS = 16

#: Input channels per pass over a tile column (keeps the column's slice of X in L1).
S_BLOCK = 64

#: Tile columns per parallel task.
COLUMN_BLOCK = 8

#: Output channels per tile: the widest single-row tile of :data:`.tiling.TILE_VECTORS`, whose
#: accumulators, broadcast weights and one input vector fill the vector registers.
TILE_CHANNELS = {16: 3, 32: 6}[VECTOR_REGISTERS]
_TILE = RegisterTile(TILE_CHANNELS, TILE_VECTORS[VECTOR_REGISTERS][TILE_CHANNELS, 1], 1, VECTOR_BYTES)
_ONE = RegisterTile(1, _TILE.vectors, 1, VECTOR_BYTES)


def tile_width(dtype) -> int:
    """Positions one tile column covers for ``dtype``."""
    return _TILE.vectors * lanes(np.dtype(dtype), _TILE.vector_bytes)


@njit(cache=True)
def _column(tile, one, xf, x_first, P, S, T, wp, wf, bias, of, out_first, s_block):
    """All T output channels of one tile column: of[out_first + t*P + q] = bias[t] + sum_s
    W(t, s) xf[x_first + s*P + q] for q < width. ``wp`` holds the packed full channel groups,
    ``wf`` the row-major (T, S) weights for the one-channel tiles of the last T % C channels."""
    # s0 first input channel of a block; g channel group (channels g*C .. g*C + C - 1); t one channel.
    C = tile.channels
    G = T // C
    for s0 in range(0, S, s_block):
        s1 = min(s0 + s_block, S)
        for g in range(G):
            o = out_first + g * C * P
            if s0 == 0:
                acc = tile_broadcast(tile, bias, g * C)
            else:
                acc = tile_load(tile, of, o, P, 0)
            w0 = g * S * C
            for s in range(s0, s1):
                acc = tile_fma(tile, acc, wp, w0 + s * C, 0, xf, x_first + s * P)
            tile_store(tile, acc, of, o, P, 0)
        for t in range(G * C, T):
            o = out_first + t * P
            if s0 == 0:
                acc1 = tile_broadcast(one, bias, t)
            else:
                acc1 = tile_load(one, of, o, P, 0)
            for s in range(s0, s1):
                acc1 = tile_fma(one, acc1, wf, t * S + s, 0, xf, x_first + s * P)
            tile_store(one, acc1, of, o, P, 0)


@njit(parallel=True, cache=True)
def _tiled_forward(tile, one, width, x, wp, w, bias, out, s_block, column_block):
    """out[n, t, :] = bias[t] + sum_s w[t, s] x[n, s, :] for x (N, S, P) with P >= width,
    w (T, S), wp its packed channel groups (T // C, S, C) and out (N, T, P)."""
    # n clip; c tile column (positions c*width .. c*width + width - 1); the last column of a clip
    # with P % width > 0 is flush with P and done by the task that holds column full - 1.
    N, S, P = x.shape
    T = w.shape[0]
    xf, of = x.reshape(x.size), out.reshape(out.size)
    wpf, wf = wp.reshape(wp.size), w.reshape(w.size)
    full = P // width
    blocks = (full + column_block - 1) // column_block
    for task in prange(N * blocks):
        n = task // blocks
        b = task % blocks
        end = min(full, (b + 1) * column_block)
        for c in range(b * column_block, end):
            _column(tile, one, xf, n * S * P + c * width, P, S, T, wpf, wf, bias, of, n * T * P + c * width,
                    s_block)
        if end == full and P % width > 0:
            _column(tile, one, xf, n * S * P + P - width, P, S, T, wpf, wf, bias, of, n * T * P + P - width,
                    s_block)


@njit(parallel=True, fastmath=True, cache=True)
def _short_forward(x, w, bias, out):
    """The same for clips of fewer positions than one tile column: a plain loop, s in order."""
    # n clip, t output channel, s input channel, p position.
    N, S, P = x.shape
    T = w.shape[0]
    for task in prange(N * T):
        n = task // T
        t = task % T
        o = out[n, t]
        o[:] = bias[t]
        for s in range(S):
            ws = w[t, s]
            xs = x[n, s]
            for p in range(P):
                o[p] += ws * xs[p]


def pack_weight(w, channels: int = TILE_CHANNELS):
    """wp[g, s, k] = w[g*channels + k, s] for the T // channels full channel groups of w (T, S)."""
    T, S = w.shape
    G = T // channels
    return np.ascontiguousarray(w[:G * channels].reshape(G, channels, S).transpose(0, 2, 1))


def tiled_forward(x, w, bias, out):
    """out[n, t, :] = bias[t] + sum_s w[t, s] x[n, s, :] by the register-tiled kernel, for any
    x (N, S, P), w (T, S), bias (T,), out (N, T, P) (C-contiguous, one float dtype)."""
    width = tile_width(x.dtype)
    if x.shape[2] < width:
        _short_forward(x, w, bias, out)
    else:
        _tiled_forward(_TILE, _ONE, width, x, pack_weight(w), w, bias, out, S_BLOCK, COLUMN_BLOCK)


def pointwise_mix(x, w, bias, out):
    """out[n, t, :] = bias[t] + sum_s w[t, s] x[n, s, :] (a 1x1x1 convolution, eqs. (8), (10)) by the
    faster kernel for the channel counts: the register-tiled matrix product when S and T are both
    at least :data:`WIDE_CHANNELS`, else the streaming :func:`.pointwise.pointwise_forward`."""
    S, T = x.shape[1], w.shape[0]
    if S >= WIDE_CHANNELS and T >= WIDE_CHANNELS:
        tiled_forward(x, w, bias, out)
    else:
        pointwise_forward(x, w, bias, out)
