"""FLOP/parameter accounting: the paper's Table 2 (docs/method.md section 8) and Table 1's closed forms
(Section 3.1.1; docs/method.md section 7)."""
from collections import OrderedDict
from math import prod

import pytest
from hypothesis import given, settings, strategies as st

from tuckerref.commands.scaling import tucker1_linear_stand_in, tucker2_stand_in
from tuckerref.flops import (conv_flops, conv_multiplications, conv_parameters, count_layer, count_network,
                             linear_flops, tucker2_multiplications, tucker2_parameters)
from tuckerref.models import thetis_net
from tuckerref.nn import Conv3d, Flatten, Linear, Module, Sequential


def hand_compressed(net):
    """The Table 2 plan with the paper's ranks, built by structure (random weights), as compress_network lays it out."""
    layers = OrderedDict()
    for name, m in net.named_children():
        if name == "flatten":
            continue
        if name == "c1":
            m = tucker2_stand_in(4, 6, (5, 11, 11), 2, 2, padding=(2, 5, 5), rng=0)
        elif name == "c2":
            m = tucker2_stand_in(6, 16, (3, 5, 5), 2, 3, rng=1)
        elif name == "l1":
            layers["l1"] = tucker2_stand_in(16, 128, (6, 6, 9), 4, 7, rng=2)
            m, name = Flatten(), "flatten"
        elif name == "l2":
            m = tucker1_linear_stand_in(128, 84, 1, rng=3)
        layers[name] = m
    out = Sequential(layers)
    out.input_shape = net.input_shape
    return out


def compressed_builders():
    builders = [pytest.param(hand_compressed, id="hand-built")]
    try:
        from tuckerref.compress import compress_network
    except ImportError:
        return builders
    # HOSVD: the layout and counts do not depend on the method, and HOOI on l1 takes a minute at full size
    return builders + [pytest.param(lambda net: compress_network(net, plan="table2", ranks="paper", method="hosvd"),
                                    id="compress_network")]


@pytest.fixture(scope="module")
def paper_net():
    return thetis_net(seed=0)


def test_table2_original_column_is_exact(paper_net):
    c = count_network(paper_net)
    assert [(c[n].params, c[n].flops) for n in ("c1", "c2", "l1", "l2", "l_out")] == [
        (14_526, 15_609_216_000),   # 15,609.2M
        (7_216, 161_572_320),       # 161.6M
        (663_680, 1_327_104),       # 1.327M
        (10_836, 21_504),           # 21.5K (Table 2's x50.84 = 21,504 / 423)
        (170, 336)]
    assert c.params == 696_428
    assert c.flops == 15_772_137_264  # 15,772.1M


@pytest.mark.parametrize("compress", compressed_builders())
def test_table2_compressed_column_is_exact(paper_net, compress):
    orig, comp = count_network(paper_net), count_network(compress(paper_net), paper_net.input_shape)
    sub = lambda name: [(s.params, s.flops) for s in comp[name].children]  # noqa: E731
    assert sub("c1") == [(8, 7_526_400), (2_420, 2_600_908_800), (18, 10_214_400)]  # 7.5M + 2,600.9M + 10.2M
    assert comp["c1"].flops == 2_618_649_600                                        # 2,618.6M
    assert sub("c2") == [(12, 369_600), (450, 10_075_104), (64, 909_792)]           # 0.4M + 10.1M + 0.9M
    assert comp["c2"].flops == 11_354_496                                           # 11.4M
    assert (comp["l1"].params, comp["l1"].flops) == (10_160, 59_978)                # 0.060M
    assert sub("l2") == [(128, 255), (168, 168)]                                    # 296 params, 423 FLOPs
    assert (comp["l_out"].params, comp["l_out"].flops) == (170, 336)
    assert comp.params == 13_598 and comp.flops == 2_630_064_833                    # 2,630.1M
    assert round(orig.params / comp.params, 2) == 51.22
    assert round(orig.flops / comp.flops, 1) == 6.0


def test_non_parameter_layers_cost_nothing_but_report_elements(paper_net):
    c = count_network(paper_net)
    pool1 = c["pool1"]
    assert (pool1.flops, pool1.macs, pool1.params) == (0, 0, 0)
    assert pool1.in_elements == 6 * 28 * 120 * 160 and pool1.out_elements == 6 * 14 * 30 * 40
    assert (c["c1"].in_positions, c["c1"].out_positions) == (28 * 120 * 160, 28 * 120 * 160)
    assert c["flatten"].out_positions == 1 and c["flatten"].out_elements == 5184


small = st.integers(1, 5)


@settings(deadline=None, max_examples=30)
@given(S=small, T=small, Rs=small, Rt=small, kernel=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
       spatial=st.tuples(st.integers(3, 7), st.integers(3, 7), st.integers(3, 7)),
       stride=st.integers(1, 2), pad=st.integers(0, 1), bias=st.booleans())
def test_table1_closed_forms_equal_sublayer_counts(S, T, Rs, Rt, kernel, spatial, stride, pad, bias):
    shape = (S,) + spatial
    volume, positions = prod(kernel), prod(spatial)
    original = count_layer(Conv3d(S, T, kernel, stride=stride, padding=pad, bias=bias), shape)
    out_positions = original.out_positions
    assert original.macs == conv_multiplications(S, T, volume, out_positions)
    assert original.params - (T if bias else 0) == conv_parameters(S, T, volume)
    comp = count_layer(tucker2_stand_in(S, T, kernel, Rs, Rt, stride=stride, padding=pad, bias=bias), shape)
    assert comp.output_shape == original.output_shape
    assert [c.in_positions for c in comp.children] == [positions, positions, out_positions]
    assert comp.macs == tucker2_multiplications(S, T, Rs, Rt, volume, positions, out_positions)
    assert comp.params - (T if bias else 0) == tucker2_parameters(S, T, Rs, Rt, volume)


@settings(deadline=None, max_examples=20)
@given(S=small, T=small, kernel=st.integers(1, 3), size=st.integers(3, 6), bias=st.booleans())
def test_paper_flops_are_two_macs_minus_one_add_per_output_plus_bias_once(S, T, kernel, size, bias):
    rec = count_layer(Conv3d(S, T, kernel, bias=bias), (S, size, size, size))
    outputs = T * rec.out_positions
    assert rec.flops == 2 * rec.macs - outputs + (rec.out_positions if bias else 0)
    assert rec.flops == conv_flops(S, T, kernel ** 3, rec.out_positions, bias)
    lin = count_layer(Linear(S, T, bias=bias), (S,))
    assert lin.flops == 2 * lin.macs - T + (T if bias else 0) == linear_flops(S, T, bias)


def test_unknown_layer_and_bad_shape_give_clear_errors():
    class Mystery(Module):
        def output_shape(self, s):
            return s
    with pytest.raises(ValueError, match="no FLOP counter for layer type Mystery"):
        count_layer(Sequential(Mystery()), (3,))
    with pytest.raises(ValueError, match=r"layer 'c1'.*expects 4 channels"):
        count_network(thetis_net(seed=0), (3, 28, 120, 160))
    with pytest.raises(ValueError, match="needs input_shape"):
        count_network(Sequential(Linear(2, 2)))
