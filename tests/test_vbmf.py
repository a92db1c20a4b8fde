"""EVBMF / VBMF rank selection (Nakajima et al., JMLR 2013 and NIPS 2012; docs/method.md section 6)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuckerref.tucker import mode_dot
from tuckerref.vbmf import (estimate_ranks, evb_tau_threshold, evb_x_threshold, evbmf, psi, tau_of_x,
                            vb_posterior, vb_shrinkage, vb_threshold, vbmf)
from tuckerref.vbmf import _evb_sigma2_bounds, _evb_twice_free_energy_over_M

SETTINGS = settings(deadline=None, max_examples=20)


def low_rank_plus_noise(rng, L, M, rank, snr):
    """U diag(g) V^T + sigma E with signal singular values snr..3 snr times the noise edge sigma (sqrt L + sqrt M)."""
    sigma = rng.uniform(0.1, 2.0)
    edge = sigma * (np.sqrt(L) + np.sqrt(M))
    U, _ = np.linalg.qr(rng.normal(size=(L, rank)))
    V, _ = np.linalg.qr(rng.normal(size=(M, rank)))
    Y = U @ np.diag(edge * rng.uniform(snr, 3 * snr, rank)) @ V.T + sigma * rng.normal(size=(L, M))
    return Y, sigma ** 2


@st.composite
def noisy_matrices(draw):
    L, M = draw(st.integers(2, 30)), draw(st.integers(2, 30))
    rank = draw(st.integers(0, min(L, M)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    return low_rank_plus_noise(rng, L, M, rank, draw(st.floats(0.3, 3.0)))[0]


def test_evb_threshold_tau_is_the_zero_of_psi_and_2_5129_at_alpha_1():
    assert evb_tau_threshold(1.0) == pytest.approx(2.5129, abs=5e-5)
    for alpha in (1e-3, 0.1, 0.37, 1.0):
        t = evb_tau_threshold(alpha)
        assert t > np.sqrt(alpha) and abs(psi(t, alpha)) < 1e-12
        # tau(x) inverts x = (1 + tau)(1 + alpha / tau)
        assert tau_of_x(evb_x_threshold(alpha), alpha) == pytest.approx(t, rel=1e-9)


@pytest.mark.parametrize("shape", [(10, 40), (40, 10), (20, 20), (6, 60), (60, 6), (16, 100)])
def test_evbmf_recovers_the_true_rank_in_95_percent_of_noisy_low_rank_draws(shape):
    L, M = shape
    rng = np.random.default_rng(sum(shape))
    draws, hits = 40, 0
    for _ in range(draws):
        rank = int(rng.integers(1, max(1, min(L, M) // 3) + 1))
        Y, _ = low_rank_plus_noise(rng, L, M, rank, snr=1.5)
        hits += evbmf(Y).rank == rank
    assert hits >= 0.95 * draws


def test_evbmf_finds_no_component_in_pure_noise_and_estimates_its_variance():
    rng = np.random.default_rng(7)
    ranks, ratios = [], []
    for _ in range(20):
        Y = 0.7 * rng.normal(size=(25, 60))
        res = evbmf(Y)
        ranks.append(res.rank)
        ratios.append(res.sigma2 / 0.49)
    assert sum(r == 0 for r in ranks) >= 19
    assert 0.85 < np.median(ratios) < 1.15


@SETTINGS
@given(Y=noisy_matrices(), c=st.floats(1e-3, 1e3))
def test_evbmf_rank_is_invariant_to_scaling_and_transposition_and_at_most_min_side(Y, c):
    res = evbmf(Y)
    assert 0 <= res.rank <= min(Y.shape)
    assert evbmf(c * Y).rank == res.rank
    assert evbmf(Y.T).rank == res.rank
    assert evbmf(c * Y).sigma2 == pytest.approx(c * c * res.sigma2, rel=1e-6)


@SETTINGS
@given(Y=noisy_matrices())
def test_evb_sigma2_minimises_the_free_energy_over_its_analytic_bounds(Y):
    res = evbmf(Y)
    Z = Y if Y.shape[0] <= Y.shape[1] else Y.T
    L, M = Z.shape
    s = np.linalg.svd(Z, compute_uv=False)
    x_evb, total = evb_x_threshold(L / M), float(np.sum(Z * Z))
    lower, upper = _evb_sigma2_bounds(s, L, M, L, x_evb, total)
    assert lower <= res.sigma2 * (1 + 1e-9) and res.sigma2 <= upper * (1 + 1e-9)
    grid = np.linspace(np.log(max(lower, upper * 1e-14)), np.log(upper), 4001)
    f = lambda u: _evb_twice_free_energy_over_M(u, s, total, L, M, x_evb)  # noqa: E731
    assert f(np.log(res.sigma2)) <= np.min(f(grid)) + 1e-9 * abs(np.min(f(grid)))
    # the reported free energy is 1/2 M (that scaled objective + L log 2 pi)
    assert res.free_energy == pytest.approx(0.5 * M * (f(np.log(res.sigma2)) + L * np.log(2 * np.pi)), rel=1e-12)


@SETTINGS
@given(Y=noisy_matrices(), sigma2=st.floats(1e-2, 10.0))
def test_evb_keeps_singular_values_above_threshold_and_shrinks_them_by_the_tau_equation(Y, sigma2):
    res = evbmf(Y, sigma2=sigma2)
    L, M = sorted(Y.shape)
    gamma = np.linalg.svd(Y, compute_uv=False)
    assert res.threshold == pytest.approx(np.sqrt(M * sigma2 * evb_x_threshold(L / M)), rel=1e-12)
    assert res.rank == np.count_nonzero(gamma > res.threshold)
    g = gamma[:res.rank]
    # NIPS12 eq. (15) in the tau parameterisation: gamma_breve gamma / (M sigma^2) = tau(gamma^2 / (M sigma^2))
    np.testing.assert_allclose(res.S * g / (M * sigma2), tau_of_x(g * g / (M * sigma2), L / M), rtol=1e-9)
    assert np.all((res.S > 0) & (res.S < g))


def test_evbmf_factors_are_orthonormal_in_the_original_orientation_and_denoise():
    rng = np.random.default_rng(11)
    for L, M in ((12, 30), (30, 12)):
        Y, _ = low_rank_plus_noise(rng, L, M, 3, snr=3.0)
        res = evbmf(Y)
        assert res.rank == 3 and res.U.shape == (L, 3) and res.V.shape == (M, 3)
        np.testing.assert_allclose(res.U.T @ res.U, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(res.V.T @ res.V, np.eye(3), atol=1e-12)
        U, s, Vt = np.linalg.svd(Y)
        np.testing.assert_allclose(np.abs(res.U.T @ U[:, :3]), np.eye(3), atol=1e-9)
        assert np.linalg.norm(res.U @ np.diag(res.S) @ res.V.T - U[:, :3] @ np.diag(s[:3]) @ Vt[:3]) \
            < np.linalg.norm(s[:3])


def test_evb_estimate_is_the_vb_estimate_at_the_evb_prior_product():
    rng = np.random.default_rng(2)
    Y, _ = low_rank_plus_noise(rng, 12, 50, 1, snr=2.0)
    res = evbmf(Y)
    gamma = np.linalg.svd(Y, compute_uv=False)[0]
    c_hat = np.sqrt(res.S[0] * gamma / (12 * 50))  # EVB's c_a c_b for this component
    assert vb_shrinkage(gamma, 12, 50, res.sigma2, c_hat) == pytest.approx(res.S[0], rel=1e-10)


def test_vb_flat_prior_threshold_is_sigma_sqrt_M():
    assert vb_threshold(10, 40, 0.25, 1e8) == pytest.approx(0.5 * np.sqrt(40), rel=1e-9)
    Y = np.random.default_rng(3).normal(size=(10, 40))
    gamma = np.linalg.svd(Y, compute_uv=False)
    assert vbmf(Y, 1e8, sigma2=1.0).rank == np.count_nonzero(gamma > np.sqrt(40))


@SETTINGS
@given(L=st.integers(1, 20), extra=st.integers(0, 30), sigma2=st.floats(1e-2, 10), c=st.floats(1e-2, 10),
       gamma=st.lists(st.floats(1e-2, 100), min_size=1, max_size=6))
def test_vb_posterior_satisfies_the_vb_stationary_conditions(L, extra, sigma2, c, gamma):
    M, g = L + extra, np.sort(np.array(gamma))[::-1]
    mu_a, mu_b, var_a, var_b = vb_posterior(g, L, M, sigma2, c)
    # c_a^2 = c_b^2 = c: var_a = sigma^2 / (mu_b^2 + L var_b + sigma^2 / c_a^2), mu_a = var_a gamma mu_b / sigma^2
    np.testing.assert_allclose(var_a, sigma2 / (mu_b ** 2 + L * var_b + sigma2 / c), rtol=1e-8)
    np.testing.assert_allclose(var_b, sigma2 / (mu_a ** 2 + M * var_a + sigma2 / c), rtol=1e-8)
    np.testing.assert_allclose(mu_a, var_a * g * mu_b / sigma2, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(mu_a * mu_b, np.where(g > vb_threshold(L, M, sigma2, c),
                                                     vb_shrinkage(g, L, M, sigma2, c), 0.0), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("cacb", [0.05, 0.5, 5.0])
def test_vb_noise_estimate_satisfies_sigma2_equals_expected_residual_over_LM(cacb):
    rng = np.random.default_rng(1)
    Y, _ = low_rank_plus_noise(rng, 12, 30, 2, snr=2.0)
    res = vbmf(Y, cacb)
    s = np.linalg.svd(Y, compute_uv=False)
    mu_a, mu_b, var_a, var_b = vb_posterior(s, 12, 30, res.sigma2, cacb)
    expected = np.sum(Y * Y) + np.sum(-2 * s * mu_a * mu_b + (mu_a ** 2 + 30 * var_a) * (mu_b ** 2 + 12 * var_b))
    assert res.sigma2 == pytest.approx(expected / (12 * 30), rel=1e-6)


def test_estimate_ranks_recovers_the_multilinear_ranks_of_a_noisy_kernel():
    rng = np.random.default_rng(5)
    core = rng.normal(size=(3, 2, 3, 4, 4))             # (R_t, R_s, kD, kH, kW)
    u_s, _ = np.linalg.qr(rng.normal(size=(12, 2)))
    u_t, _ = np.linalg.qr(rng.normal(size=(20, 3)))
    K = mode_dot(mode_dot(core, u_s, 1), u_t, 0)
    K += 0.01 * np.linalg.norm(K) / np.sqrt(K.size) * rng.normal(size=K.shape)
    assert estimate_ranks(K, (1, 0)) == (2, 3)
    assert estimate_ranks(K.astype(np.float32), 0) == (3,)


def test_zero_matrix_has_rank_zero():
    res = evbmf(np.zeros((4, 7)))
    assert res.rank == 0 and res.U.shape == (4, 0) and res.V.shape == (7, 0)


@pytest.mark.parametrize("call, message", [
    (lambda: evbmf(np.array([[1.0, np.nan], [0.0, 1.0]])), "non-finite"),
    (lambda: evbmf(np.ones(5)), "2-D"),
    (lambda: evbmf(np.ones((3, 5)), H=4), "H"),
    (lambda: evbmf(np.ones((3, 5)), sigma2=-1.0), "sigma2"),
    (lambda: vbmf(np.ones((3, 5)), cacb=0.0), "cacb"),
    (lambda: estimate_ranks(np.full((2, 2, 1, 1, 1), np.inf), (1, 0)), "non-finite"),
])
def test_bad_vbmf_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
