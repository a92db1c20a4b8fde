"""1x1x1 convolution with wide channels: a register-tiled matrix product.

    Y(n, t, p) = b(t) + sum_s W(t, s) X(n, s, p)

over all positions p = (f, h, w) of a clip (the first and last factors of a Tucker-2 block,
eqs. (8) and (10), with the ranks of a real network: tens to hundreds of channels). Per clip
this is the matrix product (T x S) @ (S x P). With S and T of 16 or more, each input value
feeds many outputs, so the product is compute bound and needs the register tile of every fast
matrix product, the column pass of :mod:`.conv3d_panels`: C output channels x V SIMD vectors of
positions stay in registers while s runs.

Blocking: a task owns one clip and a block of :data:`.conv3d_panels.COLUMN_BLOCK` tile columns
(V*L positions each). The S axis runs in blocks of :data:`S_BLOCK` channels: for
each, the task first copies its input rows into one contiguous (S block x V*L) panel per column
(long sequential reads, instead of S short strided ones per column, which defeat the hardware
prefetcher once X outgrows the L2 cache), then every channel group of each column streams that
panel from the L1 cache; a later S block resumes the stored accumulators. A 1x1x1 convolution
is the panel convolution's case of one tap per input channel, but its rows need no gather (each
is a slice of X), and this plain copy measured up to 1.7x faster than the general kernel on the
narrow-frame factor shapes (128 -> 32 and 32 -> 128 on 4 x 14 x 14, one thread; bench/RESULTS.md).

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

from .conv3d_panels import (_ONE, _TILE, COLUMN_BLOCK, TILE_CHANNELS, _bias_rows, _columns_pass,
                            _store_last_column, tile_width)
from .linear import linear_into
from .pointwise import pointwise_forward

__all__ = ["S_BLOCK", "TILE_CHANNELS", "WIDE_CHANNELS", "pointwise_mix", "tile_width", "tiled_forward"]

#: Input and output channels from which :func:`pointwise_mix` takes the register-tiled kernel.
WIDE_CHANNELS = 16

#: Input channels per pass over a tile column (keeps the column's panel in L1: 128 x 32 float32 = 16 KiB).
S_BLOCK = 128


@njit(parallel=True, cache=True)
def _tiled_forward(tile, one, width, x, w, bias, out, s_block, column_block):
    """out[n, t, :] = bias[t] + sum_s w[t, s] x[n, s, :] for x (N, S, P), w (T, S) and out (N, T, P)."""
    # n clip; c tile column (positions c*width .. c*width + width - 1, the last one possibly partial).
    N, S, P = x.shape
    T = w.shape[0]
    xf, of, wf = x.reshape(x.size), out.reshape(out.size), w.reshape(w.size)
    columns = (P + width - 1) // width
    blocks = (columns + column_block - 1) // column_block
    for task in prange(N * blocks):
        n = task // blocks
        c_first = (task % blocks) * column_block
        ncols = min(columns, c_first + column_block) - c_first
        xb = np.empty(min(s_block, S) * ncols * width, xf.dtype)
        ob = np.empty(T * width, xf.dtype)
        bias_rows = _bias_rows(bias, 0, T, width)
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
            _columns_pass(tile, one, xb, width, s0, s1, S, T, wf, bias_rows, of, n * T * P, P, c_first * width, ncols,
                          ob)
        _store_last_column(of, ob, n * T * P, T, P, (c_first + ncols - 1) * width, width)


def tiled_forward(x, w, bias, out):
    """out[n, t, :] = bias[t] + sum_s w[t, s] x[n, s, :] by the register-tiled kernel, for any
    x (N, S, P), w (T, S), bias (T,), out (N, T, P) (C-contiguous, one float dtype)."""
    _tiled_forward(_TILE, _ONE, tile_width(x.dtype), x, w, bias, out, S_BLOCK, COLUMN_BLOCK)


def _few_positions(x, w, bias, out):
    """:func:`pointwise_mix` for clips of fewer positions than one tile column holds (a factor of a
    fully connected layer folded into a convolution: one position): the N*P position rows times W^T,
    a fully connected layer's product (:func:`.linear.linear_into`), instead of tile columns that
    would be mostly padding."""
    N, S, P = x.shape
    T = w.shape[0]
    rows = np.ascontiguousarray(x.transpose(0, 2, 1)).reshape(N * P, S)
    y = linear_into(rows, w, bias, np.empty((N * P, T), x.dtype))
    out[...] = y.reshape(N, P, T).transpose(0, 2, 1)


def pointwise_mix(x, w, bias, out):
    """out[n, t, :] = bias[t] + sum_s w[t, s] x[n, s, :] (a 1x1x1 convolution, eqs. (8), (10)) by the
    faster kernel for the shapes: the register-tiled matrix product when S and T are both at least
    :data:`WIDE_CHANNELS`, or, on fewer positions than a tile column covers, position rows times W^T;
    else the streaming :func:`.pointwise.pointwise_forward`."""
    S, T = x.shape[1], w.shape[0]
    if S < WIDE_CHANNELS or T < WIDE_CHANNELS:
        pointwise_forward(x, w, bias, out)
    elif x.shape[2] < tile_width(x.dtype):
        _few_positions(x, w, bias, out)
    else:
        tiled_forward(x, w, bias, out)
