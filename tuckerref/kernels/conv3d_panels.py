"""Wide-channel 3-D convolution, eq. (1), as a register-tiled matrix product over packed input panels.

    Y(n, t, p) = b(t) + sum_k K(t, k) A(n, k, p),   A(n, k, p) = Xp(n, s, f'*sd + i, h'*sh + j, w'*sw + l)

with k = (s, i, j, l) running over the S * kD * kH * kW taps and p = (f', h', w') over the output
positions of a clip. Per clip this is the matrix product (T x K) @ (K x P) of the weights with the
"unfolded" input A, which is never built whole: the layers of a real video CNN (C3D's 64 to 512
channels on frames of 7 to 56 columns) have too many channels for the row tiles of
:mod:`.conv3d_tiles` to keep their input in cache, and rows too narrow (7 or 14 columns) to fill
their SIMD vectors.

Forward blocking: a task owns one clip, a block of :data:`COLUMN_BLOCK` tile columns of positions
and a block of output channels. The k axis runs in blocks of :data:`K_BLOCK` taps: for each, the
task first gathers A's rows for its columns into one contiguous (K block x V*L) panel per column (a
column's positions are consecutive output columns of one or more output rows, so narrow frames fill
whole vectors; each row segment is copied in whole SIMD vectors), then every group of C output
channels streams that panel from the L1 cache while C channels x V vectors of accumulators stay in
registers (a later K block resumes the stored sums). Positions past P in the last column are zero
in its panel and never stored. The wide 1x1x1 convolution of a Tucker-2 factor (:mod:`.pointwise_tiles`)
uses the same column pass on plain slices of its input.

In-place rows (:func:`_grid_forward`, unit height and width stride): counting a frame's positions on
the padded input's grid instead, q = h'*Wp + w', tap k's row of A is a plain run of the padded input,
A(n, k, q) = Xp_flat(n, x(f') + offset(k) + q), so the column pass reads it where it lies and nothing
is gathered. The Wp - Wo grid columns of each row that are not outputs are computed and dropped. This
wins where the gather is a large part of the work: few output channels (a Tucker-2 core) or short rows
(:func:`grid_fits`).

Weight gradient, dL/dK(t, k) = sum_{n, p} G(n, t, p) A(n, k, p): the same panels, multiplied by G's
transpose (:func:`panel_grad_weight_padded`); each task owns a block of taps, so no two tasks add
into the same output.

Every output is summed in k order starting from the bias (forward) or in (n, p) order (weight
gradient), whatever the blocking, so the results do not depend on the number of threads. The input
is zero-padded once beforehand; the gather costs one copy of each panel value per K block and
column, against T multiply-adds that use it, which is why this path is for layers with many output
channels (:func:`panels_fit`).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numba import get_num_threads, njit, prange

from .simd import VECTOR_BYTES, VECTOR_REGISTERS, RegisterTile, lanes, tile_fma, tile_load, tile_store
from .tiling import TILE_VECTORS

#: Taps per pass over a tile column (the column's panel, at most 1024 x 32 float32 = 128 KiB, streams
#: from L2): fewer passes store and reload the tiles' partial sums less often. 1024 measured 1-18 %
#: faster than 256 on one thread (conv2a, conv3b, conv5a; 256 had beaten 128 and 192).
K_BLOCK = 1024

#: Tile columns per parallel task.
COLUMN_BLOCK = 8

#: Output channels from which :func:`panels_fit` takes this kernel, and the fewest taps per output.
WIDE_OUTPUTS = 32
WIDE_TAPS = 64

#: Output channels per register tile: the widest single-row tile of :data:`.tiling.TILE_VECTORS`,
#: whose accumulators, broadcast weights and one input vector fill the vector registers.
TILE_CHANNELS = {16: 3, 32: 6}[VECTOR_REGISTERS]

# The tile holds its channels as tile *rows* (:class:`.simd.RegisterTile`): row r's weight is read
# at w_start - r * w_row_step, so with w_row_step = -K it is W(t + r, k) of the row-major (T, K)
# weights as given, and every row multiplies the same input vectors. No packed copy of the weights
# is needed (for C3D's conv5a one would be 28 MB per call).
_TILE = RegisterTile(1, TILE_VECTORS[VECTOR_REGISTERS][TILE_CHANNELS, 1], TILE_CHANNELS, VECTOR_BYTES)
_ONE = RegisterTile(1, _TILE.vectors, 1, VECTOR_BYTES)
# One 32-byte vector: the gather's copy unit.
_VECTOR = RegisterTile(1, 1, 1, 32)


def tile_width(dtype) -> int:
    """Positions one tile column covers for ``dtype``."""
    return _TILE.vectors * lanes(np.dtype(dtype), _TILE.vector_bytes)


#: Output channels from which a forward convolution on narrow frames (output rows of at most
#: :data:`NARROW_COLUMNS` columns) takes this kernel: row tiles cover such rows poorly (a narrow C3D's
#: 32 -> 16 input gradient on 28 columns, one thread: 31 GF/s on row tiles, 39 on panels).
NARROW_OUTPUTS = 16
NARROW_COLUMNS = 32


def panels_fit(S: int, T: int, kernel_size, out_width: int | None = None) -> bool:
    """Whether a convolution with S inputs, T outputs and this kernel size takes the panel kernel: many
    output channels (each gathered value feeds T multiply-adds) and a long reduction. Given the output
    width (a forward pass), from :data:`NARROW_OUTPUTS` channels on narrow frames."""
    if S * math.prod(kernel_size) < WIDE_TAPS:
        return False
    return T >= WIDE_OUTPUTS or (out_width is not None and out_width <= NARROW_COLUMNS and T >= NARROW_OUTPUTS)


@njit(cache=True)
def _column_runs(p0, width, P, Ho, Wo, geometry, run_q, run_len, run_src):
    """The contiguous runs of output positions p0 .. min(p0 + width, P) - 1 within output rows: for
    each, its first position in the column, its length and the offset of its first window in one
    padded input channel. Returns the number of runs."""
    # fo, ho, wo output frame, row and column of position p.
    plane_stride, row_stride, sd, sh, sw = geometry
    end = min(p0 + width, P)
    runs = 0
    p = p0
    while p < end:
        fo = p // (Ho * Wo)
        ho = (p // Wo) % Ho
        wo = p % Wo
        m = min(Wo - wo, end - p)
        run_q[runs] = p - p0
        run_len[runs] = m
        run_src[runs] = fo * sd * plane_stride + ho * sh * row_stride + wo * sw
        runs += 1
        p += m
    return runs


@njit(cache=True)
def _gather_panel(column, column_width, vec, L, xf, x_first, tap_offset, k0, k1, width, sw, runs, run_q, run_len, run_src, valid,
                  xb, xb_first):
    """xb[xb_first + (k - k0)*width + q] = A(k, p0 + q) for k0 <= k < k1: the runs of each tap's row copied
    from the padded input (channel block at ``x_first``, tap k at ``tap_offset[k]``), zeros past ``valid``.

    A panel of ``column_width`` positions (``column``'s: a fixed number of SIMD vectors) that is one run
    of unit stride (every 1x1x1 column, and a wide frame's columns inside one output row) is copied as
    one such tile per tap. Otherwise each run is copied for every tap in turn (run outer, tap inner, so
    that the copy's shape is the same for all taps and its branches predictable: 1.7-1.9x faster than
    tap outer on C3D's 7- to 56-column frames), with unit width stride in SIMD vectors (``vec``: one
    vector of L values): whole vectors, then one more ending at the run's end where the run holds a
    vector or more (it overlaps the one before with the same values); a shorter run that is not the
    column's last is one vector running past its end, into the next run's values, which are copied
    afterwards. A short run whose vector would pass the row's end (into the next tap's row, already
    copied), the column's last among them, is copied value by value, and so is a run whose vectors
    would read past the input (its last tap's, ``tap_offset`` being increasing). No write passes the
    panel's rows.
    """
    # k tap (s, i, j, l) flattened; r one run of positions; m position within the run.
    size = xf.size
    if width == column_width and runs == 1 and run_len[0] == width and sw == 1:
        for k in range(k0, k1):
            tile_store(column, tile_load(column, xf, x_first + tap_offset[k] + run_src[0], 0, 0), xb,
                       xb_first + (k - k0) * width, 0, 0)
        return
    for r in range(runs):
        n = run_len[r]
        q = xb_first + run_q[r] - k0 * width
        s0 = x_first + run_src[r]
        if sw != 1 or s0 + tap_offset[k1 - 1] + max(n, L) > size:
            for k in range(k0, k1):
                for m in range(n):
                    xb[q + k * width + m] = xf[s0 + tap_offset[k] + m * sw]
            continue
        whole = n // L * L
        if n == whole:
            for k in range(k0, k1):
                src, dst = s0 + tap_offset[k], q + k * width
                for m in range(0, n, L):
                    tile_store(vec, tile_load(vec, xf, src + m, 0, 0), xb, dst + m, 0, 0)
        elif n > L:  # a branch of its own: with the last vector's test inside the tap loop, 1.2-1.5x slower
            for k in range(k0, k1):
                src, dst = s0 + tap_offset[k], q + k * width
                for m in range(0, whole, L):
                    tile_store(vec, tile_load(vec, xf, src + m, 0, 0), xb, dst + m, 0, 0)
                tile_store(vec, tile_load(vec, xf, src + n - L, 0, 0), xb, dst + n - L, 0, 0)
        elif r + 1 < runs and run_q[r] + L <= width:
            for k in range(k0, k1):
                tile_store(vec, tile_load(vec, xf, s0 + tap_offset[k], 0, 0), xb, q + k * width, 0, 0)
        else:
            for k in range(k0, k1):
                src, dst = s0 + tap_offset[k], q + k * width
                for m in range(n):
                    xb[dst + m] = xf[src + m]
    if valid < width:
        for k in range(k0, k1):
            dst0 = xb_first + (k - k0) * width
            for m in range(valid, width):
                xb[dst0 + m] = 0


@njit(cache=True)
def _column_pass(tile, one, x, x_first, rows, width, k0, k1, K, T, w, bias_rows, out, out_first, out_stride):
    """Taps k0 <= k < k1 of T output channels of one tile column of ``width`` positions whose row of A for
    tap k is x[x_first + rows[k]:... + width] (a run of the padded input itself), or with ``rows`` None
    x[x_first + k*width:... + width] (a gathered panel's row):
    out[out_first + t*out_stride + q] (+)= sum_k w[t*K + k] x[x_first + rows[k] + q] for q < width,
    starting from ``bias_rows`` (T rows of ``width`` copies of each bias) when k0 is 0, else from the
    stored partial sums. Channels go R = tile.rows at a time, the last T % R one at a time."""
    # g channel group (channels g*R .. g*R + R - 1); t one channel; k tap.
    R = tile.rows
    G = T // R
    for g in range(G):
        o = out_first + g * R * out_stride
        if k0 == 0:
            acc = tile_load(tile, bias_rows, g * R * width, 0, width)
        else:
            acc = tile_load(tile, out, o, 0, out_stride)
        w0 = g * R * K
        for k in range(k0, k1):
            acc = tile_fma(tile, acc, w, w0 + k, -K, x, x_first + (k * width if rows is None else rows[k]))
        tile_store(tile, acc, out, o, 0, out_stride)
    for t in range(G * R, T):
        o = out_first + t * out_stride
        if k0 == 0:
            acc1 = tile_load(one, bias_rows, t * width, 0, width)
        else:
            acc1 = tile_load(one, out, o, 0, out_stride)
        for k in range(k0, k1):
            acc1 = tile_fma(one, acc1, w, t * K + k, 0, x, x_first + (k * width if rows is None else rows[k]))
        tile_store(one, acc1, out, o, 0, out_stride)


@njit(cache=True)
def _bias_rows(bias, t0, T, width):
    """T rows of ``width`` copies of bias[t0 + t]: the starting sums :func:`_column_pass` loads."""
    rows = np.empty(T * width, bias.dtype)
    for t in range(T):
        rows[t * width:(t + 1) * width] = bias[t0 + t]
    return rows


@njit(cache=True)
def _columns_pass(tile, one, xb, width, k0, k1, K, T, w, bias_rows, out, out_first, P, p_first, ncols, ob):
    """:func:`_column_pass` over ``ncols`` tile columns of panels side by side in ``xb`` (taps k0 to k1, tap k's
    row (k - k0)*width into its column's panel), the first at position ``p_first``: a whole column
    stores at out[out_first + t*P + p], one that runs past P into the scratch tile ``ob`` (T x width),
    which :func:`_store_last_column` copies out."""
    # c tile column; p its first position; x0 its panel's offset less its first row's.
    kb = k1 - k0
    for c in range(ncols):
        p = p_first + c * width
        x0 = (c * kb - k0) * width
        if p + width <= P:
            _column_pass(tile, one, xb, x0, None, width, k0, k1, K, T, w, bias_rows, out, out_first + p, P)
        else:
            _column_pass(tile, one, xb, x0, None, width, k0, k1, K, T, w, bias_rows, ob, 0, width)


@njit(cache=True)
def _store_last_column(out, ob, out_first, T, P, p_last, width):
    """The positions < P of a last tile column (first position ``p_last``) that ran past P: copied from
    the scratch tile ``ob`` to out[out_first + t*P + p] (nothing when the column is whole)."""
    # t output channel.
    if p_last + width > P:
        for t in range(T):
            out[out_first + t * P + p_last:out_first + t * P + P] = ob[t * width:t * width + P - p_last]


@njit(cache=True)
def _task_block(task, columns, col_blocks, T, channel_block):
    """(clip, first tile column, tile columns, first output channel, channels) of a forward task: a clip's
    ``columns`` tile columns split into ``col_blocks`` near-equal runs, its T channels into blocks of
    ``channel_block``; tasks run clip by clip, column run by column run."""
    t_blocks = (T + channel_block - 1) // channel_block
    n = task // (col_blocks * t_blocks)
    ct = (task // t_blocks) % col_blocks
    c_first = ct * columns // col_blocks
    t0 = (task % t_blocks) * channel_block
    return n, c_first, (ct + 1) * columns // col_blocks - c_first, t0, min(channel_block, T - t0)


@njit(parallel=True, cache=True)
def _panel_forward(tile, one, vec, L, width, xp, x_first, w, bias, out, tap_offset, geometry, out_dims, blocks):
    """out[n, t, p] = bias[t] + sum_k w[t, k] A(n, k, p) for the padded input xp (N, S, Fp, Hp, Wp), the
    (T, K) weights w and out (N, T, P).

    ``x_first`` is the offset in each padded clip of output frame 0's first window (0, or a later
    frame's when ``out`` holds a run of frames), ``tap_offset[k]`` tap k's offset from there,
    ``geometry`` = (Hp*Wp, Wp, sd, sh, sw),
    ``out_dims`` = (Fo, Ho, Wo) and ``blocks`` = (k_block, column_tasks, channel_block): a clip's tile
    columns are split into ``column_tasks`` near-equal runs, its channels into blocks of
    ``channel_block``, a multiple of the tile's channels (rows).
    """
    # n clip; c tile column (positions c*width .. c*width + width - 1, the last one possibly partial);
    # t0 first output channel of the task's block, g0 its channel group.
    N = xp.shape[0]
    T, K = w.shape
    Fo, Ho, Wo = out_dims
    P = Fo * Ho * Wo
    k_block, col_blocks, channel_block = blocks
    xf, of = xp.reshape(xp.size), out.reshape(out.size)
    clip = xp.size // N
    columns = (P + width - 1) // width
    t_blocks = (T + channel_block - 1) // channel_block
    sw = geometry[4]
    for task in prange(N * col_blocks * t_blocks):
        n, c_first, ncols, t0, tb = _task_block(task, columns, col_blocks, T, channel_block)
        kb_max = min(k_block, K)
        xb = np.empty(kb_max * ncols * width, xf.dtype)
        ob = np.empty(tb * width, xf.dtype)
        runs = np.empty(ncols, np.int64)
        run_q = np.empty((ncols, width + 2), np.int64)
        run_len = np.empty((ncols, width + 2), np.int64)
        run_src = np.empty((ncols, width + 2), np.int64)
        for c in range(ncols):
            runs[c] = _column_runs((c_first + c) * width, width, P, Ho, Wo, geometry,
                                      run_q[c], run_len[c], run_src[c])
        wt = w.reshape(w.size)[t0 * K:]
        bias_rows = _bias_rows(bias, t0, tb, width)
        out_first = (n * T + t0) * P
        for k0 in range(0, K, k_block):
            k1 = min(k0 + k_block, K)
            kb = k1 - k0
            for c in range(ncols):
                p = (c_first + c) * width
                _gather_panel(one, width, vec, L, xf, n * clip + x_first, tap_offset, k0, k1, width, sw, runs[c],
                              run_q[c], run_len[c],
                              run_src[c], min(width, P - p), xb, c * kb * width)
            _columns_pass(tile, one, xb, width, k0, k1, K, tb, wt, bias_rows, of, out_first, P, c_first * width, ncols,
                          ob)
        _store_last_column(of, ob, out_first, tb, P, (c_first + ncols - 1) * width, width)


@njit(cache=True)
def _grid_column(column, per_frame, width, G):
    """(output frame, first padded-grid position) of a tile column of :func:`_grid_forward`: a frame's
    columns cover its G grid positions from 0, the last one ending at G (overlapping the one before)."""
    return column // per_frame, min((column % per_frame) * width, G - width)


@njit(cache=True)
def _scatter_grid_column(ob, ob_first, ob_stride, out, out_first, P, T, q0, width, Wp, Wo):
    """out[out_first + t*P + h*Wo + w] = ob[ob_first + t*ob_stride + q - q0] for the grid positions
    q = h*Wp + w, q0 <= q < q0 + width, that are output positions (w < Wo)."""
    # q first grid position of a run within grid row h; m its length; v its valid part.
    q = q0
    while q < q0 + width:
        h = q // Wp
        w = q % Wp
        m = min(Wp - w, q0 + width - q)
        v = min(m, Wo - w)
        if v > 0:
            for t in range(T):
                src = ob_first + t * ob_stride + q - q0
                dst = out_first + t * P + h * Wo + w
                for i in range(v):
                    out[dst + i] = ob[src + i]
        q += m


@njit(parallel=True, cache=True)
def _grid_forward(tile, one, width, xp, x_first, frame_step, w, bias, out, tap_offset, blocks):
    """out[n, t, p] = bias[t] + sum_k w[t, k] A(n, k, p), like :func:`_panel_forward`, for unit height and
    width strides, with no gathered panel: positions are counted on the padded input's grid, q = h'*Wp + w'
    within an output frame, where tap k's row of A is the padded input itself from x_first + f'*frame_step
    + tap_offset[k] + q. A frame's G = (Ho - 1)*Wp + Wo grid positions (Wp - Wo of each row but the last
    are not outputs: computed, then dropped) run in tile columns, each summed in a scratch block and its
    output positions copied out (:func:`_scatter_grid_column`). The last column of a frame ends at G, so no
    read passes the frame's last padded value; G must be at least ``width``.

    ``blocks`` = (k_block, column_tasks, channel_block) as for :func:`_panel_forward`.
    """
    # n clip; c tile column of the task; t0 first output channel of the task's block.
    N, _, _, Hp, Wp = xp.shape
    T, K = w.shape
    Fo, Ho, Wo = out.shape[2:]
    P = Fo * Ho * Wo
    G = (Ho - 1) * Wp + Wo
    per_frame = (G + width - 1) // width
    columns = Fo * per_frame
    k_block, col_blocks, channel_block = blocks
    xf, of = xp.reshape(xp.size), out.reshape(out.size)
    clip = xp.size // N
    t_blocks = (T + channel_block - 1) // channel_block
    for task in prange(N * col_blocks * t_blocks):
        n, c_first, ncols, t0, tb = _task_block(task, columns, col_blocks, T, channel_block)
        ob_stride = ncols * width
        ob = np.empty(tb * ob_stride, xf.dtype)
        wt = w.reshape(w.size)[t0 * K:]
        bias_rows = _bias_rows(bias, t0, tb, width)
        for k0 in range(0, K, k_block):
            k1 = min(k0 + k_block, K)
            for c in range(ncols):
                f, q0 = _grid_column(c_first + c, per_frame, width, G)
                _column_pass(tile, one, xf, n * clip + x_first + f * frame_step + q0, tap_offset, width, k0, k1, K, tb,
                             wt, bias_rows, ob, c * width, ob_stride)
        for c in range(ncols):
            f, q0 = _grid_column(c_first + c, per_frame, width, G)
            _scatter_grid_column(ob, c * width, ob_stride, of, (n * T + t0) * P + f * Ho * Wo, P, tb, q0, width, Wp, Wo)


@lru_cache(maxsize=64)
def tap_offsets(padded_shape, kernel_size):
    """Offset of each tap k = (s, i, j, l) in one padded clip (S, Fp, Hp, Wp), k in row-major order
    (cached per geometry: a network calls each layer with the same shapes; not to be modified)."""
    S, Fp, Hp, Wp = padded_shape
    kD, kH, kW = kernel_size
    s, i, j, l = np.meshgrid(np.arange(S), np.arange(kD), np.arange(kH), np.arange(kW), indexing="ij")
    return (((s * Fp + i) * Hp + j) * Wp + l).reshape(-1).astype(np.int64)


def task_blocks(N: int, columns: int, T: int, threads: int, channels: int = TILE_CHANNELS) -> tuple:
    """(column tasks per clip, output channels per task) of :func:`_panel_forward`.

    Each clip's tile columns are split into runs of at most :data:`COLUMN_BLOCK`, and into a multiple
    of ``threads`` runs when the clips alone do not share out evenly: the parallel loop hands each
    thread an equal share of tasks, and C3D's conv4a (25 columns) in blocks of 8, 8, 8 and 1 left one
    of two threads with 16 columns and the other with 9. All T channels go to one task unless that
    leaves fewer tasks than twice the threads; then T is split evenly into enough blocks, each a
    multiple of the tile's channels.
    """
    per_clip = -(-columns // COLUMN_BLOCK)
    if N % threads:
        per_clip = min(columns, -(-per_clip // threads) * threads)
    tasks = N * per_clip
    if tasks >= 2 * threads:
        return per_clip, T
    split = min(-(-2 * threads // tasks), max(1, T // (4 * channels)))
    return per_clip, -(-T // split // channels) * channels


#: Input channels per pass of :func:`_grid_forward` over a tile column: their taps' rows (a few rows
#: of kD frames each) stay in the L1 cache while every channel group streams them. 8 measured best on
#: one thread (C3D-like cores on 28-column frames: 8 channels 83, 16 channels 74-78 GFLOP/s).
GRID_CHANNELS = 8

#: :func:`grid_fits`'s rule, measured against the gathered panels (bench/RESULTS.md, C3D-like layers, one
#: and two threads). In-place rows win where the gather's copy is a large part of the work: where few
#: output channels share each gathered value (cores of 32-128 channels on 14- and 28-column frames,
#: 1.02-1.20x; 32 channels on 56 and 112 columns, 1.01-1.15x) and where output rows are so short that it
#: copies runs of a few values (7-column frames: 1.06-1.15x for 512 channels, 1.44-1.52x for 128). They
#: lose where many channels share the gather, as the grid's loads cost more (256-512 channels on 14-28
#: columns, 0.87-0.93x; 64 channels on 56-112 columns, 0.7-0.9x; 128 on 56 columns is even, 0.97-1.00x).
#: Since the gather copies run by run (1.7-1.9x faster), 128 channels also lose on 14- and 28-column
#: frames (0.90-0.96x on one thread, 32-128 inputs), 64 are even (0.95-1.05x), so in-place rows keep 64.
GRID_OUTPUTS = 64
GRID_WIDE_OUTPUTS = 32
GRID_COLUMNS = 32
GRID_SHORT_ROWS = 8


def grid_fits(T: int, stride, padded_width: int, out_dims, dtype) -> bool:
    """Whether :func:`panel_forward_padded` runs a forward convolution on in-place rows of the padded
    input (:func:`_grid_forward`) rather than on gathered panels."""
    _, sh, sw = stride
    _, Ho, Wo = out_dims
    if sh != 1 or sw != 1 or (Ho - 1) * padded_width + Wo < tile_width(dtype):
        return False
    if Wo <= GRID_SHORT_ROWS:
        return True
    return T <= (GRID_OUTPUTS if Wo <= GRID_COLUMNS else GRID_WIDE_OUTPUTS)


#: Output channels and taps from which a forward convolution with fewer than :data:`WIDE_OUTPUTS` outputs
#: takes in-place rows (:func:`panels_take`): C3D-like Tucker-2 cores of 8 to 16 channels with 8 to 16
#: inputs ran 1.2-1.6x faster on them than on the row register tiles of :mod:`.conv3d_tiles` (one thread,
#: 14- to 56-column frames); 3 inputs (81 taps, 112 columns) ran 0.9-1.0x, so short reductions keep the tiles.
GRID_FEWEST_OUTPUTS = 8
GRID_FEWEST_TAPS = 128


def panels_take(S: int, T: int, kernel_size, stride, out_dims, padded_width: int, dtype) -> bool:
    """Whether a forward convolution runs :func:`panel_forward_padded`: the wide layers of
    :func:`panels_fit`, and from :data:`GRID_FEWEST_OUTPUTS` outputs (with a long reduction) those that
    in-place rows take (:func:`grid_fits`) and a long enough reduction."""
    if panels_fit(S, T, kernel_size, out_dims[2]):
        return True
    return (T >= GRID_FEWEST_OUTPUTS and S * math.prod(kernel_size) >= GRID_FEWEST_TAPS
            and grid_fits(T, stride, padded_width, out_dims, dtype))


def panel_forward_padded(xp, weight, bias, stride, out, threads, frame0=0, gather=None):
    """out = conv3d(xp, weight, bias, stride) for the already zero-padded xp (N, S, Fp, Hp, Wp), weight
    (T, S, kD, kH, kW), bias (T,) and out (N, T, Fo, Ho, Wo), C-contiguous, one float dtype; with
    ``frame0``, ``out`` holds the Fo output frames from frame ``frame0`` on (a run of a longer output).

    ``gather`` True runs on gathered panels, False on in-place rows of xp (unit height and width stride,
    at least a tile column of grid positions per frame), None as :func:`grid_fits` decides. Either way
    every output is the same sum in the same order, so the results are the same bits."""
    N, S = xp.shape[:2]
    T = weight.shape[0]
    Fo, Ho, Wo = out.shape[2:]
    width = tile_width(xp.dtype)
    w = weight.reshape(T, -1)
    taps = tap_offsets(tuple(xp.shape[1:]), tuple(weight.shape[2:]))
    sd, sh, sw = stride
    frame_step = sd * xp.shape[3] * xp.shape[4]
    if gather is None:
        gather = not grid_fits(T, stride, xp.shape[4], (Fo, Ho, Wo), xp.dtype)
    if not gather:
        columns = Fo * -(-((Ho - 1) * xp.shape[4] + Wo) // width)
        blocks = (GRID_CHANNELS * math.prod(weight.shape[2:]),) + task_blocks(N, columns, T, threads)
        _grid_forward(_TILE, _ONE, width, xp, frame0 * frame_step, frame_step, w, bias, out, taps, blocks)
        return
    columns = -(-(Fo * Ho * Wo) // width)
    blocks = (K_BLOCK,) + task_blocks(N, columns, T, threads)
    geometry = (xp.shape[3] * xp.shape[4], xp.shape[4], sd, sh, sw)
    _panel_forward(_TILE, _ONE, _VECTOR, lanes(xp.dtype, _VECTOR.vector_bytes), width, xp, frame0 * frame_step,
                   w, bias, out, taps, geometry, (Fo, Ho, Wo), blocks)


#: Output positions per pass of the weight gradient (its reduction block): a tile column of G's
#: transpose (this many positions x one tile width of output channels) stays in L1.
GRAD_POSITIONS = 128

#: Most taps per task of the weight gradient (a multiple of every tile's channels).
GRAD_TAPS = 48


def grad_task_taps(K: int, threads: int) -> int:
    """Taps per task of the weight gradient's K taps: at most :data:`GRAD_TAPS`, a multiple of the tile's
    rows, and as many tasks as a multiple of ``threads`` allows, so that the parallel loop's equal shares
    of tasks are near-equal shares of taps: on two threads, C3D's 16 -> 32 layer (432 taps) gets 225 and
    207 taps per thread, where tasks of 48 would give 240 and 192; its 3 -> 16 (81 taps) 42 and 39, not
    48 and 33."""
    R = _TILE.rows
    tasks = -(-K // GRAD_TAPS)
    tasks = -(-tasks // threads) * threads
    return max(R, -(-K // tasks // R) * R)


@njit(cache=True)
def _grad_pass(tile, one, x, x_first, x_row_step, k0, k1, gf, g_first, Tp, tc, q0, q1, gwt):
    """gwt[k, tc:tc + width] += sum_{q0 <= q < q1} x[x_first + (k - k0)*x_row_step + q] gf[g_first + q*Tp + tc:...]
    for the taps k0 <= k < k1: R = tile.rows taps at a time (the tile's rows broadcast their values of A),
    the taps left one at a time; the sum runs over q in order from the stored gradient."""
    # kg first tap of a tile; k one tap.
    R = tile.rows
    kg = k0
    while kg + R <= k1:
        o = kg * Tp + tc
        acc = tile_load(tile, gwt, o, 0, Tp)
        xk = x_first + (kg - k0) * x_row_step
        for q in range(q0, q1):
            acc = tile_fma(tile, acc, x, xk + q, -x_row_step, gf, g_first + q * Tp + tc)
        tile_store(tile, acc, gwt, o, 0, Tp)
        kg += R
    for k in range(kg, k1):
        o = k * Tp + tc
        acc1 = tile_load(one, gwt, o, 0, Tp)
        xk = x_first + (k - k0) * x_row_step
        for q in range(q0, q1):
            acc1 = tile_fma(one, acc1, x, xk + q, 0, gf, g_first + q * Tp + tc)
        tile_store(one, acc1, gwt, o, 0, Tp)


@njit(parallel=True, cache=True)
def _panel_grad_weight(tile, one, vec, L, width, xp, gt, gwt, tap_offset, geometry, out_dims, task_taps):
    """gwt[k, t] += sum_{n, p} A(n, k, p) G(n, t, p), the weight gradient of eq. (1) as the product of the
    unfolded input (K x P per clip) with G's transpose ``gt`` (N, P, Tp), Tp a multiple of ``width``
    (channels past T are zero). ``gwt`` is (K, Tp); the other arguments as for :func:`_panel_forward`.

    Each task owns ``task_taps`` rows of ``gwt`` (:func:`grad_task_taps`; no two tasks write the same
    output) and runs over every clip and block of :data:`GRAD_POSITIONS` positions: it gathers its taps'
    rows of A for the block into one panel, then for each tile column of channels (``width`` of them, G's
    transpose in L1) and each group of R taps (the tile's rows, broadcast from the panel) accumulates the
    block's positions in registers (:func:`_grad_pass`). Every output is summed over (n, p) in order,
    whatever the number of threads.
    """
    # n clip; p0 first position of the block; k0 first tap of the task; tc first channel of a tile column.
    N = xp.shape[0]
    Tp = gt.shape[2]
    K = gwt.shape[0]
    Fo, Ho, Wo = out_dims
    P = Fo * Ho * Wo
    Pb = GRAD_POSITIONS
    xf, gf, of = xp.reshape(xp.size), gt.reshape(gt.size), gwt.reshape(gwt.size)
    clip = xp.size // N
    sw = geometry[4]
    for task in prange((K + task_taps - 1) // task_taps):
        k0 = task * task_taps
        k1 = min(K, k0 + task_taps)
        kb = k1 - k0
        xb = np.empty(kb * Pb, xf.dtype)
        run_q = np.empty(Pb + 2, np.int64)
        run_len = np.empty(Pb + 2, np.int64)
        run_src = np.empty(Pb + 2, np.int64)
        for n in range(N):
            for p0 in range(0, P, Pb):
                valid = min(Pb, P - p0)
                runs = _column_runs(p0, Pb, P, Ho, Wo, geometry, run_q, run_len, run_src)
                _gather_panel(one, width, vec, L, xf, n * clip, tap_offset, k0, k1, Pb, sw, runs, run_q, run_len, run_src,
                              valid, xb, 0)
                for tc in range(0, Tp, width):
                    _grad_pass(tile, one, xb, 0, Pb, k0, k1, gf, (n * P + p0) * Tp, Tp, tc, 0, valid, of)


@njit(parallel=True, cache=True)
def _grid_grad_weight(tile, one, width, xp, gt, gwt, tap_offset, frame_step, task_taps):
    """gwt[k, t] += sum_{n, f', q} Xp_flat(n*clip + f'*frame_step + tap_offset[k] + q) Gq(n, f', q, t): the
    weight gradient of eq. (1) with positions on the padded input's grid (unit height and width stride),
    where tap k's row of A is the padded input itself, as in :func:`_grid_forward`. ``gt`` (N, Fo, G, Tp) is
    G's transpose on the grid, q = h'*Wp + w' < G = (Ho - 1)*Wp + Wo, zero at the columns that are not
    outputs. The tile's R rows are R consecutive taps one value apart in Xp (the kernel's width taps:
    ``tap_offset[k]`` consecutive within groups of R starting at multiples of R, which the caller checks).

    Tasks own ``task_taps`` taps as in :func:`_panel_grad_weight`, and every output is the same sum in
    the same order: over (n, f', q), the zeros added at the dropped columns changing nothing.
    """
    # n clip; f frame; q0 first grid position of a block; k0 first tap of the task; tc first channel of a column.
    N, Fo, G, Tp = gt.shape
    K = gwt.shape[0]
    xf, gf, of = xp.reshape(xp.size), gt.reshape(gt.size), gwt.reshape(gwt.size)
    clip = xp.size // N
    for task in prange((K + task_taps - 1) // task_taps):
        k0 = task * task_taps
        k1 = min(K, k0 + task_taps)
        for n in range(N):
            for f in range(Fo):
                g_first = (n * Fo + f) * G * Tp
                for q0 in range(0, G, GRAD_POSITIONS):
                    q1 = min(G, q0 + GRAD_POSITIONS)
                    for tc in range(0, Tp, width):
                        for kg in range(k0, k1, tile.rows):
                            _grad_pass(tile, one, xf, n * clip + f * frame_step + tap_offset[kg], 1, kg,
                                       min(k1, kg + tile.rows), gf, g_first, Tp, tc, q0, q1, of)


@njit(parallel=True, cache=True)
def _transpose_channels(g, gt):
    """gt[n, p, t] = g[n, t, p] for g (N, T, P) and gt (N, P, Tp), Tp >= T; channels past T left as they are."""
    # n clip, p position, t channel; a task owns a block of 64 positions of one clip.
    N, T, P = g.shape
    blocks = (P + 63) // 64
    for task in prange(N * blocks):
        n = task // blocks
        p0 = (task % blocks) * 64
        for t in range(T):
            for p in range(p0, min(P, p0 + 64)):
                gt[n, p, t] = g[n, t, p]


@njit(parallel=True, cache=True)
def _transpose_to_grid(g, gt, Wp):
    """gt[n, f, h*Wp + w, t] = g[n, t, f, h, w] for g (N, T, Fo, Ho, Wo) and gt (N, Fo, G, Tp), and 0 at the
    grid's other columns and the channels past T: G's transpose on the padded input's grid
    (:func:`_grid_grad_weight`), every value of ``gt`` written."""
    # n clip, f frame, h row, w column; a task owns one frame of one clip, and writes each grid
    # position's Tp channels contiguously.
    N, T, Fo, Ho, Wo = g.shape
    G, Tp = gt.shape[2], gt.shape[3]
    for task in prange(N * Fo):
        n = task // Fo
        f = task % Fo
        for q in range(G):
            h = q // Wp
            w = q % Wp
            row = gt[n, f, q]
            if w < Wo:
                for t in range(T):
                    row[t] = g[n, t, f, h, w]
                for t in range(T, Tp):
                    row[t] = 0
            else:
                for t in range(Tp):
                    row[t] = 0


#: Most output channels for which the weight gradient reads rows in place (:func:`grid_grad_fits`).
GRID_GRAD_OUTPUTS = 128

#: The in-place weight gradient's tiles for at most half a tile column of output channels (C3D-like
#: layers of 16 outputs on AVX2): the tile's taps x half its vectors.
_HALF_TILE = RegisterTile(1, _TILE.vectors // 2, _TILE.rows, _TILE.vector_bytes)
_HALF_ONE = RegisterTile(1, _TILE.vectors // 2, 1, _TILE.vector_bytes)


def grid_grad_fits(T: int, stride, kernel_size) -> bool:
    """Whether the weight gradient reads A's rows in place (:func:`_grid_grad_weight`): unit height and
    width stride, the kernel's width taps filling whole tile rows, and at most :data:`GRID_GRAD_OUTPUTS`
    output channels (a narrow C3D's layers at batch 8, one thread: 1.07-1.18x faster than gathered panels;
    128 channels on 56 columns and 256 on 28 even, 0.97-1.00x)."""
    return stride[1] == 1 and stride[2] == 1 and kernel_size[2] % _TILE.rows == 0 and T <= GRID_GRAD_OUTPUTS


def grad_panels_take(S: int, T: int, kernel_size, stride) -> bool:
    """Whether a weight gradient runs :func:`panel_grad_weight_padded`: the wide layers of :func:`panels_fit`,
    and from :data:`GRID_FEWEST_OUTPUTS` outputs with at least :data:`WIDE_TAPS` taps those that read A's
    rows in place (:func:`grid_grad_fits`; 16 outputs at batch 8, one thread, against the plane kernel:
    3 -> 16 on 56 columns 1.42x, 8 -> 16 1.66x, 16 -> 16 on 28 columns 1.72x)."""
    if panels_fit(S, T, kernel_size):
        return True
    return (T >= GRID_FEWEST_OUTPUTS and S * math.prod(kernel_size) >= WIDE_TAPS
            and grid_grad_fits(T, stride, kernel_size))


def panel_grad_weight_padded(xp, grad_out, stride, grad_weight, gather=None):
    """grad_weight += dL/dK of eq. (1) for the zero-padded input xp (N, S, Fp, Hp, Wp) and the output
    gradient grad_out (N, T, Fo, Ho, Wo): dL/dK(t, k) = sum_{n, p} G(n, t, p) A(n, k, p).

    ``gather`` True gathers panels of A, False reads its rows in place with G's transpose on the padded
    grid (:func:`grid_grad_fits` must hold), None decides by :func:`grid_grad_fits`. Both sum every output
    in the same order, so the results are the same bits (for a finite input)."""
    N, T = grad_out.shape[:2]
    Fo, Ho, Wo = grad_out.shape[2:]
    P = Fo * Ho * Wo
    K = grad_weight[0].size
    taps = tap_offsets(tuple(xp.shape[1:]), tuple(grad_weight.shape[2:]))
    g = np.ascontiguousarray(grad_out, xp.dtype)
    sd, sh, sw = stride
    if gather is None:
        gather = not grid_grad_fits(T, stride, grad_weight.shape[2:])
    tile, one, width = _TILE, _ONE, tile_width(xp.dtype)
    if not gather and 2 * T <= width:  # half a tile column of channels: half the vectors, no FMA on zero channels
        tile, one, width = _HALF_TILE, _HALF_ONE, width // 2
    Tp = -(-T // width) * width
    gwt = np.zeros((K, Tp), xp.dtype)
    task_taps = grad_task_taps(K, get_num_threads())
    if gather:
        gt = np.zeros((N, P, Tp), xp.dtype)
        _transpose_channels(g.reshape(N, T, P), gt)
        geometry = (xp.shape[3] * xp.shape[4], xp.shape[4], sd, sh, sw)
        _panel_grad_weight(tile, one, _VECTOR, lanes(xp.dtype, _VECTOR.vector_bytes), width, xp, gt, gwt, taps,
                           geometry, (Fo, Ho, Wo), task_taps)
    else:
        Wp = xp.shape[4]
        gt = np.empty((N, Fo, (Ho - 1) * Wp + Wo, Tp), xp.dtype)
        _transpose_to_grid(g, gt, Wp)
        _grid_grad_weight(tile, one, width, xp, gt, gwt, taps, sd * xp.shape[3] * Wp, task_taps)
    grad_weight += gwt[:, :T].T.reshape(grad_weight.shape)
