"""conv3d and conv3d_backward against eq. (1) (float64 loop reference), finite differences and bad input."""
import sys
from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, example, given, settings, strategies as st

from reference import (TILE_CASES, WIDE_CASE, assert_gradient_along_random_directions, conv3d_ref, conv_arrays,
                       conv_cases, numerical_gradient, vector_registers)
from tuckerref import conv3d, conv3d_backward

# A case whose kernel is larger than the unpadded input in every dimension, with batch 2.
KERNEL_EXCEEDS_INPUT = dict(N=2, S=2, T=3, size=(2, 1, 2), kernel=(3, 3, 3), stride=(1, 2, 2),
                            padding=(1, 1, 1), bias=True, seed=7)


@settings(max_examples=30)
@given(case=conv_cases())
@example(case=KERNEL_EXCEEDS_INPUT)
@example(case=WIDE_CASE)
def test_eq1_conv3d_matches_float64_loop_reference(case):
    x, w, b = conv_arrays(case)
    y = conv3d(x, w, b, stride=case["stride"], padding=case["padding"])
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, conv3d_ref(x, w, b, case["stride"], case["padding"]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_eq1_kernel_larger_than_unpadded_input_along_one_dimension_batch_3(dim, rng):
    size, kernel, padding = [4, 5, 6], [2, 2, 3], [0, 0, 0]
    size[dim], kernel[dim], padding[dim] = 2, 3 if dim == 2 else 5, 2  # output length 2 + 4 - k + 1
    x = rng.standard_normal((3, 2) + tuple(size))
    w = rng.standard_normal((2, 2) + tuple(kernel))
    y = conv3d(x, w, stride=1, padding=padding)
    np.testing.assert_allclose(y, conv3d_ref(x, w, None, 1, padding), rtol=1e-12, atol=1e-12)


@settings(max_examples=15)
@given(N=st.integers(1, 3), S=st.integers(1, 5), T=st.integers(1, 5),
       size=st.sampled_from([(1, 1, 1), (2, 3, 5), (3, 40, 50)]),  # 6000 positions spans two blocks
       bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_eq8_pointwise_1x1x1_path_matches_reference_forward_and_backward(N, S, T, size, bias, seed):
    r = np.random.default_rng(seed)
    x = r.standard_normal((N, S) + size)
    w = r.standard_normal((T, S, 1, 1, 1))
    b = r.standard_normal(T) if bias else None
    y = conv3d(x, w, b)
    np.testing.assert_allclose(y, conv3d_ref(x, w, b), rtol=1e-12, atol=1e-12)
    # The 1x1x1 convolution is a channel matrix product, so its gradients have closed forms.
    g = r.standard_normal(y.shape)
    gx, gw, gb = conv3d_backward(x, w, g)
    np.testing.assert_allclose(gx, np.einsum("ntdhw,ts->nsdhw", g, w[:, :, 0, 0, 0]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gw[:, :, 0, 0, 0], np.einsum("ntdhw,nsdhw->ts", g, x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gb, g.sum(axis=(0, 2, 3, 4)), rtol=1e-12, atol=1e-12)


@settings(max_examples=10)
@given(case=conv_cases(), a=st.floats(-3, 3), c=st.floats(-3, 3))
def test_eq1_conv3d_is_linear_in_x_and_in_weight(case, a, c):
    x, w, _ = conv_arrays(case)
    x2, w2, _ = conv_arrays(dict(case, seed=case["seed"] + 1))
    conv = lambda x_, w_: conv3d(x_, w_, stride=case["stride"], padding=case["padding"])  # noqa: E731
    tol = dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(conv(a * x + c * x2, w), a * conv(x, w) + c * conv(x2, w), **tol)
    np.testing.assert_allclose(conv(x, a * w + c * w2), a * conv(x, w) + c * conv(x, w2), **tol)


@settings(max_examples=12)
@given(case=conv_cases())
@example(case=KERNEL_EXCEEDS_INPUT)
@example(case=WIDE_CASE)
def test_conv3d_backward_matches_finite_differences_of_g_dot_y(case):
    """Central differences of L = <G, conv3d(x, K, b)> w.r.t. x and K (random directions) and every b(t)."""
    x, w, b = conv_arrays(case)
    if b is None:
        b = np.zeros(case["T"])
    kw = dict(stride=case["stride"], padding=case["padding"])
    r = np.random.default_rng(case["seed"] + 2)
    g = r.standard_normal(conv3d(x, w, b, **kw).shape)
    gx, gw, gb = conv3d_backward(x, w, g, **kw)
    assert_gradient_along_random_directions(lambda v: np.vdot(g, conv3d(v, w, b, **kw)), x, gx, r, name="x")
    assert_gradient_along_random_directions(lambda v: np.vdot(g, conv3d(x, v, b, **kw)), w, gw, r, name="weight")
    np.testing.assert_allclose(gb, numerical_gradient(lambda v: np.vdot(g, conv3d(x, w, v, **kw)), b),
                               rtol=1e-7, atol=1e-7)
    none, gw2, _ = conv3d_backward(x, w, g, need_grad_x=False, **kw)
    assert none is None
    np.testing.assert_array_equal(gw2, gw)


@pytest.mark.parametrize("T, registers, width", TILE_CASES)
@settings(max_examples=4)
@given(N=st.integers(1, 2), S=st.integers(1, 3), kernel=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 5)),
       stride=st.tuples(st.integers(1, 2), st.integers(1, 2)), pad=st.tuples(st.integers(0, 1), st.integers(0, 1)),
       bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_eq1_register_tile_path_matches_float64_loop_reference(T, registers, width, N, S, kernel, stride, pad, bias,
                                                               seed):
    """Eq. (1) through the register tiles of either register file (reference.TILE_CASES): 1-6
    channels per tile (T = 7 leaves a narrower block with 16 registers, T = 11 with 32), one-channel
    tiles over two rows (one row at height stride 2), any depth/height stride, unit width stride,
    output rows of one vector up to several tiles, whole or with a flush last tile."""
    assume((kernel, stride, pad) != ((1, 1, 1), (1, 1), (0, 0)))  # that one is the 1x1x1 path
    r = np.random.default_rng(seed)
    padding = pad + (kernel[2] // 2,)
    size = (3, 4, width - 2 * padding[2] + kernel[2] - 1)  # output width == width
    x = r.uniform(-1, 1, (N, S) + size)
    w = r.uniform(-1, 1, (T, S) + kernel)
    b = r.uniform(-1, 1, T) if bias else None
    conv_module = sys.modules["tuckerref.kernels.conv3d"]
    with vector_registers(registers), \
            mock.patch.object(conv_module, "_forward_tiles", wraps=conv_module._forward_tiles) as tiles:
        y = conv3d(x, w, b, stride=stride + (1,), padding=padding)
    assert y.shape[4] == width and tiles.call_count == 1, "the register-tile path was not taken"
    np.testing.assert_allclose(y, conv3d_ref(x, w, b, stride + (1,), padding), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("registers", [16, 32])
def test_eq1_an_infinite_input_reaches_only_the_outputs_whose_window_holds_it(registers, rng):
    """Only outputs whose window (eq. 1) covers the inf are non-finite, as in a loop over the
    kernel's taps: the tiles never multiply an input by a weight outside the kernel (a two-row
    tile's first and last input rows feed one of its rows only)."""
    x = rng.uniform(-1, 1, (1, 2, 3, 9, 17))  # the one-channel rows of reference.TILE_CASES[0]
    x[0, 1, 1, 0, 7] = np.inf  # first input row: a two-row tile starting there must not use it for row 1
    x[0, 0, 2, 8, 3] = -np.inf  # last input row
    w = rng.uniform(0.5, 1, (1, 2, 2, 3, 5))  # one output channel: two-row tiles
    with vector_registers(registers):
        y = conv3d(x, w, padding=(0, 0, 2), check_finite=False)
    reach = conv3d_ref(np.isinf(x).astype(float), np.ones_like(w), padding=(0, 0, 2)) > 0
    np.testing.assert_array_equal(~np.isfinite(y), reach)
    finite = conv3d_ref(np.where(np.isinf(x), 0.0, x), w, padding=(0, 0, 2))
    np.testing.assert_allclose(y[~reach], finite[~reach], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("width, widest, want", [(96, 64, 64), (96, 32, 32), (36, 64, 32), (8, 64, 32)])
def test_register_tiles_use_64_byte_vectors_on_rows_they_cover_as_tightly(width, widest, want):
    """The tile plan of a float32 convolution (2 -> 2 channels, as the paper's c1 core) takes
    64-byte vectors only on a target that has them and only where they compute no more columns."""
    tiles_module = sys.modules["tuckerref.kernels.conv3d_tiles"]
    groups, _ = tiles_module._tile_plan((1, 2, 5, 14, width + 4), (2, 2, 3, 5, 5), (1, 1, 1), (1, 2, 3, 10, width),
                                        None, None, False, np.dtype(np.float32), 32, widest)
    assert {tile.vector_bytes for group in groups for tile in group[3]} == {want}


@settings(max_examples=8)
@given(N=st.integers(1, 3), S=st.integers(1, 4), T=st.integers(1, 9), size=st.tuples(st.integers(1, 4),
       st.integers(1, 4), st.integers(2, 9)), stride=st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 2)),
       bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_eq1_a_kernel_covering_the_whole_input_is_a_matrix_vector_product(N, S, T, size, stride, bias, seed):
    """Y(n, t, 0, 0, 0) = b(t) + sum_{s,i,j,l} K(t, s, i, j, l) X(n, s, i, j, l): l1 of the paper as a
    convolution over its feature volume (any stride: there is one window)."""
    r = np.random.default_rng(seed)
    x, w = r.uniform(-1, 1, (N, S) + size), r.uniform(-1, 1, (T, S) + size)
    b = r.uniform(-1, 1, T) if bias else None
    conv_module = sys.modules["tuckerref.kernels.conv3d"]
    with mock.patch.object(conv_module, "_linear_forward", wraps=conv_module._linear_forward) as matvec:
        y = conv3d(x, w, b, stride=stride)
    assert matvec.call_count == 1 and y.shape == (N, T, 1, 1, 1)
    np.testing.assert_allclose(y, conv3d_ref(x, w, b, stride), rtol=1e-12, atol=1e-12)


def test_eq1_register_tiles_in_float32_on_a_c1_like_row(rng):
    """float32 tiles (8 lanes): 3-channel tiles of 4 vectors and 2-channel tiles of 5, rows of 83 = whole tiles + rest."""
    x = rng.uniform(-1, 1, (1, 3, 3, 4, 83))
    for T in (6, 2, 1):
        w = rng.uniform(-1, 1, (T, 3, 2, 3, 5))
        b = rng.uniform(-1, 1, T)
        y = conv3d(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), padding=(1, 1, 2))
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, conv3d_ref(x, w, b, 1, (1, 1, 2)), rtol=1e-5, atol=1e-5)


def test_eq1_float32_forward_and_backward_agree_with_float64(rng):
    """float32 stays float32 and within float32 rounding of the float64 result (c2-like 5-wide kernel)."""
    x = rng.uniform(-1, 1, (2, 3, 5, 9, 12))
    w = rng.uniform(-1, 1, (4, 3, 3, 5, 5))
    b = rng.uniform(-1, 1, 4)
    y32 = conv3d(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), padding=(1, 0, 2))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, conv3d_ref(x, w, b, 1, (1, 0, 2)), rtol=1e-4, atol=1e-4)
    g = rng.standard_normal(y32.shape)
    grads32 = conv3d_backward(x.astype(np.float32), w.astype(np.float32), g.astype(np.float32), padding=(1, 0, 2))
    grads64 = conv3d_backward(x, w, g, padding=(1, 0, 2))
    for a32, a64 in zip(grads32, grads64):
        assert a32.dtype == np.float32
        np.testing.assert_allclose(a32, a64, rtol=1e-4, atol=1e-3)


def test_mixed_dtypes_promote_to_float64_and_integers_to_float32(rng):
    x = rng.standard_normal((1, 2, 3, 4, 5))
    w = rng.standard_normal((2, 2, 1, 3, 3))
    assert conv3d(x.astype(np.float32), w).dtype == np.float64
    y = conv3d(np.ones((1, 2, 3, 4, 5), np.int64), np.ones((2, 2, 1, 3, 5), np.int32), padding=(0, 1, 2))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, conv3d_ref(np.ones((1, 2, 3, 4, 5)), np.ones((2, 2, 1, 3, 5)), None, 1,
                                                (0, 1, 2)))


def test_conv3d_backward_directional_derivative_on_a_strided_padded_case(rng):
    """A larger case (stride 2 in every dimension, floor-mode leftovers) checked along random directions."""
    x = rng.standard_normal((2, 3, 9, 8, 11))
    w = rng.standard_normal((2, 3, 3, 2, 3))
    kw = dict(stride=2, padding=(1, 0, 1))
    g = rng.standard_normal(conv3d(x, w, **kw).shape)
    gx, gw, _ = conv3d_backward(x, w, g, **kw)
    assert_gradient_along_random_directions(lambda v: np.vdot(g, conv3d(v, w, **kw)), x, gx, rng, name="x")
    assert_gradient_along_random_directions(lambda v: np.vdot(g, conv3d(x, v, **kw)), w, gw, rng, name="weight")


# ----------------------------------------------------------------------------------------------
# Bad input: ValueError naming the argument and the shapes
# ----------------------------------------------------------------------------------------------

X = np.zeros((1, 2, 4, 4, 4))
W = np.zeros((3, 2, 3, 3, 3))
NAN_X = X.copy()
NAN_X[0, 1, 2, 3, 0] = np.nan
INF_W = W.copy()
INF_W[1, 0, 0, 0, 0] = np.inf


@pytest.mark.parametrize("args, kwargs, message", [
    ((X[0], W), {}, r"x must be 5-D \(N, C, D, H, W\), got shape \(2, 4, 4, 4\)"),
    ((X, W[0]), {}, r"weight must be 5-D \(T, S, kD, kH, kW\), got shape \(2, 3, 3, 3\)"),
    ((np.zeros((1, 5, 4, 4, 4)), W), {},
     r"channel mismatch: x has 5 channels \(shape \(1, 5, 4, 4, 4\)\) but weight expects 2 \(shape \(3, 2, 3, 3, 3\)\)"),
    ((X, W, np.zeros(2)), {}, r"bias has shape \(2,\) but weight has 3 output channels"),
    ((NAN_X, W), {}, r"x \(shape \(1, 2, 4, 4, 4\)\) holds a non-finite value nan at index \(0, 1, 2, 3, 0\)"),
    ((X, INF_W), {}, r"weight \(shape \(3, 2, 3, 3, 3\)\) holds a non-finite value inf at index \(1, 0, 0, 0, 0\)"),
    ((np.zeros((1, 2, 4, 2, 4)), W), {"padding": (1, 0, 0)},
     r"empty output: input spatial shape \(4, 2, 4\) with padding \(1, 0, 0\) is smaller than kernel "
     r"\(3, 3, 3\) \(output would be \(4, 0, 2\)\)"),
    ((X, W), {"stride": 0}, r"stride must be >= 1 in every dimension, got 0"),
    ((X, W), {"stride": (1, 2)}, r"stride must be an int or a 3-tuple, got \(1, 2\)"),
    ((X, W), {"stride": (1, 1.5, 1)}, r"stride must contain integers, got \(1, 1.5, 1\)"),
    ((X, W), {"stride": "a"}, r"stride must contain integers, got 'a'"),
    ((X, W), {"stride": None}, r"stride must be an int or a 3-tuple of ints, got None"),
    ((X, W), {"padding": (0, -1, 0)}, r"padding must be >= 0 in every dimension, got \(0, -1, 0\)"),
    ((X.astype(np.complex128), W), {}, r"x must be float32 or float64, got dtype complex128"),
])
def test_conv3d_rejects_bad_input_naming_argument_and_shapes(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        conv3d(*args, **kwargs)


def test_conv3d_backward_rejects_grad_out_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"grad_out has shape \(1, 3, 2, 2, 2\), expected \(1, 3, 2, 2, 3\) "
                                         r"for x \(1, 2, 4, 4, 4\) and weight \(3, 2, 3, 3, 2\)"):
        conv3d_backward(X, np.zeros((3, 2, 3, 3, 2)), np.zeros((1, 3, 2, 2, 2)))
    with pytest.raises(ValueError, match=r"grad_out \(shape \(1, 3, 2, 2, 2\)\) holds a non-finite value"):
        conv3d_backward(X, W, np.full((1, 3, 2, 2, 2), np.nan))


@settings(max_examples=12)
@given(shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 40)),
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)), extra_rows=st.integers(0, 2),
       seed=st.integers(0, 2**31 - 1))
def test_eq1_zero_padding_is_written_in_one_pass_into_uninitialised_memory(shape, padding, extra_rows, seed):
    """The padded input Xp of eq. (1): x in the interior, 0 everywhere else (and in ``extra_rows`` more
    rows below each plane), whatever the buffer held before (np.empty recycles freed memory: fill it
    with NaN first so that a value not written shows); rows short and long (copied by element loops or
    as slices)."""
    from tuckerref.kernels.conv3d import _padded
    x = np.random.default_rng(seed).uniform(-1, 1, shape)
    pd, ph, pw = padding
    want = np.pad(x, [(0, 0), (0, 0), (pd, pd), (ph, ph + extra_rows), (pw, pw)])
    np.full(want.shape, np.nan)  # leaves NaN in memory the next allocation of this size may reuse
    got = _padded(x, padding, extra_rows)
    np.testing.assert_array_equal(got, want)
