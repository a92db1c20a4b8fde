"""BatchNorm3d: batch normalisation per channel of an NCDHW batch, with PyTorch's semantics, names and defaults."""
from __future__ import annotations

import numpy as np

from ..kernels import float_array
from ..kernels.batchnorm import (batch_norm_backward, batch_norm_statistics, channel_affine_into,
                                 normalisation_affine)
from .grad_mode import is_grad_enabled
from .layers import _cached, _require_input
from .module import Module, Parameter


class BatchNorm3d(Module):
    """Batch normalisation over (N, D, H, W) per channel (Ioffe & Szegedy 2015; PyTorch ``BatchNorm3d``).

    y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c, see :mod:`tuckerref.kernels.batchnorm`.
    In training mode (and in eval mode without running statistics) mean and var are the batch's,
    the variance biased; each training forward pass then updates the buffers as PyTorch does:
    ``num_batches_tracked += 1`` and, with f = ``momentum`` (or 1 / num_batches_tracked when
    ``momentum`` is None, a cumulative average),

        running_mean = (1 - f) running_mean + f mean
        running_var  = (1 - f) running_var  + f var M / (M - 1)     (unbiased, M values per channel).

    In eval mode the running statistics normalise. Parameters ``weight`` (ones) and ``bias`` (zeros)
    when ``affine``; buffers ``running_mean`` (zeros), ``running_var`` (ones) and
    ``num_batches_tracked`` (int64, shape ()) when ``track_running_stats``.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 dtype=np.float32):
        super().__init__()
        if isinstance(num_features, bool) or int(num_features) != num_features or num_features < 1:
            raise ValueError(f"BatchNorm3d num_features must be an integer >= 1, got {num_features!r}")
        if not (np.isfinite(eps) and eps >= 0):
            raise ValueError(f"BatchNorm3d eps must be a finite number >= 0, got {eps!r}")
        if momentum is not None and not (np.isfinite(momentum) and 0 <= momentum <= 1):
            raise ValueError(f"BatchNorm3d momentum must be None or in [0, 1], got {momentum!r}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        self.weight = Parameter(np.ones(self.num_features, dtype)) if self.affine else None
        self.bias = Parameter(np.zeros(self.num_features, dtype)) if self.affine else None
        tracked = self.track_running_stats
        self.register_buffer("running_mean", np.zeros(self.num_features, dtype) if tracked else None)
        self.register_buffer("running_var", np.ones(self.num_features, dtype) if tracked else None)
        self.register_buffer("num_batches_tracked", np.array(0, np.int64) if tracked else None)
        self._cache = None

    def _uses_batch_statistics(self) -> bool:
        return self.training or self.running_mean is None

    def _update_running_statistics(self, mean, var, count):
        self.num_batches_tracked += 1
        f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean[...] = (1.0 - f) * self.running_mean + f * mean
        self.running_var[...] = (1.0 - f) * self.running_var + f * var * (count / (count - 1))

    def statistics(self):
        """(mean, var) in float64 that eval mode normalises with (the running statistics)."""
        if self.running_mean is None:
            raise ValueError(f"{self!r} keeps no running statistics (track_running_stats=False)")
        return np.asarray(self.running_mean, np.float64), np.asarray(self.running_var, np.float64)

    def affine_map(self):
        """(s, t) in float64 with eval mode's output y = s_c x + t_c per channel."""
        return normalisation_affine(*self.statistics(), None if self.weight is None else self.weight.data,
                                    None if self.bias is None else self.bias.data, self.eps)

    def forward(self, x):
        _require_input(x, self, 5, self.num_features)
        x = float_array(x, "x", 5)
        batch = self._uses_batch_statistics()
        if batch:
            count = x.size // self.num_features
            if count < 2:
                raise ValueError(f"{self!r} needs more than one value per channel to take batch statistics, "
                                 f"got input shape {x.shape}")
            mean, var = batch_norm_statistics(x)
            if self.training and self.running_mean is not None:
                self._update_running_statistics(mean, var, count)
            scale, shift = normalisation_affine(mean, var, None if self.weight is None else self.weight.data,
                                                None if self.bias is None else self.bias.data, self.eps)
        else:
            mean, var = self.statistics()
            scale, shift = self.affine_map()
        self._cache = (x, mean, var, batch) if is_grad_enabled() else None
        return channel_affine_into(x, scale.astype(x.dtype), shift.astype(x.dtype), np.empty_like(x))

    def backward(self, grad):
        x, mean, var, batch = _cached(self, self._cache)
        gx, gw, gb = batch_norm_backward(x, grad, mean, var, None if self.weight is None else self.weight.data,
                                         self.eps, batch_statistics=batch, need_grad_x=self.needs_input_grad)
        if self.affine:
            self.weight.accumulate(gw)
            self.bias.accumulate(gb)
        return gx

    def output_shape(self, input_shape):
        if len(input_shape) != 4 or input_shape[0] != self.num_features:
            raise ValueError(f"{self!r} expects input shape ({self.num_features}, D, H, W), got {tuple(input_shape)}")
        return tuple(input_shape)

    def config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine, "track_running_stats": self.track_running_stats}
