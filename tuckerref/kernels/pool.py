"""3-D max pooling (PyTorch ``max_pool3d`` semantics) and its gradient.

    Y(n, c, f', h', w') = max_{i, j, l} Xp(n, c, f'*sd + i, h'*sh + j, w'*sw + l)

with Xp padded by -inf, floor output size, the first maximum in scan order winning
ties and NaN propagating. The forward pass records the flat input index of each
maximum; the backward pass routes every output gradient to that index only:

    dL/dX(n, c, q) = sum_{outputs o with argmax(o) = q} G(n, c, o)
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._checks import as_triple, float_array, window_output_dims
from ._threads import threads_for
from .activation import relu as relu_kernel


@njit(inline="always", cache=True)
def _nan_max(a, b):
    """max(a, b) that propagates NaN (keeps a NaN a, takes a NaN b).

    '|' rather than 'or': no branch, so loops over it vectorise to compare-and-blend.
    """
    return b if (b > a) | (b != b) else a


@njit(inline="always", cache=True)
def frame_task(task, C, Do):
    """(sample, channel, output frame) of a pooling task: tasks run over N x C x Do output frames in
    that order, one output frame (all its rows) each."""
    return task // (C * Do), (task // Do) % C, task % Do


@njit(parallel=True, cache=True)
def _max_pool_forward(x, out, idx, kd, kh, kw, sd, sh, sw, pd, ph, pw):
    # n sample, c channel; fo, ho, wo output frame, row, column; i, j, l window offset in depth,
    # height, width, at input position d, h, w (skipped in the padding); bi flat index of the maximum.
    N, C, D, H, W = x.shape
    Do, Ho, Wo = out.shape[2], out.shape[3], out.shape[4]
    for task in prange(N * C * Do):
        n, c, fo = frame_task(task, C, Do)
        xc = x[n, c]
        for ho in range(Ho):
            for wo in range(Wo):
                best = xc[0, 0, 0]
                bi = -1
                for i in range(kd):
                    d = fo * sd - pd + i
                    if d < 0 or d >= D:
                        continue
                    for j in range(kh):
                        h = ho * sh - ph + j
                        if h < 0 or h >= H:
                            continue
                        for l in range(kw):
                            w = wo * sw - pw + l
                            if w < 0 or w >= W:
                                continue
                            v = xc[d, h, w]
                            if bi < 0 or v > best or (v != v and best == best):
                                best = v
                                bi = (d * H + h) * W + w
                out[n, c, fo, ho, wo] = best
                idx[n, c, fo, ho, wo] = bi


@njit(inline="always", cache=True)
def _later_wins(v, best):
    """Whether a value later in scan order replaces the running maximum ``best``: greater, or the first NaN."""
    return (v > best) | ((v != v) & (best == best))


@njit(parallel=True, cache=True)
def _max_pool_forward_unpadded(x, out, idx, kd, kh, kw, sd, sh, sw):
    """:func:`_max_pool_forward` for windows without padding: one output row at a time, each window row
    (i, j) in scan order a pass over the output columns that keeps the running maxima and their
    indices by selects (no branches), so the first maximum still wins ties and the first NaN still
    propagates. The common window of width and stride 2 takes both values of a column pair per pass
    (seven times faster than the general loop on a narrow C3D's pool2)."""
    # n sample, c channel; fo, ho, wo output frame, row, column; i, j, l window offset (depth, height, width).
    N, C, D, H, W = x.shape
    Do, Ho, Wo = out.shape[2], out.shape[3], out.shape[4]
    pairs = kw == 2 and sw == 2
    for task in prange(N * C * Do):
        n, c, fo = frame_task(task, C, Do)
        best = np.empty(Wo, x.dtype)
        at = np.empty(Wo, np.int64)
        for ho in range(Ho):
            for i in range(kd):
                for j in range(kh):
                    d = fo * sd + i
                    h = ho * sh + j
                    src = x[n, c, d, h]
                    base = (d * H + h) * W
                    first = i == 0 and j == 0
                    if pairs:
                        for wo in range(Wo):
                            a = src[2 * wo]
                            b = src[2 * wo + 1]
                            second = _later_wins(b, a)
                            m = b if second else a
                            k = base + 2 * wo + (1 if second else 0)
                            take = first or _later_wins(m, best[wo])
                            best[wo] = m if take else best[wo]
                            at[wo] = k if take else at[wo]
                        continue
                    for l in range(kw):
                        for wo in range(Wo):
                            v = src[wo * sw + l]
                            take = (first and l == 0) or _later_wins(v, best[wo])
                            best[wo] = v if take else best[wo]
                            at[wo] = base + wo * sw + l if take else at[wo]
            out[n, c, fo, ho] = best
            idx[n, c, fo, ho] = at


@njit(inline="always", cache=True)
def _relu_value(v):
    """max(v, 0) with NaN kept, as a select (vectorises)."""
    return 0 if v < 0 else v


@njit(parallel=True, cache=True)
def _max_pool_values(x, out, kd, kh, kw, sd, sh, sw, relu):
    """Values of an unpadded max pooling, without argmax bookkeeping (inference); with ``relu``,
    max(., 0) of each (NaN stays NaN): the ReLU after a pooling, in the same pass.

    For each output row, the kd*kh input rows of the window are reduced element-wise first
    (contiguous, vectorised; the first two in one pass), then each run of kw values of that row:
    the common window of width and stride 2 as pairs, in a loop that vectorises. NaN propagates.
    """
    # n sample, c channel; fo, ho, wo output frame, row, column; k window row (depth i, height j)
    # reduced into ``row``, w input column, l window offset in width.
    N, C, W = x.shape[0], x.shape[1], x.shape[4]
    Do, Ho, Wo = out.shape[2], out.shape[3], out.shape[4]
    pairs = kw == 2 and sw == 2
    for task in prange(N * C * Do):
        n, c, fo = frame_task(task, C, Do)
        row = np.empty(W, x.dtype)
        for ho in range(Ho):
            r0 = x[n, c, fo * sd, ho * sh]
            if kd * kh == 1:
                row[:] = r0
            else:
                r1 = x[n, c, fo * sd + 1 // kh, ho * sh + 1 % kh]
                for w in range(W):
                    row[w] = _nan_max(r0[w], r1[w])
                for k in range(2, kd * kh):
                    src = x[n, c, fo * sd + k // kh, ho * sh + k % kh]
                    for w in range(W):
                        row[w] = _nan_max(row[w], src[w])
            dst = out[n, c, fo, ho]
            if pairs:
                if relu:
                    for wo in range(Wo):
                        dst[wo] = _relu_value(_nan_max(row[2 * wo], row[2 * wo + 1]))
                else:
                    for wo in range(Wo):
                        dst[wo] = _nan_max(row[2 * wo], row[2 * wo + 1])
            else:
                for wo in range(Wo):
                    m = row[wo * sw]
                    for l in range(1, kw):
                        m = _nan_max(m, row[wo * sw + l])
                    dst[wo] = _relu_value(m) if relu else m


@njit(parallel=True, cache=True)
def _max_pool_backward(g, idx, gx):
    # n sample, c channel, o flat output position; iflat[o] the flat input position of its maximum.
    N, C = g.shape[0], g.shape[1]
    for task in prange(N * C):
        n = task // C
        c = task % C
        gflat = g[n, c].ravel()
        iflat = idx[n, c].ravel()
        gxc = gx[n, c].ravel()
        for o in range(gflat.size):
            gxc[iflat[o]] += gflat[o]


def _pool_args(x, kernel_size, stride, padding):
    x = float_array(x, "x", 5, layout="N, C, D, H, W")
    kernel = as_triple(kernel_size, "kernel_size", minimum=1)
    stride = kernel if stride is None else as_triple(stride, "stride", minimum=1)
    padding = as_triple(padding, "padding", minimum=0)
    for d in range(3):
        if 2 * padding[d] > kernel[d]:
            raise ValueError(f"padding {padding} must be at most half of kernel_size {kernel}")
    out_dims = window_output_dims(x.shape[2:], kernel, stride, padding)
    if min(out_dims) < 1:
        raise ValueError(f"empty output: input spatial shape {x.shape[2:]} is smaller than pooling window {kernel} "
                         f"with padding {padding}")
    return x, kernel, stride, padding, out_dims


def max_pool3d(x, kernel_size, stride=None, padding=0):
    """Max pooling over (D, H, W). Returns ``(y, argmax)``; ``stride`` defaults to ``kernel_size``."""
    x, kernel, stride, padding, out_dims = _pool_args(x, kernel_size, stride, padding)
    out = np.empty(x.shape[:2] + out_dims, x.dtype)
    idx = np.empty(x.shape[:2] + out_dims, np.int64)
    with threads_for(out.size * int(np.prod(kernel))):
        if any(padding):
            _max_pool_forward(x, out, idx, *kernel, *stride, *padding)
        else:
            _max_pool_forward_unpadded(x, out, idx, *kernel, *stride)
    return out, idx


def max_pool3d_values(x, kernel_size, stride=None, padding=0, *, relu=False):
    """Max pooling values only (no argmax, no gradient): the inference path of :func:`max_pool3d`;
    with ``relu``, max(., 0) of the result (NaN stays NaN), in the same pass."""
    x, kernel, stride, padding, out_dims = _pool_args(x, kernel_size, stride, padding)
    if any(padding):
        out = max_pool3d(x, kernel, stride, padding)[0]
        return relu_kernel(out, inplace=True) if relu else out
    out = np.empty(x.shape[:2] + out_dims, x.dtype)
    with threads_for(x.size):
        _max_pool_values(x, out, *kernel, *stride, bool(relu))
    return out


def max_pool3d_backward(grad_out, argmax, input_shape):
    """Gradient of :func:`max_pool3d`: each output gradient goes to its recorded maximum."""
    grad_out = float_array(grad_out, "grad_out", 5)
    argmax = np.ascontiguousarray(argmax, dtype=np.int64)
    if grad_out.shape != argmax.shape:
        raise ValueError(f"grad_out shape {grad_out.shape} does not match argmax shape {argmax.shape}")
    if tuple(input_shape[:2]) != grad_out.shape[:2]:
        raise ValueError(f"input_shape {tuple(input_shape)} does not match grad_out {grad_out.shape} in (N, C)")
    gx = np.zeros(tuple(input_shape), grad_out.dtype)
    with threads_for(grad_out.size):
        _max_pool_backward(grad_out, argmax, gx)
    return gx
