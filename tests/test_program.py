"""Compiled inference programs (tuckerref.nn.program) against the network's own inference pass.

    program(x) == net(x) under no_grad, eval mode, bit for bit

for the paper's network and its Table 2 compression (fused conv + pool + ReLU and fused Tucker-2
blocks, the unfused l1 block, linear layers), for networks whose layers Hypothesis draws (tile path
or not, Tucker-2 or plain), in float32 and float64; and the contract around it: wrong input refused
with the shapes named, the weights snapshotted, the caller's input and earlier results untouched.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from reference import WIDTH_AND_STRIDE, vector_registers
from tuckerref.commands.scaling import tucker2_stand_in
from tuckerref.compress import compress_network
from tuckerref.models import thetis_net
from tuckerref.nn import Conv3d, Dropout, Flatten, Linear, MaxPool3d, ReLU, Sequential, no_grad
from tuckerref.nn.program import compile_inference

SMALL_CLIP = (4, 8, 32, 48)  # the smallest clip whose c1 and c2 rows (48 and 8 wide) both take register tiles


def _library(net, x):
    with no_grad():
        return net.eval()(x)


@pytest.fixture(scope="module")
def paper_networks():
    net = thetis_net(SMALL_CLIP, seed=3)
    compressed = compress_network(net, plan="table2", ranks="paper", input_shape=SMALL_CLIP, method="hosvd")
    return net.eval(), compressed.eval()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("which", [0, 1], ids=["original", "compressed"])
def test_program_equals_inference_pass_bit_for_bit_on_the_paper_networks(paper_networks, which, dtype):
    net = paper_networks[which]
    x = np.random.default_rng(which).random((2,) + SMALL_CLIP).astype(dtype)
    program = compile_inference(net, x.shape, dtype)
    want = _library(net, x)
    np.testing.assert_array_equal(program(x), want)
    np.testing.assert_array_equal(program(x), want)  # the kept buffers give the same result again
    assert program.describe()[0] == "fused" and "fused" in program.describe()[2:3]


def _drawn_network(rng, S, T, R_t, conv, pool, relu, tucker, dropout, in_shape):
    kernel, stride, padding = conv
    layer = (tucker2_stand_in(S, 5, kernel, 2, R_t, stride=stride, padding=padding, rng=rng) if tucker else
             Conv3d(S, T, kernel, stride=stride, padding=padding, rng=rng))
    layers = [layer]
    if pool is not None:
        layers.append(MaxPool3d(pool))
    if relu:
        layers.append(ReLU())
    if dropout:
        layers.append(Dropout(0.5))
    net = Sequential(*layers)
    volume = net.output_shape(in_shape)
    return Sequential(*layers, Flatten(), Linear(int(np.prod(volume)), 3, rng=rng), ReLU(), Linear(3, 2, rng=rng))


#: (dtype, vector registers, (output channels T, row width) of a plain convolution, (core channels
#: R_t, row width) of a Tucker-2 block): the register tiles of the float64 kernel tests
#: (reference.TILE_CASES and MIXED_TILE_CASES) and of the paper network's c1 on the test clips
#: (float32, 48 wide), so that the drawn programs reuse their compiled kernels. R_t = 6 fits one
#: tile under 32 registers only (a fusion decided by the register file).
PROGRAM_CASES = ((np.float64, 16, (7, 17), (3, 17)), (np.float32, 16, (6, 48), (2, 48)),
                 (np.float64, 32, (4, 40), (6, 17)))


@pytest.mark.parametrize("dtype, registers, plain, block", PROGRAM_CASES)
@settings(max_examples=6)
@given(S=st.integers(1, 3), D=st.integers(2, 4), H=st.integers(4, 7), narrow=st.booleans(),
       kernel_dh=st.tuples(st.integers(1, 2), st.integers(1, 3)), width_and_stride=st.sampled_from(WIDTH_AND_STRIDE),
       stride_dh=st.tuples(st.integers(1, 2), st.integers(1, 2)), padding_dh=st.tuples(st.integers(0, 1), st.integers(0, 1)),
       pool=st.sampled_from([None, (1, 2, 2), (2, 1, 1)]), relu=st.booleans(), tucker=st.booleans(),
       dropout=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_program_equals_inference_pass_for_drawn_layers(dtype, registers, plain, block, S, D, H, narrow, kernel_dh,
                                                        width_and_stride, stride_dh, padding_dh, pool, relu, tucker,
                                                        dropout, seed):
    """Whatever path each group takes (fused on the tiles, a kernel into a kept buffer, or a module
    copy), the program's output is the inference pass's, bit for bit. Rows are the case's width at
    unit width stride (the width padding keeps them so), or 3 (``narrow``: no register tiles), or
    halved by a width stride of 2 (no register tiles either)."""
    rng = np.random.default_rng(seed)
    kernel, stride = kernel_dh + (width_and_stride[0],), stride_dh + (width_and_stride[1],)
    padding = padding_dh + (kernel[2] // 2,)
    (T, plain_width), (R_t, block_width) = plain, block
    W = 3 if narrow else block_width if tucker else plain_width
    try:
        net = _drawn_network(rng, S, T, R_t, (kernel, stride, padding), pool, relu, tucker, dropout, (S, D, H, W))
    except ValueError:  # the drawn pooling does not fit the convolution's output
        return
    if dtype == np.float64:
        for p in net.parameters():
            p.data = p.data.astype(np.float64)
    x = rng.uniform(-1, 1, (2, S, D, H, W)).astype(dtype)
    with vector_registers(registers):
        program = compile_inference(net, x.shape, dtype)
        np.testing.assert_array_equal(program(x), _library(net, x))


def test_program_refuses_another_shape_or_dtype_and_names_both(paper_networks):
    net = paper_networks[0]
    program = compile_inference(net, (1,) + SMALL_CLIP)
    with pytest.raises(ValueError, match=r"compiled for input shape \(1, 4, 8, 32, 48\) float32; got \(2, 4, 8, 32, 48\)"):
        program(np.zeros((2,) + SMALL_CLIP, np.float32))
    with pytest.raises(ValueError, match="got .* float64"):
        program(np.zeros((1,) + SMALL_CLIP))
    with pytest.raises(ValueError, match="channels"):
        compile_inference(net, (1, 3) + SMALL_CLIP[1:])
    with pytest.raises(ValueError, match="float32 or float64"):
        compile_inference(net, (1,) + SMALL_CLIP, np.int32)


def test_program_is_a_snapshot_of_the_weights():
    net = thetis_net(SMALL_CLIP, seed=5).eval()
    x = np.random.default_rng(0).random((1,) + SMALL_CLIP, dtype=np.float32)
    program = compile_inference(net, x.shape)
    before = program(x)
    for p in net.parameters():
        p.data *= 2  # in place, as an optimizer step does
    np.testing.assert_array_equal(program(x), before)
    assert not np.array_equal(compile_inference(net, x.shape)(x), before)


def test_program_leaves_the_callers_input_and_earlier_outputs_alone():
    """A ReLU first in line must not work in place on the caller's array, and a result must not be
    a kept buffer that the next call overwrites."""
    rng = np.random.default_rng(1)
    net = Sequential(ReLU(), Flatten(), Linear(12, 4, rng=rng), ReLU()).eval()
    x = rng.uniform(-1, 1, (2, 3, 1, 2, 2)).astype(np.float32)
    keep = x.copy()
    program = compile_inference(net, x.shape)
    first = program(x)
    np.testing.assert_array_equal(x, keep)
    second = program(-x)
    np.testing.assert_array_equal(first, _library(net, keep))
    assert first is not second
