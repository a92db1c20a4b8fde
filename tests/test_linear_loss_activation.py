"""linear, ReLU, dropout masks, softmax and softmax cross-entropy against float64 references."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from reference import linear_ref, numerical_gradient, softmax_cross_entropy_ref
from tuckerref import (dropout_mask, linear, linear_backward, relu, relu_backward, softmax,
                       softmax_cross_entropy)

seeds = st.integers(0, 2**31 - 1)


# ----------------------------------------------------------------------------------------------
# Linear: Y = X W^T + b
# ----------------------------------------------------------------------------------------------

@settings(max_examples=20)
@given(N=st.integers(1, 4), I=st.integers(1, 12), O=st.integers(1, 6), bias=st.booleans(), seed=seeds)
def test_linear_matches_reference_and_finite_differences(N, I, O, bias, seed):
    r = np.random.default_rng(seed)
    x, w = r.standard_normal((N, I)), r.standard_normal((O, I))
    b = r.standard_normal(O) if bias else None
    y = linear(x, w, b)
    np.testing.assert_allclose(y, linear_ref(x, w, b), rtol=1e-12, atol=1e-12)
    g = r.standard_normal(y.shape)
    gx, gw, gb = linear_backward(x, w, g)
    b0 = np.zeros(O) if b is None else b
    tol = dict(rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(gx, numerical_gradient(lambda v: np.vdot(g, linear(v, w, b0)), x), **tol)
    np.testing.assert_allclose(gw, numerical_gradient(lambda v: np.vdot(g, linear(x, v, b0)), w), **tol)
    np.testing.assert_allclose(gb, numerical_gradient(lambda v: np.vdot(g, linear(x, w, v)), b0.copy()), **tol)
    assert linear_backward(x, w, g, need_grad_x=False)[0] is None


def test_linear_float32_stays_float32(rng):
    x, w = rng.standard_normal((3, 50)), rng.standard_normal((7, 50))
    y = linear(x.astype(np.float32), w.astype(np.float32))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, linear_ref(x, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("args, message", [
    ((np.zeros((2, 3, 1)), np.zeros((4, 3))), r"x must be 2-D \(N, in_features\), got shape \(2, 3, 1\)"),
    ((np.zeros((2, 3)), np.zeros((4, 5))),
     r"feature mismatch: x has shape \(2, 3\) but weight has shape \(4, 5\) \(expects 5 input features\)"),
    ((np.zeros((2, 3)), np.zeros((4, 3)), np.zeros(3)), r"bias has shape \(3,\) but weight has 4 outputs"),
    ((np.full((2, 3), np.inf), np.zeros((4, 3))), r"x \(shape \(2, 3\)\) holds a non-finite value inf at index \(0, 0\)"),
])
def test_linear_rejects_bad_input_naming_argument_and_shapes(args, message):
    with pytest.raises(ValueError, match=message):
        linear(*args)


def test_linear_backward_rejects_grad_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"grad_out has shape \(2, 3\), expected \(2, 4\)"):
        linear_backward(np.zeros((2, 3)), np.zeros((4, 3)), np.zeros((2, 3)))


# ----------------------------------------------------------------------------------------------
# ReLU and dropout
# ----------------------------------------------------------------------------------------------

@settings(max_examples=10)
@given(shape=st.sampled_from([(5,), (2, 7), (1, 2, 3, 4, 5)]), seed=seeds)
def test_relu_is_max_x_0_with_gradient_g_where_positive(shape, seed):
    r = np.random.default_rng(seed)
    # Keep entries away from the kink at 0, where the derivative is undefined.
    x = r.choice([-1.0, 1.0], shape) * r.uniform(0.1, 2.0, shape)
    y = relu(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    g = r.standard_normal(shape)
    numeric = numerical_gradient(lambda v: np.vdot(g, relu(v)), x.copy())
    np.testing.assert_allclose(relu_backward(y, g), numeric, rtol=1e-8, atol=1e-8)


def test_relu_inplace_overwrites_its_input_and_keeps_nan():
    x = np.array([-1.0, 0.0, 2.0, np.nan])
    y = relu(x, inplace=True)
    assert y is x
    np.testing.assert_array_equal(x, [0.0, 0.0, 2.0, np.nan])
    z = np.array([-1.0, 3.0])
    relu(z)
    np.testing.assert_array_equal(z, [-1.0, 3.0])
    with pytest.raises(ValueError, match=r"relu_backward: output shape \(2,\) and grad shape \(3,\) differ"):
        relu_backward(np.zeros(2), np.zeros(3))


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5])
def test_dropout_mask_is_bernoulli_keep_scaled_by_inverse_keep_probability(p):
    m = dropout_mask((20, 30, 40), p, np.random.default_rng(0), dtype=np.float64)
    assert m.shape == (20, 30, 40)
    assert set(np.unique(m)) <= {0.0, 1.0 / (1.0 - p)}
    assert np.mean(m == 0) == pytest.approx(p, abs=0.02)  # 24,000 draws: 3-sigma is < 0.01
    np.testing.assert_array_equal(m, dropout_mask((20, 30, 40), p, np.random.default_rng(0), dtype=np.float64))


def test_dropout_mask_channelwise_has_one_draw_per_sample_and_channel():
    m = dropout_mask((40, 50, 3, 4, 5), 0.3, np.random.default_rng(1), channelwise=True)
    assert m.shape == (40, 50, 1, 1, 1) and m.dtype == np.float32
    assert np.mean(m == 0) == pytest.approx(0.3, abs=0.04)  # 2,000 draws
    np.testing.assert_allclose(np.unique(m), [0.0, 1 / 0.7], rtol=1e-6)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_mask_rejects_probability_outside_0_1(p):
    with pytest.raises(ValueError, match=rf"dropout probability must be in \[0, 1\), got {p}"):
        dropout_mask((2, 3), p, np.random.default_rng(0))


# ----------------------------------------------------------------------------------------------
# Softmax cross-entropy: L = mean(logsumexp(z) - z_y), dL/dz = (softmax(z) - onehot(y)) / N
# ----------------------------------------------------------------------------------------------

@settings(max_examples=20)
@given(N=st.integers(1, 6), K=st.integers(2, 5), scale=st.sampled_from([1.0, 30.0]), seed=seeds)
def test_cross_entropy_gradient_is_softmax_minus_onehot_over_n(N, K, scale, seed):
    r = np.random.default_rng(seed)
    z = scale * r.standard_normal((N, K))
    y = r.integers(0, K, N)
    loss, grad = softmax_cross_entropy(z, y)
    loss_ref, grad_ref = softmax_cross_entropy_ref(z, y)
    assert loss == pytest.approx(loss_ref, rel=1e-12, abs=1e-12)
    onehot = np.eye(K)[y]
    # The true class's entry is p - 1 with p within 1e-12 of 1 for large logits: that cancellation is
    # exact only to a few ulps of 1.0 in any implementation, hence an absolute bound of 64 eps / N.
    atol = 64 * np.finfo(np.float64).eps / N
    np.testing.assert_allclose(grad, (softmax(z) - onehot) / N, rtol=1e-12, atol=atol)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-12, atol=atol)
    numeric = numerical_gradient(lambda v: softmax_cross_entropy(v, y)[0], z.copy())
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1e4, 0.0], [0.0, -1e4], [500.0, 500.0]])
    loss, grad = softmax_cross_entropy(z, np.array([1, 1, 0]))
    # Per sample: 1e4, 1e4, log 2.
    assert loss == pytest.approx((2e4 + np.log(2)) / 3, rel=1e-12)
    np.testing.assert_allclose(grad, [[1 / 3, -1 / 3], [1 / 3, -1 / 3], [-1 / 6, 1 / 6]], atol=1e-12)
    shifted = softmax(z + 1e5)
    np.testing.assert_allclose(shifted, softmax(z))
    np.testing.assert_allclose(shifted.sum(axis=1), 1.0)


@pytest.mark.parametrize("logits, labels, message", [
    (np.zeros((3, 2)), np.array([0, 1]), r"labels must have shape \(3,\) to match logits \(3, 2\), got \(2,\)"),
    (np.zeros((2, 2)), np.array([0, 2]), r"labels must lie in \[0, 1\], got values in \[0, 2\]"),
    (np.zeros((2, 2)), np.array([0.0, 1.0]), r"labels must be integers, got dtype float64"),
    (np.array([[0.0, np.nan]]), np.array([0]), r"logits \(shape \(1, 2\)\) holds a non-finite value nan"),
    (np.zeros(3), np.array([0]), r"logits must be 2-D \(N, classes\), got shape \(3,\)"),
])
def test_cross_entropy_rejects_bad_input(logits, labels, message):
    with pytest.raises(ValueError, match=message):
        softmax_cross_entropy(logits, labels)
