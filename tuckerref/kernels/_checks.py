"""Argument validation shared by the public kernel entry points (and by the decompositions).

Every public kernel checks its arguments here before any JIT code runs, so that
bad input fails with a ``ValueError`` that names the argument, its shape and the
value at fault instead of a traceback from inside a compiled loop.
"""
from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.float32, np.float64)


def as_triple(value, name: str, *, minimum: int) -> tuple[int, int, int]:
    """Return ``value`` (an int or a 3-sequence of ints) as a 3-tuple, checked >= minimum."""
    # Fast path for what layers pass on every call (Python ints; bool is a type of its own).
    if type(value) is int:
        if value >= minimum:
            return value, value, value
    elif type(value) is tuple and len(value) == 3 and all(type(v) is int and v >= minimum for v in value):
        return value
    try:
        triple = (value, value, value) if np.isscalar(value) else tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be an int or a 3-tuple of ints, got {value!r}") from None
    if len(triple) != 3:
        raise ValueError(f"{name} must be an int or a 3-tuple, got {value!r}")
    out = []
    for v in triple:
        if isinstance(v, (bool, np.bool_, str, bytes)) or not np.isreal(v) or int(v) != v:
            raise ValueError(f"{name} must contain integers, got {value!r}")
        if int(v) < minimum:
            raise ValueError(f"{name} must be >= {minimum} in every dimension, got {value!r}")
        out.append(int(v))
    return tuple(out)


def integer_in_range(value, low: int, high: int, what: str, detail: str = "") -> int:
    """``value`` as an int when it is an integer (a Python or NumPy integer, or an integral float;
    not a bool) with ``low <= value <= high``; else ValueError
    "{what} must be an integer in [low, high]{detail}, got {value!r}".

    The check of a mode (``low`` 0, ``high`` ndim - 1) or a rank (``low`` 1, ``high`` the mode's size)
    in :mod:`tuckerref.tucker`, :mod:`tuckerref.vbmf` and :mod:`tuckerref.compress`.
    """
    numeric = isinstance(value, (int, np.integer, float, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not numeric or not np.isfinite(value) or int(value) != value or not low <= int(value) <= high:
        raise ValueError(f"{what} must be an integer in [{low}, {high}]{detail}, got {value!r}")
    return int(value)


def float_array(x, name: str, ndim: int | tuple[int, ...], *, layout: str = "") -> np.ndarray:
    """Return ``x`` as a C-contiguous float32/float64 array of the given ndim."""
    x = np.asarray(x)
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if x.ndim not in ndims:
        want = " or ".join(str(d) for d in ndims)
        hint = f" ({layout})" if layout else ""
        raise ValueError(f"{name} must be {want}-D{hint}, got shape {x.shape}")
    if x.dtype not in FLOAT_DTYPES:
        if x.dtype.kind in "iub":
            x = x.astype(np.float32)
        else:
            raise ValueError(f"{name} must be float32 or float64, got dtype {x.dtype}")
    return np.ascontiguousarray(x)


def common_dtype(*arrays) -> np.dtype:
    """float64 if any array is float64, else float32."""
    return np.dtype(np.float64) if any(a is not None and a.dtype == np.float64 for a in arrays) else np.dtype(np.float32)


def require_finite(x: np.ndarray, name: str) -> None:
    """Raise if ``x`` holds NaN or infinity, naming the first bad position."""
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"{name} (shape {x.shape}) holds a non-finite value {x[tuple(bad)]} at index {tuple(int(b) for b in bad)}")


def conv_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output length of a convolution/pooling window along one dimension (floor mode)."""
    return (size + 2 * pad - kernel) // stride + 1


def window_output_dims(spatial, kernel, stride, padding) -> tuple[int, int, int]:
    """(D', H', W') of a convolution or pooling window over the spatial dims (D, H, W); may hold values < 1."""
    return tuple(conv_output_size(spatial[d], kernel[d], stride[d], padding[d]) for d in range(3))
