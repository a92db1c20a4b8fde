"""Direct 3-D convolution, eq. (1) of the paper, and its gradients.

Forward (PyTorch's cross-correlation, NCDHW, weight (T, S, kD, kH, kW)):

    Y(n, t, f', h', w') = b(t) + sum_{s, i, j, l} K(t, s, i, j, l) * Xp(n, s, f'*sd + i, h'*sh + j, w'*sw + l)

with Xp the zero-padded input. No im2col and no BLAS: every output row
Y(n, t, f', h', :) is accumulated in place while the kernel width kW and the
width stride are compile-time constants (``numba.literally``), so the tap loop
unrolls and the loop over w' becomes the vectorised innermost loop.

Backward:

    dL/dK(t, s, i, j, l) = sum_{n, f', h', w'} G(n, t, f', h', w') * Xp(n, s, f'*sd + i, h'*sh + j, w'*sw + l)
    dL/dXp = full correlation of the stride-dilated G with the flipped, transposed kernel
    dL/db(t) = sum_{n, f', h', w'} G(n, t, f', h', w')

The input gradient reuses the forward kernel, so it is as fast and as exact.

Several loop structures implement the same sums:

* *plane kernels* (unit stride in H and W, the common case): each padded input plane
  Xp(n, s, f, :, :) is read as one flat run of Hp*Wp values, and the output is computed on
  the padded-width grid (Ho x Wp) so that output rows are contiguous too; the Wp - Wo extra
  columns are discarded (forward) or carry a zero gradient (weight gradient). Inner loops then
  run over thousands of contiguous positions instead of one short row, whatever the width.
* *row kernels* (any stride): one output row at a time.
* *tile kernels* (unit width stride, output at least one SIMD vector wide; the fast forward
  path, also used by the input gradient): register tiles of output channels x SIMD vectors
  accumulate the whole reduction in registers and are stored once, straight into the output;
  see :mod:`.conv3d_tiles`. A tile can also mix its channels by a 1x1x1 convolution
  before it stores (the fused Tucker-2 block of :mod:`.tucker2`).
* *panel kernels* (many output channels and a long reduction: the layers of real video CNNs,
  :func:`.conv3d_panels.panels_fit`): the forward pass and the weight gradient as register-tiled
  matrix products over gathered panels of the unfolded input (:mod:`.conv3d_panels`); they take
  precedence over the others, and the input gradient, a forward convolution, follows suit.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import literally, njit, prange, typeof, types

from ._checks import as_triple, common_dtype, float_array, require_finite, window_output_dims
from ._threads import threads_for
from .conv3d_panels import grad_panels_take, panel_forward_padded, panel_grad_weight_padded, panels_take
from .conv3d_tiles import TileConvolution, forward_tiles_padded, tiles_fit
from .linear import _linear_forward
from .padding import _pad, _padded
from .pointwise import pointwise_grad_weight
from .pointwise_tiles import WIDE_CHANNELS, pointwise_mix


@njit(parallel=True, fastmath=True, cache=True)
def _direct_forward_impl(xp, w, out, sd, sh, sw, kw):
    # n sample, t output channel, s input channel; fo, ho, wo output frame, row, column;
    # i, j, l kernel tap in depth, height, width (l innermost, over the compile-time constant kw).
    N, S = xp.shape[0], xp.shape[1]
    T, kD, kH = w.shape[0], w.shape[2], w.shape[3]
    Fo, Ho, Wo = out.shape[2], out.shape[3], out.shape[4]
    for task in prange(N * Fo * Ho):
        n = task // (Fo * Ho)
        fo = (task // Ho) % Fo
        ho = task % Ho
        for t in range(T):
            acc = out[n, t, fo, ho]
            for s in range(S):
                for i in range(kD):
                    for j in range(kH):
                        xrow = xp[n, s, fo * sd + i, ho * sh + j]
                        wrow = w[t, s, i, j]
                        for wo in range(Wo):
                            a = acc[wo]
                            for l in range(kw):
                                a += wrow[l] * xrow[wo * sw + l]
                            acc[wo] = a


@njit(cache=True)
def _direct_forward(xp, w, out, sd, sh, sw, kw):
    """out += conv(xp, w) for an already padded input; kw and sw are specialised as constants."""
    literally(kw)
    literally(sw)
    _direct_forward_impl(xp, w, out, sd, sh, sw, kw)


@njit(parallel=True, fastmath=True, cache=True)
def _direct_grad_weight_impl(xp, g, gw, sd, sh, sw, kw):
    # t output channel, s input channel, i, j, l kernel tap in depth, height, width (one task per
    # (t, s, i) slice of gw); summed over n sample and fo, ho, wo output frame, row, column.
    N, S = xp.shape[0], xp.shape[1]
    T, kD, kH = gw.shape[0], gw.shape[2], gw.shape[3]
    Fo, Ho, Wo = g.shape[2], g.shape[3], g.shape[4]
    for task in prange(T * S * kD):
        t = task // (S * kD)
        s = (task // kD) % S
        i = task % kD
        for j in range(kH):
            acc = gw[t, s, i, j]
            for n in range(N):
                for fo in range(Fo):
                    for ho in range(Ho):
                        grow = g[n, t, fo, ho]
                        xrow = xp[n, s, fo * sd + i, ho * sh + j]
                        for l in range(kw):
                            a = acc[l]
                            for wo in range(Wo):
                                a += grow[wo] * xrow[wo * sw + l]
                            acc[l] = a


@njit(cache=True)
def _direct_grad_weight(xp, g, gw, sd, sh, sw, kw):
    """gw += dL/dK for an already padded input; kw and sw are specialised as constants."""
    literally(kw)
    literally(sw)
    _direct_grad_weight_impl(xp, g, gw, sd, sh, sw, kw)


# Positions of the padded-width output grid per task of the plane kernels (4 KiB of float32).
_PLANE_BLOCK = 1024
# Kernel-width taps accumulated together by the plane weight-gradient kernel.
_GW_TAPS = 4


@njit(parallel=True, fastmath=True, cache=True)
def _plane_forward_impl(xq, w, out, sd, wp, kw):
    """out[n, t, f', q] += sum_{s,i,j,l} w[t,s,i,j,l] * xq[n, s, f'*sd + i, q + j*wp + l].

    xq: padded input with planes flattened, (N, S, Fp, rows*wp); out: (N, T, Fo, Ho*wp).
    """
    # n sample, t output channel, s input channel; fo output frame; q position on the output's
    # padded-width grid (row * wp + column), taken in blocks from q0; i, j, l kernel tap in depth,
    # height, width.
    N, S = xq.shape[0], xq.shape[1]
    T, kD, kH = w.shape[0], w.shape[2], w.shape[3]
    Fo, Q = out.shape[2], out.shape[3]
    nqb = (Q + _PLANE_BLOCK - 1) // _PLANE_BLOCK
    for task in prange(N * Fo * nqb):
        n = task // (Fo * nqb)
        fo = (task // nqb) % Fo
        q0 = (task % nqb) * _PLANE_BLOCK
        nq = min(Q - q0, _PLANE_BLOCK)
        for s in range(S):
            for i in range(kD):
                plane = xq[n, s, fo * sd + i]
                for j in range(kH):
                    xs = plane[q0 + j * wp:q0 + j * wp + nq + kw - 1]
                    for t in range(T):
                        acc = out[n, t, fo, q0:q0 + nq]
                        wrow = w[t, s, i, j]
                        for q in range(nq):
                            a = acc[q]
                            for l in range(kw):
                                a += wrow[l] * xs[q + l]
                            acc[q] = a


@njit(cache=True)
def _plane_forward(xq, w, out, sd, wp, kw):
    """Plane-kernel forward; the kernel width kw is specialised as a compile-time constant."""
    literally(kw)
    _plane_forward_impl(xq, w, out, sd, wp, kw)


@njit(parallel=True, fastmath=True, cache=True)
def _plane_grad_weight(xq, gq, gw, sd, wp):
    """gw[t,s,i,j,l] += sum_{n,f',q} gq[n,t,f',q] * xq[n,s,f'*sd+i, q + j*wp + l].

    gq is the output gradient on the padded-width grid, zero in the columns >= Wo; gw's last
    axis is the kernel width rounded up to a multiple of _GW_TAPS (the extra taps are discarded).
    Each task owns one (t, s, i) slice of gw, so the reduction needs no atomics.
    """
    # t output channel, s input channel, i, j kernel tap in depth and height, l0 the first of the
    # _GW_TAPS width taps accumulated in a0..a3; summed over n sample, fo output frame and q position
    # on the output's padded-width grid (row * wp + column).
    N, S = xq.shape[0], xq.shape[1]
    T, kD, kH, kwr = gw.shape[0], gw.shape[2], gw.shape[3], gw.shape[4]
    Fo, Q = gq.shape[2], gq.shape[3]
    for task in prange(T * S * kD):
        t = task // (S * kD)
        s = (task // kD) % S
        i = task % kD
        for j in range(kH):
            g_out = gw[t, s, i, j]
            for l0 in range(0, kwr, _GW_TAPS):
                a0, a1, a2, a3 = g_out[l0], g_out[l0 + 1], g_out[l0 + 2], g_out[l0 + 3]
                off = j * wp + l0
                for n in range(N):
                    for fo in range(Fo):
                        xs = xq[n, s, fo * sd + i, off:off + Q + _GW_TAPS - 1]
                        gs = gq[n, t, fo]
                        for q in range(Q):
                            gv = gs[q]
                            a0 += gv * xs[q]
                            a1 += gv * xs[q + 1]
                            a2 += gv * xs[q + 2]
                            a3 += gv * xs[q + 3]
                g_out[l0], g_out[l0 + 1], g_out[l0 + 2], g_out[l0 + 3] = a0, a1, a2, a3


def _forward_tiles(x, weight, bias, padding, stride, out):
    """Register-tile forward into ``out`` (N, T, Fo, Ho, Wo); needs unit width stride and Wo >= lanes."""
    forward_tiles_padded(_pad(x, padding), weight, bias, stride, out)


# Compiled entry points of the ``literally`` kernels, by (kernel, argument types, constant values).
_ENTRY_POINTS = {}


def _call_specialised(kernel, *args, constants):
    """Call ``kernel`` whose last ``constants`` int arguments are ``literally`` compile-time constants.

    Called from Python with plain ints, a ``literally`` dispatcher re-runs Numba's type inference on
    every call just to learn that it wants literal arguments: about 10 ms per call, more than the
    whole convolution of a small layer. The first call of each specialisation goes through the
    dispatcher (compiling it or loading it from the cache); later calls go to its entry point.
    """
    n = len(args) - constants
    key = (kernel, tuple(typeof(a) for a in args[:n]), args[n:])
    entry = _ENTRY_POINTS.get(key)
    if entry is not None:
        return entry(*args)
    result = kernel(*args)
    overload = kernel.overloads.get(key[1] + tuple(types.literal(v) for v in args[n:]))
    if overload is not None:
        _ENTRY_POINTS[key] = overload.entry_point
    return result


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------

def conv3d_arguments(x, weight, bias=None, stride=1, padding=0, *, check_finite=True):
    """:func:`conv3d`'s arguments checked and in the form :func:`conv3d_into` expects.

    Returns ``(x, weight, bias, stride, padding, out_dims)``: x (N, S, D, H, W) and weight
    (T, S, kD, kH, kW) C-contiguous in their common dtype (float64 if either argument is, else
    float32; integer arrays become float32), bias (T,) in that dtype or None, stride and padding
    3-tuples of ints, and out_dims the (D', H', W') of eq. (1)'s output. Raises ValueError naming the
    argument, its shape and the value at fault (with ``check_finite``, also a NaN or infinity).
    """
    x = float_array(x, "x", 5, layout="N, C, D, H, W")
    weight = float_array(weight, "weight", 5, layout="T, S, kD, kH, kW")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"channel mismatch: x has {x.shape[1]} channels (shape {x.shape}) but weight expects "
            f"{weight.shape[1]} (shape {weight.shape})")
    if bias is not None:
        bias = float_array(bias, "bias", 1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias has shape {bias.shape} but weight has {weight.shape[0]} output channels")
    if min(x.shape) == 0 or min(weight.shape) == 0:
        raise ValueError(f"empty array: x shape {x.shape}, weight shape {weight.shape}")
    stride, padding, out_dims = conv_geometry(x.shape[2:], weight.shape[2:], stride, padding)
    if check_finite:
        require_finite(weight, "weight")
        if bias is not None:
            require_finite(bias, "bias")
        require_finite(x, "x")
    dtype = common_dtype(x, weight, bias)
    x, weight = x.astype(dtype, copy=False), weight.astype(dtype, copy=False)
    bias = None if bias is None else bias.astype(dtype, copy=False)
    return x, weight, bias, stride, padding, out_dims


def conv_geometry(spatial, kernel, stride, padding, what="input"):
    """(stride, padding, output dims) of eq. (1)'s windows over the spatial dims, checked non-empty."""
    stride = as_triple(stride, "stride", minimum=1)
    padding = as_triple(padding, "padding", minimum=0)
    out_dims = window_output_dims(spatial, kernel, stride, padding)
    if min(out_dims) < 1:
        raise ValueError(f"empty output: {what} spatial shape {tuple(spatial)} with padding {padding} is smaller "
                         f"than kernel {tuple(kernel)} (output would be {out_dims})")
    return stride, padding, out_dims


def _pad_planes(x, padding, tail):
    """Zero-pad x and flatten each (H, W) plane, leaving >= ``tail`` zeros after the last plane row.

    Returns (xq of shape (N, S, Fp, rows*Wp), Wp). The tail lets the plane kernels read
    ``tail`` positions past the padded plane without a bounds test in the inner loop.
    """
    N, S, D, H, W = x.shape
    pd, ph, pw = padding
    wp = W + 2 * pw
    xq = _padded(x, padding, extra_rows=-(-tail // wp))
    return xq.reshape(N, S, D + 2 * pd, -1), wp


def _uses_planes(stride):
    return stride[1] == 1 and stride[2] == 1


def _is_pointwise(kernel_size, stride, padding):
    return tuple(kernel_size) == (1, 1, 1) and stride == (1, 1, 1) and padding == (0, 0, 0)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

def conv3d(x, weight, bias=None, stride=1, padding=0, *, check_finite=True):
    """3-D convolution, eq. (1): x (N, S, D, H, W), weight (T, S, kD, kH, kW) -> (N, T, D', H', W').

    Same semantics as ``torch.nn.functional.conv3d`` (cross-correlation, zero padding,
    floor output size). float32 unless an argument is float64. 1x1x1 kernels with unit
    stride and no padding take the dedicated pointwise path (eqs. 8 and 10).
    """
    x, weight, bias, stride, padding, out_dims = conv3d_arguments(x, weight, bias, stride, padding,
                                                                  check_finite=check_finite)
    return _conv3d_unchecked(x, weight, bias, stride, padding, out_dims)


def _conv3d_unchecked(x, weight, bias, stride, padding, out_dims):
    out = np.empty((x.shape[0], weight.shape[0]) + out_dims, dtype=x.dtype)
    return conv3d_into(x, weight, bias, stride, padding, out)


def conv3d_into(x, weight, bias, stride, padding, out):
    """Write :func:`conv3d` of the arguments, eq. (1), into the caller's buffer ``out``; returns ``out``.

    For a caller that checks once and runs many times (a layer, a compiled inference program), so
    nothing is checked here. The contract is what :func:`conv3d_arguments` returns: x
    (N, S, D, H, W) and weight (T, S, kD, kH, kW) C-contiguous of one dtype (float32 or float64),
    bias (T,) of that dtype or None, stride and padding 3-tuples of ints; ``out`` a C-contiguous
    (N, T, D', H', W') array of that dtype, (D', H', W') the output dims of eq. (1). Every element
    of ``out`` is overwritten (its previous values do not matter), by the same path and the same
    sums as :func:`conv3d`, so the values are bit-identical to it. Small convolutions run on one
    thread (:func:`._threads.threads_for`).
    """
    with threads_for(out.size * weight[0].size):
        _forward_into(x, weight, bias, stride, padding, out)
    return out


def prepared_forward_unpadded(x_shape, weight, stride, out_shape, bias=None):
    """:func:`conv3d_into` without padding for inputs of shape ``x_shape``, as a function
    ``run(x, out)`` that does once what only the shapes and weights decide: on the register-tile path
    (:func:`forward_path`), its plan and packed weights (:class:`.conv3d_tiles.TileConvolution`); any
    other path is called as :func:`conv3d_into` calls it. The same path and bits as :func:`conv3d_into`.
    """
    if forward_path(x_shape, weight.shape, stride, (0, 0, 0), weight.dtype) != "tiles":
        return lambda x, out: conv3d_into(x, weight, bias, stride, (0, 0, 0), out)
    tiles = TileConvolution(tuple(x_shape), weight, bias, stride, tuple(out_shape))
    work = math.prod(out_shape) * weight[0].size

    def run(x, out):
        with threads_for(work):
            tiles(x, out)
        return out

    return run


def pooled_dims(out_dims, pool) -> tuple:
    """Output dims of a max pooling with kernel = stride = ``pool`` and no padding, checked non-empty."""
    pooled = window_output_dims(out_dims, pool, pool, (0, 0, 0))
    if min(pooled) < 1:
        raise ValueError(f"empty output: a convolution output of spatial shape {tuple(out_dims)} is smaller "
                         f"than the pooling window {tuple(pool)}")
    return pooled


def forward_path(x_shape, weight_shape, stride, padding, dtype) -> str:
    """The path :func:`conv3d_into` takes for these shapes: "pointwise" (1x1x1, unit stride, no
    padding), "window" (one output position whose window is the whole input), "panels" (many output
    channels, or in-place rows of the padded input: :func:`.conv3d_panels.panels_take`), "tiles"
    (register tiles: unit width stride, output at least one vector wide), "planes" (unit stride in H
    and W) or "direct"."""
    S, T, kernel = x_shape[1], weight_shape[0], tuple(weight_shape[2:])
    if _is_pointwise(kernel, stride, padding):
        return "pointwise"
    if padding == (0, 0, 0) and tuple(x_shape[2:]) == kernel:
        return "window"
    out_dims = window_output_dims(tuple(x_shape[2:]), kernel, stride, padding)
    if panels_take(S, T, kernel, stride, out_dims, x_shape[4] + 2 * padding[2], dtype):
        return "panels"
    if tiles_fit(stride, out_dims[2], dtype):
        return "tiles"
    return "planes" if _uses_planes(stride) else "direct"


def _forward_into(x, weight, bias, stride, padding, out):
    """Write conv3d(x, weight, bias) into the contiguous ``out``, by the fastest path that applies
    (:func:`forward_path`)."""
    N, S = x.shape[:2]
    T = weight.shape[0]
    path = forward_path(x.shape, weight.shape, stride, padding, x.dtype)
    if path == "pointwise":
        b = np.zeros(T, x.dtype) if bias is None else bias
        pointwise_mix(x.reshape(N, S, -1), weight.reshape(T, S), b, out.reshape(N, T, -1))
    elif path == "window":
        # One output position whose window is the whole input: Y(n, t) = b(t) + <K(t), X(n)>,
        # a matrix-vector product over the flattened clip (l1 of the paper's network as a convolution).
        out[...] = 0 if bias is None else bias.reshape(1, T, 1, 1, 1)
        _linear_forward(np.ascontiguousarray(x).reshape(N, -1), weight.reshape(T, -1), out.reshape(N, T))
    elif path == "panels":
        b = np.zeros(T, x.dtype) if bias is None else bias
        panel_forward_padded(_pad(x, padding), weight, b, stride, out, numba.get_num_threads())
    elif path == "tiles":
        _forward_tiles(x, weight, bias, padding, stride, out)
    elif path == "planes":
        _forward_planes(x, weight, bias, padding, stride[0], out)
    else:
        out[...] = 0 if bias is None else bias.reshape(1, T, 1, 1, 1)
        sd, sh, sw = stride
        _call_specialised(_direct_forward, _pad(x, padding), weight, out, sd, sh, sw, weight.shape[4],
                          constants=2)


def _forward_planes(x, weight, bias, padding, sd, out):
    """Plane-kernel forward into ``out`` (N, T, Fo, Ho, Wo), computed on the padded-width grid."""
    N, T, Fo, Ho, Wo = out.shape
    kw = weight.shape[4]
    xq, wp = _pad_planes(x, padding, tail=kw - 1)
    grid = np.empty((N, T, Fo, Ho * wp), x.dtype)
    grid[...] = 0 if bias is None else bias.reshape(1, T, 1, 1)
    _call_specialised(_plane_forward, xq, weight, grid, sd, wp, kw, constants=1)
    out[...] = grid.reshape(N, T, Fo, Ho, wp)[..., :Wo]


def conv3d_backward(x, weight, grad_out, stride=1, padding=0, *, need_grad_x=True, check_finite=True):
    """Gradients of :func:`conv3d`: returns ``(grad_x, grad_weight, grad_bias)``.

    ``grad_x`` is ``None`` when ``need_grad_x`` is false (a network's first layer).
    """
    x, weight, _, stride, padding, out_dims = conv3d_arguments(x, weight, None, stride, padding,
                                                               check_finite=check_finite)
    grad_out = float_array(grad_out, "grad_out", 5, layout="N, T, D', H', W'")
    expected = (x.shape[0], weight.shape[0]) + out_dims
    if grad_out.shape != expected:
        raise ValueError(f"grad_out has shape {grad_out.shape}, expected {expected} for x {x.shape} and weight {weight.shape}")
    if check_finite:
        require_finite(grad_out, "grad_out")
    grad_out = grad_out.astype(x.dtype, copy=False)

    with threads_for(grad_out.size * x.shape[1] * weight[0, 0].size):
        return _conv3d_backward_unchecked(x, weight, grad_out, stride, padding, need_grad_x)


def _conv3d_backward_unchecked(x, weight, grad_out, stride, padding, need_grad_x):
    N, S = x.shape[:2]
    T = weight.shape[0]
    grad_bias = grad_out.sum(axis=(0, 2, 3, 4))
    grad_weight = np.zeros_like(weight)
    if _is_pointwise(weight.shape[2:], stride, padding):
        if S >= WIDE_CHANNELS and T >= WIDE_CHANNELS:
            panel_grad_weight_padded(x, grad_out, stride, grad_weight)
        else:
            pointwise_grad_weight(x.reshape(N, S, -1), grad_out.reshape(N, T, -1), grad_weight.reshape(T, S))
        grad_x = None
        if need_grad_x:
            grad_x = np.empty_like(x)
            wt = np.ascontiguousarray(weight.reshape(T, S).T)
            pointwise_mix(grad_out.reshape(N, T, -1), wt, np.zeros(S, x.dtype), grad_x.reshape(N, S, -1))
        return grad_x, grad_weight, grad_bias

    sd, sh, sw = stride
    if grad_panels_take(S, T, weight.shape[2:], stride):
        panel_grad_weight_padded(_pad(x, padding), grad_out, stride, grad_weight)
    elif _uses_planes(stride):
        _grad_weight_planes(x, grad_out, padding, sd, grad_weight)
    else:
        _call_specialised(_direct_grad_weight, _pad(x, padding), grad_out, grad_weight, sd, sh, sw, weight.shape[4],
                          constants=2)
    grad_x = _input_gradient(x.shape, weight, grad_out, stride, padding) if need_grad_x else None
    return grad_x, grad_weight, grad_bias


def _grad_weight_planes(x, grad_out, padding, sd, grad_weight):
    """Plane-kernel weight gradient: G is laid on the padded-width grid with zero extra columns."""
    N, T, Fo, Ho, Wo = grad_out.shape
    kw = grad_weight.shape[4]
    kwr = -(-kw // _GW_TAPS) * _GW_TAPS
    xq, wp = _pad_planes(x, padding, tail=kwr - 1)
    gq = np.zeros((N, T, Fo, Ho, wp), grad_out.dtype)
    gq[..., :Wo] = grad_out
    acc = np.zeros(grad_weight.shape[:4] + (kwr,), grad_weight.dtype)
    _plane_grad_weight(xq, gq.reshape(N, T, Fo, Ho * wp), acc, sd, wp)
    grad_weight += acc[..., :kw]


def _input_gradient(x_shape, weight, grad_out, stride, padding):
    """dL/dX as a stride-1 forward convolution of the dilated, fully padded G with the flipped kernel.

    With unit stride and padding p <= k - 1 that is G padded by k - 1 - p, whose output has exactly X's
    shape; otherwise the gradient of the whole padded input is computed and its border dropped.
    """
    N, T = grad_out.shape[:2]
    ksize = weight.shape[2:]
    flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1, ::-1].transpose(1, 0, 2, 3, 4))
    if stride == (1, 1, 1) and all(p <= k - 1 for p, k in zip(padding, ksize)):
        grad_x = np.empty((N, weight.shape[1]) + tuple(x_shape[2:]), grad_out.dtype)
        _forward_into(grad_out, flipped, None, (1, 1, 1), tuple(k - 1 - p for k, p in zip(ksize, padding)), grad_x)
        return grad_x
    if stride != (1, 1, 1):
        dil = np.zeros((N, T) + tuple((o - 1) * s + 1 for o, s in zip(grad_out.shape[2:], stride)), grad_out.dtype)
        dil[:, :, ::stride[0], ::stride[1], ::stride[2]] = grad_out
        grad_out = dil
    span = tuple(grad_out.shape[2 + d] + ksize[d] - 1 for d in range(3))
    grad_xp = np.empty((N, weight.shape[1]) + span, grad_out.dtype)  # _forward_into writes all of it
    _forward_into(grad_out, flipped, None, (1, 1, 1), tuple(k - 1 for k in ksize), grad_xp)
    # Inputs past the last window (floor mode) receive no gradient; then drop the padding.
    padded = tuple(x_shape[2 + d] + 2 * padding[d] for d in range(3))
    if span != padded:
        grad_xp = np.pad(grad_xp, [(0, 0), (0, 0)] + [(0, padded[d] - span[d]) for d in range(3)])
    pd, ph, pw = padding
    return np.ascontiguousarray(grad_xp[:, :, pd:pd + x_shape[2], ph:ph + x_shape[3], pw:pw + x_shape[4]])
