"""Register-tile forward convolution, eq. (1): the engine's fast path, optionally with a fused max pooling.

    Y(n, t, f', h', w') = b(t) + sum_{s, i, j, l} K(t, s, i, j, l) Xp(n, s, f'*sd + i, h'*sh + j, w' + l)

for unit width stride and outputs at least one SIMD vector wide. A register tile of R output
rows x C channels x V SIMD vectors (:mod:`.simd`, shapes from :mod:`.tiling`) accumulates the
whole reduction over (s, i, j, l) in registers and is stored once. Two epilogues can replace the
plain store:

* a *mixed* store, for a Tucker-2 block (eqs. 8-10): the tile's C = R_t core channels are mixed
  into the block's T outputs by the last factor, Y(t) = b(t) + sum_r U_t(t, r) Z'(r), while they
  are still in registers, so the core's output never reaches memory;
* a *pooled* store, for a convolution followed by a non-overlapping max pooling (kernel = stride,
  no padding): one task computes all kd x kh output rows of one pooling window row, each tile
  merging into a running maximum of one row per channel, and writes only the windows' maxima, so
  the full-resolution output never reaches memory either, and rows or columns that the pooling's
  floor drops are not computed.

A pooled Tucker-2 block goes one step further: its tile tasks also compute the zero-padded
Z = U_s^T X of eq. (8) they read, a few planes at a time (:func:`_tile_pool_first_impl`), so the
whole block is one parallel pass over the clip.

Every output is summed in the same (s, i, j, l) order whatever the tile shape or epilogue, so the
results are bit-identical to the plain store followed by the separate layers.
"""
from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np
from numba import njit, prange

from . import simd
from ._checks import window_output_dims
from ._threads import threads_for
from .padding import _copy_padded_any
from .pointwise import _mix_padded_row, pointwise_forward_padded
from .pool import _nan_max
from .simd import (RegisterTile, lanes, tile_broadcast, tile_fma, tile_fma_rows, tile_max_store, tile_mix_max_store,
                   tile_mix_store, tile_store)
from .tiling import max_tile_channels, row_cover, tile_channels, tile_shape


# No fastmath in this module (said explicitly, or a callee would inherit it from a fastmath
# caller): the tiles' arithmetic is explicit (llvm.fmuladd), which fastmath would not change, and
# the pooled stores compare with NaN semantics, which its no-NaNs flag would remove.
@njit(fastmath=False, cache=True)
def _tile_segment(tile, xp, wt, w_first, bias_first, bias, out, out_first, out_strides, x_first, x_strides, kernel,
                  u, c, outputs, pooled):
    """One register tile: R = tile.rows (1 or 2) output rows x C = tile.channels channels x tile.vectors SIMD vectors.

    acc = b, then for every tap (s, i, l) and input row r of the tile's window (kH + R - 1 rows),
    acc[rho] += K(s, i, r - rho, l) * Xp(x_first + s*xs + i*xi + r*xj + l) for the tile rows rho
    with 0 <= r - rho < kH (the first and last input rows of a two-row tile feed one row each),
    then stored at out_first (channels and rows ``out_strides`` apart). wt holds the C weights of
    a tap side by side, taps in (s, i, j, l) order from w_first.

    With ``u`` (U flat, row-major (outputs, C)) and ``c`` (outputs,) the tile's C channels are not
    stored but mixed into ``outputs`` channels first, out(t) = c(t) + sum_k U(t, k) acc(k), the
    1x1x1 convolution of eq. (10) done while the tile is still in registers; ``u`` None stores them.
    With ``pooled`` each store merges into a running maximum instead (out = max(out, value), NaN
    propagating): a max pooling over the rows and channels that share addresses.
    """
    # s input channel, i kernel tap in depth, r input row of the tile's window (kernel row r - rho
    # for tile row rho), l kernel tap in width; t mixed output channel; acc holds C channels x R rows.
    C, R = tile.channels, tile.rows
    S, kD, kH, kW = kernel
    xs, xi, xj = x_strides
    w_row = kW * C
    acc = tile_broadcast(tile, bias, bias_first)
    w_si = w_first
    for s in range(S):
        for i in range(kD):
            x_si = x_first + s * xs + i * xi
            for l in range(kW):  # input row 0: output row 0, kernel row 0
                acc = tile_fma_rows(tile, 0, 1, acc, wt, w_si + l * C, w_row, xp, x_si + l)
            for r in range(1, kH):  # every tile row
                for l in range(kW):
                    acc = tile_fma(tile, acc, wt, w_si + r * w_row + l * C, w_row, xp, x_si + r * xj + l)
            for l in range(kW):  # input row kH (two-row tiles): output row 1, kernel row kH - 1
                acc = tile_fma_rows(tile, 1, 2, acc, wt, w_si + kH * w_row + l * C, w_row, xp, x_si + kH * xj + l)
            w_si += kH * w_row
    if u is None:
        if pooled:
            tile_max_store(tile, acc, out, out_first, out_strides[0], out_strides[1])
        else:
            tile_store(tile, acc, out, out_first, out_strides[0], out_strides[1])
    else:
        for t in range(outputs):
            if pooled:
                tile_mix_max_store(tile, acc, u, t * C, c, t, out, out_first + t * out_strides[0], out_strides[1])
            else:
                tile_mix_store(tile, acc, u, t * C, c, t, out, out_first + t * out_strides[0], out_strides[1])


@njit(fastmath=False, cache=True)
def _tile_row_block(tile, last, xp, wt, bias, b, out, out_row, out_strides, x_row, x_strides, kernel, geometry,
                    u, c, outputs, pooled):
    """R output rows of channel block ``b`` across the output width, stored from ``out_row``.

    ``geometry = (width, full, last_col, w_block)``: ``full`` tiles of ``width`` columns side by
    side, then, when the rows are not a whole number of tiles, the ``last`` tile placed flush with
    the rows' end at column ``last_col`` (>= 0); overlapping tiles write the same values twice.
    """
    width, full, last_col, w_block = geometry
    C = tile.channels
    for col in range(0, full * width, width):
        _tile_segment(tile, xp, wt, b * w_block, b * C, bias, out, out_row + col, out_strides, x_row + col,
                      x_strides, kernel, u, c, outputs, pooled)
    if last_col >= 0:
        _tile_segment(last, xp, wt, b * w_block, b * C, bias, out, out_row + last_col, out_strides,
                      x_row + last_col, x_strides, kernel, u, c, outputs, pooled)


# Layout of the int64 ``dims`` array of the tile kernels (an array, not a tuple: Numba types an
# array argument in C, a tuple of 19 ints in Python, on every call).
(_N, _S, _FP, _HP, _WP, _T, _T_FIRST, _BLOCKS, _KD, _KH, _KW, _FO, _HO, _WO, _SD, _SH, _WIDTH, _FULL,
 _LAST_COL) = range(19)


@njit(fastmath=False, cache=True)
def _unpack(dims, tile):
    """Sizes, strides and tile geometry from ``dims`` (see :func:`_tile_forward_impl`)."""
    S, Fp, Hp, Wp = dims[_S], dims[_FP], dims[_HP], dims[_WP]
    kD, kH, kW = dims[_KD], dims[_KH], dims[_KW]
    w_block = S * kD * kH * kW * tile.channels
    return ((Fp * Hp * Wp, Hp * Wp, Wp), (S, kD, kH, kW),
            (dims[_WIDTH], dims[_FULL], dims[_LAST_COL], w_block))


@njit(parallel=True, fastmath=False, cache=True)
def _tile_forward_impl(xp, wt, bias, out, tile, last, dims, u, c):
    """out[n, t, f', h', w'] = b(t) + sum_{s,i,j,l} K(t,s,i,j,l) Xp(n, s, f'*sd + i, h'*sh + j, w' + l).

    Flat C-contiguous arrays: xp the padded input (N, S, Fp, Hp, Wp); wt the weights of the
    channels t_first ... t_first + blocks*C - 1 packed as (blocks, S, kD, kH, kW, C)
    (:func:`pack_tile_weights`), C = ``tile.channels``, R = ``tile.rows``; bias those channels'
    biases; out the whole output (N, T, Fo, Ho, Wo). ``dims`` holds (N, S, Fp, Hp, Wp, T, t_first,
    blocks, kD, kH, kW, Fo, Ho, Wo, sd, sh, width, full, last_col). Each task computes R output
    rows (n, f', h'...) of one block of C channels (:func:`_tile_row_block`); the last row block
    is placed flush with the bottom (R > 1 needs sh = 1). With ``u`` and ``c`` (not None) each tile
    stores its 1x1x1 mix instead (see :func:`_tile_segment`); then ``blocks`` is 1, ``t_first`` 0
    and T counts the mixed output channels.
    """
    N, T, t_first, blocks = dims[_N], dims[_T], dims[_T_FIRST], dims[_BLOCKS]
    S, Fp, Hp, Wp = dims[_S], dims[_FP], dims[_HP], dims[_WP]
    Fo, Ho, Wo, sd, sh = dims[_FO], dims[_HO], dims[_WO], dims[_SD], dims[_SH]
    x_strides, kernel, geometry = _unpack(dims, tile)
    C, R = tile.channels, tile.rows
    plane = Fo * Ho * Wo
    row_blocks = (Ho + R - 1) // R
    # n sample, fo output frame, ho first of the tile's R output rows, b block of C output channels.
    for task in prange(N * Fo * row_blocks * blocks):
        n = task // (Fo * row_blocks * blocks)
        fo = (task // (row_blocks * blocks)) % Fo
        ho = min(((task // blocks) % row_blocks) * R, Ho - R)
        b = task % blocks
        out_row = (n * T + t_first + b * C) * plane + (fo * Ho + ho) * Wo
        x_row = ((n * S * Fp + fo * sd) * Hp + ho * sh) * Wp
        _tile_row_block(tile, last, xp, wt, bias, b, out, out_row, (plane, Wo), x_row, x_strides, kernel, geometry,
                        u, c, T, False)


@njit(fastmath=False, cache=True)
def _pool_columns(rows, channels, Wo, out, out_first, out_plane, Wq, kw, relu):
    """out[out_first + k*out_plane + w_q] = max of rows[k*Wo + w_q*kw ...] over kw columns, then max(., 0)
    when ``relu``; NaN propagates (pool._nan_max) and the ReLU leaves NaN and -0 as they are."""
    # k channel, wq pooled output column, l window offset in width.
    for k in range(channels):
        at = out_first + k * out_plane
        for wq in range(Wq):
            m = rows[k * Wo + wq * kw]
            for l in range(1, kw):
                m = _nan_max(m, rows[k * Wo + wq * kw + l])
            if relu and m < 0:
                m = 0
            out[at + wq] = m


@njit(fastmath=False, cache=True)
def _pool_window_row(tile, last, xp, x_window, x_strides, wt, bias, b, out, out_first, out_plane, kernel, geometry,
                     window, u, c, T):
    """The pooled outputs of one pooling window row for channel block ``b``: its kd x kh output rows,
    every tile merging its rows into a running maximum of one row per channel (-inf first, rows in
    the order max pooling scans them; a few KiB that stay in L1), then each run of kw columns
    reduced (:func:`_pool_columns`) and stored from ``out_first`` (channels ``out_plane`` apart).

    ``x_window`` is the offset in ``xp`` of the window's first input row (plane f_q*kd*sd, row
    h_q*kh*sh), ``x_strides`` = (channel, plane, row) strides of ``xp``, and ``window`` = (kd, kh,
    kw, relu, sd, sh, Wo, Wq). R-row tiles need kh >= R; the last row block of a window is placed
    flush with its bottom (a row merged twice leaves the maximum as it is).
    """
    kd, kh, kw, relu, sd, sh, Wo, Wq = window
    R = tile.rows
    stored = tile.channels if u is None else T  # channels the task writes
    xi, xj = x_strides[1], x_strides[2]
    rows = np.full(stored * Wo, -np.inf, xp.dtype)
    for i in range(kd):
        for j0 in range(0, kh, R):
            j = min(j0, kh - R)
            _tile_row_block(tile, last, xp, wt, bias, b, rows, 0, (Wo, 0), x_window + i * sd * xi + j * sh * xj,
                            x_strides, kernel, geometry, u, c, T, True)
    _pool_columns(rows, stored, Wo, out, out_first, out_plane, Wq, kw, relu != 0)


@njit(fastmath=False, cache=True)
def _pool_geometry(dims, pool):
    """(Fq, Hq, Wq) and the ``window`` tuple of :func:`_pool_window_row` from ``dims`` and ``pool``."""
    Wo = dims[_WO]
    kd, kh, kw = pool[0], pool[1], pool[2]
    Fq, Hq, Wq = dims[_FO] // kd, dims[_HO] // kh, Wo // kw
    return Fq, Hq, Wq, (kd, kh, kw, pool[3], dims[_SD], dims[_SH], Wo, Wq)


@njit(parallel=True, fastmath=False, cache=True)
def _tile_pool_forward_impl(xp, wt, bias, out, tile, last, dims, pool, u, c):
    """Max pooling (kernel = stride = (kd, kh, kw), no padding) of the convolution of
    :func:`_tile_forward_impl`, into the pooled ``out`` (N, T, Fo // kd, Ho // kh, Wo // kw);
    ``pool`` = (kd, kh, kw, relu), with relu = 1 for a ReLU after the pooling.

    Each task computes one pooling window row (n, f_q, h_q) of one channel block
    (:func:`_pool_window_row`). Output rows beyond the last whole window are never computed.
    """
    N, T, t_first, blocks = dims[_N], dims[_T], dims[_T_FIRST], dims[_BLOCKS]
    S = dims[_S]
    x_strides, kernel, geometry = _unpack(dims, tile)
    Fq, Hq, Wq, window = _pool_geometry(dims, pool)
    kd, kh, sd, sh = window[0], window[1], window[4], window[5]
    C = tile.channels
    # n sample, fq, hq pooled output frame and row, b block of C output channels.
    for task in prange(N * Fq * Hq * blocks):
        n = task // (Fq * Hq * blocks)
        fq = (task // (Hq * blocks)) % Fq
        hq = (task // blocks) % Hq
        b = task % blocks
        x_window = n * S * x_strides[0] + fq * kd * sd * x_strides[1] + hq * kh * sh * x_strides[2]
        _pool_window_row(tile, last, xp, x_window, x_strides, wt, bias, b, out,
                         (((n * T + t_first + b * C) * Fq + fq) * Hq + hq) * Wq, Fq * Hq * Wq, kernel, geometry,
                         window, u, c, T)


@njit(cache=True)
def unit_planes(kd, sd, kD):
    """The padded input planes the pooling windows of one unit (n, f_q) read: its kd output planes,
    sd apart, each reading kD, so (kd - 1) * sd + kD, starting at f_q * kd * sd."""
    return (kd - 1) * sd + kD


@njit(parallel=True, fastmath=False, cache=True)
def _tile_pool_first_impl(x, first, zeros, zp, wt, bias, out, tile, last, dims, pool, u, c, fill):
    """A whole pooled Tucker-2 block (eqs. 8-10, then max pooling) in one parallel pass.

    Z = U_s^T X (eq. 8) is computed by the threads that convolve it, a few zero-padded planes at a
    time, just before the tiles read them, instead of in a pass of its own over the whole clip:
    the padded Z never makes a round trip through memory, and the block wakes the worker threads
    once. ``x`` (N, S, F, H, W) flat; ``first`` U_s^T (R_s, S) and ``zeros`` (R_s,);
    ``dims``, ``pool``, ``u``, ``c`` as for :func:`_tile_pool_forward_impl`, describing the
    padded Z (N, R_s, Fp, Hp, Wp). ``fill`` = (S, F, H, W, pd, ph, pw, chunks, capacity).

    The units (n, f_q) are split into ``chunks`` runs of consecutive units, one task each. A task
    keeps the padded planes of Z its windows need in its own part of ``zp`` (``capacity`` planes of
    R_s x Hp x Wp, planes of one clip consecutive), computing each plane once
    (:func:`.pointwise._mix_padded_row`, the bits of :func:`.pointwise.pointwise_forward_padded`);
    neighbouring tasks both compute the planes their windows share. Then it runs the pooling
    window rows of each unit (:func:`_pool_window_row`): the same tiles, so the same bits as U_s's
    pass followed by :func:`_tile_pool_forward_impl`.
    """
    N, T, R_s, Fp, Hp, Wp = dims[_N], dims[_T], dims[_S], dims[_FP], dims[_HP], dims[_WP]
    S, F, H, W, pd, ph, pw = fill[0], fill[1], fill[2], fill[3], fill[4], fill[5], fill[6]
    chunks, capacity = fill[7], fill[8]
    _, kernel, geometry = _unpack(dims, tile)
    Fq, Hq, Wq, window = _pool_geometry(dims, pool)
    kd, kh, sd, sh = window[0], window[1], window[4], window[5]
    kD = kernel[1]
    plane = R_s * Hp * Wp
    z_strides = (Hp * Wp, plane, Wp)  # Z planes in a task's part of zp: (plane, channel, row, column)
    units = N * Fq
    for k in prange(chunks):
        part = k * capacity * plane
        clip, base, next_plane = -1, 0, 0
        for unit in range(k * units // chunks, (k + 1) * units // chunks):
            n, fq = unit // Fq, unit % Fq
            lo = fq * kd * sd
            if n != clip:
                clip, base, next_plane = n, lo, lo
            while next_plane < lo + unit_planes(kd, sd, kD):
                f = next_plane - pd
                for h in range(Hp):
                    _mix_padded_row(x, ((n * S * F + f) * H + h - ph) * W, F * H * W, first, zeros, zp,
                                    part + (next_plane - base) * plane + h * Wp, Hp * Wp, W, pw, Wp,
                                    0 <= f < F and 0 <= h - ph < H)
                next_plane += 1
            for hq in range(Hq):
                _pool_window_row(tile, last, zp, part + (lo - base) * plane + hq * kh * sh * Wp, z_strides, wt,
                                 bias, 0, out, ((n * T * Fq + fq) * Hq + hq) * Wq, Fq * Hq * Wq, kernel, geometry,
                                 window, u, c, T)


def tiles_fit(stride, out_width, dtype) -> bool:
    """The tile kernels' condition: unit width stride and output rows at least one SIMD vector wide."""
    return stride[2] == 1 and out_width >= lanes(np.dtype(dtype))


def tiles_hold_all_channels(T, registers=None) -> bool:
    """True when one register tile holds all T output channels, as a mixed store needs (T <= 3 with
    16 vector registers, T <= 6 with 32); ``registers`` defaults to the target's."""
    return T <= max_tile_channels(simd.VECTOR_REGISTERS if registers is None else registers)


def pack_tile_weights(weight, blocks, channels):
    """(blocks*C, S, kD, kH, kW) -> flat (blocks, S, kD, kH, kW, C): the C weights of a tap side by side."""
    T, S, kD, kH, kW = weight.shape
    return np.ascontiguousarray(weight.reshape(blocks, channels, S, kD, kH, kW).transpose(0, 2, 3, 4, 5, 1)).reshape(-1)


class TileConvolution:
    """:func:`forward_tiles_padded` prepared once for one geometry and one set of weights.

    Construction does the shape-only work (:func:`_tile_plan`), packs the weights of each channel
    group (:func:`pack_tile_weights`) and makes the bias and mix arrays contiguous; a call then only
    runs the tile kernels, ``tiles(xp, out)``. The weights are copied: changing the layer's arrays
    afterwards does not change a prepared convolution. Arguments as for :func:`forward_tiles_padded`,
    with the shapes of ``xp`` and ``out`` instead of the arrays.
    """

    def __init__(self, xp_shape, weight, bias, stride, out_shape, mix=None, pool=None, relu=False, dtype=None):
        if relu and pool is None:
            raise ValueError("relu is fused only after a pooling (pool=...)")
        dtype = np.dtype(weight.dtype if dtype is None else dtype)
        weight = weight.astype(dtype, copy=False)
        groups, pool_array = _tile_plan(tuple(xp_shape), weight.shape, tuple(stride), tuple(out_shape),
                                        None if mix is None else len(mix[0]),
                                        None if pool is None else tuple(pool), bool(relu), dtype,
                                        simd.VECTOR_REGISTERS, simd.VECTOR_BYTES)
        self.xp_shape, self.out_shape, self.dtype = tuple(xp_shape), tuple(out_shape), dtype
        bias = np.zeros(weight.shape[0], dtype) if bias is None else bias.astype(dtype, copy=False)
        u, c = (None, None) if mix is None else (np.ascontiguousarray(mix[0], dtype).reshape(-1),
                                                 np.ascontiguousarray(mix[1], dtype))
        extra = (u, c) if pool is None else (pool_array, u, c)
        self._kernel = _tile_forward_impl if pool is None else _tile_pool_forward_impl
        self._calls = [(pack_tile_weights(weight[t_first:t_first + blocks * channels], blocks, channels),
                        np.ascontiguousarray(bias[t_first:t_first + blocks * channels]), tiles, dims, extra)
                       for t_first, blocks, channels, tiles, dims in groups]

    def __call__(self, xp, out):
        """out = the (pooled, mixed) convolution of the padded ``xp``; both C-contiguous, of the prepared shapes."""
        if xp.shape != self.xp_shape or out.shape != self.out_shape or not xp.dtype == out.dtype == self.dtype:
            raise ValueError(f"prepared tile convolution: got xp {xp.shape} {xp.dtype} and out {out.shape} "
                             f"{out.dtype}, prepared for {self.xp_shape} and {self.out_shape} {self.dtype}")
        if not (out.flags.c_contiguous and xp.flags.c_contiguous):
            raise ValueError(f"the tile kernels read and write flat views: xp (strides {xp.strides}) and out "
                             f"(strides {out.strides}) must be C-contiguous")
        flat_x, flat_out = xp.reshape(-1), out.reshape(-1)
        for packed, bias, tiles, dims, extra in self._calls:
            self._kernel(flat_x, packed, bias, flat_out, *tiles, dims, *extra)

    def with_first(self, x, first, zeros, zp, out, fill):
        """A pooled, mixed convolution whose padded input Z = U_s^T X its own threads compute from
        ``x`` (:func:`_tile_pool_first_impl`; ``fill`` its int64 array). Flat C-contiguous arrays,
        checked by the caller (:class:`PaddedTileConvolution`)."""
        (packed, bias, tiles, dims, extra), = self._calls  # a mixed store: one channel group
        _tile_pool_first_impl(x, first, zeros, zp, packed, bias, out, *tiles, dims, *extra, fill)


class PaddedTileConvolution:
    """A register-tile convolution together with the pass that writes its zero-padded input.

    ``first`` None: Xp is a zero-padded copy of x (x itself when there is no padding), and the
    tiles compute eq. (1), optionally pooled. ``first`` = U_s^T (R_s, S): Xp is the zero-padded
    Z = U_s^T X of eq. (8) (a 1x1x1 convolution commutes with zero padding), and ``weight`` is the
    core of eq. (9), mixed by ``mix`` = (U_t, b) in the tiles' epilogue (eq. 10): a whole Tucker-2
    block in two passes (:mod:`.tucker2`), or in one when it is pooled, the tile tasks computing
    the padded Z planes they read (:func:`_tile_pool_first_impl`).

    Everything that depends only on the shapes and weights is done once, at construction
    (:class:`TileConvolution`, thread policies from the multiply-accumulate counts ``fill_work``
    and ``tile_work``, :mod:`._threads`). With ``keep_buffers`` the padded input and the output
    are allocated once too and reused by every call: then a call returns the same array each time,
    overwritten, which suits a compiled inference pass (:mod:`tuckerref.nn.program`) and nothing
    that keeps results across calls.
    """

    def __init__(self, x_shape, weight, bias, stride, padding, out_shape, *, first=None, mix=None, pool=None,
                 relu=False, dtype, fill_work, tile_work, keep_buffers=False):
        dtype = np.dtype(dtype)
        self.x_shape, self.padding, self.dtype = tuple(x_shape), tuple(padding), dtype
        channels = x_shape[1] if first is None else first.shape[0]
        self.xp_shape = (x_shape[0], channels) + tuple(n + 2 * p for n, p in zip(x_shape[2:], padding))
        self.tiles = TileConvolution(self.xp_shape, weight, bias, stride, out_shape, mix, pool, relu, dtype)
        self._first = None if first is None else np.ascontiguousarray(first, dtype)
        self._zeros = None if first is None else np.zeros(channels, dtype)  # U_s has no bias
        self._fill_work, self._tile_work = fill_work, tile_work
        self._copies = first is not None or any(padding)
        self._fused = first is not None and pool is not None
        if self._fused:  # units (n, f_q) and the padded Z planes of one unit's windows (kd*sd more per unit)
            self._units, self._unit_planes = (out_shape[0] * out_shape[2],
                                              (pool[0] * stride[0], unit_planes(pool[0], stride[0], weight.shape[2])))
        self._keep = keep_buffers
        self._xp = np.empty(self.xp_shape, dtype) if keep_buffers and self._copies and not self._fused else None
        self._zp = None
        self._out = np.empty(out_shape, dtype) if keep_buffers else None

    def __call__(self, x, chunks=None):
        """The convolution of ``x`` (of the prepared shape and dtype; made C-contiguous if it is not).

        A pooled Tucker-2 block computes Z in its tiles' threads (:meth:`_fused_block`), in
        ``chunks`` runs of pooling window planes (default: one per thread in use).
        """
        if x.shape != self.x_shape or x.dtype != self.dtype:
            raise ValueError(f"prepared convolution: got x {x.shape} {x.dtype}, prepared for {self.x_shape} "
                             f"{self.dtype}")
        xp = x = np.ascontiguousarray(x)
        out = np.empty(self.tiles.out_shape, self.dtype) if self._out is None else self._out
        if self._fused:
            with threads_for(self._fill_work + self._tile_work):
                self._fused_block(x, out, chunks)
            return out
        if self._copies:
            xp = np.empty(self.xp_shape, self.dtype) if self._xp is None else self._xp
            with threads_for(self._fill_work):
                if self._first is None:
                    _copy_padded_any(x, xp, *self.padding)
                else:
                    pointwise_forward_padded(x, self._first, self._zeros, xp, *self.padding)
        with threads_for(self._tile_work):
            self.tiles(xp, out)
        return out

    def _fused_block(self, x, out, chunks):
        """U_s, core, mix and pooling in one parallel pass (:func:`_tile_pool_first_impl`): each of
        ``chunks`` tasks keeps the padded Z planes of its pooling window planes (units (n, f_q))."""
        _, S, F, H, W = self.x_shape
        _, R_s, Fp, Hp, Wp = self.xp_shape
        step, window = self._unit_planes
        chunks = min(self._units, numba.get_num_threads() if chunks is None else int(chunks))
        if chunks < 1:
            raise ValueError(f"chunks must be >= 1, got {chunks}")
        # planes of the longest run of units of one clip: its first window and kd*sd per further unit
        capacity = min(Fp, (-(-self._units // chunks) - 1) * step + window)
        size = chunks * capacity * R_s * Hp * Wp
        zp = self._zp if self._zp is not None and self._zp.size >= size else np.empty(size, self.dtype)
        if self._keep:
            self._zp = zp
        fill = np.array((S, F, H, W) + self.padding + (chunks, capacity), np.int64)
        self.tiles.with_first(x.reshape(-1), self._first, self._zeros, zp, out.reshape(-1), fill)


def forward_tiles_padded(xp, weight, bias, stride, out, mix=None, pool=None, relu=False):
    """Register-tile convolution of the zero-padded input ``xp`` (N, S, Fp, Hp, Wp) into ``out``.

    Needs unit width stride and an output at least one SIMD vector wide (:func:`tiles_fit`), and
    C-contiguous ``xp`` and ``out``. ``out`` is (N, T, Fo, Ho, Wo), or, with ``pool = (kd, kh, kw)``
    (a max pooling with that kernel and stride and no padding), (N, T, Fo // kd, Ho // kh, Wo // kw),
    and then ``relu`` applies max(., 0) to the pooled values.
    With ``mix = (U, c)``, U of shape (T_out, T) and c (T_out,), ``out`` has T_out channels and
    gets c + U * conv(x) instead, mixed in each tile's epilogue; that needs all T channels in one
    tile (:func:`tiles_hold_all_channels`). Computed in ``xp``'s dtype.
    """
    TileConvolution(xp.shape, weight, bias, stride, out.shape, mix, pool, relu, xp.dtype)(xp, out)


@lru_cache(maxsize=256)
def _tile_plan(xp_shape, weight_shape, stride, out_shape, mixed_outputs, pool, relu, dtype, registers, widest):
    """The shape-only part of :func:`forward_tiles_padded`, checked and computed once per geometry
    (a batch-1 network calls with the same shapes every time, and building tiles and size arrays
    costs more than the small layers' arithmetic): for each channel group, (t_first, blocks,
    channels, (tile, last tile), dims), and the pooling array (kd, kh, kw, relu). The kernels only
    read these arrays, which are shared between calls. ``registers`` and ``widest`` (vector
    bytes) describe the target's register file."""
    T, kernel = weight_shape[0], weight_shape[2:]
    Fo, Ho, Wo = window_output_dims(xp_shape[2:], kernel, stride, (0, 0, 0))
    pooled = (Fo, Ho, Wo) if pool is None else window_output_dims((Fo, Ho, Wo), pool, pool, (0, 0, 0))
    expected = (xp_shape[0], T if mixed_outputs is None else mixed_outputs) + pooled
    if not tiles_fit(stride, Wo, dtype) or out_shape != expected or min(pooled) < 1:
        raise ValueError(f"tile kernels: output {out_shape}, expected {expected}, for padded input {xp_shape}, "
                         f"kernel {kernel}, stride {stride}, pool {pool} (unit width stride and an output "
                         f"at least {lanes(dtype)} wide needed)")
    if mixed_outputs is not None and not tiles_hold_all_channels(T, registers):
        raise ValueError(f"a mixed tile store needs the {T} channels in one tile "
                         f"(at most {max_tile_channels(registers)} on this target)")
    C = tile_channels(T, registers)
    two_rows = stride[1] == 1 and Ho >= 2 and (pool is None or pool[1] >= 2)
    groups = []
    for t_first, blocks, channels in [(0, T // C, C)] + ([(T - T % C, 1, T % C)] if T % C else []):
        most, rows = tile_shape(channels, two_rows, registers)
        width, n_lanes, vectors, full, last_vectors, last_col = row_cover(Wo, dtype.itemsize, channels, rows, most,
                                                                          widest)
        dims = np.array(xp_shape + (out_shape[1], t_first, blocks) + tuple(kernel)
                        + (Fo, Ho, Wo, stride[0], stride[1], vectors * n_lanes, full, last_col), np.int64)
        groups.append((t_first, blocks, channels, (RegisterTile(channels, vectors, rows, width),
                                                   RegisterTile(channels, last_vectors, rows, width)), dims))
    return tuple(groups), None if pool is None else np.array(pool + (int(relu),), np.int64)
