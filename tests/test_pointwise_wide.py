"""The register-tiled 1x1x1 convolution, Y(n, t, p) = b(t) + sum_s W(t, s) X(n, s, p), against a
float64 loop reference, the streaming kernel, and finite differences through conv3d_backward.

Every call uses C-contiguous (N, S, P) arrays of float64 or float32, so the tiled kernel compiles
two specialisations."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from reference import assert_gradient_along_random_directions, conv3d_ref
from tuckerref import conv3d, conv3d_backward
from tuckerref.kernels.pointwise import pointwise_forward
from tuckerref.kernels.pointwise_tiles import (S_BLOCK, TILE_CHANNELS, WIDE_CHANNELS, pointwise_mix, tile_width,
                                               tiled_forward)


def mix_ref(x, w, b):
    """Y(n, t, p) = b(t) + sum_s W(t, s) X(n, s, p) in float64, one input channel at a time."""
    N, S, P = x.shape
    y = np.empty((N, w.shape[0], P))
    y[...] = np.asarray(b, np.float64)[None, :, None]
    for s in range(S):
        y += np.asarray(w, np.float64)[None, :, s, None] * np.asarray(x, np.float64)[:, None, s, :]
    return y


def arrays(N, S, T, P, seed, dtype):
    r = np.random.default_rng(seed)
    return (r.standard_normal((N, S, P)).astype(dtype), r.standard_normal((T, S)).astype(dtype),
            r.standard_normal(T).astype(dtype))


def assert_close(y, x, w, b):
    """float64 to 1e-12, float32 to a few units in the last place of the sum's magnitude."""
    ref = mix_ref(x, w, b)
    if y.dtype == np.float64:
        np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    else:
        scale = mix_ref(np.abs(x), np.abs(w), np.abs(b))
        assert np.all(np.abs(y - ref) <= 1e-5 * scale + 1e-6)


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 3), S=st.integers(1, 64), T=st.integers(1, 64), P=st.integers(1, 600),
       dtype=st.sampled_from([np.float64, np.float32]), seed=st.integers(0, 2**31 - 1))
def test_eq8_tiled_matrix_product_matches_float64_loop_reference(N, S, T, P, dtype, seed):
    x, w, b = arrays(N, S, T, P, seed, dtype)
    y = np.full((N, T, P), np.nan, dtype)
    tiled_forward(x, w, b, y)
    assert_close(y, x, w, b)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_eq8_tiled_matrix_product_blocks_s_and_covers_every_column(dtype):
    """S over two cache blocks, T two channel groups plus one, and positions fewer than a tile
    column, a whole number of columns, one short of it and one past it (a last column past the clip's end), batch 2."""
    S, T, width = S_BLOCK + 5, 2 * TILE_CHANNELS + 1, tile_width(dtype)
    for P in (3, width * 9, width * 9 - 1, width * 17 + 1):
        x, w, b = arrays(2, S, T, P, P, dtype)
        y = np.full((2, T, P), np.nan, dtype)
        tiled_forward(x, w, b, y)
        assert_close(y, x, w, b)


@settings(max_examples=8, deadline=None)
@given(N=st.integers(1, 3), S=st.integers(WIDE_CHANNELS, 80), T=st.integers(WIDE_CHANNELS, 80),
       P=st.integers(1, 31), seed=st.integers(0, 2**31 - 1))
def test_eq8_wide_pointwise_mix_on_fewer_positions_than_a_tile_column_matches_float64_reference(N, S, T, P, seed):
    """Fewer positions than one tile column (a fully connected layer's factor: one position) go as
    position rows times W^T; the reference's values either way."""
    x, w, b = arrays(N, S, T, min(P, tile_width(np.float32) - 1), seed, np.float32)
    y = np.full((N, T, x.shape[2]), np.nan, np.float32)
    pointwise_mix(x, w, b, y)
    assert_close(y, x, w, b)


@settings(max_examples=10, deadline=None)
@given(S=st.integers(1, 40), T=st.integers(1, 40), P=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
def test_eq8_pointwise_mix_keeps_streaming_kernel_bits_below_wide_channels(S, T, P, seed):
    """Narrow layers (the paper's ranks) give the streaming kernel's exact bits; wide ones the
    reference's values."""
    x, w, b = arrays(1, S, T, P, seed, np.float32)
    y = np.empty((1, T, P), np.float32)
    pointwise_mix(x, w, b, y)
    if S < WIDE_CHANNELS or T < WIDE_CHANNELS:
        expected = np.empty_like(y)
        pointwise_forward(x, w, b, expected)
        np.testing.assert_array_equal(y, expected)
    else:
        assert_close(y, x, w, b)


def test_eq8_wide_1x1x1_conv3d_backward_matches_finite_differences(rng):
    """Central differences of L = <G, conv3d(x, W, b)> w.r.t. x (random directions) for a 1x1x1
    convolution wide enough for the tiled kernel, whose grad_x is conv3d with W transposed."""
    S, T = WIDE_CHANNELS + 3, WIDE_CHANNELS + 1
    x = rng.standard_normal((2, S, 3, 5, 7))
    w = rng.standard_normal((T, S, 1, 1, 1))
    b = rng.standard_normal(T)
    y = conv3d(x, w, b)
    np.testing.assert_allclose(y, conv3d_ref(x, w, b), rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(y.shape)
    gx, gw, gb = conv3d_backward(x, w, g)
    np.testing.assert_allclose(gx, np.einsum("ntdhw,ts->nsdhw", g, w[:, :, 0, 0, 0]), rtol=1e-12, atol=1e-12)
    assert_gradient_along_random_directions(lambda v: np.vdot(g, conv3d(v, w, b)), x, gx, rng, name="x")
