"""The fused Tucker-2 block, eqs. (8)-(10) in one pass, against its three convolutions.

    Y = b + U_t * (C conv (U_s^T * X))

tucker2_conv3d mixes the core's channels by U_t inside the register tiles when they hold all
R_t channels; otherwise it runs the three convolutions in turn. Either way it must give the
three convolutions' result, and a Sequential that is a Tucker-2 block takes it under no_grad.
"""
import sys
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from reference import MIXED_TILE_CASES, TILE_CHANNELS_AT_MOST, WIDTH_AND_STRIDE, conv3d_ref, vector_registers
from tuckerref import conv3d
from tuckerref.commands.scaling import tucker2_stand_in
from tuckerref.kernels.pointwise import pointwise_forward_padded
from tuckerref.kernels.tucker2 import tucker2_conv3d
from tuckerref.nn import Conv3d, Sequential, no_grad

KERNELS = sys.modules["tuckerref.kernels.tucker2"]


def _factors(r, S, R_s, R_t, T, kernel, dtype=np.float64):
    return (r.uniform(-1, 1, (R_s, S, 1, 1, 1)).astype(dtype), r.uniform(-1, 1, (R_t, R_s) + kernel).astype(dtype),
            r.uniform(-1, 1, (T, R_t, 1, 1, 1)).astype(dtype), r.uniform(-1, 1, T).astype(dtype))


@pytest.mark.parametrize("R_t, registers, width", [case + (17,) for case in MIXED_TILE_CASES] + [(2, 16, 3)])
@settings(max_examples=4)
@given(N=st.integers(1, 2), S=st.integers(1, 3), R_s=st.integers(1, 3), T=st.integers(1, 5),
       kernel_dh=st.tuples(st.integers(1, 2), st.integers(1, 3)), width_and_stride=st.sampled_from(WIDTH_AND_STRIDE),
       stride_dh=st.tuples(st.integers(1, 2), st.integers(1, 2)), pad_dh=st.tuples(st.integers(0, 1), st.integers(0, 1)),
       bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_eqs_8_to_10_fused_block_equals_its_three_convolutions_float64_reference(
        R_t, registers, width, N, S, R_s, T, kernel_dh, width_and_stride, stride_dh, pad_dh, bias, seed):
    """Mixed in the tiles (R_t <= 3 with 16 vector registers, <= 6 with 32; unit width stride,
    output >= one vector wide) or not, the block is conv(conv(conv(X, U_s^T), C), U_t) + b; the
    test also checks which path ran. The core's width padding keeps the row ``width`` wide at unit
    width stride (reference.MIXED_TILE_CASES at 17, and 3: narrower than a vector)."""
    kernel = kernel_dh + (width_and_stride[0],)
    stride = stride_dh + (width_and_stride[1],)
    pad = pad_dh + (kernel[2] // 2,)
    r = np.random.default_rng(seed)
    first, core, last, b = _factors(r, S, R_s, R_t, T, kernel)
    b = b if bias else None
    x = r.uniform(-1, 1, (N, S, 3, 4, width))
    with vector_registers(registers), \
            mock.patch.object(KERNELS, "fused_block", wraps=KERNELS.fused_block) as tiles:
        y = tucker2_conv3d(x, first, core, last, b, stride=stride, padding=pad)
    expect = conv3d_ref(conv3d_ref(conv3d_ref(x, first), core, stride=stride, padding=pad), last, b)
    np.testing.assert_allclose(y, expect, rtol=1e-12, atol=1e-12)
    mixed = R_t <= TILE_CHANNELS_AT_MOST[registers] and stride[2] == 1 and y.shape[4] >= 4  # 4 float64 lanes
    assert tiles.call_count == int(mixed), "the mixed-tile path was taken when it should not be, or not taken"


@settings(max_examples=6)
@given(shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 9)),
       T=st.integers(1, 3), pad=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
       seed=st.integers(0, 2**31 - 1))
def test_eq8_pointwise_into_a_padded_buffer_writes_the_interior_and_zeros_the_border(shape, T, pad, seed):
    """out[n, t, d+pd, h+ph, pw:pw+W] = b(t) + sum_s U(t, s) x[n, s, d, h, :]; every border value is 0
    (it was -7 before), so the buffer need not be zeroed first."""
    r = np.random.default_rng(seed)
    x = r.uniform(-1, 1, shape)
    u, b = r.uniform(-1, 1, (T, shape[1])), r.uniform(-1, 1, T)
    N, _, D, H, W = shape
    out = np.full((N, T, D + 2 * pad[0], H + 2 * pad[1], W + 2 * pad[2]), -7.0)
    pointwise_forward_padded(x, u, b, out, *pad)
    inner = (slice(None), slice(None)) + tuple(slice(p, p + n) for p, n in zip(pad, (D, H, W)))
    np.testing.assert_allclose(out[inner], conv3d_ref(x, u[:, :, None, None, None], b), rtol=1e-12, atol=1e-12)
    out[inner] = 0.0
    assert np.all(out == 0.0)


@pytest.mark.parametrize("R_t, registers, width", [(1, 16, 48), (2, 16, 48), (3, 16, 48), (2, 32, 96), (5, 32, 48)])
def test_fused_block_in_float32_is_bit_identical_to_its_three_convolutions(R_t, registers, width, rng):
    """Each output is summed in the order of the three convolutions: the same float32 bits (rows of
    48 as the paper network's c1 on the test clips, whole tiles or a flush last one, or of 96: six
    64-byte vectors with 32 registers)."""
    first, core, last, b = _factors(rng, 4, 2, R_t, 6, (3, 5, 5), np.float32)
    x = rng.uniform(-1, 1, (1, 4, 4, 6, width)).astype(np.float32)
    with vector_registers(registers):
        y = tucker2_conv3d(x, first, core, last, b, padding=(1, 2, 2))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, conv3d(conv3d(conv3d(x, first), core, padding=(1, 2, 2)), last, b))


def test_same_shapes_under_another_register_file_take_that_register_files_path(rng):
    """The cached block geometry depends on the register file: R_t = 5 fits one tile with 32 vector
    registers (fused) but not with 16 (three convolutions); the same shapes called under 32, then 16,
    then 32 registers give the three convolutions' bits each time (and no 'needs the 5 channels in
    one tile' error)."""
    first, core, last, b = _factors(rng, 4, 2, 5, 6, (3, 5, 5), np.float32)
    x = rng.uniform(-1, 1, (1, 4, 4, 6, 48)).astype(np.float32)
    want = conv3d(conv3d(conv3d(x, first), core, padding=(1, 2, 2)), last, b)
    for registers in (32, 16, 32):
        with vector_registers(registers):
            np.testing.assert_array_equal(tucker2_conv3d(x, first, core, last, b, padding=(1, 2, 2)), want)


def test_sequential_tucker2_block_runs_fused_under_no_grad_only(rng):
    block = tucker2_stand_in(3, 5, (3, 3, 3), 2, 2, padding=1, rng=0)
    x = rng.uniform(-1, 1, (2, 3, 4, 5, 48)).astype(np.float32)
    fused = sys.modules["tuckerref.nn.fusion"]
    with mock.patch.object(fused, "tucker2_conv3d", wraps=fused.tucker2_conv3d) as spy:
        y_train = block.forward(x)
        assert spy.call_count == 0, "with gradients enabled the three layers must run (backward needs them)"
        with no_grad():
            y_eval = block.forward(x)
        assert spy.call_count == 1
    np.testing.assert_array_equal(y_eval, y_train)


@pytest.mark.parametrize("change", ["core bias", "first not 1x1x1", "four layers"])
def test_sequential_that_is_not_a_tucker2_block_is_not_fused(change, rng):
    layers = [Conv3d(3, 2, 1, bias=False), Conv3d(2, 2, 3, padding=1, bias=change == "core bias"), Conv3d(2, 4, 1)]
    if change == "first not 1x1x1":
        layers[0] = Conv3d(3, 2, 3, padding=1, bias=False)
    if change == "four layers":
        layers.append(Conv3d(4, 4, 1))
    x = rng.uniform(-1, 1, (1, 3, 3, 4, 9)).astype(np.float32)
    fused = sys.modules["tuckerref.nn.fusion"]
    with mock.patch.object(fused, "tucker2_conv3d") as spy, no_grad():
        Sequential(*layers).forward(x)
    assert spy.call_count == 0


@pytest.mark.parametrize("shapes, message", [
    (((2, 3, 1, 1, 1), (2, 3, 3, 3, 3), (4, 2, 1, 1, 1)),
     r"do not chain: first \(2, 3, 1, 1, 1\), core \(2, 3, 3, 3, 3\)"),
    (((2, 3, 1, 1, 1), (2, 2, 3, 3, 3), (4, 3, 1, 1, 1)), r"do not chain: .*last \(4, 3, 1, 1, 1\)"),
    (((2, 3, 3, 1, 1), (2, 2, 3, 3, 3), (4, 2, 1, 1, 1)),
     r"first must be a 1x1x1 kernel .*got shape \(2, 3, 3, 1, 1\)"),
    (((2, 4, 1, 1, 1), (2, 2, 3, 3, 3), (4, 2, 1, 1, 1)), r"channel mismatch: x has 3 channels"),
])
def test_fused_block_names_the_shapes_at_fault(shapes, message):
    x = np.zeros((1, 3, 4, 4, 4), np.float32)
    with pytest.raises(ValueError, match=message):
        tucker2_conv3d(x, *(np.zeros(s, np.float32) for s in shapes), padding=1)


def test_fused_block_names_a_non_finite_factor():
    first, core, last = np.ones((2, 3, 1, 1, 1)), np.ones((2, 2, 3, 3, 3)), np.ones((4, 2, 1, 1, 1))
    core[1, 0, 2, 1, 0] = np.nan
    message = r"core \(shape \(2, 2, 3, 3, 3\)\) holds a non-finite value nan at index \(1, 0, 2, 1, 0\)"
    with pytest.raises(ValueError, match=message):
        tucker2_conv3d(np.ones((1, 3, 4, 4, 4)), first, core, last, padding=1)
