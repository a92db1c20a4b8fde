"""The wide-channel panel convolution, eq. (1) as Y(n, t, p) = b(t) + sum_k K(t, k) A(n, k, p) over the
unfolded input A, against the float64 loop reference and finite differences.

Every call of the kernel uses C-contiguous 5-D arrays of float64 or float32 and the same register
tiles, so it compiles two specialisations whatever Hypothesis draws."""
import numpy as np
import pytest
from hypothesis import assume, example, given, settings, strategies as st

from reference import assert_gradient_along_random_directions, conv3d_ref
from tuckerref import conv3d, conv3d_backward
from tuckerref.kernels.conv3d import forward_path
from tuckerref.kernels.conv3d_panels import (GRAD_TAPS, K_BLOCK, TILE_CHANNELS, grad_panels_take, grad_task_taps,
                                             grid_fits, panel_forward_padded, panel_grad_weight_padded, panels_fit,
                                             tile_width)
from tuckerref.kernels.padding import _pad


def panel_conv(x, w, b, stride, padding, threads=2, gather=True):
    """The panel kernel called directly (whatever conv3d's dispatch would pick): on gathered panels, or
    with ``gather`` False on in-place rows of the padded input."""
    N, T = x.shape[0], w.shape[0]
    y = np.full((N, T) + output_dims(x, w, stride, padding), np.nan, x.dtype)
    panel_forward_padded(_pad(x, padding), w, b, stride, y, threads, gather=gather)
    return y


def output_dims(x, w, stride, padding):
    return tuple((x.shape[2 + d] + 2 * padding[d] - w.shape[2 + d]) // stride[d] + 1 for d in range(3))


def grid_positions(x, w, stride, padding):
    """G = (Ho - 1) * Wp + Wo: the padded-grid positions of one output frame."""
    _, Ho, Wo = output_dims(x, w, stride, padding)
    return (Ho - 1) * (x.shape[4] + 2 * padding[2]) + Wo


def grad_weight_ref(x, g, kernel, stride, padding):
    """dL/dK(t, s, i, j, l) = sum_{n, p} G(n, t, p) Xp(n, s, f'*sd + i, h'*sh + j, w'*sw + l) in float64."""
    xp = np.pad(np.asarray(x, np.float64), [(0, 0), (0, 0)] + [(p, p) for p in padding])
    windows = np.lib.stride_tricks.sliding_window_view(xp, kernel, axis=(2, 3, 4))
    windows = windows[:, :, ::stride[0], ::stride[1], ::stride[2]][:, :, :g.shape[2], :g.shape[3], :g.shape[4]]
    return np.einsum("ntfhw,nsfhwijl->tsijl", np.asarray(g, np.float64), windows)


def assert_grad_weight_matches_reference(gw, x, g, kernel, stride, padding):
    ref = grad_weight_ref(x, g, kernel, stride, padding)
    if gw.dtype == np.float64:
        np.testing.assert_allclose(gw, ref, rtol=1e-11, atol=1e-11)
    else:  # a few units in the last place of the sum of magnitudes
        scale = grad_weight_ref(np.abs(x), np.abs(g), kernel, stride, padding)
        assert np.all(np.abs(gw - ref) <= 1e-5 * scale + 1e-6)


def assert_matches_reference(y, x, w, b, stride, padding):
    ref = conv3d_ref(x, w, b, stride, padding)
    if y.dtype == np.float64:
        np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    else:  # a few units in the last place of the sum of magnitudes
        scale = conv3d_ref(np.abs(x), np.abs(w), np.abs(b), stride, padding)
        assert np.all(np.abs(y - ref) <= 1e-5 * scale + 1e-6)


@st.composite
def wide_cases(draw):
    """Shapes of C3D-like layers, scaled down: channels 1-64, frames 1-40 wide, kernels 1-3, strides 1-2."""
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(3))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(3))
    padding = tuple(draw(st.integers(0, k // 2 + 1)) for k in kernel)
    size = (draw(st.integers(1, 4)), draw(st.integers(1, 9)), draw(st.integers(1, 40)))
    size = tuple(max(s, k - 2 * p) for s, k, p in zip(size, kernel, padding))  # non-empty output
    return dict(N=draw(st.integers(1, 2)), S=draw(st.integers(1, 64)), T=draw(st.integers(1, 64)), size=size,
                kernel=kernel, stride=stride, padding=padding, dtype=draw(st.sampled_from([np.float64, np.float32])),
                threads=draw(st.integers(1, 8)), seed=draw(st.integers(0, 2**31 - 1)))


def case_arrays(c):
    r = np.random.default_rng(c["seed"])
    x = r.standard_normal((c["N"], c["S"]) + c["size"]).astype(c["dtype"])
    w = r.standard_normal((c["T"], c["S"]) + c["kernel"]).astype(c["dtype"])
    return x, w, r.standard_normal(c["T"]).astype(c["dtype"])


#: Output rows of 5 positions: a tile column's sixth run starts 7 positions before the column's end, so a
#: whole vector from there would pass into the next tap's row of the panel.
SHORT_RUNS_AT_THE_COLUMN_END = dict(N=1, S=1, T=1, size=(1, 7, 6), kernel=(1, 1, 2), stride=(1, 1, 1),
                                   padding=(0, 0, 0), dtype=np.float32, threads=1, seed=0)


@settings(max_examples=40, deadline=None)
@given(c=wide_cases())
@example(c=SHORT_RUNS_AT_THE_COLUMN_END)
def test_eq1_panel_convolution_matches_float64_loop_reference(c):
    """Any stride, padding, kernel, frame width (runs of one position to whole tile columns) and channel
    count (one-channel tiles for T mod C; more or fewer tasks than threads, so channel blocks too)."""
    x, w, b = case_arrays(c)
    y = panel_conv(x, w, b, c["stride"], c["padding"], c["threads"])
    assert_matches_reference(y, x, w, b, c["stride"], c["padding"])


@settings(max_examples=30, deadline=None)
@given(c=wide_cases(), data=st.data())
def test_eq1_in_place_rows_match_float64_reference_and_the_gathered_panels_bits(c, data):
    """Positions on the padded input's grid (unit height and width stride, any depth stride): tap k's row
    of A read in place, the grid columns that are not outputs dropped, a frame's last tile column
    overlapping the one before; every output the same sum in the same order as on gathered panels."""
    c["stride"] = (c["stride"][0], 1, 1)
    c["size"] = (c["size"][0], c["size"][1], data.draw(st.integers(max(1, c["kernel"][2] - 2 * c["padding"][2]), 40)))
    x, w, b = case_arrays(c)
    width = tile_width(x.dtype)
    assume(grid_positions(x, w, c["stride"], c["padding"]) >= width)
    y = panel_conv(x, w, b, c["stride"], c["padding"], c["threads"], gather=False)
    assert_matches_reference(y, x, w, b, c["stride"], c["padding"])
    np.testing.assert_array_equal(y, panel_conv(x, w, b, c["stride"], c["padding"], c["threads"], gather=True))


def test_eq1_in_place_rows_read_a_run_of_frames_in_place(rng):
    """``frame0``: the output frames from frame 2 on of a longer output, read from the whole padded input,
    on both layouts, equal the reference's frames; a frame of exactly one tile column of grid positions."""
    width = tile_width(np.float32)
    x = rng.standard_normal((1, 5, 6, 3, width // 2)).astype(np.float32)
    w = rng.standard_normal((9, 5, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(9).astype(np.float32)
    Wp = x.shape[4] + 2
    ref = conv3d_ref(x, w, b, (1, 1, 1), (1, 1, 1))
    assert (3 - 1) * Wp + x.shape[4] >= width
    for gather in (True, False):
        y = np.full((1, 9, 3) + ref.shape[3:], np.nan, np.float32)
        panel_forward_padded(_pad(x, (1, 1, 1)), w, b, (1, 1, 1), y, 2, frame0=2, gather=gather)
        scale = conv3d_ref(np.abs(x), np.abs(w), np.abs(b), (1, 1, 1), (1, 1, 1))[:, :, 2:5]
        assert np.all(np.abs(y - ref[:, :, 2:5]) <= 1e-5 * scale + 1e-6)
    x1 = rng.standard_normal((1, 4, 2, 1, width)).astype(np.float32)  # G = width: one column per frame
    w1 = rng.standard_normal((8, 4, 1, 1, 3)).astype(np.float32)
    assert grid_positions(x1, w1, (1, 1, 1), (0, 0, 1)) == width
    b1 = np.zeros(8, np.float32)
    assert_matches_reference(panel_conv(x1, w1, b1, (1, 1, 1), (0, 0, 1), gather=False), x1, w1, b1, (1, 1, 1), (0, 0, 1))


def test_eq1_dispatch_takes_in_place_rows_for_cores_and_short_rows_only():
    """grid_fits's rule: few output channels or short rows; unit height and width stride; a tile column of
    grid positions per frame. conv3d's dispatch sends 8+ output channels there (C3D-like cores)."""
    f32 = np.float32
    assert grid_fits(64, (1, 1, 1), 30, (8, 28, 28), f32) and grid_fits(512, (1, 1, 1), 9, (2, 7, 7), f32)
    assert not grid_fits(128, (1, 1, 1), 30, (8, 28, 28), f32) and not grid_fits(128, (1, 1, 1), 58, (8, 56, 56), f32)
    assert not grid_fits(32, (1, 2, 1), 30, (8, 14, 28), f32) and not grid_fits(32, (1, 1, 1), 4, (2, 2, 2), f32)
    assert forward_path((1, 8, 8, 28, 28), (8, 8, 3, 3, 3), (1, 1, 1), (1, 1, 1), f32) == "panels"
    assert forward_path((1, 8, 8, 28, 28), (4, 8, 3, 3, 3), (1, 1, 1), (1, 1, 1), f32) == "tiles"


@settings(max_examples=25, deadline=None)
@given(c=wide_cases())
@example(c=SHORT_RUNS_AT_THE_COLUMN_END)
def test_eq1_panel_weight_gradient_matches_float64_reference(c):
    """dL/dK = sum_{n,p} G(n, t, p) A(n, k, p) by the panel kernel: any stride, padding, kernel, frame
    width and channel count (channels past a tile width, taps past a task's block, positions past a block)."""
    x, w, _ = case_arrays(c)
    stride, padding = c["stride"], c["padding"]
    out_dims = tuple((x.shape[2 + d] + 2 * padding[d] - w.shape[2 + d]) // stride[d] + 1 for d in range(3))
    g = np.random.default_rng(c["seed"] + 1).standard_normal((c["N"], c["T"]) + out_dims).astype(c["dtype"])
    gw = np.zeros_like(w)
    panel_grad_weight_padded(_pad(x, padding), g, stride, gw)
    assert_grad_weight_matches_reference(gw, x, g, w.shape[2:], stride, padding)


@settings(max_examples=25, deadline=None)
@given(c=wide_cases())
def test_eq1_in_place_weight_gradient_matches_float64_reference_and_the_gathered_panels_bits(c):
    """dL/dK with A's rows read in place and G's transpose on the padded grid (unit height and width
    stride, the kernel's width a whole tile row of taps): the reference's values, and the panels' bits."""
    c["stride"] = (c["stride"][0], 1, 1)
    c["kernel"] = c["kernel"][:2] + (TILE_CHANNELS,)
    c["padding"] = c["padding"][:2] + (min(c["padding"][2], 2),)
    c["size"] = c["size"][:2] + (max(c["size"][2], TILE_CHANNELS),)
    x, w, _ = case_arrays(c)
    stride, padding = c["stride"], c["padding"]
    g = np.random.default_rng(c["seed"] + 1).standard_normal((c["N"], c["T"]) + output_dims(x, w, stride, padding))
    g = g.astype(c["dtype"])
    gw, gw_panels = np.zeros_like(w), np.zeros_like(w)
    panel_grad_weight_padded(_pad(x, padding), g, stride, gw, gather=False)
    panel_grad_weight_padded(_pad(x, padding), g, stride, gw_panels, gather=True)
    np.testing.assert_array_equal(gw, gw_panels)
    assert_grad_weight_matches_reference(gw, x, g, w.shape[2:], stride, padding)


def test_weight_gradient_tasks_give_each_thread_an_even_share_of_taps():
    """grad_task_taps: whole tile rows, at most GRAD_TAPS, and tasks in a multiple of the threads where
    there are taps for it, so that the parallel loop's equal shares of tasks are near-equal shares of taps."""
    assert grad_task_taps(432, 2) == 45 and grad_task_taps(81, 2) == 42  # was 48: 240 / 192 and 48 / 33 taps
    for K in (3, 27, 81, 216, 432, 864, 1728, 13824):
        for threads in (1, 2, 3, 4):
            taps = grad_task_taps(K, threads)
            tasks = -(-K // taps)
            assert taps % TILE_CHANNELS == 0 and taps <= GRAD_TAPS
            if K >= threads * GRAD_TAPS:  # contiguous shares of tasks, as a static schedule deals them
                bounds = [w * tasks // threads for w in range(threads + 1)]
                shares = [min(K, bounds[w + 1] * taps) - bounds[w] * taps for w in range(threads)]
                assert max(shares) - min(shares) < taps, (K, threads, shares)


def test_eq1_weight_gradient_dispatch_reads_rows_in_place_for_8_to_128_outputs():
    """grad_panels_take: wide layers, and 8+ outputs with 64+ taps where A's rows can be read in place."""
    k3 = (3, 3, TILE_CHANNELS)
    assert grad_panels_take(3, 16, k3, (1, 1, 1)) and grad_panels_take(64, 64, k3, (1, 1, 1))
    assert not grad_panels_take(1, 16, k3, (1, 1, 1)) and not grad_panels_take(16, 16, k3, (1, 2, 1))
    assert not grad_panels_take(16, 4, k3, (1, 1, 1))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_eq1_panel_convolution_blocks_taps_and_covers_every_column(dtype):
    """Taps over two cache blocks, T two channel groups plus one, positions a whole number of tile
    columns, one short and one past it (a last column past the clip's end), 7-column frames."""
    width = tile_width(dtype)
    S, T = K_BLOCK // 9 + 1, 2 * TILE_CHANNELS + 1  # S * 9 taps > K_BLOCK
    r = np.random.default_rng(0)
    for P in (width * 3, width * 3 - 1, width * 3 + 1):
        x = r.standard_normal((2, S, 1, 1, P)).astype(dtype)
        w = r.standard_normal((T, S, 1, 3, 3)).astype(dtype)
        b = r.standard_normal(T).astype(dtype)
        y = panel_conv(x, w, b, (1, 1, 1), (0, 1, 1))
        assert_matches_reference(y, x, w, b, (1, 1, 1), (0, 1, 1))
    x = r.standard_normal((1, 40, 2, 7, 7)).astype(dtype)
    w = r.standard_normal((33, 40, 3, 3, 3)).astype(dtype)
    b = r.standard_normal(33).astype(dtype)
    assert_matches_reference(panel_conv(x, w, b, (1, 1, 1), (1, 1, 1)), x, w, b, (1, 1, 1), (1, 1, 1))


def test_eq1_conv3d_takes_panels_for_wide_layers_and_keeps_reference_values(rng):
    """conv3d's dispatch picks the panel kernel for many output channels and a long reduction
    (conv5a-like, scaled down), and its values are the reference's."""
    x = rng.standard_normal((1, 8, 2, 5, 5))
    w = rng.standard_normal((40, 8, 3, 3, 3))
    b = rng.standard_normal(40)
    assert panels_fit(8, 40, (3, 3, 3)) and not panels_fit(8, 8, (3, 3, 3)) and not panels_fit(2, 40, (1, 1, 1))
    np.testing.assert_allclose(conv3d(x, w, b, padding=1), conv3d_ref(x, w, b, padding=1), rtol=1e-12, atol=1e-12)


def test_eq1_wide_conv3d_backward_matches_finite_differences(rng):
    """Central differences of L = <G, conv3d(x, W, b)> w.r.t. x and W (random directions) for a layer wide
    enough that the forward and the input gradient (a convolution with the flipped, transposed kernel,
    32+ outputs) both run on panels."""
    S, T = 34, 33
    x = rng.standard_normal((1, S, 2, 3, 4))
    w = rng.standard_normal((T, S, 2, 2, 3)) / np.sqrt(S * 12)
    b = rng.standard_normal(T)
    assert panels_fit(S, T, w.shape[2:]) and panels_fit(T, S, w.shape[2:])
    y = conv3d(x, w, b, padding=(1, 0, 1))
    g = rng.standard_normal(y.shape)
    gx, gw, gb = conv3d_backward(x, w, g, padding=(1, 0, 1))
    assert_gradient_along_random_directions(lambda v: np.vdot(g, conv3d(v, w, b, padding=(1, 0, 1))), x, gx, rng,
                                            name="x")
    assert_gradient_along_random_directions(lambda v: np.vdot(g, conv3d(x, v, b, padding=(1, 0, 1))), w, gw, rng,
                                            name="weight")
    np.testing.assert_allclose(gb, g.sum(axis=(0, 2, 3, 4)), rtol=1e-12)
