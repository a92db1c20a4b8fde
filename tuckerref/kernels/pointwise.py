"""1x1x1 convolution: the channel-mixing step of eqs. (8) and (10).

    Y(n, t, p) = sum_s W(t, s) X(n, s, p)  (+ b(t))

over all positions p = (f, h, w) of a clip. This is a small matrix product per
clip, (T x S) @ (S x P), with P = F*H*W large and S, T tiny (2 to 16) in the
compressed network; it is memory bound, so the kernel streams each block of
positions once through cache and keeps the output block resident while the
S input channels are accumulated into it.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

# Positions per cache block: 4096 float32 = 16 KiB per channel row.
_BLOCK = 4096


@njit(parallel=True, fastmath=True, cache=True)
def pointwise_forward(x, w, bias, out):
    """out[n, t, :] = bias[t] + sum_s w[t, s] * x[n, s, :] for x (N, S, P), w (T, S), out (N, T, P).

    ``out`` need not be initialised: each block of it is written once from cache.
    """
    N, S, P = x.shape
    T = w.shape[0]
    nblk = (P + _BLOCK - 1) // _BLOCK
    for task in prange(N * nblk):
        n = task // nblk
        p0 = (task % nblk) * _BLOCK
        m = min(P - p0, _BLOCK)
        for t in range(T):
            o = out[n, t, p0:p0 + m]
            b = bias[t]
            w0 = w[t, 0]
            x0 = x[n, 0, p0:p0 + m]
            for p in range(m):
                o[p] = b + w0 * x0[p]
            for s in range(1, S):
                ws = w[t, s]
                xs = x[n, s, p0:p0 + m]
                for p in range(m):
                    o[p] += ws * xs[p]


@njit(parallel=True, fastmath=True, cache=True)
def pointwise_grad_weight(x, g, gw):
    """gw[t, s] += sum_{n, p} g[n, t, p] * x[n, s, p] (dL/dW of the 1x1x1 convolution)."""
    N, S, P = x.shape
    T = g.shape[1]
    for task in prange(T * S):
        t = task // S
        s = task % S
        acc = gw[t, s]
        for n in range(N):
            gt = g[n, t]
            xs = x[n, s]
            for p in range(P):
                acc += gt[p] * xs[p]
        gw[t, s] = acc
