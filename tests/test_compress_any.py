"""Algorithm 1 on any chain network (a narrow C3D with BatchNorm), its FLOP accounting, and the commands on it."""
import json

import numpy as np
import pytest

from tuckerref.cli import main
from tuckerref.compress import compress_network, format_report, plan_methods
from tuckerref.flops import count_layer, count_network
from tuckerref.io import save_model
from tuckerref.models import c3d
from tuckerref.nn import (AdaptiveAvgPool3d, AvgPool3d, BatchNorm3d, Conv3d, Dropout, Flatten, Identity, Linear,
                          ReLU, Sequential)
from tuckerref.vbmf import evbmf, evbmf_rank

TINY = (3, 16, 16, 16)   # the smallest clip C3D's five poolings accept
CONVS = ["conv1a", "conv2a", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b"]


def narrow_c3d(head="fc", dtype=np.float64, seed=0):
    """C3D at 1/16 width with BatchNorm whose running statistics are not the identity (so folding matters)."""
    net = c3d(TINY, num_classes=5, width=1 / 16, batch_norm=True, head=head, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    for _, m in net.named_children():
        if isinstance(m, BatchNorm3d):
            m.running_mean[...] = rng.normal(0, 0.1, m.num_features)
            m.running_var[...] = rng.uniform(0.5, 2.0, m.num_features)
            m.weight.data[...] = rng.uniform(0.5, 1.5, m.num_features)
            m.bias.data[...] = rng.normal(0, 0.1, m.num_features)
    return net.eval()


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture(scope="module")
def net():
    return narrow_c3d()


# -- Algorithm 1 on a C3D ---------------------------------------------------------------------------------
def test_algorithm1_tucker1_first_conv_tucker2_later_convs_and_fc6_as_conv_tucker1_later_linears(net):
    methods = plan_methods(net, "auto")
    assert methods == dict([("conv1a", "tucker1")] + [(n, "tucker2") for n in CONVS[1:]]
                           + [("fc6", "tucker2-as-conv"), ("fc7", "tucker1"), ("fc8", "tucker1")])


@pytest.mark.parametrize("head", ["fc", "gap"])
def test_full_ranks_reproduce_the_eval_logits_and_report_the_folded_batchnorms(head):
    net = narrow_c3d(head)
    comp, rows = compress_network(net, ranks="full", report=True)
    x = np.random.default_rng(1).normal(size=(2,) + TINY)
    assert rel(comp(x), net(x)) < 1e-10
    assert [r.folded for r in rows[:8]] == [n.replace("conv", "bn") for n in CONVS] and not rows[8].folded
    assert not any(isinstance(m, BatchNorm3d) for m in comp.children())
    names = comp.names()
    assert names.index("flatten") == names.index("fc6") + 1        # the Flatten moves after fc6's convolutions
    assert [len(comp[n]) for n in CONVS + ["fc6", "fc7", "fc8"]] == [2] + [3] * 7 + [3, 2, 2]
    assert sum(r.params_before for r in rows) == net.num_parameters()  # BatchNorm weights counted with their conv
    assert "bn1a -> conv1a" in format_report(rows)
    assert all(r.rel_error < 1e-10 and r.algorithm in ("hooi", "svd") for r in rows)


def test_rank_specification_fraction_scales_every_mode(net):
    _, rows = compress_network(net, ranks="fraction:0.5", method="hosvd", report=True)
    by = {r.name: r.ranks for r in rows}
    assert by["conv1a"] == (2,) and by["conv2a"] == (2, 4) and by["fc6"] == (16, 128) and by["fc8"] == (2,)
    assert {r.algorithm for r in rows} == {"hosvd", "svd"}


def test_given_ranks_are_used_and_unnamed_layers_get_vbmf_ranks(net):
    with pytest.warns(UserWarning, match="VBMF estimated rank 0"):   # random weights look like noise
        _, rows = compress_network(net, ranks={"conv3b": [3, 5], "fc7": 7}, method="hosvd", report=True)
    by = {r.name: (r.ranks, r.rank_source) for r in rows}
    assert by["conv3b"] == ((3, 5), "given") and by["fc7"] == ((7,), "given") and by["conv4a"][1] == "vbmf"


@pytest.mark.parametrize("ranks, message", [
    ({"conv3a": [99, 1]}, r"layer 'conv3a' \(tucker2\): rank 99 for mode 1 \(input channels S\) must be an integer in \[1, 8\]"),
    ({"conv1a": [1, 2]}, "layer 'conv1a'.*one integer"),
    ({"fc6": 4}, "layer 'fc6'.*pair"),
    ({"fc8": 6}, r"layer 'fc8' \(tucker1\): rank 6 for mode 0 \(output channels T\)"),
    ({"pool1": 1}, "pool1"),
    ("fraction:1.5", "fraction"),
    ("paper", "table2"),
])
def test_bad_ranks_raise_a_value_error_naming_the_layer(net, ranks, message):
    with pytest.raises(ValueError, match=message):
        compress_network(net, ranks=ranks)


def test_table2_plan_refuses_a_network_it_was_not_made_for(net):
    with pytest.raises(ValueError, match="paper's Table 2 plan.*8 convolution"):
        compress_network(net, plan="table2")


def test_a_network_outside_the_chain_layers_is_refused_naming_the_layer():
    bad = Sequential(Conv3d(1, 2, 1, rng=0), Sequential(ReLU()))
    with pytest.raises(ValueError, match="already compressed"):
        compress_network(bad)


def test_first_linear_after_any_pooling_and_elementwise_layers_compresses_as_a_convolution():
    """A VGG-like chain: average pooling before the Flatten, Dropout and Identity between it and the linear layer."""
    shape = (2, 4, 6, 6)
    net = Sequential(Conv3d(2, 3, 3, padding=1, rng=0, dtype=np.float64), ReLU(), AvgPool3d(2, padding=1),
                     Conv3d(3, 4, (1, 3, 3), rng=1, dtype=np.float64), AdaptiveAvgPool3d((1, 1, 2)), Flatten(),
                     Dropout(0.3), Identity(), Linear(8, 5, rng=2, dtype=np.float64), ReLU(),
                     Linear(5, 3, rng=3, dtype=np.float64)).eval()
    net.input_shape = shape
    comp = compress_network(net, ranks="full")
    assert comp.names() == ["0", "1", "2", "3", "4", "6", "7", "8", "5", "9", "10"]
    x = np.random.default_rng(0).normal(size=(3,) + shape)
    assert rel(comp(x), net(x)) < 1e-10


def test_rank_only_evbmf_from_gram_eigenvalues_equals_the_full_evbmf_rank():
    rng = np.random.default_rng(0)
    for L, M, r in [(20, 50, 3), (60, 30, 5), (40, 40, 0), (8, 300, 2)]:
        Y = rng.normal(size=(L, r)) @ rng.normal(size=(r, M)) * 0.5 + rng.normal(size=(L, M)) * 0.1
        assert evbmf_rank(Y) == evbmf(Y).rank == r


# -- accounting ---------------------------------------------------------------------------------------------
def test_full_c3d_costs_38_5_g_multiply_accumulates_the_sum_of_its_convolutions_and_linear_layers():
    net = c3d(num_classes=487)
    count = count_network(net)
    closed = sum(m.in_channels * m.out_channels * int(np.prod(m.kernel_size)) * int(np.prod(rec.output_shape[1:]))
                 for m, rec in zip(net.children(), count.layers) if isinstance(m, Conv3d))
    closed += sum(m.in_features * m.out_features for m in net.children() if isinstance(m, Linear))
    assert count.macs == closed and abs(count.macs - 38.5e9) < 0.1e9
    with_bn = count_network(c3d(num_classes=487, batch_norm=True))
    channels = sum(m.out_channels for m in net.children() if isinstance(m, Conv3d))
    assert with_bn.params == count.params + 2 * channels  # BatchNorm's weight and bias; its buffers are not parameters


def test_batchnorm_and_average_pooling_costs_follow_their_documented_counts():
    bn = count_layer(BatchNorm3d(3), (3, 2, 4, 5))
    assert (bn.flops, bn.macs, bn.params) == (2 * 120, 120, 6)
    # 3 x 3 x 3 windows, stride 2, padding 1 over 5 positions per axis: windows hold 2, 3, 2 elements per axis
    avg = count_layer(AvgPool3d(3, 2, 1), (4, 5, 5, 5))
    assert avg.output_shape == (4, 3, 3, 3) and (avg.flops, avg.macs) == (4 * 7 ** 3, 0)
    gap = count_layer(AdaptiveAvgPool3d(1), (4, 2, 3, 5))
    assert (gap.flops, gap.output_shape) == (4 * 30, (4, 1, 1, 1))
    assert (count_layer(Identity(), (7,)).flops, count_layer(Identity(), (7,)).macs) == (0, 0)


# -- commands ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("c3d") / "c3d.h5"
    save_model(path, narrow_c3d(dtype=np.float32))
    return path


def test_compress_command_takes_a_c3d_and_reports_the_folded_batchnorms(weights, tmp_path, capsys):
    assert main(["compress", str(weights), str(tmp_path / "small.h5"), "--ranks", "fraction:0.5"]) == 0
    out = capsys.readouterr().out
    assert "plan algorithm1" in out and "bn5b -> conv5b" in out and "fc6" in out and "compressed in" in out


def test_table2_command_prints_the_per_layer_table_of_a_c3d(weights, tmp_path, capsys):
    assert main(["table2", "--weights", str(weights), "--ranks", "fraction:0.5", "--repeats", "1", "--warmup", "0",
                 "--threads", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in CONVS + ["fc6", "fc7", "fc8"]:
        assert f"| {name} " in out
    assert "Tucker-1" in out and "Tucker-2" in out and "bn1a -> conv1a" in out
    table = json.loads((tmp_path / "table2.json").read_text())
    assert table["plan"] == "algorithm1" and [r["layer"] for r in table["rows"]] == CONVS + ["fc6", "fc7", "fc8"]
    assert all(len(r["compressed"]["sub"]) in (2, 3) for r in table["rows"])


def test_scaling_command_sweeps_a_convolution_of_a_c3d(weights, tmp_path, capsys):
    assert main(["scaling", "--weights", str(weights), "--layer", "conv3b", "--ranks", "1,2", "--repeats", "1",
                 "--warmup", "0", "--threads", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "scaling.json").read_text())["rows"]
    assert [(r["layer"], r["rs"], r["rt"]) for r in rows] == [("conv3b", 1, 1), ("conv3b", 1, 2), ("conv3b", 2, 1),
                                                                ("conv3b", 2, 2)]
    assert main(["scaling", "--weights", str(weights), "--layer", "pool1", "--out", str(tmp_path)]) != 0
