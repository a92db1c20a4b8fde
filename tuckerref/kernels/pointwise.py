"""1x1x1 convolution: the channel-mixing step of eqs. (8) and (10).

    Y(n, t, p) = sum_s W(t, s) X(n, s, p)  (+ b(t))

over all positions p = (f, h, w) of a clip. This is a small matrix product per
clip, (T x S) @ (S x P), with P = F*H*W large and S, T tiny (2 to 16) in the
compressed network; it is memory bound, so the kernel streams each block of
positions once through cache and keeps the output block resident while the
S input channels are accumulated into it.
"""
from __future__ import annotations

from numba import njit, prange

# Positions per cache block: 4096 float32 = 16 KiB per channel row.
_BLOCK = 4096


@njit(inline="always")
def _mix_span(x, x_start, x_channel_stride, w, t, b, out, out_start, m):
    """out[out_start + p] = b + sum_s w[t, s] * x[x_start + s*x_channel_stride + p] for p < m (flat arrays).

    Summed in channel order from the bias; each of the m positions is independent, so the loops
    over p are the vectorised ones.
    """
    o = out[out_start:out_start + m]
    x0 = x[x_start:x_start + m]
    w0 = w[t, 0]
    for p in range(m):
        o[p] = b + w0 * x0[p]
    for s in range(1, w.shape[1]):
        ws = w[t, s]
        xs = x[x_start + s * x_channel_stride:x_start + s * x_channel_stride + m]
        for p in range(m):
            o[p] += ws * xs[p]


@njit(parallel=True, fastmath=True, cache=True)
def pointwise_forward(x, w, bias, out):
    """out[n, t, :] = bias[t] + sum_s w[t, s] * x[n, s, :] for x (N, S, P), w (T, S), out (N, T, P).

    ``out`` need not be initialised: each block of it is written once from cache.
    """
    # n sample, t output channel; p0 the first of the m flat positions (d, h, w) of one block.
    N, S, P = x.shape
    T = w.shape[0]
    xf, of = x.reshape(x.size), out.reshape(out.size)
    nblk = (P + _BLOCK - 1) // _BLOCK
    for task in prange(N * nblk):
        n = task // nblk
        p0 = (task % nblk) * _BLOCK
        m = min(P - p0, _BLOCK)
        for t in range(T):
            _mix_span(xf, n * S * P + p0, P, w, t, bias[t], of, (n * T + t) * P + p0, m)


@njit(fastmath=True, cache=True)
def _mix_padded_row(xf, x_start, x_channel_stride, w, bias, of, out_start, out_channel_stride, W, pw, Wp, inside):
    """One padded row of every output channel t: of[out_start + t*out_channel_stride + pw + p] =
    bias[t] + sum_s w[t, s] * xf[x_start + s*x_channel_stride + p] for p < W, and 0 on the row's
    2*pw border values; a row wholly in the padding (``inside`` False) is all 0. Flat arrays.

    Compiled on its own with fastmath, so that the padded pass of :func:`pointwise_forward_padded`
    and a fused one (:mod:`.conv3d_tiles`) give the same bits as :func:`pointwise_forward`.
    """
    for t in range(w.shape[0]):
        row = out_start + t * out_channel_stride
        if inside:
            of[row:row + pw] = 0
            _mix_span(xf, x_start, x_channel_stride, w, t, bias[t], of, row + pw, W)
            of[row + pw + W:row + Wp] = 0
        else:
            of[row:row + Wp] = 0


@njit(parallel=True, fastmath=True, cache=True)
def pointwise_forward_padded(x, w, bias, out, pd, ph, pw):
    """The same, x (N, S, D, H, W) into a zero-padded out (N, T, D + 2pd, H + 2ph, W + 2pw).

    out[n, t, d + pd, h + ph, pw:pw + W] = bias[t] + sum_s w[t, s] * x[n, s, d, h, :] and every
    other (border) value of ``out`` is 0: the padded input of the convolution that reads it next,
    each value written once, so ``out`` need not be initialised (np.empty instead of np.zeros saves
    a pass over it).
    """
    N, S, D, H, W = x.shape
    T = w.shape[0]
    Dp, Hp, Wp = out.shape[2], out.shape[3], out.shape[4]
    xf, of = x.reshape(x.size), out.reshape(out.size)
    # n sample; d, h input frame and row of the padded output row (outside [0, D) x [0, H): padding).
    for task in prange(N * Dp * Hp):
        n = task // (Dp * Hp)
        d = (task // Hp) % Dp - pd
        h = task % Hp - ph
        _mix_padded_row(xf, ((n * S * D + d) * H + h) * W, D * H * W, w, bias, of,
                        ((n * T * Dp + d + pd) * Hp + h + ph) * Wp, Dp * Hp * Wp, W, pw, Wp,
                        0 <= d < D and 0 <= h < H)


@njit(parallel=True, fastmath=True, cache=True)
def pointwise_grad_weight(x, g, gw):
    """gw[t, s] += sum_{n, p} g[n, t, p] * x[n, s, p] (dL/dW of the 1x1x1 convolution)."""
    # t output channel, s input channel, n sample, p flat position (d, h, w).
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
