"""Register-tile shapes (tuckerref.kernels.tiling): they fit the registers, cover every output
channel and column exactly once or by flush overlap, and never reach past a row."""
import pytest
from hypothesis import given, strategies as st

from tuckerref.kernels.simd import MAX_VECTOR_REGISTERS, RegisterTile
from tuckerref.kernels.tiling import (TILE_VECTORS, _step_cycles, max_tile_channels, row_cover, row_tiles,
                                      tile_channels, tile_shape)


@pytest.mark.parametrize("registers", sorted(TILE_VECTORS))
def test_every_tile_shape_fits_its_register_file(registers):
    """accumulators + broadcast weights + one input vector <= the registers (and constructible)."""
    for (channels, rows), vectors in TILE_VECTORS[registers].items():
        assert rows * channels * (vectors + 1) + 1 <= registers <= MAX_VECTOR_REGISTERS
        RegisterTile(channels, vectors, rows)


@pytest.mark.parametrize("registers", sorted(TILE_VECTORS))
@pytest.mark.parametrize("T", range(1, 20))
def test_channel_blocks_cover_the_output_channels(registers, T):
    """T = blocks * C + leftover, every block a tile shape, one leftover block at most, all of T in
    one tile whenever they fit (what a Tucker-2 block's mixed store needs)."""
    C = tile_channels(T, registers)
    assert 1 <= C <= max_tile_channels(registers)
    assert (C == T) == (T <= max_tile_channels(registers))
    for channels in {C, T % C} - {0}:
        assert (channels, 1) in TILE_VECTORS[registers]


@pytest.mark.parametrize("registers", sorted(TILE_VECTORS))
def test_only_one_channel_tiles_use_two_rows_and_only_when_allowed(registers):
    for channels in range(1, max_tile_channels(registers) + 1):
        assert tile_shape(channels, False, registers)[1] == 1
        assert tile_shape(channels, True, registers)[1] == (2 if channels == 1 else 1)


@given(width=st.integers(1, 400), lanes=st.sampled_from([4, 8]), channels=st.integers(1, 6),
       rows=st.integers(1, 2), most=st.integers(1, 14))
def test_row_tiles_cover_the_row_and_never_pass_its_end(width, lanes, channels, rows, most):
    """Full tiles side by side from column 0, then (if needed) one flush tile ending exactly at the row's end."""
    if width < lanes:
        return
    vectors, full, last_vectors, last_col = row_tiles(width, lanes, channels, rows, most)
    assert 1 <= vectors <= min(most, width // lanes) and full >= 1
    covered = full * vectors * lanes
    assert covered <= width
    if last_col < 0:
        assert covered == width
    else:
        assert 1 <= last_vectors <= vectors and 0 <= last_col <= covered
        assert last_col + last_vectors * lanes == width


def test_row_tiles_avoid_a_latency_bound_one_vector_tile_on_c2_rows():
    """c2's 36 columns (4.5 float32 vectors), 3 channels: a 3-vector tile and a flush 2-vector tile
    (9 + 6 accumulators) rather than 4 + 1, whose 3 accumulators would wait on the FMA latency."""
    assert row_tiles(36, 8, 3, 1, 8) == (3, 1, 2, 20)
    assert _step_cycles(3) == _step_cycles(1) == 4


@pytest.mark.parametrize("channels, rows, most", [(6, 1, 4), (2, 1, 10), (1, 2, 10), (3, 1, 4), (2, 1, 5)])
def test_row_tiles_keep_whole_tiles_on_the_paper_width(channels, rows, most):
    """160 columns (c1 and its core) are whole tiles of the table's width: no overlap, no flush tile."""
    assert row_tiles(160, 8, channels, rows, most) == (most, 160 // (8 * most), most, -1)


@given(width=st.integers(4, 400), itemsize=st.sampled_from([4, 8]), channels=st.integers(1, 6),
       rows=st.integers(1, 2), most=st.integers(1, 14), widest=st.sampled_from([32, 64]))
def test_row_cover_takes_the_widest_vectors_that_compute_no_more_columns(width, itemsize, channels, rows, most,
                                                                        widest):
    """The chosen width's tiles are row_tiles' cover for its lanes, and every width that fits (up to
    ``widest``) computes at least as many columns; 64-byte vectors win ties."""
    if width < 32 // itemsize:
        return
    vector_bytes, n_lanes, *cover = row_cover(width, itemsize, channels, rows, most, widest)
    assert vector_bytes <= widest and n_lanes == vector_bytes // itemsize
    assert tuple(cover) == row_tiles(width, n_lanes, channels, rows, most)

    def computed(n):
        vectors, full, last_vectors, last_col = row_tiles(width, n, channels, rows, most)
        return (full * vectors + (last_vectors if last_col >= 0 else 0)) * n
    for other in (32, 64):
        n = other // itemsize
        if other <= widest and width >= n:
            assert computed(n_lanes) < computed(n) or (computed(n_lanes) == computed(n) and vector_bytes >= other)


def test_row_cover_on_the_papers_rows():
    """c1's 160 float32 columns: ten 64-byte vectors where the target has them (one 2 x 10 tile per
    row for a rank-2 core); c2's 36 columns keep 32-byte vectors (40 columns computed, not 48)."""
    assert row_cover(160, 4, 2, 1, 10, 64) == (64, 16, 10, 1, 10, -1)
    assert row_cover(160, 4, 2, 1, 10, 32) == (32, 8, 10, 2, 10, -1)
    assert row_cover(36, 4, 3, 1, 8, 64)[:2] == (32, 8)
