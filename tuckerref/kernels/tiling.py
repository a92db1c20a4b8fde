"""Register-tile shapes: how many channels, rows and SIMD vectors one tile of the forward convolution holds.

A tile of R rows x C channels x V vectors (:class:`tuckerref.kernels.simd.RegisterTile`) keeps
R*C*V accumulators, R*C broadcast weights and one input vector in vector registers for the whole
reduction of eq. (1). Each reduction step loads V input vectors and R*C weights and issues R*C*V
FMAs, so the bigger the tile, the fewer loads per FMA, until the registers run out and it spills.
How many there are depends on the target Numba compiles for: 16 with AVX2, 32 with AVX-512VL
(whose EVEX encoding reaches ymm16-ymm31 and zmm16-zmm31), see :func:`.simd.vector_registers`.

The shapes in :data:`TILE_VECTORS` were measured best on the paper's c1 shapes (bench/RESULTS.md):
with 16 registers 3 x 4, 2 x 5 and, for one channel, two rows of 5; with 32 registers every
channel count from 2 to 6 reaches the same throughput (2 x 10, 3 x 8, 4 x 6, 5 x 5, 6 x 4), which
is what makes a Tucker-2 core's time follow its FLOPs whatever its rank R_t. A single channel
uses two output rows, so that each input vector feeds two FMAs (the input row serves output
row h' through kernel row j and row h'+1 through j-1).

The vectors are 32 bytes wide, or 64 on a target with AVX-512 (:func:`row_cover` decides per
convolution). The counts in :data:`TILE_VECTORS` hold for either width, since the registers
limit them the same way: on the paper's c1 rows (160 float32 columns, ten 64-byte vectors) the
6 x 4 and 2 x 10 tiles measured best among 6 x 4, 3 x 5, 3 x 7 and 2 x 10 for six channels and
2 x 10, 2 x 5 and two-row 2 x 2 x 5 for two (bench/RESULTS.md).

Tile shapes change speed only: every output is summed in the same (s, i, j, l) order whatever
the shape, so results are bit-identical across shapes, vector widths and register files.
"""
from __future__ import annotations

from .simd import VECTOR_WIDTHS

#: (vector registers) -> {(channels, rows): SIMD vectors per tile row}. (1, 1) serves one-channel
#: convolutions that cannot use two rows (height stride > 1, or a single output row).
TILE_VECTORS = {
    16: {(1, 2): 5, (1, 1): 10, (2, 1): 5, (3, 1): 4},
    32: {(1, 2): 10, (1, 1): 12, (2, 1): 10, (3, 1): 8, (4, 1): 6, (5, 1): 5, (6, 1): 4},
}


def _table(registers: int) -> dict:
    try:
        return TILE_VECTORS[registers]
    except KeyError:
        raise ValueError(f"no register-tile shapes for {registers} vector registers "
                         f"(known: {sorted(TILE_VECTORS)})") from None


def max_tile_channels(registers: int) -> int:
    """The most output channels one register tile holds with ``registers`` vector registers."""
    return max(c for c, _ in _table(registers))


def tile_channels(T: int, registers: int) -> int:
    """Channels per tile for a convolution with T output channels.

    All T in one tile when they fit (what a Tucker-2 block's mixed store needs); else the largest
    divisor of T that fits, so that every tile is full; else the largest tile, and the remaining
    T mod C channels form one narrower block.
    """
    most = max_tile_channels(registers)
    if T <= most:
        return T
    return next((c for c in range(most, 1, -1) if T % c == 0), most)


def tile_shape(channels: int, two_rows: bool, registers: int) -> tuple[int, int]:
    """(vectors, rows) of the tile for ``channels`` channels; ``two_rows`` when the convolution allows it.

    Two rows need unit height stride and at least two output rows; only one-channel tiles use them.
    The caller caps the vectors at the output width.
    """
    rows = 2 if channels == 1 and two_rows else 1
    return _table(registers)[channels, rows], rows


#: FMA units per core and FMA latency in cycles (x86 cores with AVX2 or AVX-512: 2 and 4), for
#: the cost model of :func:`row_tiles`.
FMA_UNITS, FMA_LATENCY = 2, 4


def _step_cycles(accumulators: int) -> float:
    """Cycles per reduction step of a tile: its FMAs over the FMA units, but never less than the FMA
    latency, since each accumulator waits for its previous FMA (fewer than FMA_UNITS x FMA_LATENCY
    independent accumulators leave the units idle)."""
    return max(accumulators / FMA_UNITS, FMA_LATENCY)


def row_tiles(out_width: int, n_lanes: int, channels: int, rows: int, max_vectors: int) -> tuple:
    """How tiles cover an output row: (vectors, full, last_vectors, last_col).

    ``full`` tiles of ``vectors`` SIMD vectors side by side, then, unless the row is a whole number
    of tiles (``last_col`` = -1), one tile of ``last_vectors`` placed flush with the row's end at
    column ``last_col`` (overlapping the previous one). The width is chosen by :func:`_step_cycles`
    over the whole row, so that a narrow row (c2's 36 columns: 4.5 float32 vectors) does not end
    in a one-vector tile whose few accumulators wait on the FMA latency. Needs
    out_width >= n_lanes; ties go to the wider tile.
    """
    best = None
    for vectors in range(min(max_vectors, out_width // n_lanes), 0, -1):
        full, rest = divmod(out_width, vectors * n_lanes)
        last_vectors = -(-rest // n_lanes)
        cycles = full * _step_cycles(channels * vectors * rows) + (_step_cycles(channels * last_vectors * rows)
                                                                   if rest else 0)
        if best is None or cycles < best[0]:
            best = (cycles, vectors, full, last_vectors if rest else vectors,
                    out_width - last_vectors * n_lanes if rest else -1)
    return best[1:]


def row_cover(out_width: int, itemsize: int, channels: int, rows: int, max_vectors: int, widest: int) -> tuple:
    """The vector width and :func:`row_tiles` cover of an output row: (vector_bytes, lanes, vectors,
    full, last_vectors, last_col).

    Of the widths up to ``widest`` bytes (32, and 64 on targets with AVX-512) whose vector fits in
    the row, the widest whose tiles compute no more columns than a narrower width's: wider vectors
    issue fewer instructions and loads per FMA, but a flush last tile of 64-byte vectors can
    recompute more overlapping columns (c2's 36 float32 columns: 48 with 16 lanes, 40 with 8).
    Needs out_width >= the lanes of a 32-byte vector.
    """
    best = None
    for vector_bytes in VECTOR_WIDTHS:
        n_lanes = vector_bytes // itemsize
        if vector_bytes > widest or out_width < n_lanes:
            continue
        vectors, full, last_vectors, last_col = row_tiles(out_width, n_lanes, channels, rows, max_vectors)
        computed = (full * vectors + (last_vectors if last_col >= 0 else 0)) * n_lanes
        if best is None or computed <= best[0]:
            best = (computed, vector_bytes, n_lanes, vectors, full, last_vectors, last_col)
    return best[1:]
