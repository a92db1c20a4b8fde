"""Numba kernels: pure functions on NumPy arrays (NCDHW, weights (T, S, kD, kH, kW)).

Besides the kernels, the argument checks they share with the layers and the decompositions
(:mod:`._checks`) are exported here, so that no other package reaches into a private module.
"""
from pathlib import Path

from ._cache import drop_stale_kernels

drop_stale_kernels(Path(__file__).parent)  # before any kernel module loads its cached machine code

from ._checks import as_triple, float_array, integer_in_range, require_finite, window_output_dims  # noqa: E402
from .activation import dropout_mask, relu, relu_backward  # noqa: E402
from .avg_pool import (adaptive_avg_pool3d, adaptive_avg_pool3d_backward, avg_pool3d,  # noqa: E402
                       avg_pool3d_backward)
from .batchnorm import batch_norm, batch_norm_backward, batch_norm_statistics  # noqa: E402
from .conv3d import conv3d, conv3d_backward  # noqa: E402
from .conv_pool import conv3d_max_pool3d  # noqa: E402
from .linear import linear, linear_backward  # noqa: E402
from .loss import softmax, softmax_cross_entropy  # noqa: E402
from .pool import max_pool3d, max_pool3d_backward, max_pool3d_values  # noqa: E402

__all__ = [
    "conv3d", "conv3d_backward", "conv3d_max_pool3d", "linear", "linear_backward", "max_pool3d", "max_pool3d_backward",
    "max_pool3d_values", "relu", "relu_backward", "dropout_mask", "softmax", "softmax_cross_entropy",
    "avg_pool3d", "avg_pool3d_backward", "adaptive_avg_pool3d", "adaptive_avg_pool3d_backward", "batch_norm",
    "batch_norm_backward", "batch_norm_statistics",
    "as_triple", "float_array", "integer_in_range", "require_finite", "window_output_dims",
]
