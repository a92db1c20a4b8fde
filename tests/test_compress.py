"""Tucker-2/Tucker-1 layer replacements (eqs. 8-10), Table 1 counts, one-shot network compression and its CLI."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import WIDTH_AND_STRIDE
from tuckerref.cli import main
from tuckerref.compress import (PAPER_RANKS, compress_network, linear_as_conv, tucker1_conv,
                                tucker1_conv_decomposed, tucker1_linear, tucker1_linear_decomposed,
                                tucker2_conv, tucker2_conv_decomposed, tucker2_linear_as_conv,
                                tucker2_linear_as_conv_decomposed)
from tuckerref.flops import (count_layer, tucker1_multiplications, tucker1_parameters, tucker2_multiplications,
                             tucker2_parameters)
from tuckerref.io import load_model, save_model
from tuckerref.kernels import conv3d, linear
from tuckerref.models import thetis_net
from tuckerref.nn import Conv3d, Flatten, Linear
from tuckerref.tucker import mode_dot, tucker_to_tensor

SETTINGS = settings(deadline=None, max_examples=15)
SMALL_INPUT = (4, 8, 32, 48)   # smallest-ish clip the paper network accepts: l1 is Linear(32 -> 128)


def rel(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


@st.composite
def conv_cases(draw):
    """A float64 Conv3d, an input batch for it and Tucker-2 ranks (R_s, R_t)."""
    S, T = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kw, sw = draw(st.sampled_from(WIDTH_AND_STRIDE))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), kw)
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), sw)
    padding = tuple(draw(st.integers(0, 1)) for _ in range(3))
    # Output rows of at most 3 (narrower than a SIMD vector): the equalities do not depend on the
    # convolution's path, and each register-tile shape would compile its own kernels.
    most = (6, 6, max(1, kw - 2 * padding[2] + 2))
    dims = tuple(draw(st.integers(max(1, k[d] - 2 * padding[d]), most[d])) for d in range(3))
    seed = draw(st.integers(0, 2**31))
    layer = Conv3d(S, T, k, stride=stride, padding=padding, bias=draw(st.booleans()), rng=seed, dtype=np.float64)
    x = np.random.default_rng(seed + 1).normal(size=(2, S) + dims)
    return layer, x, (draw(st.integers(1, S)), draw(st.integers(1, T)))


def conv_reference(layer, x, kernel):
    b = None if layer.bias is None else layer.bias.data
    return conv3d(x, kernel, b, layer.stride, layer.padding)


# -- eqs. (8)-(10): the replacement sequences equal the convolution with the reconstructed kernel --------------
@SETTINGS
@given(case=conv_cases())
def test_eqs8_to_10_tucker2_sequence_equals_conv_with_reconstructed_kernel(case):
    layer, x, ranks = case
    seq, dec = tucker2_conv_decomposed(layer, ranks)
    assert [m.kernel_size for m in seq] == [(1, 1, 1), layer.kernel_size, (1, 1, 1)]
    assert [m.bias is not None for m in seq] == [False, False, layer.bias is not None]
    k_hat = tucker_to_tensor(dec.core, dec.factors, (1, 0))
    assert rel(seq(x), conv_reference(layer, x, k_hat)) < 1e-10
    full = tucker2_conv(layer, (layer.in_channels, layer.out_channels))
    assert rel(full(x), layer(x)) < 1e-10


@SETTINGS
@given(case=conv_cases())
def test_tucker1_conv_sequence_equals_conv_with_reconstructed_kernel(case):
    layer, x, (_, rank) = case
    seq, dec = tucker1_conv_decomposed(layer, rank)
    assert [m.kernel_size for m in seq] == [layer.kernel_size, (1, 1, 1)]
    (u_t,) = dec.factors
    assert rel(seq(x), conv_reference(layer, x, mode_dot(dec.core, u_t, 0))) < 1e-10
    assert rel(tucker1_conv(layer, layer.out_channels)(x), layer(x)) < 1e-10


@SETTINGS
@given(n_in=st.integers(1, 12), n_out=st.integers(1, 12), bias=st.booleans(), data=st.data())
def test_tucker1_linear_pair_equals_linear_with_truncated_weight(n_in, n_out, bias, data):
    seed = data.draw(st.integers(0, 2**31))
    layer = Linear(n_in, n_out, bias=bias, rng=seed, dtype=np.float64)
    x = np.random.default_rng(seed).normal(size=(3, n_in))
    rank = data.draw(st.integers(1, n_out))
    seq, dec = tucker1_linear_decomposed(layer, rank)
    w_hat = dec.factors[0] @ dec.core
    assert rel(seq(x), linear(x, w_hat, None if layer.bias is None else layer.bias.data)) < 1e-10
    assert rel(tucker1_linear(layer, n_out)(x), layer(x)) < 1e-10


@SETTINGS
@given(C=st.integers(1, 4), vol=st.tuples(st.integers(1, 3), st.integers(1, 3), st.sampled_from([1, 3])),
       n_out=st.integers(1, 6), data=st.data())
def test_tucker2_linear_as_conv_equals_linear_on_the_flattened_volume(C, vol, n_out, data):
    volume = (C,) + vol
    seed = data.draw(st.integers(0, 2**31))
    layer = Linear(int(np.prod(volume)), n_out, rng=seed, dtype=np.float64)
    x = np.random.default_rng(seed).normal(size=(2,) + volume)
    flat = Flatten()
    # C-order flatten is the conv kernel layout: the equivalent convolution gives the same numbers
    assert rel(flat(linear_as_conv(layer, volume)(x)), layer(flat(x))) < 1e-10
    ranks = (data.draw(st.integers(1, C)), data.draw(st.integers(1, n_out)))
    seq, dec = tucker2_linear_as_conv_decomposed(layer, volume, ranks)
    w_hat = tucker_to_tensor(dec.core, dec.factors, (1, 0)).reshape(n_out, -1)
    assert rel(flat(seq(x)), linear(x.reshape(2, -1), w_hat, layer.bias.data)) < 1e-10
    assert rel(flat(tucker2_linear_as_conv(layer, volume, (C, n_out))(x)), layer(flat(x))) < 1e-10


# -- Table 1: counts of each compressed layer equal the closed forms -------------------------------------------
@SETTINGS
@given(case=conv_cases())
def test_table1_counts_of_compressed_convolutions_equal_the_closed_forms(case):
    layer, x, (rs, rt) = case
    S, T, vol = layer.in_channels, layer.out_channels, int(np.prod(layer.kernel_size))
    in_shape = x.shape[1:]
    out_shape = layer.output_shape(in_shape)
    I, I_out = int(np.prod(in_shape[1:])), int(np.prod(out_shape[1:]))
    bias = 0 if layer.bias is None else T
    c2 = count_layer(tucker2_conv(layer, (rs, rt)), in_shape)
    assert c2.params == tucker2_parameters(S, T, rs, rt, vol) + bias
    assert c2.macs == tucker2_multiplications(S, T, rs, rt, vol, I, I_out)
    c1 = count_layer(tucker1_conv(layer, rt), in_shape)
    assert c1.params == tucker1_parameters(S, T, rt, vol) + bias
    assert c1.macs == tucker1_multiplications(S, T, rt, vol, I_out)


@SETTINGS
@given(C=st.integers(1, 5), vol=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
       n_out=st.integers(1, 9), data=st.data())
def test_table1_counts_of_compressed_linear_layers_equal_the_closed_forms(C, vol, n_out, data):
    volume, n_in = (C,) + vol, C * int(np.prod(vol))
    layer = Linear(n_in, n_out, rng=0, dtype=np.float64)
    rs, rt, r = data.draw(st.integers(1, C)), data.draw(st.integers(1, n_out)), data.draw(st.integers(1, n_out))
    lam = int(np.prod(vol))
    as_conv = count_layer(tucker2_linear_as_conv(layer, volume, (rs, rt)), volume)
    assert as_conv.params == tucker2_parameters(C, n_out, rs, rt, lam) + n_out
    assert as_conv.macs == tucker2_multiplications(C, n_out, rs, rt, lam, lam, 1)
    t1 = count_layer(tucker1_linear(layer, r), (n_in,))
    assert t1.params == tucker1_parameters(n_in, n_out, r, 1) + n_out
    assert t1.macs == tucker1_multiplications(n_in, n_out, r, 1, 1)


def test_paper_ranks_give_the_parameter_counts_of_table2():
    net = thetis_net(seed=0)
    comp, rows = compress_network(net, plan="table2", ranks="paper", method="hosvd", report=True)  # counts only
    assert [(r.name, r.method, r.ranks) for r in rows] == [
        ("c1", "tucker2", (2, 2)), ("c2", "tucker2", (2, 3)), ("l1", "tucker2-as-conv", (4, 7)),
        ("l2", "tucker1", (1,)), ("l_out", "none", ())]
    assert [(r.params_before, r.params_after) for r in rows] == [
        (14_526, 2_446), (7_216, 526), (663_680, 10_160), (10_836, 296), (170, 170)]
    assert [m.num_parameters() for m in comp.c1] == [8, 2_420, 18]
    assert net.num_parameters() == 696_428 and comp.num_parameters() == 13_598
    assert all(0 < r.rel_error < 1 for r in rows[:4])


# -- whole network ------------------------------------------------------------------------------------------
FULL_RANKS = {"table2": {"c1": (4, 6), "c2": (6, 16), "l1": (16, 128), "l2": 84},
              "algorithm1": {"c1": 6, "c2": (6, 16), "l1": (16, 128), "l2": 84, "l_out": 2}}


@pytest.fixture(scope="module")
def small_net():
    return thetis_net(SMALL_INPUT, seed=3, dtype=np.float64).eval()


@pytest.mark.parametrize("plan", ["table2", "algorithm1"])
def test_compressed_network_output_equals_original_at_full_ranks(small_net, plan):
    before = small_net.state_dict()
    comp, rows = compress_network(small_net, plan=plan, ranks=FULL_RANKS[plan], report=True)
    x = np.random.default_rng(0).normal(size=(2,) + SMALL_INPUT)
    assert rel(comp(x), small_net(x)) < 1e-10
    assert all(r.rel_error < 1e-10 for r in rows)
    # structure and bookkeeping
    names = comp.names()
    assert names.index("flatten") == names.index("l1") + 1 and "flatten" not in names[:names.index("l1")]
    assert isinstance(comp.flatten, Flatten)
    assert comp.input_shape == SMALL_INPUT and not comp.training
    assert comp.c1[0].needs_input_grad is False
    assert "c1.0.weight" in comp.state_dict() and "l1.2.bias" in comp.state_dict()
    # the original network is untouched
    assert small_net.names()[8] == "flatten" and isinstance(small_net.c1, Conv3d)
    assert all(np.array_equal(before[k], v) for k, v in small_net.state_dict().items())


def test_vbmf_ranks_follow_planted_multilinear_ranks_with_input_mode_first():
    net = thetis_net(SMALL_INPUT, seed=4, dtype=np.float64)
    rng = np.random.default_rng(4)
    u_s, _ = np.linalg.qr(rng.normal(size=(6, 2)))
    u_t, _ = np.linalg.qr(rng.normal(size=(16, 3)))
    K = mode_dot(mode_dot(rng.normal(size=(3, 2, 3, 5, 5)), u_s, 1), u_t, 0)
    net.c2.weight.data = K + 1e-3 * np.std(K) * rng.normal(size=K.shape)
    W = rng.normal(size=(84, 4)) @ rng.normal(size=(4, 128))
    net.l2.weight.data = W + 1e-3 * np.std(W) * rng.normal(size=W.shape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, rows = compress_network(net, ranks={"c1": (4, 6), "l1": (16, 128)}, report=True)
    by_name = {r.name: r for r in rows}
    assert (by_name["c2"].ranks, by_name["c2"].rank_source) == ((2, 3), "vbmf")
    assert by_name["l2"].ranks == (4,) and by_name["c1"].rank_source == "given"
    assert by_name["c2"].rel_error < 1e-2 and not caught


def test_vbmf_rank_zero_becomes_one_with_a_warning_naming_the_layer():
    net = thetis_net(SMALL_INPUT, seed=5)   # untrained: i.i.d. weights look like pure noise
    with pytest.warns(UserWarning, match="layer 'c2': VBMF estimated rank 0"):
        _, rows = compress_network(net, ranks={"c1": (2, 2), "l1": (4, 7), "l2": 1}, report=True)
    assert dict((r.name, r.ranks) for r in rows)["c2"] == (1, 1)


def test_none_rank_leaves_a_layer_and_its_flatten_in_place(small_net):
    comp = compress_network(small_net, ranks={"c1": (2, 2), "c2": (2, 3), "l1": None, "l2": 1})
    assert comp.names() == small_net.names()
    assert isinstance(comp.l1, Linear) and comp.l1 is not small_net.l1


@pytest.mark.parametrize("call, message", [
    (lambda net: tucker2_conv(net.l1, (1, 1)), "needs a Conv3d"),
    (lambda net: tucker1_linear(net.c1, 1), "needs a Linear"),
    (lambda net: tucker2_conv(net.c1, (5, 1)), "rank 5 for mode 1"),
    (lambda net: tucker1_conv(net.c2, 17), "rank 17 for mode 0"),
    (lambda net: tucker2_linear_as_conv(net.l1, (16, 1, 1, 3), (1, 1)), "in_volume"),
    (lambda net: compress_network(net, plan="tucker3"), "plan"),
    (lambda net: compress_network(net, plan="algorithm1", ranks="paper"), "table2"),
    (lambda net: compress_network(net, ranks={"pool1": 1}), "pool1"),
    (lambda net: compress_network(net, ranks={"l_out": 1}), "uncompressed"),
    (lambda net: compress_network(net, ranks={"c1": (9, 9)}), "layer 'c1'"),
    (lambda net: compress_network(net, ranks="best"), "ranks must be"),
    (lambda net: compress_network(compress_network(net, ranks="paper", method="hosvd")), "Conv3d and Linear children only"),
])
def test_bad_compression_input_raises_value_error(small_net, call, message):
    with pytest.raises(ValueError, match=message):
        call(small_net)


def test_nan_kernel_raises_value_error_naming_the_layer():
    net = thetis_net(SMALL_INPUT, seed=6)
    net.c2.weight.data[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="layer 'c2'.*NaN"):
        compress_network(net)
    with pytest.raises(ValueError, match="NaN"):
        tucker2_conv(net.c2, (2, 2))


# -- command line -----------------------------------------------------------------------------------------
def test_compress_command_writes_the_compressed_model_and_prints_the_table(tmp_path, capsys):
    src, dst = tmp_path / "net.h5", tmp_path / "small.h5"
    save_model(src, thetis_net(SMALL_INPUT, seed=7))
    assert main(["compress", str(src), str(dst), "--ranks", "paper", "--method", "hosvd"]) == 0
    out = capsys.readouterr().out
    assert "tucker2-as-conv" in out and "14,526" in out and "2,446" in out
    net, meta = load_model(dst)
    assert meta["plan"] == "table2" and meta["ranks_option"] == "paper" and meta["method"] == "hosvd" and meta["compressed_from"] == str(src)
    assert meta["ranks"] == {k: list(v) if isinstance(v, tuple) else [v] for k, v in PAPER_RANKS.items()}
    assert tuple(meta["input_shape"]) == SMALL_INPUT and net.c1[0].needs_input_grad is False
    assert net.num_parameters() == sum(r["params_after"] for r in meta["layers"])
    assert net(np.zeros((1,) + SMALL_INPUT, np.float32)).shape == (1, 2)


def test_compress_command_rejects_bad_ranks_cleanly(tmp_path, capsys):
    src = tmp_path / "net.h5"
    save_model(src, thetis_net(SMALL_INPUT, seed=8))
    assert main(["compress", str(src), str(tmp_path / "o.h5"), "--ranks", "{bad"]) == 2
    assert main(["compress", str(src), str(tmp_path / "o.h5"), "--plan", "algorithm1", "--ranks", "paper"]) == 2
    assert "error" in capsys.readouterr().err and not (tmp_path / "o.h5").exists()
