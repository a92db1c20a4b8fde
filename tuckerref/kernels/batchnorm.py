"""Batch normalisation per channel over (N, D, H, W) (PyTorch ``batch_norm`` semantics) and its gradient.

Per channel c, over the M = N*D*H*W values x of channel c in the batch (Ioffe & Szegedy 2015,
Algorithm 1):

    mu_c  = (1/M) sum x                    var_c = (1/M) sum (x - mu_c)^2     (biased: it normalises)
    xhat  = (x - mu_c) / sqrt(var_c + eps)  y = gamma_c xhat + beta_c

With the statistics fixed (eval mode, running statistics) this is a per-channel affine map

    y = s_c x + t_c,   s_c = gamma_c / sqrt(var_c + eps),   t_c = beta_c - mu_c s_c,

which is also how the forward pass computes y in either mode. The gradients of L(y), G = dL/dy:

    dL/dbeta_c  = sum G                      dL/dgamma_c = sum G xhat
    dL/dx       = s_c G                                   (statistics fixed)
    dL/dx       = s_c (G - dL/dbeta_c / M - xhat dL/dgamma_c / M)   (batch statistics, which depend on x)

The second form is written as a_c G + b_c (x - mu_c) + d_c with per-channel coefficients, so
both are one element-wise pass. Sums accumulate in float64 per (sample, channel) task and are reduced over the
batch afterwards; the statistics are returned in float64.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._checks import float_array
from ._threads import threads_for

#: The sums may be reassociated (so that LLVM vectorises them, several partial sums per lane);
#: no other fast-math liberty: NaN and infinity still propagate.
_REDUCE = {"reassoc", "nsz"}


@njit(parallel=True, cache=True, fastmath=_REDUCE)
def _centred_sums(x, centre, out):
    """out[n, c] = sum_l (x[n, c, l] - centre[c]) in float64."""
    N, C, L = x.shape
    for task in prange(N * C):
        n = task // C
        c = task % C
        row = x[n, c]
        m = centre[c]
        acc = 0.0
        for l in range(L):
            acc += row[l] - m
        out[n, c] = acc


@njit(parallel=True, cache=True, fastmath=_REDUCE)
def _centred_squares(x, centre, out):
    """out[n, c] = sum_l (x[n, c, l] - centre[c])^2 in float64."""
    N, C, L = x.shape
    for task in prange(N * C):
        n = task // C
        c = task % C
        row = x[n, c]
        m = centre[c]
        acc = 0.0
        for l in range(L):
            v = row[l] - m
            acc += v * v
        out[n, c] = acc


@njit(parallel=True, cache=True, fastmath=_REDUCE)
def _grad_sums(x, g, centre, sum_g, sum_gx):
    """sum_g[n, c] = sum_l g, sum_gx[n, c] = sum_l g (x - centre[c]), in float64."""
    N, C, L = x.shape
    for task in prange(N * C):
        n = task // C
        c = task % C
        xr = x[n, c]
        gr = g[n, c]
        m = centre[c]
        a = 0.0
        b = 0.0
        for l in range(L):
            a += gr[l]
            b += gr[l] * (xr[l] - m)
        sum_g[n, c] = a
        sum_gx[n, c] = b


@njit(parallel=True, cache=True)
def _channel_affine(x, scale, shift, out):
    """out[n, c, l] = x[n, c, l] * scale[c] + shift[c] (``out`` may be ``x``)."""
    N, C, L = x.shape
    for task in prange(N * C):
        n = task // C
        c = task % C
        xr = x[n, c]
        orow = out[n, c]
        s = scale[c]
        t = shift[c]
        for l in range(L):
            orow[l] = xr[l] * s + t


@njit(parallel=True, cache=True)
def _channel_combine(g, x, centre, a, b, d, out):
    """out[n, c, l] = a[c] g[n, c, l] + b[c] (x[n, c, l] - centre[c]) + d[c]."""
    N, C, L = x.shape
    for task in prange(N * C):
        n = task // C
        c = task % C
        gr = g[n, c]
        xr = x[n, c]
        orow = out[n, c]
        ac = a[c]
        bc = b[c]
        dc = d[c]
        m = centre[c]
        for l in range(L):
            orow[l] = ac * gr[l] + bc * (xr[l] - m) + dc


def _planes(x, name="x"):
    """``x`` (N, C, ...) checked and viewed as (N, C, L)."""
    x = float_array(x, name, (2, 3, 4, 5), layout="N, C, D, H, W")
    return x, x.reshape(x.shape[0], x.shape[1], -1)


def _per_channel(v, name, channels, default):
    """A per-channel vector in float64 (``default`` everywhere when ``v`` is None), checked against C."""
    if v is None:
        return np.full(channels, default, np.float64)
    v = np.asarray(v, np.float64)
    if v.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},) (one value per channel), got {v.shape}")
    return np.ascontiguousarray(v)


def _check_eps(eps):
    if not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def batch_norm_statistics(x):
    """Per-channel mean and biased variance over every axis but the channel axis 1: ``(mean, var)``,
    float64 arrays of shape (C,); two passes (the mean, then the squared deviations from it)."""
    x, x3 = _planes(x)
    N, C, L = x3.shape
    count = N * L
    zero = np.zeros(C, x.dtype)
    partial = np.empty((N, C), np.float64)
    with threads_for(x.size):
        _centred_sums(x3, zero, partial)
        mean = partial.sum(axis=0) / count
        _centred_squares(x3, mean.astype(x.dtype), partial)
    # The squares were taken around the mean rounded to x's dtype: correct for that offset exactly.
    offset = mean - mean.astype(x.dtype).astype(np.float64)
    var = np.maximum(partial.sum(axis=0) / count - offset * offset, 0.0)
    return mean, var


def normalisation_affine(mean, var, weight=None, bias=None, eps=1e-5):
    """(s, t) of the per-channel affine map y = s x + t equal to batch normalisation with the given
    statistics: s = gamma / sqrt(var + eps), t = beta - mean s (float64; gamma = 1, beta = 0 when None)."""
    mean = np.asarray(mean, np.float64)
    channels = mean.shape[0] if mean.ndim == 1 else -1
    if mean.ndim != 1:
        raise ValueError(f"mean must have shape (C,), got {mean.shape}")
    var = _per_channel(var, "var", channels, 1.0)
    if (var < 0).any():
        raise ValueError(f"var must be >= 0 in every channel, got {var.min()} at channel {int(var.argmin())}")
    scale = _per_channel(weight, "weight", channels, 1.0) / np.sqrt(var + _check_eps(eps))
    return scale, _per_channel(bias, "bias", channels, 0.0) - mean * scale


def channel_affine_into(x, scale, shift, out):
    """out = x * scale[c] + shift[c] per channel, for checked C-contiguous arrays of one dtype (``out``
    may be ``x``); returns ``out``."""
    with threads_for(x.size):
        _channel_affine(x.reshape(x.shape[0], x.shape[1], -1), scale, shift,
                        out.reshape(out.shape[0], out.shape[1], -1))
    return out


def batch_norm(x, mean, var, weight=None, bias=None, eps=1e-5):
    """Batch normalisation of ``x`` (N, C, ...) with the given per-channel statistics:
    y = (x - mean) / sqrt(var + eps) * weight + bias, computed as y = s x + t (module docstring)."""
    x, _ = _planes(x)
    scale, shift = normalisation_affine(_per_channel(mean, "mean", x.shape[1], 0.0), var, weight, bias, eps)
    return channel_affine_into(x, scale.astype(x.dtype), shift.astype(x.dtype), np.empty_like(x))


def batch_norm_backward(x, grad_out, mean, var, weight=None, eps=1e-5, *, batch_statistics=True,
                        need_grad_x=True):
    """Gradients of :func:`batch_norm`: ``(grad_x, grad_weight, grad_bias)`` (grad_x None unless
    ``need_grad_x``). With ``batch_statistics`` the statistics are those of ``x`` itself (training
    mode; ``mean`` and ``var`` are then :func:`batch_norm_statistics` of x), otherwise constants."""
    x, x3 = _planes(x)
    g = float_array(grad_out, "grad_out", x.ndim).astype(x.dtype, copy=False)
    if g.shape != x.shape:
        raise ValueError(f"grad_out has shape {g.shape}, expected the input's shape {x.shape}")
    g3 = g.reshape(x3.shape)
    N, C, L = x3.shape
    mean = _per_channel(mean, "mean", C, 0.0)
    var = _per_channel(var, "var", C, 1.0)
    gamma = _per_channel(weight, "weight", C, 1.0)
    invstd = 1.0 / np.sqrt(var + _check_eps(eps))
    sum_g, sum_gx = np.empty((N, C), np.float64), np.empty((N, C), np.float64)
    with threads_for(x.size):
        _grad_sums(x3, g3, mean.astype(x.dtype), sum_g, sum_gx)
    # The kernels centre on the mean rounded to x's dtype (m); the offsets below make up the difference.
    centre = mean.astype(x.dtype)
    offset = mean - centre.astype(np.float64)
    grad_bias = sum_g.sum(axis=0)
    grad_weight = (sum_gx.sum(axis=0) - offset * grad_bias) * invstd
    grad_x = None
    if need_grad_x:
        a = gamma * invstd
        if batch_statistics:
            count = N * L
            b = -a * invstd * grad_weight / count
            d = -a * grad_bias / count - b * offset  # b (x - mean) = b (x - m) - b offset
        else:
            b = d = np.zeros(C)
        grad_x = np.empty_like(x)
        with threads_for(x.size):
            _channel_combine(g3, x3, centre, a.astype(x.dtype), b.astype(x.dtype), d.astype(x.dtype),
                             grad_x.reshape(x3.shape))
    return grad_x, grad_weight.astype(x.dtype), grad_bias.astype(x.dtype)
