"""Direct 3-D convolution, eq. (1) of the paper, and its gradients.

Forward (PyTorch's cross-correlation, NCDHW, weight (T, S, kD, kH, kW)):

    Y(n, t, f', h', w') = b(t) + sum_{s, i, j, l} K(t, s, i, j, l) * Xp(n, s, f'*sd + i, h'*sh + j, w'*sw + l)

with Xp the zero-padded input. No im2col and no BLAS: every output row
Y(n, t, f', h', :) is accumulated in place while the kernel width kW and the
width stride are compile-time constants (``numba.literally``), so the tap loop
unrolls and the loop over w' becomes the vectorised innermost loop.

Backward:

    dL/dK(t, s, i, j, l) = sum_{n, f', h', w'} G(n, t, f', h', w') * Xp(n, s, f'*sd + i, h'*sh + j, w'*sw + l)
    dL/dXp = full correlation of the stride-dilated G with the flipped, transposed kernel
    dL/db(t) = sum_{n, f', h', w'} G(n, t, f', h', w')

The input gradient reuses the forward kernel, so it is as fast and as exact.

Two loop structures implement the same sums:

* *plane kernels* (unit stride in H and W, the common case): each padded input plane
  Xp(n, s, f, :, :) is read as one flat run of Hp*Wp values, and the output is computed on
  the padded-width grid (Ho x Wp) so that output rows are contiguous too; the Wp - Wo extra
  columns are discarded (forward) or carry a zero gradient (weight gradient). Inner loops then
  run over thousands of contiguous positions instead of one short row, whatever the width.
* *row kernels* (any stride): one output row at a time.
* *tile kernels* (unit width stride, output at least one SIMD vector wide; the fast forward
  path, also used by the input gradient): a register tile of 3 output channels x 4 SIMD vectors,
  2 x 5, or, for a single channel, 2 output rows x 5 vectors, accumulates the whole reduction
  over (s, i, j, l) in registers (:mod:`.simd`) and is stored once, straight into the output;
  see :func:`_tile_forward_impl`. A tile can also mix its channels by a 1x1x1 convolution
  before it stores (the fused Tucker-2 block of :mod:`.tucker2`).
"""
from __future__ import annotations

import numpy as np
from numba import literally, njit, prange, typeof, types

from ._checks import as_triple, common_dtype, float_array, require_finite, window_output_dims
from ._threads import threads_for
from .pointwise import pointwise_forward, pointwise_grad_weight
from .simd import RegisterTile, lanes, tile_broadcast, tile_fma, tile_mix, tile_store


@njit(parallel=True, fastmath=True, cache=True)
def _direct_forward_impl(xp, w, out, sd, sh, sw, kw):
    N, S = xp.shape[0], xp.shape[1]
    T, kD, kH = w.shape[0], w.shape[2], w.shape[3]
    Fo, Ho, Wo = out.shape[2], out.shape[3], out.shape[4]
    for task in prange(N * Fo * Ho):
        n = task // (Fo * Ho)
        fo = (task // Ho) % Fo
        ho = task % Ho
        for t in range(T):
            acc = out[n, t, fo, ho]
            for s in range(S):
                for i in range(kD):
                    for j in range(kH):
                        xrow = xp[n, s, fo * sd + i, ho * sh + j]
                        wrow = w[t, s, i, j]
                        for wo in range(Wo):
                            a = acc[wo]
                            for l in range(kw):
                                a += wrow[l] * xrow[wo * sw + l]
                            acc[wo] = a


@njit(cache=True)
def _direct_forward(xp, w, out, sd, sh, sw, kw):
    """out += conv(xp, w) for an already padded input; kw and sw are specialised as constants."""
    literally(kw)
    literally(sw)
    _direct_forward_impl(xp, w, out, sd, sh, sw, kw)


@njit(parallel=True, fastmath=True, cache=True)
def _direct_grad_weight_impl(xp, g, gw, sd, sh, sw, kw):
    N, S = xp.shape[0], xp.shape[1]
    T, kD, kH = gw.shape[0], gw.shape[2], gw.shape[3]
    Fo, Ho, Wo = g.shape[2], g.shape[3], g.shape[4]
    for task in prange(T * S * kD):
        t = task // (S * kD)
        s = (task // kD) % S
        i = task % kD
        for j in range(kH):
            acc = gw[t, s, i, j]
            for n in range(N):
                for fo in range(Fo):
                    for ho in range(Ho):
                        grow = g[n, t, fo, ho]
                        xrow = xp[n, s, fo * sd + i, ho * sh + j]
                        for l in range(kw):
                            a = acc[l]
                            for wo in range(Wo):
                                a += grow[wo] * xrow[wo * sw + l]
                            acc[l] = a


@njit(cache=True)
def _direct_grad_weight(xp, g, gw, sd, sh, sw, kw):
    """gw += dL/dK for an already padded input; kw and sw are specialised as constants."""
    literally(kw)
    literally(sw)
    _direct_grad_weight_impl(xp, g, gw, sd, sh, sw, kw)


# Positions of the padded-width output grid per task of the plane kernels (4 KiB of float32).
_PLANE_BLOCK = 1024
# Kernel-width taps accumulated together by the plane weight-gradient kernel.
_GW_TAPS = 4


@njit(parallel=True, fastmath=True, cache=True)
def _plane_forward_impl(xq, w, out, sd, wp, kw):
    """out[n, t, f', q] += sum_{s,i,j,l} w[t,s,i,j,l] * xq[n, s, f'*sd + i, q + j*wp + l].

    xq: padded input with planes flattened, (N, S, Fp, rows*wp); out: (N, T, Fo, Ho*wp).
    """
    N, S = xq.shape[0], xq.shape[1]
    T, kD, kH = w.shape[0], w.shape[2], w.shape[3]
    Fo, Q = out.shape[2], out.shape[3]
    nqb = (Q + _PLANE_BLOCK - 1) // _PLANE_BLOCK
    for task in prange(N * Fo * nqb):
        n = task // (Fo * nqb)
        fo = (task // nqb) % Fo
        q0 = (task % nqb) * _PLANE_BLOCK
        nq = min(Q - q0, _PLANE_BLOCK)
        for s in range(S):
            for i in range(kD):
                plane = xq[n, s, fo * sd + i]
                for j in range(kH):
                    xs = plane[q0 + j * wp:q0 + j * wp + nq + kw - 1]
                    for t in range(T):
                        acc = out[n, t, fo, q0:q0 + nq]
                        wrow = w[t, s, i, j]
                        for q in range(nq):
                            a = acc[q]
                            for l in range(kw):
                                a += wrow[l] * xs[q + l]
                            acc[q] = a


@njit(cache=True)
def _plane_forward(xq, w, out, sd, wp, kw):
    """Plane-kernel forward; the kernel width kw is specialised as a compile-time constant."""
    literally(kw)
    _plane_forward_impl(xq, w, out, sd, wp, kw)


@njit(parallel=True, fastmath=True, cache=True)
def _plane_grad_weight(xq, gq, gw, sd, wp):
    """gw[t,s,i,j,l] += sum_{n,f',q} gq[n,t,f',q] * xq[n,s,f'*sd+i, q + j*wp + l].

    gq is the output gradient on the padded-width grid, zero in the columns >= Wo; gw's last
    axis is the kernel width rounded up to a multiple of _GW_TAPS (the extra taps are discarded).
    Each task owns one (t, s, i) slice of gw, so the reduction needs no atomics.
    """
    N, S = xq.shape[0], xq.shape[1]
    T, kD, kH, kwr = gw.shape[0], gw.shape[2], gw.shape[3], gw.shape[4]
    Fo, Q = gq.shape[2], gq.shape[3]
    for task in prange(T * S * kD):
        t = task // (S * kD)
        s = (task // kD) % S
        i = task % kD
        for j in range(kH):
            g_out = gw[t, s, i, j]
            for l0 in range(0, kwr, _GW_TAPS):
                a0, a1, a2, a3 = g_out[l0], g_out[l0 + 1], g_out[l0 + 2], g_out[l0 + 3]
                off = j * wp + l0
                for n in range(N):
                    for fo in range(Fo):
                        xs = xq[n, s, fo * sd + i, off:off + Q + _GW_TAPS - 1]
                        gs = gq[n, t, fo]
                        for q in range(Q):
                            gv = gs[q]
                            a0 += gv * xs[q]
                            a1 += gv * xs[q + 1]
                            a2 += gv * xs[q + 2]
                            a3 += gv * xs[q + 3]
                g_out[l0], g_out[l0 + 1], g_out[l0 + 2], g_out[l0 + 3] = a0, a1, a2, a3


@njit(fastmath=True, cache=True)
def _tile_segment(tile, xp, wt, w_first, bias_first, bias, out, out_first, out_strides, x_first, x_strides, kernel,
                  mix):
    """One register tile: R = tile.rows output rows x C = tile.channels channels x tile.vectors SIMD vectors.

    acc = b, then for every tap (s, i, l) and input row r of the tile's window (kH + R - 1 rows),
    acc[rho] += K(s, i, r - rho, l) * Xp(x_first + s*xs + i*xi + r*xj + l), then stored at
    out_first (channels and rows ``out_strides`` apart). wt holds the C weights of a tap side by
    side, taps in (s, i, j, l) order from w_first, with R - 1 zero kernel rows before and after
    the kH real ones, so that r - rho outside [0, kH) reads a zero.

    With ``mix = (one_channel_tile, U, c, outputs)`` the tile's C channels are not stored but mixed
    into ``outputs`` channels first, out(t) = c(t) + sum_k U(t, k) acc(k), the 1x1x1 convolution
    of eq. (10) done while the tile is still in registers (U flat, row-major (outputs, C)).
    """
    C, R = tile.channels, tile.rows
    S, kD, kH, kW = kernel
    xs, xi, xj = x_strides
    w_row = kW * C
    acc = tile_broadcast(tile, bias, bias_first)
    w_si = w_first
    for s in range(S):
        for i in range(kD):
            for r in range(kH + R - 1):
                x0 = x_first + s * xs + i * xi + r * xj
                w0 = w_si + (r + R - 1) * w_row
                for l in range(kW):
                    acc = tile_fma(tile, acc, wt, w0 + l * C, w_row, xp, x0 + l)
            w_si += (kH + 2 * (R - 1)) * w_row
    if mix is None:
        tile_store(tile, acc, out, out_first, out_strides[0], out_strides[1])
    else:
        one_channel, u, c, outputs = mix
        for t in range(outputs):
            tile_store(one_channel, tile_mix(tile, acc, u, t * C, c, t), out, out_first + t * out_strides[0], 0,
                       out_strides[1])


@njit(parallel=True, fastmath=True, cache=True)
def _tile_forward_impl(xp, wt, bias, out, tile, last, dims, mix=None, last_mix=None):
    """out[n, t, f', h', w'] = b(t) + sum_{s,i,j,l} K(t,s,i,j,l) Xp(n, s, f'*sd + i, h'*sh + j, w' + l).

    Flat C-contiguous arrays: xp the padded input (N, S, Fp, Hp, Wp); wt the weights of the
    channels t_first ... t_first + blocks*C - 1 packed as (blocks, S, kD, kH + 2(R - 1), kW, C)
    (see :func:`_tile_segment`), C = ``tile.channels``, R = ``tile.rows``; bias those channels'
    biases; out the whole output (N, T, Fo, Ho, Wo). Each task computes R output rows
    (n, f', h'...) of one block of C channels: ``full`` tiles of ``tile.vectors`` SIMD vectors
    side by side, then, when the rows are not a whole number of tiles, the ``last`` tile placed
    flush with the rows' end at ``last_col``. The last row block is likewise placed flush with
    the bottom (R > 1 needs sh = 1). Overlapping tiles recompute a few outputs and write the
    same values again. ``mix`` and ``last_mix`` (one per tile shape), when given, make each tile
    store its 1x1x1 mix instead (see :func:`_tile_segment`); then ``blocks`` is 1, ``t_first`` 0 and
    T counts the mixed output channels.
    """
    (N, S, Fp, Hp, Wp, T, t_first, blocks, kD, kH, kW, Fo, Ho, Wo, sd, sh, width, full, last_col) = dims
    C, R = tile.channels, tile.rows
    plane = Fo * Ho * Wo
    w_block = S * kD * (kH + 2 * (R - 1)) * kW * C
    x_strides = (Fp * Hp * Wp, Hp * Wp, Wp)
    out_strides = (plane, Wo)
    kernel = (S, kD, kH, kW)
    row_blocks = (Ho + R - 1) // R
    for task in prange(N * Fo * row_blocks * blocks):
        n = task // (Fo * row_blocks * blocks)
        fo = (task // (row_blocks * blocks)) % Fo
        ho = min(((task // blocks) % row_blocks) * R, Ho - R)
        b = task % blocks
        out_row = (n * T + t_first + b * C) * plane + (fo * Ho + ho) * Wo
        x_row = ((n * S * Fp + fo * sd) * Hp + ho * sh) * Wp
        for u in range(full):
            col = u * width
            _tile_segment(tile, xp, wt, b * w_block, b * C, bias, out, out_row + col, out_strides,
                          x_row + col, x_strides, kernel, mix)
        if last_col >= 0:
            _tile_segment(last, xp, wt, b * w_block, b * C, bias, out, out_row + last_col, out_strides,
                          x_row + last_col, x_strides, kernel, last_mix)


#: (tile channels, tile rows) -> SIMD vectors per tile row, sized to the 16 vector registers with
#: room for the broadcast weights and one input vector (measured best on the c1 shapes,
#: bench/RESULTS.md). One channel uses two rows so that each input load feeds two FMAs.
_TILE_VECTORS = {(3, 1): 4, (2, 1): 5, (1, 2): 5, (1, 1): 10}


def _tile_channels(T):
    """Channels per register tile for T output channels: 3 when they divide T, else 2 (or 1)."""
    return 3 if T % 3 == 0 else 2 if T >= 2 else 1


def _tiles_fit(out_width, dtype):
    return out_width >= lanes(np.dtype(dtype))


def _pack_tile_weights(weight, blocks, channels, rows):
    """(blocks*C, S, kD, kH, kW) -> flat (blocks, S, kD, kH + 2(rows - 1), kW, C), zero rows around kH."""
    T, S, kD, kH, kW = weight.shape
    packed = np.zeros((blocks, S, kD, kH + 2 * (rows - 1), kW, channels), weight.dtype)
    packed[:, :, :, rows - 1:rows - 1 + kH] = weight.reshape(blocks, channels, S, kD, kH, kW).transpose(0, 2, 3, 4, 5, 1)
    return packed.reshape(-1)


def _forward_tiles(x, weight, bias, padding, stride, out):
    """Register-tile forward into ``out`` (N, T, Fo, Ho, Wo); needs unit width stride and Wo >= lanes."""
    _forward_tiles_padded(_pad(x, padding), weight, bias, stride, out)


def _forward_tiles_padded(xp, weight, bias, stride, out, mix=None):
    """:func:`_forward_tiles` on the zero-padded input ``xp`` (C-contiguous).

    With ``mix = (U, c)``, U of shape (T_out, T) and c (T_out,), ``out`` (N, T_out, Fo, Ho, Wo) gets
    the 1x1x1 convolution c + U * conv(x) instead, mixed in each tile's epilogue; that needs all T
    channels in one tile (:func:`tiles_hold_all_channels`).
    """
    if not (out.flags.c_contiguous and xp.flags.c_contiguous):
        raise ValueError(f"the tile kernels read and write flat views: xp (strides {xp.strides}) and out "
                         f"(strides {out.strides}) must be C-contiguous")
    N, T_out, Fo, Ho, Wo = out.shape
    T, S, (kD, kH, kW) = weight.shape[0], weight.shape[1], weight.shape[2:]
    if mix is not None and not tiles_hold_all_channels(T):
        raise ValueError(f"a mixed tile store needs the {T} channels in one tile (at most 3)")
    bias = np.zeros(T, xp.dtype) if bias is None else bias
    n_lanes = lanes(xp.dtype)
    C = _tile_channels(T)
    groups = [(0, T // C, C)] + ([(T - T % C, 1, T % C)] if T % C else [])
    for t_first, blocks, channels in groups:
        rows = 2 if channels == 1 and stride[1] == 1 and Ho >= 2 else 1
        vectors = min(_TILE_VECTORS[channels, rows], Wo // n_lanes)
        width = vectors * n_lanes
        full, rest = divmod(Wo, width)
        last_vectors = -(-rest // n_lanes) if rest else vectors
        last_col = Wo - last_vectors * n_lanes if rest else -1
        t_last = t_first + blocks * channels
        dims = xp.shape + (T_out, t_first, blocks, kD, kH, kW, Fo, Ho, Wo, stride[0], stride[1], width, full, last_col)
        tiles = RegisterTile(channels, vectors, rows), RegisterTile(channels, last_vectors, rows)
        mixes = (None, None) if mix is None else tuple(
            (RegisterTile(1, tile.vectors, rows), np.ascontiguousarray(mix[0], xp.dtype).reshape(-1),
             np.ascontiguousarray(mix[1], xp.dtype), T_out) for tile in tiles)
        _tile_forward_impl(xp.reshape(-1), _pack_tile_weights(weight[t_first:t_last], blocks, channels, rows),
                           np.ascontiguousarray(bias[t_first:t_last]), out.reshape(-1), *tiles, dims, *mixes)


def tiles_hold_all_channels(T):
    """True when one register tile holds all T output channels (T <= 3), as a mixed store needs."""
    return _tile_channels(T) == T


# Compiled entry points of the ``literally`` kernels, by (kernel, argument types, constant values).
_ENTRY_POINTS = {}


def _call_specialised(kernel, *args, constants):
    """Call ``kernel`` whose last ``constants`` int arguments are ``literally`` compile-time constants.

    Called from Python with plain ints, a ``literally`` dispatcher re-runs Numba's type inference on
    every call just to learn that it wants literal arguments: about 10 ms per call, more than the
    whole convolution of a small layer. The first call of each specialisation goes through the
    dispatcher (compiling it or loading it from the cache); later calls go to its entry point.
    """
    n = len(args) - constants
    key = (kernel, tuple(typeof(a) for a in args[:n]), args[n:])
    entry = _ENTRY_POINTS.get(key)
    if entry is not None:
        return entry(*args)
    result = kernel(*args)
    overload = kernel.overloads.get(key[1] + tuple(types.literal(v) for v in args[n:]))
    if overload is not None:
        _ENTRY_POINTS[key] = overload.entry_point
    return result


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------

def _validate(x, weight, bias, stride, padding, *, check_finite=True):
    x = float_array(x, "x", 5, layout="N, C, D, H, W")
    weight = float_array(weight, "weight", 5, layout="T, S, kD, kH, kW")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"channel mismatch: x has {x.shape[1]} channels (shape {x.shape}) but weight expects "
            f"{weight.shape[1]} (shape {weight.shape})")
    if bias is not None:
        bias = float_array(bias, "bias", 1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias has shape {bias.shape} but weight has {weight.shape[0]} output channels")
    if min(x.shape) == 0 or min(weight.shape) == 0:
        raise ValueError(f"empty array: x shape {x.shape}, weight shape {weight.shape}")
    stride = as_triple(stride, "stride", minimum=1)
    padding = as_triple(padding, "padding", minimum=0)
    out_dims = window_output_dims(x.shape[2:], weight.shape[2:], stride, padding)
    if min(out_dims) < 1:
        raise ValueError(
            f"empty output: input spatial shape {x.shape[2:]} with padding {padding} is smaller than "
            f"kernel {weight.shape[2:]} (output would be {out_dims})")
    if check_finite:
        require_finite(weight, "weight")
        if bias is not None:
            require_finite(bias, "bias")
        require_finite(x, "x")
    dtype = common_dtype(x, weight, bias)
    x, weight = x.astype(dtype, copy=False), weight.astype(dtype, copy=False)
    bias = None if bias is None else bias.astype(dtype, copy=False)
    return x, weight, bias, stride, padding, out_dims


def _pad(x, padding):
    """Zero-padded copy of x (N, S, D, H, W); np.zeros plus one copy is about 3x faster than np.pad."""
    if not any(padding):
        return np.ascontiguousarray(x)
    pd, ph, pw = padding
    N, S, D, H, W = x.shape
    xp = np.zeros((N, S, D + 2 * pd, H + 2 * ph, W + 2 * pw), x.dtype)
    xp[:, :, pd:pd + D, ph:ph + H, pw:pw + W] = x
    return xp


def _pad_planes(x, padding, tail):
    """Zero-pad x and flatten each (H, W) plane, leaving >= ``tail`` zeros after the last plane row.

    Returns (xq of shape (N, S, Fp, rows*Wp), Wp). The tail lets the plane kernels read
    ``tail`` positions past the padded plane without a bounds test in the inner loop.
    """
    N, S, D, H, W = x.shape
    pd, ph, pw = padding
    wp = W + 2 * pw
    rows = H + 2 * ph + -(-tail // wp)
    xq = np.zeros((N, S, D + 2 * pd, rows, wp), x.dtype)
    xq[:, :, pd:pd + D, ph:ph + H, pw:pw + W] = x
    return xq.reshape(N, S, D + 2 * pd, rows * wp), wp


def _uses_planes(stride):
    return stride[1] == 1 and stride[2] == 1


def _is_pointwise(weight, stride, padding):
    return weight.shape[2:] == (1, 1, 1) and stride == (1, 1, 1) and padding == (0, 0, 0)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

def conv3d(x, weight, bias=None, stride=1, padding=0, *, check_finite=True):
    """3-D convolution, eq. (1): x (N, S, D, H, W), weight (T, S, kD, kH, kW) -> (N, T, D', H', W').

    Same semantics as ``torch.nn.functional.conv3d`` (cross-correlation, zero padding,
    floor output size). float32 unless an argument is float64. 1x1x1 kernels with unit
    stride and no padding take the dedicated pointwise path (eqs. 8 and 10).
    """
    x, weight, bias, stride, padding, out_dims = _validate(x, weight, bias, stride, padding, check_finite=check_finite)
    return _conv3d_unchecked(x, weight, bias, stride, padding, out_dims)


def _conv3d_unchecked(x, weight, bias, stride, padding, out_dims):
    N, S = x.shape[:2]
    T = weight.shape[0]
    out = np.empty((N, T) + out_dims, dtype=x.dtype)
    with threads_for(out.size * S * weight[0, 0].size):
        _forward_into(x, weight, bias, stride, padding, out)
    return out


def _forward_into(x, weight, bias, stride, padding, out):
    """Write conv3d(x, weight, bias) into the contiguous ``out``, by the fastest path that applies."""
    N, S = x.shape[:2]
    T = weight.shape[0]
    if _is_pointwise(weight, stride, padding):
        b = np.zeros(T, x.dtype) if bias is None else bias
        pointwise_forward(x.reshape(N, S, -1), weight.reshape(T, S), b, out.reshape(N, T, -1))
    elif stride[2] == 1 and _tiles_fit(out.shape[4], x.dtype):
        _forward_tiles(x, weight, bias, padding, stride, out)
    elif _uses_planes(stride):
        _forward_planes(x, weight, bias, padding, stride[0], out)
    else:
        out[...] = 0 if bias is None else bias.reshape(1, T, 1, 1, 1)
        sd, sh, sw = stride
        _call_specialised(_direct_forward, _pad(x, padding), weight, out, sd, sh, sw, weight.shape[4],
                          constants=2)


def _forward_planes(x, weight, bias, padding, sd, out):
    """Plane-kernel forward into ``out`` (N, T, Fo, Ho, Wo), computed on the padded-width grid."""
    N, T, Fo, Ho, Wo = out.shape
    kw = weight.shape[4]
    xq, wp = _pad_planes(x, padding, tail=kw - 1)
    grid = np.empty((N, T, Fo, Ho * wp), x.dtype)
    grid[...] = 0 if bias is None else bias.reshape(1, T, 1, 1)
    _call_specialised(_plane_forward, xq, weight, grid, sd, wp, kw, constants=1)
    out[...] = grid.reshape(N, T, Fo, Ho, wp)[..., :Wo]


def conv3d_backward(x, weight, grad_out, stride=1, padding=0, *, need_grad_x=True, check_finite=True):
    """Gradients of :func:`conv3d`: returns ``(grad_x, grad_weight, grad_bias)``.

    ``grad_x`` is ``None`` when ``need_grad_x`` is false (a network's first layer).
    """
    x, weight, _, stride, padding, out_dims = _validate(x, weight, None, stride, padding, check_finite=check_finite)
    grad_out = float_array(grad_out, "grad_out", 5, layout="N, T, D', H', W'")
    expected = (x.shape[0], weight.shape[0]) + out_dims
    if grad_out.shape != expected:
        raise ValueError(f"grad_out has shape {grad_out.shape}, expected {expected} for x {x.shape} and weight {weight.shape}")
    if check_finite:
        require_finite(grad_out, "grad_out")
    grad_out = grad_out.astype(x.dtype, copy=False)

    with threads_for(grad_out.size * x.shape[1] * weight[0, 0].size):
        return _conv3d_backward_unchecked(x, weight, grad_out, stride, padding, need_grad_x)


def _conv3d_backward_unchecked(x, weight, grad_out, stride, padding, need_grad_x):
    N, S = x.shape[:2]
    T = weight.shape[0]
    grad_bias = grad_out.sum(axis=(0, 2, 3, 4))
    grad_weight = np.zeros_like(weight)
    if _is_pointwise(weight, stride, padding):
        pointwise_grad_weight(x.reshape(N, S, -1), grad_out.reshape(N, T, -1), grad_weight.reshape(T, S))
        grad_x = None
        if need_grad_x:
            grad_x = np.empty_like(x)
            wt = np.ascontiguousarray(weight.reshape(T, S).T)
            pointwise_forward(grad_out.reshape(N, T, -1), wt, np.zeros(S, x.dtype), grad_x.reshape(N, S, -1))
        return grad_x, grad_weight, grad_bias

    sd, sh, sw = stride
    if _uses_planes(stride):
        _grad_weight_planes(x, grad_out, padding, sd, grad_weight)
    else:
        _call_specialised(_direct_grad_weight, _pad(x, padding), grad_out, grad_weight, sd, sh, sw, weight.shape[4],
                          constants=2)
    grad_x = _input_gradient(x.shape, weight, grad_out, stride, padding) if need_grad_x else None
    return grad_x, grad_weight, grad_bias


def _grad_weight_planes(x, grad_out, padding, sd, grad_weight):
    """Plane-kernel weight gradient: G is laid on the padded-width grid with zero extra columns."""
    N, T, Fo, Ho, Wo = grad_out.shape
    kw = grad_weight.shape[4]
    kwr = -(-kw // _GW_TAPS) * _GW_TAPS
    xq, wp = _pad_planes(x, padding, tail=kwr - 1)
    gq = np.zeros((N, T, Fo, Ho, wp), grad_out.dtype)
    gq[..., :Wo] = grad_out
    acc = np.zeros(grad_weight.shape[:4] + (kwr,), grad_weight.dtype)
    _plane_grad_weight(xq, gq.reshape(N, T, Fo, Ho * wp), acc, sd, wp)
    grad_weight += acc[..., :kw]


def _input_gradient(x_shape, weight, grad_out, stride, padding):
    """dL/dX as a stride-1 forward convolution of the dilated, fully padded G with the flipped kernel."""
    N, T = grad_out.shape[:2]
    ksize = weight.shape[2:]
    if stride != (1, 1, 1):
        dil = np.zeros((N, T) + tuple((o - 1) * s + 1 for o, s in zip(grad_out.shape[2:], stride)), grad_out.dtype)
        dil[:, :, ::stride[0], ::stride[1], ::stride[2]] = grad_out
        grad_out = dil
    flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1, ::-1].transpose(1, 0, 2, 3, 4))
    span = tuple(grad_out.shape[2 + d] + ksize[d] - 1 for d in range(3))
    grad_xp = np.empty((N, weight.shape[1]) + span, grad_out.dtype)  # _forward_into writes all of it
    _forward_into(grad_out, flipped, None, (1, 1, 1), tuple(k - 1 for k in ksize), grad_xp)
    # Inputs past the last window (floor mode) receive no gradient; then drop the padding.
    padded = tuple(x_shape[2 + d] + 2 * padding[d] for d in range(3))
    if span != padded:
        grad_xp = np.pad(grad_xp, [(0, 0), (0, 0)] + [(0, padded[d] - span[d]) for d in range(3)])
    pd, ph, pw = padding
    return np.ascontiguousarray(grad_xp[:, :, pd:pd + x_shape[2], ph:ph + x_shape[3], pw:pw + x_shape[4]])
