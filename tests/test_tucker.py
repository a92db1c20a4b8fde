"""Partial Tucker decomposition (the paper's eq. 5; Kolda & Bader 2009, Section 4), unfoldings and mode
products (Kolda & Bader, Sections 2.4 and 2.5)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuckerref.tucker import (fold, mode_dot, partial_tucker, relative_error, tucker_to_tensor, unfold)

SETTINGS = settings(deadline=None, max_examples=20)


@st.composite
def kernels_and_ranks(draw, full=False):
    """A (T, S, kD, kH, kW) float64 kernel and Tucker-2 ranks (R_s, R_t)."""
    T, S = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    k = tuple(draw(st.integers(1, 3)) for _ in range(3))
    K = np.random.default_rng(draw(st.integers(0, 2**31))).normal(size=(T, S) + k)
    if full:
        return K, (S, T)
    return K, (draw(st.integers(1, S)), draw(st.integers(1, T)))


def test_unfoldings_match_kolda_bader_worked_example():
    # Kolda & Bader (2009), section 2.4: frontal slices X1 = [1 4 7 10; 2 5 8 11; 3 6 9 12], X2 = X1 + 12.
    X = np.arange(1, 25).reshape(3, 4, 2, order="F")
    np.testing.assert_array_equal(unfold(X, 0), [[1, 4, 7, 10, 13, 16, 19, 22], [2, 5, 8, 11, 14, 17, 20, 23],
                                                 [3, 6, 9, 12, 15, 18, 21, 24]])
    np.testing.assert_array_equal(unfold(X, 1), [[1, 2, 3, 13, 14, 15], [4, 5, 6, 16, 17, 18],
                                                 [7, 8, 9, 19, 20, 21], [10, 11, 12, 22, 23, 24]])
    np.testing.assert_array_equal(unfold(X, 2), [list(range(1, 13)), list(range(13, 25))])


@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=5), data=st.data())
def test_fold_inverts_unfold_and_mode_product_is_matrix_product_of_unfolding(shape, data):
    mode = data.draw(st.integers(0, len(shape) - 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    X = rng.normal(size=shape)
    np.testing.assert_array_equal(fold(unfold(X, mode), mode, X.shape), X)
    M = rng.normal(size=(data.draw(st.integers(1, 4)), shape[mode]))
    np.testing.assert_allclose(unfold(mode_dot(X, M, mode), mode), M @ unfold(X, mode), rtol=1e-12, atol=1e-12)


@SETTINGS
@given(case=kernels_and_ranks(full=True), method=st.sampled_from(["hooi", "hosvd"]))
def test_eq5_full_rank_reconstruction_is_exact(case, method):
    K, ranks = case
    core, factors = partial_tucker(K, (1, 0), ranks, method=method)
    assert relative_error(K, core, factors, (1, 0)) < 1e-10


@SETTINGS
@given(case=kernels_and_ranks(), method=st.sampled_from(["hooi", "hosvd"]))
def test_eq5_core_is_kernel_times_transposed_factors_and_factors_are_orthonormal(case, method):
    K, (rs, rt) = case
    core, (u_s, u_t) = partial_tucker(K, (1, 0), (rs, rt), method=method)
    assert u_s.shape == (K.shape[1], rs) and u_t.shape == (K.shape[0], rt)
    assert core.shape == (rt, rs) + K.shape[2:]
    np.testing.assert_allclose(core, mode_dot(mode_dot(K, u_s.T, 1), u_t.T, 0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(u_s.T @ u_s, np.eye(rs), atol=1e-12)
    np.testing.assert_allclose(u_t.T @ u_t, np.eye(rt), atol=1e-12)
    # eq. (5) element-wise: K_hat(t, s, ...) = sum C(r_t, r_s, ...) U_s(s, r_s) U_t(t, r_t)
    np.testing.assert_allclose(tucker_to_tensor(core, [u_s, u_t], (1, 0)),
                               np.einsum("abijl,sb,ta->tsijl", core, u_s, u_t), rtol=1e-12, atol=1e-12)


@SETTINGS
@given(case=kernels_and_ranks())
def test_hooi_error_never_exceeds_hosvd_error(case):
    K, ranks = case
    errors = {m: relative_error(K, *partial_tucker(K, (1, 0), ranks, method=m), (1, 0)) for m in ("hooi", "hosvd")}
    assert errors["hooi"] <= errors["hosvd"] + 1e-12


def test_hooi_improves_on_hosvd_for_a_generic_kernel():
    K = np.random.default_rng(3).normal(size=(8, 7, 3, 3, 3))
    e_hooi = relative_error(K, *partial_tucker(K, (1, 0), (2, 3), method="hooi"), (1, 0))
    e_hosvd = relative_error(K, *partial_tucker(K, (1, 0), (2, 3), method="hosvd"), (1, 0))
    assert e_hooi < e_hosvd


def test_single_mode_truncation_is_the_eckart_young_optimum():
    W = np.random.default_rng(4).normal(size=(9, 13))
    core, (u,) = partial_tucker(W, 0, 3)
    s = np.linalg.svd(W, compute_uv=False)
    assert np.linalg.norm(W - u @ core) == pytest.approx(np.sqrt(np.sum(s[3:] ** 2)), rel=1e-12)


def test_float32_input_is_decomposed_in_float64():
    K = np.random.default_rng(5).normal(size=(4, 3, 2, 2, 2)).astype(np.float32)
    core, factors = partial_tucker(K, (1, 0), (3, 4))
    assert core.dtype == np.float64 and all(f.dtype == np.float64 for f in factors)
    assert relative_error(K, core, factors, (1, 0)) < 1e-12


@pytest.mark.parametrize("kwargs, message", [
    (dict(modes=(1, 0), ranks=(4, 2)), "rank 4 for mode 1"),
    (dict(modes=(1, 0), ranks=(0, 2)), "rank 0 for mode 1"),
    (dict(modes=(1, 1), ranks=(1, 1)), "distinct"),
    (dict(modes=(1, 5), ranks=(1, 1)), "modes entry"),
    (dict(modes=(1, 0), ranks=(1,)), "one rank per mode"),
    (dict(modes=(1, 0), ranks=(1, 1), method="svd"), "method"),
])
def test_bad_decomposition_arguments_raise_value_error(kwargs, message):
    K = np.ones((5, 3, 2, 2, 2))
    with pytest.raises(ValueError, match=message):
        partial_tucker(K, **kwargs)


def test_nan_tensor_raises_value_error():
    K = np.ones((3, 3, 1, 1, 1))
    K[1, 2, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        partial_tucker(K, (1, 0), (1, 1))


def test_fold_and_mode_dot_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="cannot fold"):
        fold(np.ones((3, 4)), 0, (3, 5))
    with pytest.raises(ValueError, match="mode_dot"):
        mode_dot(np.ones((3, 4)), np.ones((2, 3)), 1)
