"""PyTorch's default initialisation of Conv3d and Linear.

``kaiming_uniform_(w, a=sqrt(5))`` gives w ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the
bias is drawn from the same interval; fan_in = in_channels * prod(kernel) for a
convolution and in_features for a linear layer.
"""
from __future__ import annotations

import numpy as np


def as_rng(rng) -> np.random.Generator:
    """A Generator from a Generator, an int seed or None (fresh entropy)."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def default_uniform(shape, fan_in: int, rng, dtype) -> np.ndarray:
    bound = 1.0 / np.sqrt(fan_in) if fan_in > 0 else 0.0
    return as_rng(rng).uniform(-bound, bound, size=shape).astype(dtype)
