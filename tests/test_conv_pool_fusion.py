"""A convolution, its max pooling and ReLU in one pass (inference), against the layers in turn.

    Y = relu(max_pool3d(conv3d(X, K, b), kernel = stride = P))

for a plain convolution (eq. 1), a Tucker-2 block (eqs. 8-10) and a Tucker-1 block (eqs. 9-10, on
the register tiles or streamed a group of frames at a time), and the Sequential fusion that uses
them under no_grad: the same values, bit for bit, as the separate layers.
"""
import sys
from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from reference import MIXED_TILE_CASES, TILE_CASES, conv3d_ref, max_pool3d_ref, vector_registers
from tuckerref import conv3d, conv3d_max_pool3d, max_pool3d_values, relu
from tuckerref.commands.scaling import tucker2_stand_in
from tuckerref.kernels.tucker2 import tucker2_conv3d
from tuckerref.kernels.stream_pool import streamed_block_pool
from tuckerref.models import thetis_net
from tuckerref.nn import Conv3d, MaxPool3d, ReLU, Sequential, no_grad

FUSION = sys.modules["tuckerref.nn.fusion"]
TILES = sys.modules["tuckerref.kernels.conv3d_tiles"]


def _pool_then_relu(y, pool, with_relu):
    pooled = max_pool3d_ref(y, pool)[0]
    return np.maximum(pooled, 0) if with_relu else pooled


@pytest.mark.parametrize("T, registers, width", [TILE_CASES[0], TILE_CASES[2]])
@settings(max_examples=7)
@given(N=st.integers(1, 2), S=st.integers(1, 3), out_dh=st.tuples(st.integers(2, 5), st.integers(2, 7)),
       kernel=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3)),
       pool=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 4)),
       stride_dh=st.tuples(st.integers(1, 2), st.integers(1, 2)), bias=st.booleans(), with_relu=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_fused_pooling_equals_eq1_then_window_maxima_float64(T, registers, width, N, S, out_dh, kernel, pool,
                                                             stride_dh, bias, with_relu, seed):
    """Any pooling window (rows and columns the floor drops included), one- and two-row tiles, any
    depth/height stride; against the float64 loop references of eq. (1) and of max pooling. The
    tile cases (reference.TILE_CASES) give several channel blocks and a one-channel block (over
    two rows when the pooling window and height stride allow) with a flush last tile under 16
    registers, and whole tiles of 64-byte vectors under 32."""
    r = np.random.default_rng(seed)
    stride = stride_dh + (1,)
    padding = (0, 1, kernel[2] // 2)
    out_size = out_dh + (width,)
    size = tuple((o - 1) * s + k - 2 * p for o, s, k, p in zip(out_size, stride, kernel, padding))
    if min(size) < 1:
        return
    x, w = r.uniform(-1, 1, (N, S) + size), r.uniform(-1, 1, (T, S) + kernel)
    b = r.uniform(-1, 1, T) if bias else None
    expect = _pool_then_relu(conv3d_ref(x, w, b, stride, padding), pool, with_relu)
    if min(expect.shape) == 0:
        return
    with vector_registers(registers), \
            mock.patch.object(TILES, "_tile_pool_forward_impl", wraps=TILES._tile_pool_forward_impl) as fused:
        y = conv3d_max_pool3d(x, w, b, stride, padding, pool, relu=with_relu)
    assert fused.call_count >= 1, "the fused pooling path was not taken"
    np.testing.assert_allclose(y, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("R_t, registers", MIXED_TILE_CASES)
@settings(max_examples=3)
@given(S=st.integers(1, 3), R_s=st.integers(1, 3), T=st.integers(1, 6),
       pool=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 4)), with_relu=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_fused_tucker2_block_pooling_equals_eqs_8_to_10_then_window_maxima(R_t, registers, S, R_s, T, pool, with_relu,
                                                                           seed):
    """R_t that one tile holds (1, 3 with 16 registers, 6 with 32: one pass, U_t mixed and the windows
    pooled in the tiles) or not (7: three convolutions, then pooling): the float64 loop references."""
    r = np.random.default_rng(seed)
    first, core = r.uniform(-1, 1, (R_s, S, 1, 1, 1)), r.uniform(-1, 1, (R_t, R_s, 2, 3, 3))
    last, b = r.uniform(-1, 1, (T, R_t, 1, 1, 1)), r.uniform(-1, 1, T)
    x = r.uniform(-1, 1, (1, S, 4, 7, 17))
    expect = conv3d_ref(conv3d_ref(conv3d_ref(x, first), core, padding=(0, 1, 1)), last, b)
    expect = _pool_then_relu(expect, pool, with_relu)
    with vector_registers(registers):
        y = tucker2_conv3d(x, first, core, last, b, padding=(0, 1, 1), pool=pool, relu=with_relu)
    np.testing.assert_allclose(y, expect, rtol=1e-12, atol=1e-12)


def _pooled_block(x, first, core, last, b, stride, padding, pool):
    """The prepared pooled Tucker-2 block (with ReLU) that computes Z = U_s^T X in its tile threads."""
    from tuckerref.kernels import simd
    from tuckerref.kernels.tucker2 import block_geometry, fused_block
    g = block_geometry(x.shape, first.shape, core.shape, last.shape, b.shape, stride, padding, pool, x.dtype,
                       simd.VECTOR_REGISTERS)
    assert g.fused
    return fused_block(g, first, core, last, b, relu=True)


@settings(max_examples=10)
@given(N=st.integers(1, 3), S=st.integers(1, 3), R_s=st.integers(1, 3), R_t=st.sampled_from([1, 3]), T=st.integers(1, 4),
       F=st.integers(2, 7), kernel=st.tuples(st.integers(1, 3), st.integers(1, 3), st.just(3)),
       stride_dh=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       pad=st.tuples(st.integers(0, 2), st.integers(0, 2), st.just(1)),
       pool=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3)), chunks=st.integers(1, 7),
       seed=st.integers(0, 2**31 - 1))
def test_eqs_8_to_10_then_pooling_with_z_computed_in_chunks_of_planes_float64_reference(
        N, S, R_s, R_t, T, F, kernel, stride_dh, pad, pool, chunks, seed):
    """A pooled Tucker-2 block computes the padded Z = U_s^T X (eq. 8) in its tile tasks, each over a
    run of pooling window planes (n, f_q) that may span clips: whatever the number of runs, the
    result is relu(max_pool(conv(conv(conv(X, U_s^T), C), U_t) + b)), and one fused kernel ran."""
    r = np.random.default_rng(seed)
    stride = (stride_dh[0], stride_dh[1], 1)
    x = r.uniform(-1, 1, (N, S, F, 7, 17))
    first, core = r.uniform(-1, 1, (R_s, S, 1, 1, 1)), r.uniform(-1, 1, (R_t, R_s) + kernel)
    last, b = r.uniform(-1, 1, (T, R_t, 1, 1, 1)), r.uniform(-1, 1, T)
    out_dims = [(n + 2 * p - k) // s + 1 for n, p, k, s in zip(x.shape[2:], pad, kernel, stride)]
    assume(min(out_dims) >= 1 and out_dims[2] >= 4 and all(o // q >= 1 for o, q in zip(out_dims, pool)))
    expect = conv3d_ref(conv3d_ref(conv3d_ref(x, first), core, stride=stride, padding=pad), last, b)
    with mock.patch.object(TILES, "_tile_pool_first_impl", wraps=TILES._tile_pool_first_impl) as fused:
        y = _pooled_block(x, first, core, last, b, stride, pad, pool)(x, chunks=chunks)
    assert fused.call_count == 1
    np.testing.assert_allclose(y, _pool_then_relu(expect, pool, True), rtol=1e-12, atol=1e-12)


def test_z_computed_in_the_tile_threads_gives_the_bits_of_the_two_passes(rng):
    """float32, rows of 48 as the paper network's compressed c1 on the test clips (a 2-channel core:
    a whole tile and a flush one): U_s's pass into a padded buffer, then the pooled tiles, and the
    block that computes Z in its tile tasks (in 1 to 4 runs of planes) give the same bits."""
    from tuckerref.kernels.pointwise import pointwise_forward_padded
    width = 48
    x = rng.uniform(-1, 1, (2, 4, 6, 8, width)).astype(np.float32)
    first = rng.uniform(-1, 1, (2, 4, 1, 1, 1)).astype(np.float32)
    core = rng.uniform(-1, 1, (2, 2, 3, 5, 5)).astype(np.float32)
    last, b = rng.uniform(-1, 1, (6, 2, 1, 1, 1)).astype(np.float32), rng.uniform(-1, 1, 6).astype(np.float32)
    padding, pool = (1, 2, 2), (2, 4, 4)
    zp = np.empty((2, 2, 8, 12, width + 4), np.float32)
    pointwise_forward_padded(x, first.reshape(2, 4), np.zeros(2, np.float32), zp, *padding)
    y = np.empty((2, 6, 3, 2, width // 4), np.float32)
    TILES.forward_tiles_padded(zp, core, None, (1, 1, 1), y, mix=(last.reshape(6, 2), b), pool=pool, relu=True)
    block = _pooled_block(x, first, core, last, b, (1, 1, 1), padding, pool)
    for chunks in (1, 2, 3, 4):
        np.testing.assert_array_equal(block(x, chunks=chunks), y)


@pytest.mark.parametrize("T, registers, width", [(6, 16, 48), (1, 16, 83), (2, 32, 96)])
def test_fused_pooling_in_float32_is_bit_identical_to_the_layers_in_turn(T, registers, width, rng):
    """The same float32 bits as conv, pool, relu: rows of 48 as the paper network's c1 on the test
    clips (two blocks of 3-channel tiles, whole tiles), of 83 (one channel over two rows, whole
    tiles and a flush one) and of 96 (2 channels, one whole tile of six 64-byte vectors with 32
    registers). Each case compiles its own tile kernels, so each tile shape is taken once."""
    x = rng.uniform(-1, 1, (1, 3, 4, 8, width)).astype(np.float32)
    w = rng.uniform(-1, 1, (T, 3, 3, 3, 5)).astype(np.float32)
    b = rng.uniform(-1, 1, T).astype(np.float32)
    with vector_registers(registers):
        y = conv3d_max_pool3d(x, w, b, padding=(1, 1, 2), pool=(2, 4, 4), relu=True)
        separate = relu(max_pool3d_values(conv3d(x, w, b, padding=(1, 1, 2)), (2, 4, 4)))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, separate)


def test_fused_pooling_propagates_nan_like_max_pool3d(rng):
    """A NaN in the convolution's output makes its window's maximum NaN, and the ReLU keeps it
    (rows of 17 with 3 channels: the pooled tiles of reference.TILE_CASES[0])."""
    x = rng.uniform(-1, 1, (1, 1, 2, 4, 17))
    x[0, 0, 1, 2, 9] = np.nan
    w = rng.uniform(-1, 1, (3, 1, 1, 1, 1))
    y = conv3d_max_pool3d(x, w, pool=(1, 2, 4), relu=True, check_finite=False)
    expect = relu(max_pool3d_values(conv3d(x, w, check_finite=False), (1, 2, 4)))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expect))
    assert np.isnan(y).sum() == 3  # one window, all three output channels
    np.testing.assert_array_equal(y[~np.isnan(y)], expect[~np.isnan(expect)])


def test_fused_pooling_names_an_empty_pooled_output():
    with pytest.raises(ValueError, match=r"convolution output of spatial shape \(1, 4, 8\) is smaller than the "
                                         r"pooling window \(2, 2, 2\)"):
        conv3d_max_pool3d(np.zeros((1, 1, 1, 4, 8)), np.zeros((1, 1, 1, 1, 1)), pool=2)


def _layers_in_turn(net, x):
    """Each leaf layer's own forward, one after the other (no fusion), under no_grad."""
    with no_grad():
        for m in net.children():
            x = _layers_in_turn(m, x) if isinstance(m, Sequential) else m.forward(x)
    return x


@pytest.mark.parametrize("compressed", [False, True])
def test_paper_network_inference_fuses_and_gives_the_same_logits_bit_for_bit(compressed, rng):
    """c1, pool1, relu1 and c2, pool2, relu2 run as fused kernels under no_grad, in the original
    and in the Tucker-2 compressed network, with exactly the layers' float32 result."""
    from tuckerref.compress import compress_network
    shape = (4, 12, 40, 48)
    net = thetis_net(shape, seed=1).eval()
    if compressed:
        net = compress_network(net, ranks="paper", input_shape=shape, method="hosvd").eval()
    x = rng.random((2,) + shape, dtype=np.float32)
    with mock.patch.object(FUSION, "_conv_pool_forward", wraps=FUSION._conv_pool_forward) as spy, no_grad():
        y = net.forward(x)
    assert spy.call_count == 2
    np.testing.assert_array_equal(y, _layers_in_turn(net, x))


def test_a_fused_forward_forgets_what_backward_would_need(rng):
    """After a no_grad forward the fused layers cannot run backward on stale inputs: a clear error."""
    net = Sequential(Conv3d(2, 3, 3, padding=1), MaxPool3d(2), ReLU(inplace=True))
    x = rng.random((1, 2, 4, 4, 48), dtype=np.float32)
    net.forward(x)  # with gradients: every layer keeps what its backward needs
    with mock.patch.object(FUSION, "conv3d_max_pool3d", wraps=FUSION.conv3d_max_pool3d) as spy, no_grad():
        net.forward(x)
    assert spy.call_count == 1
    for layer, grad_shape in zip(net.children(), [(1, 3, 4, 4, 48), (1, 3, 2, 2, 24), (1, 3, 2, 2, 24)]):
        with pytest.raises(ValueError, match="needs a forward pass with gradients enabled"):
            layer.backward(np.ones(grad_shape, np.float32))


@pytest.mark.parametrize("pool", [MaxPool3d(2, stride=1), MaxPool3d(2, padding=1), MaxPool3d((1, 2, 2))])
def test_only_a_pooling_whose_windows_tile_its_input_is_fused(pool, rng):
    """Overlapping or padded windows run as their own layer (same values either way)."""
    net = Sequential(Conv3d(2, 3, 3, padding=1), pool)
    x = rng.random((1, 2, 4, 4, 48), dtype=np.float32)
    with mock.patch.object(FUSION, "conv3d_max_pool3d", wraps=FUSION.conv3d_max_pool3d) as spy, no_grad():
        y = net.forward(x)
    assert spy.call_count == int(pool.stride == pool.kernel_size and pool.padding == (0, 0, 0))
    np.testing.assert_array_equal(y, _layers_in_turn(net, x))


def test_a_tucker2_block_then_pooling_runs_as_one_fused_call(rng):
    block = tucker2_stand_in(3, 5, (3, 3, 3), 2, 2, padding=1, rng=0)
    net = Sequential(block, MaxPool3d((1, 2, 2)), ReLU())
    x = rng.uniform(-1, 1, (2, 3, 4, 6, 48)).astype(np.float32)
    with mock.patch.object(FUSION, "tucker2_conv3d", wraps=FUSION.tucker2_conv3d) as spy, no_grad():
        y = net.forward(x)
    assert spy.call_count == 1 and spy.call_args.kwargs["pool"] == (1, 2, 2) and spy.call_args.kwargs["relu"]
    np.testing.assert_array_equal(y, _layers_in_turn(net, x))


@settings(max_examples=12, deadline=None)
@given(N=st.integers(1, 2), S=st.integers(1, 3), R_s=st.sampled_from([None, 1, 3]), R_t=st.integers(4, 9),
       T=st.integers(1, 5), F=st.integers(2, 9), kernel=st.tuples(st.integers(1, 3), st.integers(1, 3), st.just(3)),
       stride_dh=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       pad=st.tuples(st.integers(0, 1), st.integers(0, 1), st.just(1)),
       pool=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3)), with_relu=st.booleans(),
       budget=st.integers(1, 4000), seed=st.integers(0, 2**31 - 1))
def test_eqs_8_to_10_then_pooling_streamed_in_groups_of_frames_equals_float64_reference(
        N, S, R_s, R_t, T, F, kernel, stride_dh, pad, pool, with_relu, budget, seed):
    """A Tucker-2 block (U_s given) or a Tucker-1 block (R_s None: the core reads X), its pooling and
    ReLU, streamed a group of pooled frames at a time (``budget`` bytes of unpooled output per group:
    one pooled frame up to all of them, a shorter last group): the layers in turn, in float64."""
    r = np.random.default_rng(seed)
    x = r.uniform(-1, 1, (N, S, F, 5, 17))
    first = None if R_s is None else r.uniform(-1, 1, (R_s, S))
    core = r.uniform(-1, 1, (R_t, S if R_s is None else R_s) + kernel)
    last, b = r.uniform(-1, 1, (T, R_t)), r.uniform(-1, 1, T)
    stride = stride_dh + (1,)
    z = x if first is None else conv3d_ref(x, first[:, :, None, None, None])
    y = conv3d_ref(conv3d_ref(z, core, stride=stride, padding=pad), last[:, :, None, None, None], b)
    assume(all(n >= k for n, k in zip(y.shape[2:], pool)))
    out = streamed_block_pool(x, first, core, last, b, stride, pad, pool, with_relu, budget=budget)
    np.testing.assert_allclose(out, _pool_then_relu(y, pool, with_relu), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("T", [2, 20])
def test_streamed_block_with_a_shorter_last_group_mixes_into_contiguous_buffers(T, rng):
    """Seven frames in groups of two pooled frames: the last group holds one, and U_t (the streaming
    kernel for 2 outputs, the tiled one for 20) writes it into a buffer of its own size."""
    x = rng.uniform(-1, 1, (1, 3, 7, 6, 17))
    core, last, b = rng.uniform(-1, 1, (4, 3, 1, 1, 3)), rng.uniform(-1, 1, (T, 4)), rng.uniform(-1, 1, T)
    y = conv3d_ref(conv3d_ref(x, core, padding=(0, 0, 1)), last[:, :, None, None, None], b)
    out = streamed_block_pool(x, None, core, last, b, (1, 1, 1), (0, 0, 1), (2, 2, 2), True,
                              budget=T * 4 * 6 * 17 * 8)
    np.testing.assert_allclose(out, _pool_then_relu(y, (2, 2, 2), True), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("tucker", [False, True])
def test_wide_convolution_then_pooling_streamed_reads_its_frames_in_place(dtype, tucker, rng):
    """A core for the panel kernel (33 outputs, 216 taps) reads each group's frames from the whole
    padded input (a run of output frames from frame0 on): groups of one pooled frame, a shorter last
    one, batch 2, a plain convolution with its bias (eq. 1) or a Tucker-2 block; the layers' values."""
    x = rng.uniform(-1, 1, (2, 5, 7, 6, 10)).astype(dtype)
    first = rng.uniform(-1, 1, (8, 5)).astype(dtype) if tucker else None
    core = rng.uniform(-1, 1, (33, 8 if tucker else 5, 3, 3, 3)).astype(dtype)
    last = rng.uniform(-1, 1, (4, 33)).astype(dtype) if tucker else None
    b = rng.uniform(-1, 1, 4 if tucker else 33).astype(dtype)
    z = x if first is None else conv3d(x, first[:, :, None, None, None])
    y = conv3d(z, core, None if tucker else b, padding=1)
    y = conv3d(y, last[:, :, None, None, None], b) if tucker else y
    out = streamed_block_pool(x, first, core, last, b, (1, 1, 1), (1, 1, 1), (2, 2, 2), True, budget=1)
    if dtype == np.float32:
        np.testing.assert_array_equal(out, max_pool3d_values(y, (2, 2, 2), relu=True))
    else:
        np.testing.assert_allclose(out, _pool_then_relu(y, (2, 2, 2), True), rtol=1e-12, atol=1e-12)


def test_a_tucker1_block_then_relu_and_pooling_runs_streamed_with_the_layers_bits(rng):
    """C3D's order (convolution, ReLU, pooling) after a Tucker-1 block (a bias-free core, then U_t with the
    bias) whose core has more channels than a register tile: one streamed call, the layers' float32 bits."""
    block = Sequential(Conv3d(3, 8, 3, padding=1, bias=False), Conv3d(8, 10, 1))
    net = Sequential(block, ReLU(), MaxPool3d((1, 2, 2)))
    x = rng.uniform(-1, 1, (2, 3, 4, 6, 40)).astype(np.float32)
    with mock.patch.object(FUSION, "tucker1_conv3d", wraps=FUSION.tucker1_conv3d) as spy, no_grad():
        y = net.forward(x)
    assert spy.call_count == 1 and spy.call_args.kwargs["pool"] == (1, 2, 2) and spy.call_args.kwargs["relu"]
    np.testing.assert_array_equal(y, _layers_in_turn(net, x))
