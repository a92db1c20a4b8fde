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


@njit(parallel=True, cache=True)
def _copy_padded_short_rows(x, out, pd, ph, pw):
    """:func:`_copy_padded` for rows shorter than :data:`LONG_ROW`: one padded plane per task, element
    loops (a slice of a few values costs more than its copy: 3- to 14-column frames at batch 8 padded
    2.3-3.5x faster so; 56-column ones 1.5x slower)."""
    # ns flat (clip, channel); d, h padded plane and row less the padding; w column.
    N, S, D, H, W = x.shape
    Dp, Hp, Wp = out.shape[2], out.shape[3], out.shape[4]
    xf = x.reshape(N * S, D, H, W)
    of = out.reshape(N * S, Dp, Hp, Wp)
    for task in prange(N * S * Dp):
        ns = task // Dp
        d = task % Dp - pd
        plane = of[ns, d + pd]
        for h in range(-ph, Hp - ph):
            row = plane[h + ph]
            if 0 <= d < D and 0 <= h < H:
                src = xf[ns, d, h]
                for w in range(pw):
                    row[w] = 0
                for w in range(W):
                    row[pw + w] = src[w]
                for w in range(pw + W, Wp):
                    row[w] = 0
            else:
                for w in range(Wp):
                    row[w] = 0


#: Columns from which a row is copied as one slice (:func:`_copy_padded`), below which by element loops.
LONG_ROW = 32


def _copy_padded_any(x, out, pd, ph, pw):
    """:func:`_copy_padded` or :func:`_copy_padded_short_rows`, by the rows' length."""
    (_copy_padded if x.shape[4] >= LONG_ROW else _copy_padded_short_rows)(x, out, pd, ph, pw)


def _padded(x, padding, extra_rows=0):
    """Zero-padded copy of x (N, S, D, H, W), with ``extra_rows`` more zero rows below each plane;
    written in one pass (np.empty, then every value once)."""
    pd, ph, pw = padding
    N, S, D, H, W = x.shape
    xp = np.empty((N, S, D + 2 * pd, H + 2 * ph + extra_rows, W + 2 * pw), x.dtype)
    _copy_padded_any(x, xp, pd, ph, pw)
    return xp


def _pad(x, padding):
    """Zero-padded copy of x (N, S, D, H, W) (x itself, made contiguous, when ``padding`` is 0)."""
    if not any(padding):
        return np.ascontiguousarray(x)
    return _padded(x, padding)
