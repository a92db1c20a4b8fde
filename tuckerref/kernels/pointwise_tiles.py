"""1x1x1 convolution with wide channels: a register-tiled matrix product.

    Y(n, t, p) = b(t) + sum_s W(t, s) X(n, s, p)

over all positions p = (f, h, w) of a clip (the first and last factors of a Tucker-2 block,
eqs. (8) and (10), with the ranks of a real network: tens to hundreds of channels). Per clip
this is the matrix product (T x S) @ (S x P). With S and T of 16 or more, each input value
feeds many outputs, so the product is compute bound and needs the register tile of every fast
matrix product: it is the panel kernel of :mod:`.conv3d_panels` with a single tap per input
channel (input rows copied into contiguous panels per tile column and S block, C output channels
x V SIMD vectors of positions kept in registers while s runs).

Every output is summed in s order starting from the bias, whatever the blocking.

Narrow layers (S or T under :data:`WIDE_CHANNELS`) stay on :func:`.pointwise.pointwise_forward`:
they are memory bound, the tiled kernel gains little or nothing there (bench/pointwise.py
``--crossover``), and the paper's network (ranks 2 to 6) keeps its exact bits.
"""
from __future__ import annotations

import numba

from .conv3d_panels import K_BLOCK, TILE_CHANNELS, panel_forward_padded, tile_width
from .pointwise import pointwise_forward

__all__ = ["K_BLOCK", "TILE_CHANNELS", "WIDE_CHANNELS", "pointwise_mix", "tile_width", "tiled_forward"]

#: Input and output channels from which :func:`pointwise_mix` takes the register-tiled kernel.
WIDE_CHANNELS = 16


def tiled_forward(x, w, bias, out):
    """out[n, t, :] = bias[t] + sum_s w[t, s] x[n, s, :] by the register-tiled kernel, for any
    x (N, S, P), w (T, S), bias (T,), out (N, T, P) (C-contiguous, one float dtype)."""
    (N, S, P), T = x.shape, w.shape[0]
    panel_forward_padded(x.reshape(N, S, 1, 1, P), w.reshape(T, S, 1, 1, 1), bias, (1, 1, 1),
                         out.reshape(N, T, 1, 1, P), numba.get_num_threads())


def pointwise_mix(x, w, bias, out):
    """out[n, t, :] = bias[t] + sum_s w[t, s] x[n, s, :] (a 1x1x1 convolution, eqs. (8), (10)) by the
    faster kernel for the channel counts: the register-tiled matrix product when S and T are both
    at least :data:`WIDE_CHANNELS`, else the streaming :func:`.pointwise.pointwise_forward`."""
    S, T = x.shape[1], w.shape[0]
    if S >= WIDE_CHANNELS and T >= WIDE_CHANNELS:
        tiled_forward(x, w, bias, out)
    else:
        pointwise_forward(x, w, bias, out)
