"""Rank selection by (empirical) variational Bayesian matrix factorisation, VBMF / EVBMF.

Model (Nakajima, Sugiyama, Babacan, Tomioka, "Global analytic solution of fully-observed variational
Bayesian matrix factorization", JMLR 14, 2013 — "JMLR13" below — and Nakajima, Tomioka, Sugiyama,
Babacan, "Perfect dimensionality recovery by variational Bayesian PCA", NIPS 2012 — "NIPS12"):

    Y = B A^T + E,  Y (L x M) with L <= M,  E_lm ~ N(0, sigma^2),
    columns a_h ~ N(0, c_a^2 I_M), b_h ~ N(0, c_b^2 I_L),  h = 1..H,

with column-wise independent Gaussian posteriors. The global VB solution is a shrinkage of the
singular values gamma_1 >= gamma_2 >= ... of Y: gamma_hat_h = gamma_breve_h if gamma_h exceeds a
threshold, 0 otherwise, with the singular vectors of Y. The estimated rank is the number of kept
components. A matrix with L > M is handled by transposing (the model is symmetric in A and B).

* VB with a fixed prior product c = c_a c_b (JMLR13, Theorem 1 and the threshold above its eq. 21):

      gamma_VB^2 = sigma^2 (t + sqrt(t^2 - L M)),  t = (L + M)/2 + sigma^2 / (2 c^2),
      gamma_breve = gamma (1 - sigma^2 / (2 gamma^2) (L + M + sqrt((M - L)^2 + 4 gamma^2 / c^2))).

* Empirical VB, c_a and c_b estimated too (NIPS12, Theorem 2 and eq. 15), with alpha = L / M,
  x = gamma^2 / (M sigma^2) and tau(x) = (x - (1 + alpha) + sqrt((x - (1 + alpha))^2 - 4 alpha)) / 2:

      keep component h  <=>  x_h > x_EVB = (1 + tau_EVB)(1 + alpha / tau_EVB),
      gamma_breve = gamma/2 (1 - (L+M) sigma^2/gamma^2 + sqrt((1 - (L+M) sigma^2/gamma^2)^2 - 4 L M sigma^4/gamma^4)),

  where tau_EVB is the unique zero above sqrt(alpha) of
      Psi(tau) = log(1 + tau) + alpha log(1 + tau / alpha) - tau
  (2.5129 for alpha = 1; the public Python port approximates it by 2.5129 sqrt(alpha), we solve it).
  The free energy of the EVB solution is (NIPS12)

      2 F(sigma^2) = L M log(2 pi sigma^2) + ||Y||_F^2 / sigma^2 + M sum_{kept h} Psi(tau(x_h)),

  and a component is kept exactly when it lowers F (Psi(tau) < 0 <=> tau > tau_EVB).

Noise variance: when ``sigma2`` is not given, it minimises F(sigma^2) over the analytic bounds
(Nakajima et al. 2012/2015)

      sigma2_upper = ||Y||_F^2 / (L M),
      sigma2_lower = max(gamma_{Hb+1}^2 / (M x_EVB), sum_{h > Hb} gamma_h^2 / (M (L - Hb))),
      Hb = min(ceil(L / (1 + alpha)) - 1, H),

by bounded scalar minimisation (``scipy.optimize.minimize_scalar(method="bounded")``) in log sigma^2.
F is not unimodal in sigma^2 (each component switching on or off makes a kink), so a log-spaced grid
over the bounds first picks the bracket that the bounded search then refines. Working in log sigma^2
makes the result exactly equivariant to scaling Y (rank invariant to Y -> c Y).
"""
from __future__ import annotations

from math import ceil
from typing import NamedTuple

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from .kernels import integer_in_range, require_finite
from .tucker import unfold

#: log-spaced points over [sigma2_lower, sigma2_upper] before the bounded refinement.
_GRID_POINTS = 256
#: Floor of the search interval relative to sigma2_upper (an exactly low-rank, noise-free matrix
#: would otherwise drive sigma^2 to 0).
_RELATIVE_FLOOR = 1e-14


class VBMFResult(NamedTuple):
    """Estimated rank, noise variance and factors (Y_hat = U @ diag(S) @ V.T, U (L, rank), V (M, rank))."""

    rank: int
    sigma2: float
    U: np.ndarray
    S: np.ndarray
    V: np.ndarray
    threshold: float      # singular values above it are kept
    free_energy: float    # F at the solution (with the constants)


def _as_matrix(Y, H):
    Y = np.asarray(Y)
    if Y.ndim != 2 or Y.size == 0 or Y.dtype.kind not in "fiu":
        raise ValueError(f"VBMF needs a non-empty real 2-D matrix, got dtype {Y.dtype} shape {Y.shape}")
    Y = np.asarray(Y, dtype=np.float64)
    require_finite(Y, "matrix Y given to VBMF")
    transposed = Y.shape[0] > Y.shape[1]
    if transposed:
        Y = Y.T
    L = Y.shape[0]
    if H is None:
        H = L
    shape = Y.T.shape if transposed else Y.shape
    H = integer_in_range(H, 1, L, "H (maximum rank)", f" for a matrix of shape {shape}")
    return Y, transposed, H


def _check_sigma2(sigma2):
    if sigma2 is not None and not (np.isfinite(sigma2) and sigma2 > 0):
        raise ValueError(f"sigma2 (noise variance) must be a positive finite number, got {sigma2!r}")
    return None if sigma2 is None else float(sigma2)


def tau_of_x(x, alpha: float):
    """tau(x) = (x - (1+alpha) + sqrt((x - (1+alpha))^2 - 4 alpha)) / 2, the inverse of x = (1+tau)(1+alpha/tau)."""
    d = np.asarray(x, dtype=np.float64) - (1.0 + alpha)
    return 0.5 * (d + np.sqrt(np.maximum(d * d - 4.0 * alpha, 0.0)))


def psi(tau, alpha: float):
    """Psi(tau) = log(1 + tau) + alpha log(1 + tau/alpha) - tau: a kept component's share of 2F/M (NIPS12)."""
    tau = np.asarray(tau, dtype=np.float64)
    return np.log1p(tau) + alpha * np.log1p(tau / alpha) - tau


def evb_tau_threshold(alpha: float) -> float:
    """tau_EVB: the zero of Psi above sqrt(alpha) (Psi decreases there since Psi'(tau) = (alpha - tau^2) / ((1+tau)(alpha+tau)))."""
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha = L/M must be in (0, 1], got {alpha}")
    return float(brentq(lambda t: float(psi(t, alpha)), np.sqrt(alpha), 10.0, xtol=1e-15, rtol=1e-15))


def evb_x_threshold(alpha: float) -> float:
    """x_EVB = (1 + tau_EVB)(1 + alpha / tau_EVB): keep a component when gamma^2 / (M sigma^2) exceeds it."""
    t = evb_tau_threshold(alpha)
    return (1.0 + t) * (1.0 + alpha / t)


def _evb_twice_free_energy_over_M(log_sigma2, s, total, L, M, x_evb):
    """2F/M - L log(2 pi) = L log sigma^2 + ||Y||^2 / (M sigma^2) + sum_{x_h > x_EVB} Psi(tau(x_h)).

    ``log_sigma2`` may be an array (one value per entry)."""
    u = np.asarray(log_sigma2, dtype=np.float64)
    sigma2 = np.exp(u)[..., None]
    alpha = L / M
    x = s * s / (M * sigma2)
    kept = x > x_evb
    share = np.where(kept, psi(tau_of_x(np.where(kept, x, x_evb), alpha), alpha), 0.0)
    return L * u + total / (M * sigma2[..., 0]) + np.sum(share, axis=-1)


def _minimise_log_sigma2(objective, lower, upper):
    """Bounded scalar minimisation of objective(log sigma^2) over [lower, upper] (grid, then refine)."""
    lower = max(lower, upper * _RELATIVE_FLOOR)
    if not upper > lower * (1.0 + 1e-12):
        return upper
    grid = np.linspace(np.log(lower), np.log(upper), _GRID_POINTS)
    values = np.asarray(objective(grid), dtype=np.float64)
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, _GRID_POINTS - 1)]
    res = minimize_scalar(lambda u: float(objective(u)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-12})
    best = res.x if res.fun <= values[i] else grid[i]
    return float(np.exp(best))


def _evb_sigma2_bounds(s_full, L, M, H, x_evb, total):
    """Analytic bounds of the EVB noise variance (module docstring)."""
    alpha = L / M
    Hb = min(int(ceil(L / (1.0 + alpha))) - 1, H)
    upper = total / (L * M)
    tail = s_full[Hb:]
    lower = max(s_full[Hb] ** 2 / (M * x_evb), float(np.sum(tail ** 2)) / (M * (L - Hb)))
    return lower, upper


def _result(Uy, s, Vty, keep, shrunk, transposed, sigma2, threshold, free_energy):
    rank = int(np.count_nonzero(keep))
    U, V = Uy[:, :rank], Vty[:rank].T
    if transposed:
        U, V = V, U
    return VBMFResult(rank, float(sigma2), np.ascontiguousarray(U), shrunk[:rank].copy(),
                      np.ascontiguousarray(V), float(threshold), float(free_energy))


def _evb_fit(s_full, L, M, H, total, sigma2):
    """(sigma^2, singular-value threshold, 2F/M objective) of EVBMF from the singular values ``s_full``
    of a non-zero L x M matrix (L <= M) with squared norm ``total``; ``sigma2`` None estimates it."""
    s = s_full[:H]
    x_evb = evb_x_threshold(L / M)
    objective = lambda u: _evb_twice_free_energy_over_M(u, s, total, L, M, x_evb)  # noqa: E731
    if sigma2 is None:
        sigma2 = _minimise_log_sigma2(objective, *_evb_sigma2_bounds(s_full, L, M, H, x_evb, total))
    return sigma2, float(np.sqrt(M * sigma2 * x_evb)), objective


def singular_values(Y) -> np.ndarray:
    """Singular values of a real matrix, descending, as the square roots of the eigenvalues of its
    smaller Gram matrix (Y Y^T or Y^T Y; negative rounding clipped to 0).

    Much quicker than an SVD for the large unfoldings of a C3D-size kernel (a 4096 x 8192 matrix: a
    fifth of the time of ``np.linalg.svd(Y, compute_uv=False)``); a value is exact to about
    eps * s_1^2 / s, ample for EVBMF's threshold, which lies at the noise level, far above that."""
    Y = np.asarray(Y, dtype=np.float64)
    gram = Y @ Y.T if Y.shape[0] <= Y.shape[1] else Y.T @ Y
    w = np.linalg.eigvalsh(gram)[::-1]
    return np.sqrt(np.maximum(w, 0.0))


def evbmf_rank(Y, H=None) -> int:
    """The rank :func:`evbmf` estimates (noise variance estimated), from :func:`singular_values` alone:
    no singular vectors, so it stays quick on large matrices."""
    Y, _, H = _as_matrix(Y, H)
    L, M = Y.shape
    s_full = singular_values(Y)
    total = float(np.sum(Y * Y))
    if total == 0.0:
        return 0
    _, threshold, _ = _evb_fit(s_full, L, M, H, total, None)
    return int(np.count_nonzero(s_full[:H] > threshold))


def evbmf(Y, sigma2=None, H=None) -> VBMFResult:
    """Empirical VBMF (NIPS12 Theorem 2; JMLR13): rank, noise variance and shrunk factors of ``Y``.

    ``sigma2`` None estimates the noise variance by minimising the free energy over its analytic
    bounds (module docstring); ``H`` caps the rank (default min(L, M)). Components beyond H count as
    noise. A zero matrix has rank 0.
    """
    Y, transposed, H = _as_matrix(Y, H)
    sigma2 = _check_sigma2(sigma2)
    L, M = Y.shape
    Uy, s_full, Vty = np.linalg.svd(Y, full_matrices=False)
    total = float(np.sum(Y * Y))
    s = s_full[:H]
    if total == 0.0:
        empty = np.zeros(0)
        return _result(Uy, s, Vty, np.zeros(H, bool), empty, transposed, sigma2 or 0.0, 0.0, -np.inf)
    sigma2, threshold, objective = _evb_fit(s_full, L, M, H, total, sigma2)
    keep = s > threshold
    g = s[keep]
    r = (L + M) * sigma2 / g ** 2
    shrunk = 0.5 * g * (1.0 - r + np.sqrt(np.maximum((1.0 - r) ** 2 - 4.0 * L * M * sigma2 ** 2 / g ** 4, 0.0)))
    free_energy = 0.5 * M * (float(objective(np.log(sigma2))) + L * np.log(2 * np.pi))
    return _result(Uy, s, Vty, keep, shrunk, transposed, sigma2, threshold, free_energy)


# -- VB with a fixed prior product c = c_a c_b (JMLR13) -----------------------------------------------
def vb_threshold(L: int, M: int, sigma2: float, cacb: float) -> float:
    """JMLR13: gamma_VB = sqrt(sigma^2 (t + sqrt(t^2 - L M))), t = (L + M)/2 + sigma^2 / (2 c_a^2 c_b^2)."""
    t = 0.5 * (L + M) + sigma2 / (2.0 * cacb ** 2)
    return float(np.sqrt(sigma2 * (t + np.sqrt(t * t - L * M))))


def vb_shrinkage(gamma, L: int, M: int, sigma2: float, cacb: float):
    """JMLR13 Theorem 1: gamma_breve = gamma (1 - sigma^2/(2 gamma^2) (L + M + sqrt((M - L)^2 + 4 gamma^2 / c^2)))."""
    g = np.asarray(gamma, dtype=np.float64)
    return g * (1.0 - sigma2 / (2.0 * g * g) * (L + M + np.sqrt((M - L) ** 2 + 4.0 * g * g / cacb ** 2)))


def vb_posterior(gamma, L: int, M: int, sigma2: float, cacb: float):
    """Posterior of each component (c_a = c_b = sqrt(c), as F depends on the product only), JMLR13.

    Returns (mu_a, mu_b, var_a, var_b), arrays over the components: a_h ~ N(mu_a v_h, var_a I_M),
    b_h ~ N(mu_b u_h, var_b I_L). Kept components (gamma > gamma_VB): mu_a mu_b = gamma_breve,
    delta = mu_a / mu_b = (c / sigma^2)(gamma - gamma_breve - L sigma^2 / gamma), var_a = sigma^2 delta / gamma,
    var_b = sigma^2 / (delta gamma). Pruned ones: mu = 0, var_a = c (1 - L zeta / sigma^2),
    var_b = c (1 - M zeta / sigma^2), zeta = sigma^2/(2LM) (L + M + sigma^2/c^2 - sqrt((L + M + sigma^2/c^2)^2 - 4LM))
    (evaluated in a cancellation-free form).
    """
    g = np.asarray(gamma, dtype=np.float64)
    keep = g > vb_threshold(L, M, sigma2, cacb)
    # Pruned variances without cancellation: with e = sigma^2/c^2, q = L + M + e, r = sqrt(q^2 - 4LM),
    # L zeta/sigma^2 = 2L/(q + r), so 1 - L zeta/sigma^2 = (M - L + e + r)/(q + r) and
    # 1 - M zeta/sigma^2 = (e + (2(L + M) e + e^2)/(r + M - L))/(q + r)   (M >= L).
    e = sigma2 / cacb ** 2
    q = L + M + e
    r = np.sqrt(q * q - 4.0 * L * M)
    mu_a, mu_b = np.zeros_like(g), np.zeros_like(g)
    var_a = np.full_like(g, cacb * (M - L + e + r) / (q + r))
    var_b = np.full_like(g, cacb * (e + (2.0 * (L + M) * e + e * e) / (r + M - L)) / (q + r))
    gk = g[keep]
    d = vb_shrinkage(gk, L, M, sigma2, cacb)
    delta = cacb / sigma2 * (gk - d - L * sigma2 / gk)
    mu_a[keep], mu_b[keep] = np.sqrt(d * delta), np.sqrt(d / delta)
    var_a[keep], var_b[keep] = sigma2 * delta / gk, sigma2 / (delta * gk)
    return mu_a, mu_b, var_a, var_b


def _vb_free_energy(log_sigma2, s, total, L, M, cacb):
    """F = 1/2 [L M log(2 pi sigma^2) + ||Y||^2/sigma^2 + sum_h (M log(c/var_a) + L log(c/var_b)
    + (mu_a^2 + M var_a)/c + (mu_b^2 + L var_b)/c - (L + M)
    + (-2 gamma mu_a mu_b + (mu_a^2 + M var_a)(mu_b^2 + L var_b)) / sigma^2)]  (JMLR13, c_a^2 = c_b^2 = c)."""
    sigma2 = float(np.exp(log_sigma2))
    mu_a, mu_b, var_a, var_b = vb_posterior(s, L, M, sigma2, cacb)
    ea, eb = mu_a ** 2 + M * var_a, mu_b ** 2 + L * var_b
    per_component = (M * np.log(cacb / var_a) + L * np.log(cacb / var_b) + (ea + eb) / cacb - (L + M)
                     + (-2.0 * s * mu_a * mu_b + ea * eb) / sigma2)
    return 0.5 * (L * M * np.log(2 * np.pi * sigma2) + total / sigma2 + float(np.sum(per_component)))


def vbmf(Y, cacb, sigma2=None, H=None) -> VBMFResult:
    """VBMF with a fixed prior product ``cacb`` = c_a c_b (JMLR13 Theorem 1).

    ``sigma2`` None minimises the free energy in log sigma^2 (bounded scalar minimisation after a grid)
    over [upper * 1e-14, upper], upper = ||Y||^2/(L M) + H c^2. This is a search interval, not a proven
    bound: a stationary point has sigma^2 = E||Y - B A^T||^2 / (L M) (checked in the tests), to which a
    pruned component adds at most c^2 beyond ||Y||^2/(LM) and a kept one less in the cases we tried.
    """
    Y, transposed, H = _as_matrix(Y, H)
    sigma2 = _check_sigma2(sigma2)
    if not (np.isfinite(cacb) and cacb > 0):
        raise ValueError(f"cacb (prior product c_a c_b) must be a positive finite number, got {cacb!r}")
    cacb = float(cacb)
    L, M = Y.shape
    Uy, s_full, Vty = np.linalg.svd(Y, full_matrices=False)
    total = float(np.sum(Y * Y))
    s = s_full[:H]
    objective = np.vectorize(lambda u: _vb_free_energy(u, s, total, L, M, cacb))
    if sigma2 is None:
        if total == 0.0:
            raise ValueError("cannot estimate the noise variance of a zero matrix; pass sigma2")
        upper = total / (L * M) + H * cacb ** 2
        sigma2 = _minimise_log_sigma2(objective, upper * _RELATIVE_FLOOR, upper)
    threshold = vb_threshold(L, M, sigma2, cacb)
    keep = s > threshold
    shrunk = vb_shrinkage(s[keep], L, M, sigma2, cacb)
    return _result(Uy, s, Vty, keep, shrunk, transposed, sigma2, threshold, float(objective(np.log(sigma2))))


def estimate_ranks(kernel, modes) -> tuple:
    """EVBMF rank of each mode-n unfolding of ``kernel`` (one rank per entry of ``modes``; may be 0)."""
    kernel = np.asarray(kernel)
    if np.isscalar(modes):
        modes = (modes,)
    return tuple(evbmf_rank(unfold(kernel, m)) for m in modes)
