"""1x1x1 convolution with wide channels: a register-tiled matrix product.

    Y(n, t, p) = b(t) + sum_s W(t, s) X(n, s, p)

over all positions p = (f, h, w) of a clip (the first and last factors of a Tucker-2 block,
eqs. (8) and (10), with the ranks of a real network: tens to hundreds of channels). Per clip
this is the matrix product (T x S) @ (S x P). With S and T of 16 or more, each input value
feeds many outputs, so the product is compute bound and needs the register tile of every fast
matrix product (:mod:`.simd`): C output channels x V SIMD vectors of positions stay in
registers while s runs, each step broadcasting C weights W(t, s) and loading V vectors of
X(n, s, :) for C*V independent FMAs.

Blocking: a task owns one clip and a block of :data:`COLUMN_BLOCK` tile columns (V*L positions
each, L the vector's lanes). The S axis runs in blocks of :data:`S_BLOCK` channels: for each, the
task first copies its input rows into one contiguous (S block x V*L) panel per column (long
sequential reads, instead of S short strided ones per column, which defeat the hardware
prefetcher once X outgrows the L2 cache), then every channel group of each column streams that
panel from the L1 cache; a later S block resumes the stored accumulators
(:func:`.simd.tile_load`). The weights are packed per channel group, ``wp[g, s, k] = W(g*C + k, s)``,
so a group's broadcasts read consecutive addresses.

Every output is summed in s order starting from the bias, whatever the blocking. A last column
that runs past P is zero-filled in its panel and computed into a scratch tile, of which only the
positions < P are copied out; T not a multiple of C leaves channels for one-channel tiles.

Narrow layers (S or T under :data:`WIDE_CHANNELS`) stay on :func:`.pointwise.pointwise_forward`:
they are memory bound, the tiled kernel gains little or nothing there (bench/pointwise.py
``--crossover``), and the paper's network (ranks 2 to 6) keeps its exact bits.
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
S_BLOCK = 128

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
def _column_pass(tile, one, xb, xb_first, width, s0, s1, S, T, wp, wf, bias, out, out_first, out_stride):
    """Input channels s0 <= s < s1 of all T output channels of one tile column:
    out[out_first + t*out_stride + q] (+)= sum_s W(t, s) xb[xb_first + (s - s0)*width + q] for q < width,
    starting from bias[t] when s0 is 0, else from the stored partial sums. ``wp`` holds the packed full
    channel groups, ``wf`` the row-major (T, S) weights for one-channel tiles of the last T % C channels."""
    # g channel group (channels g*C .. g*C + C - 1); t one channel; s input channel.
    C = tile.channels
    G = T // C
    for g in range(G):
        o = out_first + g * C * out_stride
        if s0 == 0:
            acc = tile_broadcast(tile, bias, g * C)
        else:
            acc = tile_load(tile, out, o, out_stride, 0)
        w0 = g * S * C
        for s in range(s0, s1):
            acc = tile_fma(tile, acc, wp, w0 + s * C, 0, xb, xb_first + (s - s0) * width)
        tile_store(tile, acc, out, o, out_stride, 0)
    for t in range(G * C, T):
        o = out_first + t * out_stride
        if s0 == 0:
            acc1 = tile_broadcast(one, bias, t)
        else:
            acc1 = tile_load(one, out, o, out_stride, 0)
        for s in range(s0, s1):
            acc1 = tile_fma(one, acc1, wf, t * S + s, 0, xb, xb_first + (s - s0) * width)
        tile_store(one, acc1, out, o, out_stride, 0)


@njit(parallel=True, cache=True)
def _tiled_forward(tile, one, width, x, wp, w, bias, out, s_block, column_block):
    """out[n, t, :] = bias[t] + sum_s w[t, s] x[n, s, :] for x (N, S, P), w (T, S), wp its packed
    channel groups (T // C, S, C) and out (N, T, P).

    Per task and S block, the block's input rows are first copied into ``xb``, one contiguous
    (S block x width) panel per tile column (long sequential reads instead of S short ones per
    column); a last column past P is zero-filled there and computed into ``ob``, whose first
    P % width values per channel are copied out at the end.
    """
    # n clip; c tile column (positions c*width .. c*width + width - 1, the last one possibly partial).
    N, S, P = x.shape
    T = w.shape[0]
    xf, of = x.reshape(x.size), out.reshape(out.size)
    wpf, wf = wp.reshape(wp.size), w.reshape(w.size)
    columns = (P + width - 1) // width
    blocks = (columns + column_block - 1) // column_block
    for task in prange(N * blocks):
        n = task // blocks
        c_first = (task % blocks) * column_block
        ncols = min(columns, c_first + column_block) - c_first
        xb = np.empty(min(s_block, S) * ncols * width, xf.dtype)
        ob = np.empty(T * width, xf.dtype)
        for s0 in range(0, S, s_block):
            s1 = min(s0 + s_block, S)
            sb = s1 - s0
            for s in range(s0, s1):
                row = (n * S + s) * P
                for c in range(ncols):
                    p = (c_first + c) * width
                    m = min(width, P - p)
                    dst = (c * sb + s - s0) * width
                    xb[dst:dst + m] = xf[row + p:row + p + m]
                    xb[dst + m:dst + width] = 0
            for c in range(ncols):
                p = (c_first + c) * width
                if p + width <= P:
                    _column_pass(tile, one, xb, c * sb * width, width, s0, s1, S, T, wpf, wf, bias, of,
                                 n * T * P + p, P)
                else:
                    _column_pass(tile, one, xb, c * sb * width, width, s0, s1, S, T, wpf, wf, bias, ob, 0, width)
        p = (c_first + ncols - 1) * width
        if p + width > P:
            for t in range(T):
                of[(n * T + t) * P + p:(n * T + t + 1) * P] = ob[t * width:t * width + P - p]


def pack_weight(w, channels: int = TILE_CHANNELS):
    """wp[g, s, k] = w[g*channels + k, s] for the T // channels full channel groups of w (T, S)."""
    T, S = w.shape
    G = T // channels
    return np.ascontiguousarray(w[:G * channels].reshape(G, channels, S).transpose(0, 2, 1))


def tiled_forward(x, w, bias, out):
    """out[n, t, :] = bias[t] + sum_s w[t, s] x[n, s, :] by the register-tiled kernel, for any
    x (N, S, P), w (T, S), bias (T,), out (N, T, P) (C-contiguous, one float dtype)."""
    _tiled_forward(_TILE, _ONE, tile_width(x.dtype), x, pack_weight(w), w, bias, out, S_BLOCK, COLUMN_BLOCK)


def pointwise_mix(x, w, bias, out):
    """out[n, t, :] = bias[t] + sum_s w[t, s] x[n, s, :] (a 1x1x1 convolution, eqs. (8), (10)) by the
    faster kernel for the channel counts: the register-tiled matrix product when S and T are both
    at least :data:`WIDE_CHANNELS`, else the streaming :func:`.pointwise.pointwise_forward`."""
    S, T = x.shape[1], w.shape[0]
    if S >= WIDE_CHANNELS and T >= WIDE_CHANNELS:
        tiled_forward(x, w, bias, out)
    else:
        pointwise_forward(x, w, bias, out)
