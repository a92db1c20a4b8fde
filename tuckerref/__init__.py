"""tuckerref: a framework-free NumPy + Numba reference engine for Tucker-compressed video CNNs."""
from .kernels import (conv3d, conv3d_backward, conv3d_max_pool3d, dropout_mask, linear, linear_backward, max_pool3d,
                      max_pool3d_backward, max_pool3d_values, relu, relu_backward, softmax, softmax_cross_entropy)

__version__ = "0.1.0"

__all__ = [
    "conv3d", "conv3d_backward", "conv3d_max_pool3d", "linear", "linear_backward", "max_pool3d", "max_pool3d_backward",
    "max_pool3d_values", "relu", "relu_backward", "dropout_mask", "softmax", "softmax_cross_entropy", "__version__",
]
