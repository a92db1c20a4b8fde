"""Zero-padded copies of a batch: the padded input Xp of eq. (1).

    Xp(n, s, d + pd, h + ph, w + pw) = X(n, s, d, h, w), and 0 on the border

written in one pass into uninitialised memory (each value once), rather than zero-filling the
whole buffer and then copying the interior, which would pass over it twice.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _copy_padded(x, out, pd, ph, pw):
    """out[n, s, d + pd, h + ph, pw:pw + W] = x[n, s, d, h, :] and every other value of ``out``
    (N, S, >= D + 2pd, >= H + 2ph, >= W + 2pw) 0: each value written once, one padded row per task."""
    N, S, D, H, W = x.shape
    Dp, Hp, Wp = out.shape[2], out.shape[3], out.shape[4]
    for task in prange(N * S * Dp * Hp):
        ns = task // (Dp * Hp)
        d = (task // Hp) % Dp - pd
        h = task % Hp - ph
        row = out[ns // S, ns % S, d + pd, h + ph]
        if 0 <= d < D and 0 <= h < H:
            row[:pw] = 0
            row[pw:pw + W] = x[ns // S, ns % S, d, h]
            row[pw + W:] = 0
        else:
            row[:] = 0


def _padded(x, padding, extra_rows=0):
    """Zero-padded copy of x (N, S, D, H, W), with ``extra_rows`` more zero rows below each plane;
    written in one pass (np.empty, then every value once)."""
    pd, ph, pw = padding
    N, S, D, H, W = x.shape
    xp = np.empty((N, S, D + 2 * pd, H + 2 * ph + extra_rows, W + 2 * pw), x.dtype)
    _copy_padded(x, xp, pd, ph, pw)
    return xp


def _pad(x, padding):
    """Zero-padded copy of x (N, S, D, H, W) (x itself, made contiguous, when ``padding`` is 0)."""
    if not any(padding):
        return np.ascontiguousarray(x)
    return _padded(x, padding)
