"""tuckerref: a framework-free NumPy + Numba reference engine for Tucker-compressed video CNNs.

The kernels below are loaded on first use (PEP 562 module ``__getattr__``), so that importing a
light submodule such as :mod:`tuckerref.cli` does not load Numba.
"""

__version__ = "0.1.0"

__all__ = [
    "conv3d", "conv3d_backward", "conv3d_max_pool3d", "linear", "linear_backward", "max_pool3d", "max_pool3d_backward",
    "max_pool3d_values", "relu", "relu_backward", "dropout_mask", "softmax", "softmax_cross_entropy", "__version__",
]


def __getattr__(name):
    if name in __all__:
        from . import kernels
        return getattr(kernels, name)
    raise AttributeError(f"module 'tuckerref' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
