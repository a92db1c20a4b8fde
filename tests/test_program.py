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

from reference import vector_registers
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


def _drawn_network(rng, S, conv, pool, relu, tucker, dropout, in_shape):
    kernel, stride, padding = conv
    layer = (tucker2_stand_in(S, 5, kernel, 2, 3, stride=stride, padding=padding, rng=rng) if tucker else
             Conv3d(S, 5, kernel, stride=stride, padding=padding, rng=rng))
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


@settings(max_examples=12)
@given(S=st.integers(1, 3), D=st.integers(2, 4), H=st.integers(4, 7), W=st.sampled_from([5, 19, 24]),
       kernel=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3)),
       stride=st.tuples(st.integers(1, 2), st.integers(1, 2), st.sampled_from([1, 1, 2])),
       padding=st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 1)),
       pool=st.sampled_from([None, (1, 2, 2), (2, 1, 1)]), relu=st.booleans(), tucker=st.booleans(),
       dropout=st.booleans(), float64=st.booleans(), registers=st.sampled_from([16, 32]),
       seed=st.integers(0, 2**31 - 1))
def test_program_equals_inference_pass_for_drawn_layers(S, D, H, W, kernel, stride, padding, pool, relu, tucker,
                                                        dropout, float64, registers, seed):
    """Whatever path each group takes (fused on the tiles, a kernel into a kept buffer, or a module
    copy), the program's output is the inference pass's, bit for bit."""
    rng = np.random.default_rng(seed)
    dtype = np.float64 if float64 else np.float32
    try:
        net = _drawn_network(rng, S, (kernel, stride, padding), pool, relu, tucker, dropout, (S, D, H, W))
    except ValueError:  # the drawn pooling does not fit the convolution's output
        return
    if float64:
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
