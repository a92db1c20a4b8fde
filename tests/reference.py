"""Independent float64 oracles for the kernel tests, written for clarity rather than speed.

Nothing here calls tuckerref: each function restates the definition directly in NumPy
(explicit zero or -inf padding, a loop over output positions, ``einsum`` over the window),
so that an agreement between the engine and these functions is evidence, not tautology.
Also here: central finite differences, and the Hypothesis strategy for convolution cases
shared by the reference tests and the PyTorch oracle tests.
"""
from __future__ import annotations

from itertools import product

import numpy as np
from hypothesis import strategies as st


def triple(v) -> tuple[int, int, int]:
    return (int(v),) * 3 if np.isscalar(v) else tuple(int(a) for a in v)


def pad_input(x, padding, value=0.0) -> np.ndarray:
    """Copy of x (N, C, D, H, W) in float64, padded on both sides of D, H, W with ``value``."""
    x = np.asarray(x, np.float64)
    p = triple(padding)
    xp = np.full(x.shape[:2] + tuple(x.shape[2 + d] + 2 * p[d] for d in range(3)), value)
    xp[:, :, p[0]:p[0] + x.shape[2], p[1]:p[1] + x.shape[3], p[2]:p[2] + x.shape[4]] = x
    return xp


def window_starts(padded_shape, kernel, stride):
    """Per dimension, the first padded index of every window (floor output size)."""
    return [range(0, padded_shape[d] - kernel[d] + 1, stride[d]) for d in range(3)]


# ----------------------------------------------------------------------------------------------
# Operators
# ----------------------------------------------------------------------------------------------

def conv3d_ref(x, weight, bias=None, stride=1, padding=0) -> np.ndarray:
    """Eq. (1): Y(n,t,f',h',w') = b(t) + sum_{s,i,j,l} K(t,s,i,j,l) Xp(n,s,f'sd+i,h'sh+j,w'sw+l)."""
    w = np.asarray(weight, np.float64)
    xp = pad_input(x, padding)
    k, s = w.shape[2:], triple(stride)
    starts = window_starts(xp.shape[2:], k, s)
    y = np.zeros((xp.shape[0], w.shape[0]) + tuple(len(r) for r in starts))
    for (a, f), (b, h), (c, v) in product(*(list(enumerate(r)) for r in starts)):
        patch = xp[:, :, f:f + k[0], h:h + k[1], v:v + k[2]]
        y[:, :, a, b, c] = np.einsum("nsijl,tsijl->nt", patch, w)
    if bias is not None:
        y += np.asarray(bias, np.float64)[None, :, None, None, None]
    return y


def max_pool3d_ref(x, kernel_size, stride=None, padding=0):
    """Max over each window of the -inf padded input; returns (y, flat input index of the first maximum)."""
    x = np.asarray(x, np.float64)
    k = triple(kernel_size)
    s = k if stride is None else triple(stride)
    p = triple(padding)
    xp = pad_input(x, p, value=-np.inf)
    starts = window_starts(xp.shape[2:], k, s)
    out_shape = x.shape[:2] + tuple(len(r) for r in starts)
    y, winner = np.empty(out_shape), np.empty(out_shape, np.int64)
    D, H, W = x.shape[2:]
    for (a, f), (b, h), (c, v) in product(*(list(enumerate(r)) for r in starts)):
        window = xp[:, :, f:f + k[0], h:h + k[1], v:v + k[2]].reshape(x.shape[:2] + (-1,))
        first = np.argmax(window, axis=-1)  # first maximum in (i, j, l) scan order, NaN wins
        y[:, :, a, b, c] = np.take_along_axis(window, first[..., None], -1)[..., 0]
        i, j, l = np.unravel_index(first, k)
        winner[:, :, a, b, c] = ((f + i - p[0]) * H + (h + j - p[1])) * W + (v + l - p[2])
    return y, winner


def max_pool3d_backward_ref(grad_out, winner, input_shape) -> np.ndarray:
    """dL/dX(q) = sum of G over the outputs whose maximum sits at q."""
    gx = np.zeros(tuple(input_shape[:2]) + (int(np.prod(input_shape[2:])),))
    g = np.asarray(grad_out, np.float64).reshape(gx.shape[:2] + (-1,))
    idx = np.asarray(winner).reshape(gx.shape[:2] + (-1,))
    for n, c in product(range(gx.shape[0]), range(gx.shape[1])):
        np.add.at(gx[n, c], idx[n, c], g[n, c])
    return gx.reshape(input_shape)


def linear_ref(x, weight, bias=None) -> np.ndarray:
    """Y(n, o) = b(o) + sum_i W(o, i) X(n, i)."""
    y = np.einsum("ni,oi->no", np.asarray(x, np.float64), np.asarray(weight, np.float64))
    return y if bias is None else y + np.asarray(bias, np.float64)


def softmax_cross_entropy_ref(logits, labels):
    """Mean of log(sum_k exp z_k) - z_y, and its gradient (softmax - onehot) / N, in float64."""
    z = np.asarray(logits, np.float64)
    m = z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z - m).sum(axis=1)) + m[:, 0]
    n = np.arange(z.shape[0])
    loss = float(np.mean(lse - z[n, labels]))
    p = np.exp(z - lse[:, None])
    onehot = np.zeros_like(z)
    onehot[n, labels] = 1.0
    return loss, (p - onehot) / z.shape[0]


# ----------------------------------------------------------------------------------------------
# Finite differences
# ----------------------------------------------------------------------------------------------

def numerical_gradient(fun, x, eps=1e-6) -> np.ndarray:
    """Central differences of the scalar ``fun`` at every entry of the float64 array ``x``.

    ``x`` is perturbed in place and restored; ``fun`` must not keep a reference to it.
    """
    assert x.dtype == np.float64
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = fun(x)
        flat[i] = old - eps
        down = fun(x)
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


def directional_derivative(fun, x, direction, eps=1e-6) -> float:
    """(fun(x + eps v) - fun(x - eps v)) / (2 eps): checks a gradient g through <g, v>."""
    return (fun(x + eps * direction) - fun(x - eps * direction)) / (2 * eps)


def assert_gradient_along_random_directions(fun, x, grad, rng, directions=3, eps=1e-6, rtol=1e-6, name="x"):
    """<grad, v> equals the central difference of ``fun`` along ``directions`` random unit directions v.

    A wrong gradient fails for almost every v, so a few directions check the whole array
    with two evaluations of ``fun`` each (for arrays too large to difference entry by entry).
    v has unit norm so that a step of ``eps`` stays tiny however large the array: a step that
    moved many values of a ReLU or max-pool network across a kink would spoil the difference.
    """
    assert grad.shape == x.shape, f"gradient w.r.t. {name} has shape {grad.shape}, expected {x.shape}"
    for _ in range(directions):
        v = rng.standard_normal(x.shape)
        v /= np.linalg.norm(v)
        numeric = directional_derivative(fun, x, v, eps)
        analytic = float(np.vdot(grad, v))
        scale = max(abs(numeric), float(np.linalg.norm(grad) * np.linalg.norm(v)), 1e-12)
        assert abs(analytic - numeric) <= rtol * scale, (
            f"d/d{name} along a random direction: analytic {analytic!r}, central difference {numeric!r}")


# ----------------------------------------------------------------------------------------------
# Drawn convolution and pooling cases
# ----------------------------------------------------------------------------------------------

#: (kernel width, width stride) pairs drawn. Both are compile-time constants of the conv kernels:
#: every new (width, width stride, dtype) compiles a specialisation (seconds each), so the tests
#: draw from this small set.
WIDTH_AND_STRIDE = ((1, 1), (3, 1), (3, 2))


#: Longest rows (input and output width) of a drawn conv3d case: narrower than a float64 SIMD vector,
#: so that the forward pass takes the plane and row kernels, whose compile-time constants are only
#: the (kernel width, width stride) above. Wider rows take the register tiles, where every channel
#: count and row width is a specialisation of its own; those have their own tests (TILE_CASES),
#: and WIDE_CASE brings the drawn-case properties to them. (The input gradient's rows, up to
#: 3 + kW - 1 = 5 wide, take one-vector tiles: those of TILE_CASES[1] for 2 and 3 channels.)
CASE_MAX_WIDTH = 3


@st.composite
def conv_cases(draw, max_batch=2, max_channels=3):
    """A valid conv3d case: sizes, kernel, stride, padding (kernel may exceed the unpadded input);
    rows (input and output) at most CASE_MAX_WIDTH wide."""
    kw, sw = draw(st.sampled_from(WIDTH_AND_STRIDE))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), kw)
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), sw)
    size, padding = [], []
    for d, (k, s) in enumerate(zip(kernel, stride)):
        n = draw(st.integers(1, 6 if d < 2 else CASE_MAX_WIDTH))
        low = max(0, -(-(k - n) // 2))  # smallest padding giving a non-empty output
        high = low + 1
        if d == 2 and (n + 2 * high - k) // s + 1 > CASE_MAX_WIDTH:
            high = low
        padding.append(draw(st.integers(low, high)))
        size.append(n)
    return dict(N=draw(st.integers(1, max_batch)), S=draw(st.integers(1, max_channels)),
                T=draw(st.integers(1, max_channels)), size=tuple(size), kernel=kernel, stride=stride,
                padding=tuple(padding), bias=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)))


#: A drawn-case-like conv3d case whose rows take the register tiles, for the properties of the drawn
#: cases (references, finite differences, PyTorch) on the tile path: 3 output channels on rows of 17
#: forward (the 3-channel tiles of TILE_CASES[0]) and one input channel, so the input gradient's
#: rows of 19 take that case's one-channel two-row tiles: no kernel of its own to compile.
WIDE_CASE = dict(N=2, S=1, T=3, size=(3, 4, 17), kernel=(2, 3, 3), stride=(1, 1, 1), padding=(1, 1, 1), bias=True,
                 seed=5)


def conv_arrays(case, dtype=np.float64):
    """x, weight, bias (or None) of a drawn case, uniform in [-1, 1]."""
    r = np.random.default_rng(case["seed"])
    x = r.uniform(-1, 1, (case["N"], case["S"]) + case["size"]).astype(dtype)
    w = r.uniform(-1, 1, (case["T"], case["S"]) + case["kernel"]).astype(dtype)
    b = r.uniform(-1, 1, case["T"]).astype(dtype) if case["bias"] else None
    return x, w, b


@st.composite
def pool_cases(draw):
    """Kernel 1..3 per dimension, stride None (= kernel) or 1..3, padding up to half the kernel."""
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(3))
    stride = draw(st.none() | st.tuples(*(st.integers(1, 3) for _ in range(3))))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    size = tuple(draw(st.integers(max(1, k - 2 * p), 6)) for k, p in zip(kernel, padding))
    return dict(shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3))) + size, kernel=kernel, stride=stride,
                padding=padding, seed=draw(st.integers(0, 2**31 - 1)))


def distinct_input(case):
    """A shuffled arange, so every window has a unique maximum, shifted to hold negative values too."""
    r = np.random.default_rng(case["seed"])
    size = int(np.prod(case["shape"]))
    return r.permutation(size).reshape(case["shape"]).astype(np.float64) - size / 2, r


#: The most channels one register tile holds, by vector registers (what a mixed Tucker-2 store needs).
TILE_CHANNELS_AT_MOST = {16: 3, 32: 6}

#: Register-tile cases of the float64 tile tests: (output channels T, vector registers, output row
#: width). The tile shape (channels x vectors x rows, vector bytes) is a compile-time constant of
#: the tile kernels, so each (T, registers, width) compiles its own specialisations, several seconds
#: each; every other size, stride, padding and kernel is a run-time value. These four cases give
#: every channel count of a tile (1-3 with 16 registers, 4-6 with 32), a narrower last channel
#: block under either register file, one-channel tiles (two rows where the height stride allows),
#: rows of exactly one vector, whole tiles, a flush last tile, and 64-byte vectors. The tests that
#: draw from them share the compiled kernels (Numba's cache is on disk).
TILE_CASES = (
    (7, 16, 17),   # 3-channel tiles x 2 + a 1-channel block; 4 vectors + a flush 1-vector tile
    (5, 16, 4),    # a 3-channel tile + a narrower 2-channel block; a row of exactly one vector
    (4, 32, 40),   # 4-channel tiles of 64-byte vectors; whole tiles only
    (11, 32, 43),  # a 6-channel tile + a narrower 5-channel block; 4 vectors + a flush 3-vector tile
)

#: Core channel counts R_t of a Tucker-2 block, with the vector registers, for the float64 tests of
#: the fused block on rows of TILE_CASES[0]'s width (17): one tile holds all R_t channels (and
#: mixes them by U_t in registers) for one channel (over two rows where the height stride allows),
#: the most of 16 registers (3) and the most of 32 (6); R_t = 7 fits neither, so the block runs its
#: three convolutions (the core's tiles then those of TILE_CASES[0]).
MIXED_TILE_CASES = ((1, 16), (3, 16), (6, 32), (7, 16))


def vector_registers(n):
    """Context: the kernels choose their register tiles as on a target with ``n`` vector registers:
    16 (AVX2: 32-byte vectors only) or 32 (AVX-512: 64-byte vectors where a row allows them).

    Tile shapes and vector widths change only speed, so every register file's tiles can be checked
    on any machine (with more registers or wider vectors than the machine has, LLVM spills or splits
    the vectors, but the sums are the same).
    """
    from contextlib import ExitStack
    from unittest import mock

    from tuckerref.kernels import simd
    stack = ExitStack()
    stack.enter_context(mock.patch.object(simd, "VECTOR_REGISTERS", n))
    stack.enter_context(mock.patch.object(simd, "VECTOR_BYTES", 64 if n == 32 else 32))
    return stack

