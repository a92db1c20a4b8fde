"""Register-tile intrinsics (tuckerref.kernels.simd) against NumPy: acc = b + sum_steps w * x, stored."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numba import njit

from tuckerref.kernels.simd import RegisterTile, lanes, tile_broadcast, tile_fma, tile_store


@njit(cache=True)
def _tile_dot(tile, bias, w, x, steps, out, stride):
    """acc[k, v] = bias[k] + sum_q w[q*C + k] * x[q + v*L : q + v*L + L]; stored channel k at k*stride."""
    acc = tile_broadcast(tile, bias, 0)
    for q in range(steps):
        acc = tile_fma(tile, acc, w, q * tile.channels, x, q)
    tile_store(tile, acc, out, 0, stride)


@settings(max_examples=8)
@given(shape=st.sampled_from([(1, 1), (2, 3), (3, 4), (1, 10)]), dtype=st.sampled_from([np.float32, np.float64]),
       steps=st.integers(1, 7), seed=st.integers(0, 2**31 - 1))
def test_tile_fma_accumulates_broadcast_weight_times_shifted_input_vectors(shape, dtype, steps, seed):
    C, V = shape
    L = lanes(np.dtype(dtype))
    r = np.random.default_rng(seed)
    bias = r.standard_normal(C).astype(dtype)
    w = r.standard_normal(steps * C).astype(dtype)
    x = r.standard_normal(steps + V * L).astype(dtype)
    stride = V * L + 3  # channel rows of the output with a gap the tile must not touch
    out = np.full(C * stride, -7.0, dtype)
    _tile_dot(RegisterTile(C, V), bias, w, x, steps, out, stride)
    expect = np.full((C, stride), -7.0)
    for k in range(C):
        expect[k, :V * L] = bias[k] + sum(w[q * C + k] * x.astype(np.float64)[q:q + V * L] for q in range(steps))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(out.reshape(C, stride), expect, rtol=tol, atol=tol)


def test_lanes_fill_one_32_byte_vector():
    assert lanes(np.dtype(np.float32)) == 8 and lanes(np.dtype(np.float64)) == 4


@pytest.mark.parametrize("shape", [(0, 1), (1, 0), (4, 3), (1, 15)])
def test_register_tile_rejects_shapes_that_do_not_fit_the_vector_registers(shape):
    with pytest.raises(ValueError, match=r"register tile|vector registers"):
        RegisterTile(*shape)
