"""3-D average pooling and adaptive average pooling (PyTorch ``avg_pool3d`` / ``adaptive_avg_pool3d``)
and their gradients.

Both are window means over separable windows: output (a, b, e) averages the input box
[d0(a), d1(a)) x [h0(b), h1(b)) x [w0(e), w1(e)) of its (sample, channel) plane,

    Y(n, c, a, b, e) = sum_{box} X(n, c, d, h, w) / (q_d(a) q_h(b) q_w(e))
    dL/dX(n, c, d, h, w) = sum_{outputs whose box holds (d, h, w)} G(n, c, a, b, e) / (q_d q_h q_w)

Average pooling (kernel k, stride s, padding p, floor output size): along each dimension the
window starts at o*s - p and ends at min(o*s - p + k, size + p); the box is that window clipped
to the input. The divisor q is the unclipped window length with ``count_include_pad`` (zero
padding counted), the clipped length without it, and ``divisor_override`` replaces the product.

Adaptive average pooling (output size O from input size I): window o is
[floor(o I / O), ceil((o + 1) I / O)), divided by its own length; output 1 is the global mean.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._checks import as_triple, float_array, window_output_dims
from ._threads import threads_for
from .pool import frame_task


@njit(parallel=True, cache=True)
def _window_mean(x, out, d0, d1, h0, h1, w0, w1, qd, qh, qw):
    C = x.shape[1]
    N = x.shape[0]
    Do, Ho, Wo = out.shape[2], out.shape[3], out.shape[4]
    for task in prange(N * C * Do):
        n, c, a = frame_task(task, C, Do)
        xc = x[n, c]
        for b in range(Ho):
            for e in range(Wo):
                acc = 0.0
                for d in range(d0[a], d1[a]):
                    for h in range(h0[b], h1[b]):
                        row = xc[d, h]
                        for w in range(w0[e], w1[e]):
                            acc += row[w]
                out[n, c, a, b, e] = acc / (qd[a] * qh[b] * qw[e])


@njit(parallel=True, cache=True)
def _window_mean_backward(g, gx, d0, d1, h0, h1, w0, w1, qd, qh, qw):
    N, C = g.shape[0], g.shape[1]
    Do, Ho, Wo = g.shape[2], g.shape[3], g.shape[4]
    for task in prange(N * C):
        n = task // C
        c = task % C
        gc = g[n, c]
        gxc = gx[n, c]
        for a in range(Do):
            for b in range(Ho):
                for e in range(Wo):
                    v = gc[a, b, e] / (qd[a] * qh[b] * qw[e])
                    for d in range(d0[a], d1[a]):
                        for h in range(h0[b], h1[b]):
                            row = gxc[d, h]
                            for w in range(w0[e], w1[e]):
                                row[w] += v


class Windows:
    """Per dimension, the box starts, ends and divisor factors of a window mean (module docstring)."""

    def __init__(self, starts, ends, divisors):
        self.starts = [np.ascontiguousarray(s, np.int64) for s in starts]
        self.ends = [np.ascontiguousarray(e, np.int64) for e in ends]
        self.divisors = [np.ascontiguousarray(q, np.float64) for q in divisors]

    @property
    def output_dims(self) -> tuple:
        return tuple(len(s) for s in self.starts)

    def args(self):
        s, e, q = self.starts, self.ends, self.divisors
        return s[0], e[0], s[1], e[1], s[2], e[2], q[0], q[1], q[2]


def avg_pool_windows(spatial, kernel, stride, padding, out_dims, count_include_pad=True, divisor_override=None):
    """:class:`Windows` of PyTorch's average pooling over input ``spatial`` (D, H, W) (floor mode)."""
    starts, ends, divisors = [], [], []
    for d in range(3):
        o = np.arange(out_dims[d])
        start = o * stride[d] - padding[d]
        end = np.minimum(start + kernel[d], spatial[d] + padding[d])
        padded_length = end - start
        start, end = np.maximum(start, 0), np.minimum(end, spatial[d])
        starts.append(start)
        ends.append(end)
        divisors.append(padded_length if count_include_pad else end - start)
    if divisor_override is not None:
        divisors = [np.full(out_dims[0], float(divisor_override)), np.ones(out_dims[1]), np.ones(out_dims[2])]
    return Windows(starts, ends, divisors)


def adaptive_windows(spatial, output_size):
    """:class:`Windows` of PyTorch's adaptive average pooling: [floor(o I / O), ceil((o + 1) I / O))."""
    starts, ends = [], []
    for size, out in zip(spatial, output_size):
        o = np.arange(out)
        starts.append((o * size) // out)
        ends.append(-((-(o + 1) * size) // out))
    return Windows(starts, ends, [e - s for s, e in zip(starts, ends)])


def adaptive_output_size(spatial, output_size) -> tuple:
    """(D', H', W') of an adaptive pooling: an int or a 3-sequence of ints >= 1, None keeping that input size."""
    if output_size is None or np.isscalar(output_size):
        output_size = (output_size,) * 3
    output_size = tuple(output_size)
    if len(output_size) != 3:
        raise ValueError(f"output_size must be an int or a 3-tuple, got {output_size!r}")
    kept = tuple(1 if v is None else v for v in output_size)
    kept = as_triple(kept, "output_size", minimum=1)
    return tuple(int(spatial[d]) if output_size[d] is None else kept[d] for d in range(3))


def require_kernel_fits(spatial, kernel, what="input spatial shape"):
    """Raise unless every input size is at least its kernel size, padding aside: PyTorch's avg_pool3d
    refuses such an input ("input image smaller than kernel size") where max pooling accepts it."""
    if any(n < k for n, k in zip(spatial, kernel)):
        raise ValueError(f"{what} {tuple(spatial)} is smaller than the average pooling's kernel_size "
                         f"{tuple(kernel)} (every input size must be at least its kernel size, padding aside)")


def _avg_windows(spatial, kernel_size, stride, padding, count_include_pad, divisor_override):
    """Checked :class:`Windows` of an average pooling over input ``spatial`` (D, H, W)."""
    kernel = as_triple(kernel_size, "kernel_size", minimum=1)
    require_kernel_fits(spatial, kernel)
    stride = kernel if stride is None else as_triple(stride, "stride", minimum=1)
    padding = as_triple(padding, "padding", minimum=0)
    if any(2 * p > k for p, k in zip(padding, kernel)):
        raise ValueError(f"padding {padding} must be at most half of kernel_size {kernel}")
    if divisor_override is not None and (isinstance(divisor_override, bool) or not np.isreal(divisor_override)
                                         or int(divisor_override) != divisor_override or divisor_override < 1):
        raise ValueError(f"divisor_override must be None or an integer >= 1, got {divisor_override!r}")
    out_dims = window_output_dims(spatial, kernel, stride, padding)
    if min(out_dims) < 1:
        raise ValueError(f"empty output: input spatial shape {tuple(spatial)} is smaller than pooling window {kernel} "
                         f"with padding {padding}")
    return avg_pool_windows(spatial, kernel, stride, padding, out_dims, bool(count_include_pad), divisor_override)


def _run_forward(x, windows):
    out = np.empty(x.shape[:2] + windows.output_dims, x.dtype)
    with threads_for(x.size + out.size):
        _window_mean(x, out, *windows.args())
    return out


def _run_backward(grad_out, input_shape, windows):
    grad_out = float_array(grad_out, "grad_out", 5)
    expected = tuple(input_shape[:2]) + windows.output_dims
    if grad_out.shape != expected:
        raise ValueError(f"grad_out has shape {grad_out.shape}, expected {expected} for input shape {tuple(input_shape)}")
    gx = np.zeros(tuple(input_shape), grad_out.dtype)
    with threads_for(gx.size + grad_out.size):
        _window_mean_backward(grad_out, gx, *windows.args())
    return gx


def avg_pool3d(x, kernel_size, stride=None, padding=0, count_include_pad=True, divisor_override=None):
    """Average pooling over (D, H, W) with PyTorch's semantics (floor output size; ``stride`` defaults to
    ``kernel_size``; padding at most half the kernel)."""
    x = float_array(x, "x", 5, layout="N, C, D, H, W")
    return _run_forward(x, _avg_windows(x.shape[2:], kernel_size, stride, padding, count_include_pad,
                                        divisor_override))


def avg_pool3d_backward(grad_out, input_shape, kernel_size, stride=None, padding=0, count_include_pad=True,
                        divisor_override=None):
    """Gradient of :func:`avg_pool3d` w.r.t. its input of shape ``input_shape``."""
    input_shape = _input_shape(input_shape)
    return _run_backward(grad_out, input_shape, _avg_windows(input_shape[2:], kernel_size, stride, padding,
                                                             count_include_pad, divisor_override))


def _input_shape(shape) -> tuple:
    shape = tuple(int(v) for v in shape)
    if len(shape) != 5 or min(shape) < 1:
        raise ValueError(f"input_shape must be 5-D (N, C, D, H, W) with sizes >= 1, got {shape}")
    return shape


def adaptive_avg_pool3d(x, output_size):
    """Adaptive average pooling to ``output_size`` (D', H', W') with PyTorch's windows (module docstring);
    ``output_size`` 1 is global average pooling."""
    x = float_array(x, "x", 5, layout="N, C, D, H, W")
    if min(x.shape[2:]) < 1:
        raise ValueError(f"x must have non-empty spatial dimensions, got shape {x.shape}")
    return _run_forward(x, adaptive_windows(x.shape[2:], adaptive_output_size(x.shape[2:], output_size)))


def adaptive_avg_pool3d_backward(grad_out, input_shape):
    """Gradient of :func:`adaptive_avg_pool3d` w.r.t. its input of shape ``input_shape`` (the output size
    is ``grad_out``'s)."""
    input_shape = _input_shape(input_shape)
    grad_out = float_array(grad_out, "grad_out", 5)
    return _run_backward(grad_out, input_shape, adaptive_windows(input_shape[2:], grad_out.shape[2:]))
