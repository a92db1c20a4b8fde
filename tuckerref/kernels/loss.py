"""Softmax cross-entropy with mean reduction (PyTorch ``cross_entropy``).

    L = -(1/N) sum_n log softmax(z_n)[y_n],   softmax(z)_k = exp(z_k - max z) / sum_j exp(z_j - max z)
    dL/dz_n = (softmax(z_n) - onehot(y_n)) / N

Computed with the max subtracted (log-sum-exp) so that large logits neither overflow
nor lose the gradient.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ._checks import float_array, require_finite


@njit(cache=True)
def _softmax_xent(z, y, grad):
    N, K = z.shape
    total = 0.0
    for n in range(N):
        m = z[n, 0]
        for k in range(1, K):
            m = max(m, z[n, k])
        s = 0.0
        for k in range(K):
            e = np.exp(z[n, k] - m)
            grad[n, k] = e
            s += e
        total += np.log(s) + m - z[n, y[n]]
        for k in range(K):
            grad[n, k] = grad[n, k] / s / N
        grad[n, y[n]] -= 1.0 / N
    return total / N


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of ``logits`` (N, K) against integer ``labels`` (N,); returns ``(loss, dL/dlogits)``."""
    z = float_array(logits, "logits", 2, layout="N, classes")
    y = np.asarray(labels)
    if y.shape != (z.shape[0],):
        raise ValueError(f"labels must have shape ({z.shape[0]},) to match logits {z.shape}, got {y.shape}")
    if y.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= z.shape[1]):
        raise ValueError(f"labels must lie in [0, {z.shape[1] - 1}], got values in [{y.min()}, {y.max()}]")
    require_finite(z, "logits")
    grad = np.empty_like(z)
    loss = _softmax_xent(z, y.astype(np.int64), grad)
    return float(loss), grad


def softmax(logits):
    """Row-wise numerically stable softmax."""
    z = np.asarray(logits)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
