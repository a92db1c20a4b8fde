"""max_pool3d / max_pool3d_backward: window maxima, gradient routing, finite differences, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings

from reference import (distinct_input, max_pool3d_backward_ref, max_pool3d_ref, numerical_gradient,
                       pool_cases)
from tuckerref import max_pool3d, max_pool3d_backward, max_pool3d_values
from tuckerref.nn import MaxPool3d, no_grad


@settings(max_examples=30)
@given(case=pool_cases())
def test_max_pool_picks_the_window_maxima_and_records_their_positions(case):
    x, _ = distinct_input(case)
    y, idx = max_pool3d(x, case["kernel"], case["stride"], case["padding"])
    y_ref, winner = max_pool3d_ref(x, case["kernel"], case["stride"], case["padding"])
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, winner)
    per_map = lambda a: a.reshape(a.shape[:2] + (-1,))  # noqa: E731
    np.testing.assert_array_equal(np.take_along_axis(per_map(x), per_map(idx), -1), per_map(y))


@settings(max_examples=20)
@given(case=pool_cases())
def test_pool_gradient_routes_only_to_maxima(case):
    """dL/dX(q) = sum of G over the windows whose maximum is q; zero at every other input."""
    x, r = distinct_input(case)
    y, idx = max_pool3d(x, case["kernel"], case["stride"], case["padding"])
    g = r.standard_normal(y.shape)
    gx = max_pool3d_backward(g, idx, x.shape)
    _, winner = max_pool3d_ref(x, case["kernel"], case["stride"], case["padding"])
    np.testing.assert_allclose(gx, max_pool3d_backward_ref(g, winner, x.shape), rtol=1e-12, atol=1e-12)
    is_max = np.zeros(x.shape[:2] + (x[0, 0].size,), bool)
    np.put_along_axis(is_max, winner.reshape(winner.shape[:2] + (-1,)), True, axis=-1)
    assert np.all(gx.reshape(is_max.shape)[~is_max] == 0)


@settings(max_examples=10)
@given(case=pool_cases())
def test_pool_backward_matches_finite_differences(case):
    x, r = distinct_input(case)  # values >= 1 apart, so steps of 1e-3 never change a window's winner
    x = x[:1, :1]
    y, idx = max_pool3d(x, case["kernel"], case["stride"], case["padding"])
    g = r.standard_normal(y.shape)
    numeric = numerical_gradient(lambda v: np.vdot(g, max_pool3d(v, case["kernel"], case["stride"],
                                                                 case["padding"])[0]), x, eps=1e-3)
    np.testing.assert_allclose(max_pool3d_backward(g, idx, x.shape), numeric, rtol=1e-9, atol=1e-9)


def test_pool_ties_go_to_the_first_maximum_in_scan_order_and_nan_propagates():
    """PyTorch's rule: the first maximal element (in (d, h, w) order) wins; a NaN in a window wins."""
    x = np.ones((1, 1, 2, 2, 2))
    y, idx = max_pool3d(x, 2)
    assert y.ravel().tolist() == [1.0] and idx.ravel().tolist() == [0]
    x[0, 0, 1, 0, 1] = np.nan
    y, idx = max_pool3d(x, 2)
    assert np.isnan(y).all() and idx.ravel().tolist() == [5]


def test_pool_padding_never_wins_over_negative_inputs():
    x = -np.arange(1, 28, dtype=np.float64).reshape(1, 1, 3, 3, 3)
    y, _ = max_pool3d(x, 3, stride=2, padding=1)
    np.testing.assert_array_equal(y, max_pool3d_ref(x, 3, 2, 1)[0])
    assert np.isfinite(y).all()


def test_pool_float32_keeps_dtype(rng):
    x = rng.standard_normal((2, 3, 4, 8, 8)).astype(np.float32)
    y, idx = max_pool3d(x, (2, 4, 4))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, max_pool3d_ref(x, (2, 4, 4))[0].astype(np.float32))
    assert max_pool3d_backward(np.ones_like(y), idx, x.shape).dtype == np.float32


@pytest.mark.parametrize("args, message", [
    ((np.zeros((2, 4, 4, 4)), 2), r"x must be 5-D \(N, C, D, H, W\), got shape \(2, 4, 4, 4\)"),
    ((np.zeros((1, 1, 4, 4, 4)), 2, None, (0, 2, 0)),
     r"padding \(0, 2, 0\) must be at most half of kernel_size \(2, 2, 2\)"),
    ((np.zeros((1, 1, 4, 1, 4)), (2, 4, 4)),
     r"empty output: input spatial shape \(4, 1, 4\) is smaller than pooling window \(2, 4, 4\)"),
    ((np.zeros((1, 1, 4, 4, 4)), 0), r"kernel_size must be >= 1 in every dimension, got 0"),
    ((np.zeros((1, 1, 4, 4, 4)), 2, (1, 0, 1)), r"stride must be >= 1 in every dimension, got \(1, 0, 1\)"),
    ((np.zeros((1, 1, 4, 4, 4)), 2, None, -1), r"padding must be >= 0 in every dimension, got -1"),
])
def test_pool_rejects_bad_input_naming_argument_and_shapes(args, message):
    with pytest.raises(ValueError, match=message):
        max_pool3d(*args)


def test_pool_backward_rejects_mismatched_shapes():
    y, idx = max_pool3d(np.zeros((1, 2, 4, 4, 4)), 2)
    with pytest.raises(ValueError, match=r"grad_out shape \(1, 2, 2, 2, 1\) does not match argmax shape \(1, 2, 2, 2, 2\)"):
        max_pool3d_backward(np.zeros((1, 2, 2, 2, 1)), idx, (1, 2, 4, 4, 4))
    with pytest.raises(ValueError, match=r"input_shape \(1, 3, 4, 4, 4\) does not match grad_out \(1, 2, 2, 2, 2\)"):
        max_pool3d_backward(y, idx, (1, 3, 4, 4, 4))


@settings(deadline=None, max_examples=20)
@given(case=pool_cases())
def test_max_pool_values_path_equals_the_argmax_path(case):
    """max_pool3d_values (inference, no argmax) computes the same maxima as max_pool3d."""
    x = np.random.default_rng(case["seed"]).standard_normal(case["shape"])
    np.testing.assert_array_equal(max_pool3d_values(x, case["kernel"], case["stride"], case["padding"]),
                                  max_pool3d(x, case["kernel"], case["stride"], case["padding"])[0])


@settings(deadline=None, max_examples=15)
@given(case=pool_cases())
def test_max_pool_values_with_relu_is_max_of_the_window_maxima_and_zero(case):
    """relu=True gives max(max_pool3d(x), 0) in the same pass, for every window shape (the 2-wide,
    2-strided pairs and the general loop) and with padding."""
    x = np.random.default_rng(case["seed"]).standard_normal(case["shape"])
    y = max_pool3d(x, case["kernel"], case["stride"], case["padding"])[0]
    np.testing.assert_array_equal(max_pool3d_values(x, case["kernel"], case["stride"], case["padding"], relu=True),
                                  np.maximum(y, 0))


@pytest.mark.parametrize("kernel", [(1, 2, 2), (1, 3, 3)])
def test_max_pool_values_relu_keeps_nan_and_sends_minus_infinity_to_zero(kernel):
    x = np.full((1, 1, 1, 3, 6), -np.inf, np.float32)
    x[0, 0, 0, :, 3:] = -1
    x[0, 0, 0, 0, 0] = np.nan
    y = max_pool3d_values(x, kernel, relu=True)
    assert y.dtype == np.float32 and np.isnan(y.reshape(-1)[0]) and np.all(y.reshape(-1)[1:] == 0)


def test_max_pool_values_path_propagates_nan():
    x = np.zeros((1, 1, 2, 4, 4))
    x[0, 0, 1, 2, 3] = np.nan
    y = max_pool3d_values(x, (2, 2, 2))
    assert np.isnan(y[0, 0, 0, 1, 1]) and np.count_nonzero(np.isnan(y)) == 1


def test_layers_keep_nothing_under_no_grad_and_say_so_on_backward():
    layer = MaxPool3d(2)
    with no_grad():
        y = layer(np.ones((1, 1, 2, 2, 2)))
    with pytest.raises(ValueError, match=r"MaxPool3d\(.*\)\.backward needs a forward pass with gradients enabled"):
        layer.backward(np.ones_like(y))
