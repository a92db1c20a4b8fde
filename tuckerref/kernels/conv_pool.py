"""A convolution followed by max pooling (and ReLU), eq. (1) then the window maxima, for inference.

    Y = relu(max_pool3d(conv3d(X, K, b), kernel = stride = P))

is computed without writing the convolution's full-resolution output: on the register tiles in one
pass when they apply (:class:`.conv3d_tiles.PaddedTileConvolution` with a pooling), else streamed a
group of frames at a time through a cache-sized buffer (:mod:`.stream_pool`).
"""
from __future__ import annotations

import math

import numpy as np

from ._checks import as_triple, window_output_dims
from .conv3d import conv3d_arguments, pooled_dims
from .conv3d_panels import panels_fit
from .conv3d_tiles import PaddedTileConvolution, tiles_fit
from .stream_pool import streamed_block_pool


def conv3d_max_pool3d(x, weight, bias=None, stride=1, padding=0, pool=2, *, relu=False, check_finite=True):
    """max_pool3d(conv3d(x, weight, bias, stride, padding), kernel=stride=pool), inference only;
    with ``relu``, max(., 0) of that (the paper's pooling and ReLU after c1 and c2).

    The same values as the calls in turn (eq. (1), then the maximum over each window, NaN
    propagating), computed in one pass when the register tiles apply (unit width stride, output
    at least one SIMD vector wide): each task computes one row of pooling windows, its tiles
    merging into a running maximum, and writes only the windows' maxima (:mod:`.conv3d_tiles`).
    Otherwise (the panel kernel's wide layers, strided rows) a few frames at a time, pooled before
    the next ones are computed (:func:`.stream_pool.streamed_block_pool`).
    """
    x, weight, bias, stride, padding, out_dims = conv3d_arguments(x, weight, bias, stride, padding,
                                                                  check_finite=check_finite)
    pool = as_triple(pool, "pool", minimum=1)
    pooled_dims(out_dims, pool)  # raises, naming the shapes, when no whole window fits
    if not pooled_tiles_fit(x.shape[1], weight.shape, stride, out_dims[2], x.dtype):
        bias = np.zeros(weight.shape[0], x.dtype) if bias is None else bias
        return streamed_block_pool(x, None, weight, None, bias, stride, padding, pool, relu)
    return pooled_convolution(x.shape, weight, bias, stride, padding, pool, relu)(x)


def pooled_tiles_fit(S, weight_shape, stride, out_width, dtype) -> bool:
    """Whether a convolution followed by max pooling takes the fused register-tile path of
    :func:`pooled_convolution`: the row tiles apply, and the layer is not one for the faster
    wide-channel panels (:func:`.conv3d_panels.panels_fit`, whatever the frame width: narrow frames of
    16 to 31 channels, which panels take when nothing is pooled, keep the fused pass), which then pool
    in a pass of their own."""
    return tiles_fit(stride, out_width, dtype) and not panels_fit(S, weight_shape[0], weight_shape[2:])


def pooled_convolution(x_shape, weight, bias, stride, padding, pool, relu, keep_buffers=False):
    """:func:`conv3d_max_pool3d` on the register tiles, prepared for inputs of shape ``x_shape``
    (checked arguments of that function's dtype; unit width stride, output at least one vector wide)."""
    out_shape = tuple(x_shape[:1]) + weight.shape[:1] + pooled_dims(
        window_output_dims(x_shape[2:], weight.shape[2:], stride, padding), pool)
    return PaddedTileConvolution(x_shape, weight, bias, stride, padding, out_shape, pool=pool, relu=relu,
                                 dtype=weight.dtype, fill_work=math.prod(x_shape) if any(padding) else 0,
                                 tile_work=math.prod(out_shape) * math.prod(pool) * weight[0].size,
                                 keep_buffers=keep_buffers)
