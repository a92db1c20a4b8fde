"""Numba kernels: pure functions on NumPy arrays (NCDHW, weights (T, S, kD, kH, kW))."""
from .activation import dropout_mask, relu, relu_backward
from .conv3d import conv3d, conv3d_backward, conv3d_max_pool3d
from .linear import linear, linear_backward
from .loss import softmax, softmax_cross_entropy
from .pool import max_pool3d, max_pool3d_backward, max_pool3d_values

__all__ = [
    "conv3d", "conv3d_backward", "conv3d_max_pool3d", "linear", "linear_backward", "max_pool3d", "max_pool3d_backward", "max_pool3d_values",
    "relu", "relu_backward", "dropout_mask", "softmax", "softmax_cross_entropy",
]
