"""A wide convolution or Tucker block, then max pooling: streamed through the cache a few frames at a time.

A Tucker-2 layer (eqs. 8-10 of the paper) or a Tucker-1 layer (the core and U_t only, when the
input mode is kept: C3D's first layer, 3 input channels) followed by a max pooling runs as

    Z = U_s^T X                          (eq. 8, skipped for Tucker-1: Z = X)
    Z' = C conv Z                        (eq. 9)
    Y(t) = b(t) + sum_r U_t(t, r) Z'(r)   (eq. 10)
    P = maxpool(Y), then max(P, 0) when a ReLU follows

When one register tile holds all R_t core channels, :mod:`.tucker2` mixes them by U_t inside the
tiles. With wider ranks (a compressed C3D: R_t of 16 to 128) it cannot, and run layer by layer the
block writes the full-resolution Y to memory and reads it back to pool it: C3D's conv1a writes
64 x 16 x 112 x 112 floats (51 MB) for a pooled result a quarter of that, which made it the
slowest layer of the compressed network though it has a sixth of the first layer's FLOPs.

Here the core's output frames are produced a group of pooling windows at a time: the core computes
Z' for those frames from the padded Z (the panel kernel reads them in place; other kernels get a copy
of the frames their windows read), U_t mixes them into Y in a buffer sized to stay in the last-level
cache, and the pooling (with the ReLU after it) writes only the pooled frames. Y never reaches memory,
and the block's passes over memory are those of X, Z and the pooled output. A plain convolution with
many channels (eq. 1, C3D's conv2a: 25 MB of output per clip before its pooling) streams the same way,
without U_t. Each value is summed exactly as the layers in turn would sum it (the same kernels on the
same operands), so the result is bit-identical to them.
"""
from __future__ import annotations

import numba
import numpy as np

from ._checks import window_output_dims
from ._threads import threads_for
from .conv3d import conv3d_into, forward_path, prepared_forward_unpadded
from .conv3d_panels import panel_forward_padded
from .padding import _pad
from .pointwise_tiles import pointwise_mix
from .pool import max_pool3d_values

#: Bytes of Y (the mixed, unpooled frames) per streamed group: a few MiB, well inside the
#: last-level cache (32 MiB on the development machine), so that the pooling reads them from there.
GROUP_BYTES = 4 << 20


def frames_per_group(T, pool_depth, rows, columns, itemsize, pooled_frames, budget=GROUP_BYTES) -> int:
    """Pooled frames per streamed group: as many as keep T x (frames x pool_depth) x rows x columns
    values of Y within ``budget`` bytes, at least one, at most ``pooled_frames``."""
    per_pooled_frame = T * pool_depth * rows * columns * itemsize
    return max(1, min(pooled_frames, budget // max(per_pooled_frame, 1)))


def streamed_block_pool(x, first, core, last, bias, stride, padding, pool, relu=False, *, budget=GROUP_BYTES):
    """max_pool(U_t * (core conv (U_s^T * x)) + b), eqs. (8)-(10) and a max pooling with kernel = stride
    = ``pool`` and no padding, then max(., 0) with ``relu``; a group of pooled frames at a time.

    Checked, C-contiguous arrays of one float dtype: x (N, S, D, H, W); ``first`` U_s^T as (R_s, S)
    or None (a Tucker-1 block: the core reads x); ``core`` (R_t, R_s, kD, kH, kW) with the layer's
    ``stride`` and ``padding`` (3-tuples); ``last`` U_t as (T, R_t), or None (a plain convolution, eq. 1:
    ``core`` is its kernel and ``bias`` its bias); ``bias`` (T,). The pooled output must hold at least
    one window (the caller checks, :func:`.conv3d.pooled_dims`). ``budget``: bytes of unpooled output
    per group (:func:`frames_per_group`). A core for the panel kernel reads its frames in place from
    the padded Z; any other copies the frames its windows read.
    """
    N, S, D, H, W = x.shape
    R_t, R_s = core.shape[:2]
    T = R_t if last is None else last.shape[0]
    dtype = x.dtype
    kd, sd = core.shape[2], stride[0]
    Fo, Ho, Wo = window_output_dims((D, H, W), core.shape[2:], stride, padding)
    Fq, Hq, Wq = window_output_dims((Fo, Ho, Wo), pool, pool, (0, 0, 0))
    z = x
    if first is not None:
        z = np.empty((N, R_s, D, H, W), dtype)
        pointwise_mix(x.reshape(N, S, -1), first, np.zeros(R_s, dtype), z.reshape(N, R_s, -1))
    zp = _pad(z, padding)
    core_bias = bias if last is None else np.zeros(R_t, dtype)
    in_place = forward_path(zp.shape, core.shape, stride, (0, 0, 0), dtype) == "panels"
    group = frames_per_group(T, pool[0], Ho, Wo, dtype.itemsize, Fq, budget)
    frames = group * pool[0]                      # core output frames per group
    y = np.empty((1, R_t, frames, Ho, Wo), dtype)
    u = None if last is None else np.empty((1, T, frames * Ho * Wo), dtype)
    if not in_place:
        core_frames = prepared_forward_unpadded((1, R_s, (frames - 1) * sd + kd) + zp.shape[3:], core, stride,
                                                y.shape, core_bias)
    out = np.empty((N, T, Fq, Hq, Wq), dtype)
    for n in range(N):
        for q0 in range(0, Fq, group):
            q1 = min(Fq, q0 + group)
            f = (q1 - q0) * pool[0]
            yg = y if f == frames else np.empty((1, R_t, f, Ho, Wo), dtype)
            if in_place:
                with threads_for(yg.size * core[0].size):
                    panel_forward_padded(zp[n:n + 1], core, core_bias, stride, yg, numba.get_num_threads(),
                                         frame0=q0 * pool[0])
            else:
                zw = np.ascontiguousarray(zp[n:n + 1, :, q0 * pool[0] * sd:q0 * pool[0] * sd + (f - 1) * sd + kd])
                if f == frames:
                    core_frames(zw, yg)
                else:
                    conv3d_into(zw, core, core_bias, stride, (0, 0, 0), yg)
            if last is not None:
                ug = u if f == frames else np.empty((1, T, f * Ho * Wo), dtype)  # a slice of u is not contiguous
                pointwise_mix(yg.reshape(1, R_t, -1), last, bias, ug)
                yg = ug.reshape(1, T, f, Ho, Wo)
            out[n, :, q0:q1] = max_pool3d_values(yg, pool, relu=relu)[0]
    return out
