"""Layers with forward/backward over the Numba kernels (PyTorch semantics and names)."""
from __future__ import annotations

import numpy as np

from ..kernels import (as_triple, conv3d_backward, dropout_mask, linear, linear_backward, max_pool3d,
                       max_pool3d_backward, max_pool3d_values, relu, relu_backward, window_output_dims)
from ..kernels.conv3d import conv3d_arguments, conv3d_into
from .grad_mode import is_grad_enabled
from .init import as_rng, default_uniform
from .module import Module, Parameter


def _cached(layer, value):
    """What ``layer.backward`` will need, or raise if the forward pass ran under ``no_grad``."""
    if value is None:
        raise ValueError(f"{layer!r}.backward needs a forward pass with gradients enabled (not under no_grad)")
    return value


def _window_output(layer, input_shape, channels):
    """Per-sample output shape (channels, D', H', W') of a conv or pooling ``layer``, checked non-empty."""
    dims = window_output_dims(tuple(input_shape)[1:], layer.kernel_size, layer.stride, layer.padding)
    if min(dims) < 1:
        raise ValueError(f"{layer!r}: input shape {tuple(input_shape)} gives an empty output {dims}")
    return (channels,) + dims


def _require_input(x, layer, ndim, channels=None, what="input channels"):
    """Check the batch ``x`` a ``layer`` receives; the layer's repr is built only for the error message."""
    if x.ndim != ndim:
        raise ValueError(f"{layer!r} expects a {ndim}-D batch, got shape {x.shape}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{layer!r} expects {channels} {what}, got shape {x.shape}")


class Conv3d(Module):
    """3-D convolution layer, eq. (1); weight (T, S, kD, kH, kW), bias (T,)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 rng=None, dtype=np.float32):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(f"Conv3d channels must be >= 1, got {in_channels} -> {out_channels}")
        self.kernel_size = as_triple(kernel_size, "kernel_size", minimum=1)
        self.stride = as_triple(stride, "stride", minimum=1)
        self.padding = as_triple(padding, "padding", minimum=0)
        fan_in = self.in_channels * int(np.prod(self.kernel_size))
        rng = as_rng(rng)
        self.weight = Parameter(default_uniform((self.out_channels, self.in_channels) + self.kernel_size, fan_in, rng, dtype))
        self.bias = Parameter(default_uniform((self.out_channels,), fan_in, rng, dtype)) if bias else None
        self._x = None

    def forward(self, x):
        _require_input(x, self, 5, self.in_channels)
        b = None if self.bias is None else self.bias.data
        x, w, b, stride, padding, out_dims = conv3d_arguments(x, self.weight.data, b, self.stride, self.padding,
                                                              check_finite=False)
        self._x = x if is_grad_enabled() else None
        return conv3d_into(x, w, b, stride, padding, np.empty((x.shape[0], w.shape[0]) + out_dims, x.dtype))

    def backward(self, grad):
        gx, gw, gb = conv3d_backward(_cached(self, self._x), self.weight.data, grad, self.stride, self.padding,
                                     need_grad_x=self.needs_input_grad, check_finite=False)
        self.weight.accumulate(gw)
        if self.bias is not None:
            self.bias.accumulate(gb)
        return gx

    def output_shape(self, input_shape):
        if input_shape[0] != self.in_channels:
            raise ValueError(f"{self!r} expects {self.in_channels} channels, got input shape {tuple(input_shape)}")
        return _window_output(self, input_shape, self.out_channels)

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "bias": self.bias is not None}


class Linear(Module):
    """Fully connected layer y = x W^T + b; weight (out, in)."""

    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        if self.in_features < 1 or self.out_features < 1:
            raise ValueError(f"Linear features must be >= 1, got {in_features} -> {out_features}")
        rng = as_rng(rng)
        self.weight = Parameter(default_uniform((self.out_features, self.in_features), self.in_features, rng, dtype))
        self.bias = Parameter(default_uniform((self.out_features,), self.in_features, rng, dtype)) if bias else None
        self._x = None

    def forward(self, x):
        _require_input(x, self, 2, self.in_features, "input features")
        self._x = x if is_grad_enabled() else None
        return linear(x, self.weight.data, None if self.bias is None else self.bias.data, check_finite=False)

    def backward(self, grad):
        gx, gw, gb = linear_backward(_cached(self, self._x), self.weight.data, grad, need_grad_x=self.needs_input_grad,
                                     check_finite=False)
        self.weight.accumulate(gw)
        if self.bias is not None:
            self.bias.accumulate(gb)
        return gx

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(f"{self!r} expects input shape ({self.in_features},), got {tuple(input_shape)}")
        return (self.out_features,)

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}


class MaxPool3d(Module):
    """3-D max pooling; stride defaults to the kernel size."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = as_triple(kernel_size, "kernel_size", minimum=1)
        self.stride = self.kernel_size if stride is None else as_triple(stride, "stride", minimum=1)
        self.padding = as_triple(padding, "padding", minimum=0)
        self._cache = None

    def forward(self, x):
        _require_input(x, self, 5)
        if not is_grad_enabled():
            self._cache = None
            return max_pool3d_values(x, self.kernel_size, self.stride, self.padding)
        y, idx = max_pool3d(x, self.kernel_size, self.stride, self.padding)
        self._cache = (idx, x.shape)
        return y

    def backward(self, grad):
        idx, shape = _cached(self, self._cache)
        return max_pool3d_backward(grad, idx, shape)

    def output_shape(self, input_shape):
        return _window_output(self, input_shape, input_shape[0])

    def config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding)}


class ReLU(Module):
    """max(x, 0); ``inplace`` overwrites the input (safe after a convolution or linear layer)."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)
        self._y = None

    def forward(self, x):
        y = relu(x, inplace=self.inplace)
        self._y = y if is_grad_enabled() else None
        return y

    def backward(self, grad):
        return relu_backward(_cached(self, self._y), grad)

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def config(self):
        return {"inplace": self.inplace}


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability p and scale by 1/(1-p)."""

    channelwise = False

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        self.rng = as_rng(rng)
        self._mask = None

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        self._mask = dropout_mask(x.shape, self.p, self.rng, channelwise=self.channelwise, dtype=x.dtype)
        return x * self._mask

    def backward(self, grad):
        return grad if self._mask is None else grad * self._mask

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def config(self):
        return {"p": self.p}


class Dropout3d(Dropout):
    """Channel dropout: zeroes whole (sample, channel) feature maps of an NCDHW batch."""

    channelwise = True

    def forward(self, x):
        _require_input(x, self, 5)
        return super().forward(x)


class Flatten(Module):
    """(N, ...) -> (N, prod(...)) in C order, so a flattened feature volume matches a conv kernel."""

    def __init__(self):
        super().__init__()
        self._shape = None

    def forward(self, x):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad):
        return grad.reshape(self._shape)

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)


class Identity(Module):
    """y = x (PyTorch ``Identity``; constructor arguments are accepted and ignored, as there)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x

    def backward(self, grad):
        return grad

    def output_shape(self, input_shape):
        return tuple(input_shape)
