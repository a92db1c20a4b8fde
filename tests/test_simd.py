"""Register-tile intrinsics (tuckerref.kernels.simd) against NumPy.

    acc[r, k, v] = b[k] + sum_q w[q*C + (R-1-r)*B + k] * x[q + v*L : q + v*L + L],  B = steps*C

i.e. each of the R tile rows reads its own block of weights (the w_row_step of tile_fma), and
the store writes row r, channel k at r*row_stride + k*channel_stride.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numba import njit

from tuckerref.kernels.pool import _nan_max
from tuckerref.kernels.simd import (RegisterTile, lanes, tile_broadcast, tile_fma, tile_fma_rows, tile_max_store,
                                    tile_mix_max_store, tile_mix_store, tile_store, vector_bytes, vector_registers)


@njit(cache=True)
def _tile_dot(tile, bias, w, x, steps, out, channel_stride, row_stride):
    C = tile.channels
    block = steps * C
    acc = tile_broadcast(tile, bias, 0)
    for q in range(steps):
        acc = tile_fma(tile, acc, w, q * C + (tile.rows - 1) * block, block, x, q)
    tile_store(tile, acc, out, 0, channel_stride, row_stride)


# (channels, vectors, rows) of a tile, dtype and vector bytes: each case compiles its own kernel (the
# tile shape and the vector are types), so every shape is taken once and every dtype and vector
# width three times, rather than drawn from their product.
FMA_CASES = [((1, 1, 1), np.float32, 32), ((2, 3, 1), np.float64, 64), ((3, 4, 1), np.float64, 32),
             ((1, 10, 1), np.float32, 64), ((1, 5, 2), np.float64, 32), ((2, 2, 2), np.float32, 64)]


@pytest.mark.parametrize("shape, dtype, width", FMA_CASES)
@settings(max_examples=3)
@given(steps=st.integers(1, 7), seed=st.integers(0, 2**31 - 1))
def test_tile_fma_accumulates_broadcast_weight_times_shifted_input_vectors(shape, dtype, width, steps, seed):
    C, V, R = shape
    L = lanes(np.dtype(dtype), width)
    r = np.random.default_rng(seed)
    bias = r.standard_normal(C).astype(dtype)
    w = r.standard_normal(R * steps * C).astype(dtype)
    x = r.standard_normal(steps + V * L).astype(dtype)
    channel_stride = V * L + 3  # gaps the tile must not touch
    row_stride = C * channel_stride + 5
    out = np.full(R * row_stride, -7.0, dtype)
    _tile_dot(RegisterTile(C, V, R, width), bias, w, x, steps, out, channel_stride, row_stride)
    expect = np.full(R * row_stride, -7.0)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    for row in range(R):
        for k in range(C):
            at = row * row_stride + k * channel_stride
            expect[at:at + V * L] = bias[k] + sum(w64[q * C + (R - 1 - row) * steps * C + k] * x64[q:q + V * L]
                                                  for q in range(steps))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(out, expect, rtol=tol, atol=tol)


def test_lanes_fill_one_vector_of_32_or_64_bytes():
    assert lanes(np.dtype(np.float32)) == 8 and lanes(np.dtype(np.float64)) == 4
    assert lanes(np.dtype(np.float32), 64) == 16 and lanes(np.dtype(np.float64), 64) == 8


def test_register_tile_rejects_a_vector_width_other_than_32_or_64_bytes():
    with pytest.raises(ValueError, match="bytes wide, got 16"):
        RegisterTile(1, 1, 1, 16)


@pytest.mark.parametrize("shape", [(0, 1, 1), (1, 0, 1), (1, 1, 0), (7, 4, 1), (1, 31, 1), (2, 7, 2)])
def test_register_tile_rejects_shapes_that_do_not_fit_the_largest_register_file(shape):
    """rows * channels * (vectors + 1) + 1 vector registers must not exceed 32 (AVX-512VL)."""
    with pytest.raises(ValueError, match=r"register tile|vector registers"):
        RegisterTile(*shape)


@pytest.mark.parametrize("features, registers", [("+avx2,+fma,+avx512f,+avx512vl", 32), ("+avx2,+fma", 16),
                                                 ("+avx2,-avx512vl", 16), ("", 16)])
def test_vector_registers_are_32_only_where_avx512vl_reaches_ymm16_to_ymm31(features, registers):
    assert vector_registers(features) == registers


@pytest.mark.parametrize("features, widest", [("+avx2,+fma,+avx512f,+avx512vl", 64),
                                              ("+avx2,+fma,+avx512f,-avx512vl", 32), ("+avx2,+fma", 32), ("", 32)])
def test_64_byte_vectors_only_where_avx512_gives_32_zmm_registers(features, widest):
    assert vector_bytes(features) == widest


@njit(cache=True)
def _edge_rows(tile, bias, w, x, out, channel_stride, row_stride):
    acc = tile_broadcast(tile, bias, 0)
    acc = tile_fma_rows(tile, 1, 2, acc, w, tile.channels, tile.channels, x, 0)
    tile_store(tile, acc, out, 0, channel_stride, row_stride)


@pytest.mark.parametrize("C, V", [(1, 2), (2, 1), (3, 1)])
def test_tile_fma_rows_updates_only_the_rows_asked_for(C, V, rng):
    """Rows [1, 2) of a two-row tile get b + w[C - C + k] * x (row 1 reads w_start - 1*w_row_step);
    row 0 keeps the bias, even where x holds inf (no multiply by anything is issued for it)."""
    L = lanes(np.dtype(np.float64))
    bias = rng.standard_normal(C)
    w = rng.standard_normal(2 * C)
    x = rng.standard_normal(V * L)
    x[0] = np.inf
    channel_stride, row_stride = V * L, C * V * L
    out = np.full(2 * row_stride, -7.0)
    _edge_rows(RegisterTile(C, V, 2), bias, w, x, out, channel_stride, row_stride)
    for k in range(C):
        np.testing.assert_array_equal(out[k * channel_stride:(k + 1) * channel_stride], bias[k])
        np.testing.assert_allclose(out[row_stride + k * channel_stride:row_stride + (k + 1) * channel_stride],
                                   bias[k] + w[k] * x, rtol=1e-15)


@njit(cache=True)
def _mixed_store(tile, acc_values, w, b, outputs, out, channel_stride, row_stride):
    acc = tile_broadcast(tile, acc_values, 0)
    for t in range(outputs):
        tile_mix_store(tile, acc, w, t * tile.channels, b, t, out, t * channel_stride, row_stride)


MIX_CASES = [((1, 1, 1), np.float64, 64), ((2, 5, 1), np.float32, 32), ((3, 4, 1), np.float32, 64),
             ((1, 5, 2), np.float64, 32), ((2, 2, 2), np.float32, 32)]


@pytest.mark.parametrize("shape, dtype, width", MIX_CASES)
@settings(max_examples=2)
@given(outputs=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_tile_mix_store_is_a_1x1x1_convolution_of_the_tile_channels(shape, dtype, width, outputs, seed):
    """y[t] = b[t] + sum_k U[t, k] acc[k] (eq. 10 applied to a tile), stored row by row per t."""
    C, V, R = shape
    L = lanes(np.dtype(dtype), width)
    r = np.random.default_rng(seed)
    acc = r.standard_normal(C).astype(dtype)  # the tile holds acc[k] in every row and lane of channel k
    u = r.standard_normal(outputs * C).astype(dtype)
    b = r.standard_normal(outputs).astype(dtype)
    channel_stride, row_stride = R * (V * L + 2), V * L + 2
    out = np.full(outputs * channel_stride, -7.0, dtype)
    _mixed_store(RegisterTile(C, V, R, width), acc, u, b, outputs, out, channel_stride, row_stride)
    expect = np.full(outputs * channel_stride, -7.0)
    for t in range(outputs):
        for row in range(R):
            at = t * channel_stride + row * row_stride
            expect[at:at + V * L] = b[t] + u[t * C:(t + 1) * C].astype(np.float64) @ acc.astype(np.float64)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(out, expect, rtol=tol, atol=tol)


@njit(cache=True)
def _max_stores(tile, values, out, channel_stride, row_stride, w, b, outputs, mixed):
    acc = tile_broadcast(tile, values, 0)
    if mixed:
        for t in range(outputs):
            tile_mix_max_store(tile, acc, w, t * tile.channels, b, t, out, t * channel_stride, row_stride)
    else:
        tile_max_store(tile, acc, out, 0, channel_stride, row_stride)


@pytest.mark.parametrize("width", [32, 64])
@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_stores_merge_like_max_pooling_nan_included(mixed, width, dtype, rng):
    """out = _nan_max(out, value) lane by lane: the larger, NaN from either side, the old value on
    ties (so -0 against +0 keeps what was there); rows sharing an address (row stride 0) merge in turn."""
    C, V, R = 2, 2, 2
    L = lanes(np.dtype(dtype), width)
    specials = np.array([np.nan, -np.inf, np.inf, 0.0, -0.0, 1.0, -1.0, 2.0], dtype)
    old = np.resize(np.concatenate([specials, specials[::-1], rng.standard_normal(4 * L).astype(dtype)]),
                    (C if not mixed else 3) * V * L).astype(dtype)
    values = np.array([0.0, -0.0], dtype) if not mixed else np.array([1.0, np.nan], dtype)
    w = rng.standard_normal(3 * C).astype(dtype)
    w[3:] = 0.0  # output 1 mixes the NaN channel by 0: NaN all the same
    b = np.array([-0.0, 0.5, 2.0], dtype)
    out = old.copy()
    _max_stores(RegisterTile(C, V, R, width), values, out, V * L, 0, w, b, 3, mixed)
    expect = old.astype(np.float64).copy()
    channels = [values.astype(np.float64)[k] for k in range(C)] if not mixed else \
        [b[t] + sum(w[t * C + k] * values.astype(np.float64)[k] for k in range(C)) for t in range(3)]
    for _row in range(R):
        for k, v in enumerate(channels):
            seg = slice(k * V * L, (k + 1) * V * L)
            expect[seg] = [_nan_max.py_func(a, dtype(v)) for a in expect[seg]]
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expect))
    np.testing.assert_array_equal(np.signbit(out[~np.isnan(out)]), np.signbit(expect[~np.isnan(expect)]))
    np.testing.assert_allclose(out, expect, rtol=1e-6 if dtype == np.float32 else 1e-15)

