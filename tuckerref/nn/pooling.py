"""Average pooling layers: AvgPool3d and AdaptiveAvgPool3d (PyTorch semantics, names and defaults)."""
from __future__ import annotations

from ..kernels import as_triple
from ..kernels.avg_pool import (adaptive_avg_pool3d, adaptive_avg_pool3d_backward, adaptive_output_size,
                                avg_pool3d, avg_pool3d_backward, require_kernel_fits)
from .grad_mode import is_grad_enabled
from .layers import _cached, _require_input, _window_output
from .module import Module


class AvgPool3d(Module):
    """3-D average pooling (:mod:`tuckerref.kernels.avg_pool`); stride defaults to the kernel size.

    ``count_include_pad`` counts the zero padding in each window's divisor, ``divisor_override``
    replaces the divisor; the output size is floor mode (``ceil_mode=True`` is not supported).
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__()
        if ceil_mode:
            raise ValueError("AvgPool3d: ceil_mode=True is not supported (floor output size only)")
        self.kernel_size = as_triple(kernel_size, "kernel_size", minimum=1)
        self.stride = self.kernel_size if stride is None else as_triple(stride, "stride", minimum=1)
        self.padding = as_triple(padding, "padding", minimum=0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"AvgPool3d padding {self.padding} must be at most half of kernel_size {self.kernel_size}")
        if divisor_override is not None and (isinstance(divisor_override, bool) or int(divisor_override) != divisor_override
                                             or divisor_override < 1):
            raise ValueError(f"AvgPool3d divisor_override must be None or an integer >= 1, got {divisor_override!r}")
        self.ceil_mode = False
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = None if divisor_override is None else int(divisor_override)
        self._shape = None

    def _args(self):
        return self.kernel_size, self.stride, self.padding, self.count_include_pad, self.divisor_override

    def forward(self, x):
        _require_input(x, self, 5)
        self._shape = x.shape if is_grad_enabled() else None
        return avg_pool3d(x, *self._args())

    def backward(self, grad):
        return avg_pool3d_backward(grad, _cached(self, self._shape), *self._args())

    def output_shape(self, input_shape):
        require_kernel_fits(tuple(input_shape)[1:], self.kernel_size, f"{self!r}: spatial input shape")
        return _window_output(self, input_shape, input_shape[0])

    def config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
                "ceil_mode": self.ceil_mode, "count_include_pad": self.count_include_pad,
                "divisor_override": self.divisor_override}


class AdaptiveAvgPool3d(Module):
    """Adaptive average pooling to ``output_size`` (an int, or a 3-sequence whose None entries keep that
    input size), with PyTorch's windows [floor(o I / O), ceil((o + 1) I / O)); 1 = global average pooling."""

    def __init__(self, output_size):
        super().__init__()
        size = output_size if isinstance(output_size, (list, tuple)) else (output_size,) * 3
        adaptive_output_size((1, 1, 1), size)  # checks the entries
        self.output_size = tuple(None if v is None else int(v) for v in size)
        self._shape = None

    def forward(self, x):
        _require_input(x, self, 5)
        self._shape = x.shape if is_grad_enabled() else None
        return adaptive_avg_pool3d(x, self.output_size)

    def backward(self, grad):
        return adaptive_avg_pool3d_backward(grad, _cached(self, self._shape))

    def output_shape(self, input_shape):
        if len(input_shape) != 4 or min(input_shape) < 1:
            raise ValueError(f"{self!r} expects a non-empty input shape (C, D, H, W), got {tuple(input_shape)}")
        return (input_shape[0],) + adaptive_output_size(input_shape[1:], self.output_size)

    def config(self):
        return {"output_size": list(self.output_size)}
