"""C99 export of any chain network of the engine (tuckerref.export): C3D-class networks with BatchNorm3d
(folded into its convolution, or a per-channel affine map), their Tucker-compressed versions, average
pooling (PyTorch avg_pool3d: kernel, stride, zero padding, count_include_pad, divisor_override),
adaptive average pooling and max pooling with padding, compiled with cc -O2 -std=c99 -Wall -Werror:
the C logits equal the engine's eval-mode logits within 1e-4 relative.

One build per network: each network is exported and compiled once in a module-scoped fixture and
every assertion about it reuses that binary.
"""
import argparse
import os
import shutil
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tuckerref.compress import tucker1_conv, tucker2_conv
from tuckerref.export import compile_c, export_c, place_buffers, run_c
from tuckerref.models import c3d
from tuckerref.nn import (AdaptiveAvgPool3d, AvgPool3d, BatchNorm3d, Conv3d, Dropout, Flatten, Identity, Linear,
                          MaxPool3d, Module, ReLU, Sequential)

CC = shutil.which(os.environ.get("CC", "cc"))
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (cc) found")
CFLAGS = ["-O2", "-std=c99", "-Wall", "-Werror"]
#: The smallest height and width that keep C3D's pool5 (kernel 2, padding (0, 1, 1)) at 2 x 2 after
#: four poolings; 16 frames leave pool5 one frame.
C3D_CLIP = (3, 16, 32, 32)
C3D_WIDTH = 1 / 16  # channels 4, 8, 16, 16, 32, ..., fc widths 256


def assert_logits_match(c_logits, ref, rtol=1e-4):
    """|C - engine| <= rtol * max |engine|, elementwise over all clips."""
    ref = np.asarray(ref, dtype=np.float64)
    scale = max(float(np.abs(ref).max()), 1e-30)
    err = float(np.abs(c_logits - ref).max())
    assert err <= rtol * scale, f"C logits differ from the engine's by {err:.3g} (scale {scale:.3g})"


def randomise_batchnorm(net: Module, seed: int) -> Module:
    """Give every BatchNorm3d non-trivial running statistics and affine parameters (eval mode is then
    far from the identity), through state_dict/load_state_dict."""
    rng = np.random.default_rng(seed)
    bn_names = {name for name, m in net.named_modules() if isinstance(m, BatchNorm3d)}
    state = net.state_dict()
    for key, value in state.items():
        owner, _, field = key.rpartition(".")
        if owner not in bn_names:
            continue
        if field == "running_mean":
            state[key] = rng.normal(0.0, 0.5, value.shape).astype(value.dtype)
        elif field == "running_var":
            state[key] = rng.uniform(0.25, 4.0, value.shape).astype(value.dtype)
        elif field == "weight":
            state[key] = rng.uniform(0.5, 2.0, value.shape).astype(value.dtype)
        elif field == "bias":
            state[key] = rng.normal(0.0, 0.5, value.shape).astype(value.dtype)
    net.load_state_dict(state)
    return net.eval()


class Built:
    """A network exported and compiled once, its clips and both sides' logits."""

    def __init__(self, net, input_shape, outdir, seed=0, n_clips=2, **export_options):
        self.net = net.eval()
        self.result = export_c(net, outdir, input_shape=input_shape, **export_options)
        self.binary = compile_c(outdir, CFLAGS)
        self.clips = np.random.default_rng(seed).standard_normal((n_clips,) + tuple(input_shape)).astype(np.float32)
        self.logits, _ = run_c(self.binary, self.clips)
        self.reference = self.net(self.clips)

    @property
    def kinds(self):
        return {s.path: s.kind for s in self.result.steps}

    def net_c(self) -> str:
        return (self.result.outdir / "net.c").read_text()


def narrow_c3d(head, seed):
    net = c3d(input_shape=C3D_CLIP, num_classes=5, width=C3D_WIDTH, batch_norm=True, head=head, seed=seed)
    return randomise_batchnorm(net, seed + 100)


def compressed_c3d(net):
    """Every convolution of ``net`` Tucker-compressed (Algorithm 1's layout: Tucker-1 for the first, whose input
    has 3 channels, Tucker-2 for the others), each BatchNorm3d kept after its compressed block."""
    layers = OrderedDict()
    for name, m in net.named_children():
        if isinstance(m, Conv3d):
            s, t = m.in_channels, m.out_channels
            m = (tucker1_conv(m, max(1, t // 2), method="hosvd") if name == "conv1a"
                 else tucker2_conv(m, (max(1, s // 2), max(1, t // 2)), method="hosvd"))
        layers[name] = m
    out = Sequential(layers)
    out.input_shape = net.input_shape
    return out.eval()


@pytest.fixture(scope="module")
def c3d_gap(tmp_path_factory):
    return Built(narrow_c3d("gap", 0), C3D_CLIP, tmp_path_factory.mktemp("c3d_gap"))


@pytest.fixture(scope="module")
def c3d_fc(tmp_path_factory):
    return Built(narrow_c3d("fc", 1), C3D_CLIP, tmp_path_factory.mktemp("c3d_fc"), weights_format="blob")


@pytest.fixture(scope="module")
def c3d_compressed(tmp_path_factory):
    return Built(compressed_c3d(narrow_c3d("gap", 2)), C3D_CLIP, tmp_path_factory.mktemp("c3d_compressed"))


AVG_CLIP = (2, 5, 9, 8)


def avgpool_network():
    """Average pooling with zero padding in every flavour PyTorch has, adaptive average pooling to a
    non-global size, Identity and Dropout, and BatchNorm3d three ways: on the input and after a pooling
    (affine maps, the second in place) and after a bias-free convolution (folded, bias created)."""
    net = Sequential(OrderedDict(
        bn0=BatchNorm3d(2), conv1=Conv3d(2, 4, 3, stride=(1, 2, 1), padding=(1, 0, 1), rng=0), relu1=ReLU(),
        pool1=AvgPool3d((2, 2, 3), stride=(1, 2, 2), padding=(1, 1, 1)),
        pool2=AvgPool3d(3, stride=1, padding=1, count_include_pad=False),
        ident=Identity(), conv2=Conv3d(4, 3, (1, 2, 2), padding=(0, 1, 0), bias=False, rng=1), bn2=BatchNorm3d(3),
        pool3=AvgPool3d(2, stride=2, padding=1, divisor_override=3), bn3=BatchNorm3d(3, affine=False),
        gap=AdaptiveAvgPool3d((2, 1, 2)), flatten=Flatten(), drop=Dropout(0.3, rng=2), fc=Linear(12, 4, rng=3)))
    return randomise_batchnorm(net, 7)


@pytest.fixture(scope="module")
def avgpool_built(tmp_path_factory):
    return Built(avgpool_network(), AVG_CLIP, tmp_path_factory.mktemp("avgpool"), n_clips=3)


# -- C3D with BatchNorm3d --------------------------------------------------------------------------------

@needs_cc
@pytest.mark.parametrize("which", ["c3d_gap", "c3d_fc"])
def test_c3d_with_batchnorm_in_c_matches_engine_eval_forward(which, request):
    built = request.getfixturevalue(which)
    assert_logits_match(built.logits, built.reference)
    assert not np.allclose(built.logits[0], built.logits[1])


@needs_cc
def test_c3d_batchnorm_is_folded_into_every_convolution(c3d_gap):
    convs = [name for name, m in c3d_gap.net.named_children() if isinstance(m, Conv3d)]
    assert len(convs) == 8
    assert c3d_gap.result.folded == [(c, "bn" + c[len("conv"):]) for c in convs]
    assert "batchnorm3d" not in c3d_gap.kinds.values()
    text = c3d_gap.net_c()
    assert "Batch normalisation at inference" not in text and "/* bn1a: BatchNorm3d, folded into conv1a */" in text
    assert all(s.folded_with == "bn" + s.path[len("conv"):] for s in c3d_gap.result.steps if s.path in convs)


@needs_cc
def test_c3d_binary_times_every_computing_layer_and_no_folded_one(c3d_gap):
    timed, timings = run_c(c3d_gap.binary, c3d_gap.clips[:1], repeats=1, warmup=0)
    np.testing.assert_array_equal(timed, c3d_gap.logits[:1])
    computing = [s.path for s in c3d_gap.result.steps if s.kind != "identity"]
    assert [name for name, _, _ in timings] == computing and "bn1a" not in computing and "drop6" not in computing


@needs_cc
def test_c3d_pool5_pads_height_and_width_and_stays_non_empty(c3d_fc):
    pool5 = next(s for s in c3d_fc.result.steps if s.path == "pool5")
    assert pool5.kind == "maxpool3d" and pool5.module.padding == (0, 1, 1)
    assert pool5.in_shape[1:] == (2, 2, 2) and pool5.out_shape[1:] == (1, 2, 2)
    assert "padding (0, 1, 1)" in c3d_fc.net_c()


@needs_cc
def test_c3d_gap_head_is_global_average_pooling(c3d_gap):
    assert c3d_gap.kinds["pool5"] == "adaptive_avgpool3d"
    assert next(s for s in c3d_gap.result.steps if s.path == "pool5").out_shape[1:] == (1, 1, 1)


@needs_cc
def test_unfolded_batchnorm_as_affine_map_matches_too(c3d_gap, tmp_path):
    built = Built(c3d_gap.net, C3D_CLIP, tmp_path, fold=False)
    assert built.result.folded == [] and list(built.kinds.values()).count("batchnorm3d") == 8
    assert_logits_match(built.logits, built.reference)
    assert_logits_match(built.logits, c3d_gap.logits)


# -- compressed C3D ------------------------------------------------------------------------------------

@needs_cc
def test_eqs8_10_compressed_c3d_in_c_matches_engine(c3d_compressed):
    kinds = c3d_compressed.kinds
    assert kinds["conv1a.0"] == "conv3d" and kinds["conv1a.1"] == "pointwise"
    assert [kinds[f"conv5b.{i}"] for i in range(3)] == ["pointwise", "conv3d", "pointwise"]
    # each BatchNorm3d folds into the last factor of the block before it
    assert c3d_compressed.result.folded[:2] == [("conv1a.1", "bn1a"), ("conv2a.2", "bn2a")]
    assert len(c3d_compressed.result.folded) == 8
    assert_logits_match(c3d_compressed.logits, c3d_compressed.reference)


# -- average pooling, BatchNorm3d not after a convolution -----------------------------------------------

@needs_cc
def test_avg_pool_with_padding_in_c_matches_engine_float32_and_float64(avgpool_built):
    assert_logits_match(avgpool_built.logits, avgpool_built.reference)
    net64 = avgpool_network().astype(np.float64)
    assert_logits_match(avgpool_built.logits, net64(avgpool_built.clips.astype(np.float64)))


@needs_cc
def test_avg_pool_network_steps_and_in_place_affine_batchnorm(avgpool_built):
    kinds = avgpool_built.kinds
    assert [kinds[p] for p in ("pool1", "pool2", "pool3", "gap")] == ["avgpool3d"] * 3 + ["adaptive_avgpool3d"]
    assert kinds["bn0"] == kinds["bn3"] == "batchnorm3d" and kinds["ident"] == kinds["drop"] == "identity"
    assert avgpool_built.result.folded == [("conv2", "bn2")]
    text = avgpool_built.net_c()
    for option in ("count_include_pad=False", "divisor_override=3", "(bn2 folded in)", "param_conv2_bias[t0 + c]"):
        assert option in text
    weights = (avgpool_built.result.outdir / "weights.c").read_text()
    for name, shape in (("bn0.running_mean", (2,)), ("bn0.running_var", (2,)), ("bn3.running_var", (3,))):
        assert f"/* {name} {shape} */" in weights
    assert "bn2." not in weights and "bn3.weight" not in weights  # folded; affine=False
    steps = avgpool_built.result.steps
    placements = dict(zip([s.path for s in steps], place_buffers(steps)[0]))
    assert placements["bn0"].src == "input" and placements["bn3"].src == placements["bn3"].dst


# -- PyTorch as the oracle ---------------------------------------------------------------------------------

def torch_twin(net: Module):
    """The same network in PyTorch (torch.nn layers of the same names, configuration and state_dict), eval mode."""
    import torch
    from torch import nn as tnn

    def build(m):
        if isinstance(m, Sequential):
            return tnn.Sequential(OrderedDict((name, build(child)) for name, child in m.named_children()))
        if isinstance(m, Conv3d):
            return tnn.Conv3d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, bias=m.bias is not None)
        if isinstance(m, BatchNorm3d):
            return tnn.BatchNorm3d(m.num_features, eps=m.eps, affine=m.affine)
        if isinstance(m, MaxPool3d):
            return tnn.MaxPool3d(m.kernel_size, m.stride, m.padding)
        if isinstance(m, AvgPool3d):
            return tnn.AvgPool3d(m.kernel_size, m.stride, m.padding, count_include_pad=m.count_include_pad,
                                 divisor_override=m.divisor_override)
        if isinstance(m, AdaptiveAvgPool3d):
            return tnn.AdaptiveAvgPool3d(m.output_size)
        if isinstance(m, Linear):
            return tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        if isinstance(m, Dropout):
            return tnn.Dropout(m.p)
        return {ReLU: tnn.ReLU, Flatten: tnn.Flatten, Identity: tnn.Identity}[type(m)]()

    twin = build(net)
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in net.state_dict().items()})
    return twin.eval()


@needs_cc
@pytest.mark.parametrize("which", ["c3d_fc", "c3d_compressed", "avgpool_built"])
def test_c_logits_match_pytorch_running_the_same_network(which, request):
    torch = pytest.importorskip("torch")
    built = request.getfixturevalue(which)
    with torch.no_grad():
        expected = torch_twin(built.net)(torch.from_numpy(built.clips)).numpy()
    assert_logits_match(built.logits, expected)


# -- errors ---------------------------------------------------------------------------------------------

def test_export_names_an_unsupported_layer_before_writing_anything(tmp_path):
    class Upsample(Module):
        def output_shape(self, input_shape):
            return tuple(input_shape)

    net = Sequential(OrderedDict(conv=Conv3d(1, 2, 3, rng=0), bn=BatchNorm3d(2), up=Upsample(),
                                 flatten=Flatten(), fc=Linear(2, 1, rng=1)))
    with pytest.raises(ValueError, match="'up' of type Upsample"):
        export_c(net, tmp_path / "out", input_shape=(1, 3, 3, 3))
    batch_stats = Sequential(OrderedDict(conv=Conv3d(1, 2, 3, rng=0), pool=MaxPool3d(1),
                                         bn=BatchNorm3d(2, track_running_stats=False)))
    with pytest.raises(ValueError, match="'bn'.*running statistics"):
        export_c(batch_stats, tmp_path / "out", input_shape=(1, 3, 3, 3))
    ceil = AvgPool3d(2)
    ceil.ceil_mode = True  # the engine's AvgPool3d refuses it; the exporter would compute other windows
    with pytest.raises(ValueError, match="'1'.*ceil_mode"):
        export_c(Sequential(ReLU(), ceil), tmp_path / "out", input_shape=(1, 3, 3, 3))
    assert not (tmp_path / "out").exists()


def test_export_c_command_reports_the_folded_batchnorms(tmp_path, capsys):
    from tuckerref.commands import export_c as command
    from tuckerref.io import save_model

    save_model(tmp_path / "c3d.h5", narrow_c3d("gap", 3))
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args(["export-c", str(tmp_path / "c3d.h5"), str(tmp_path / "out")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "folded" in out and "bn1a into conv1a" in out and "bn5b into conv5b" in out


# -- drawn chains ---------------------------------------------------------------------------------------

def _triple(draw, lo, hi):
    return tuple(draw(st.integers(lo, hi)) for _ in range(3))


@st.composite
def chains(draw):
    """A random chain of the supported layers: Conv3d (any kernel, stride, padding, bias or not), BatchNorm3d
    (folded after a convolution, an affine map elsewhere), AvgPool3d and MaxPool3d with padding,
    AdaptiveAvgPool3d, ReLU, Identity and a Tucker-2 block, then Flatten and a Linear layer."""
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    layers, current = [], shape

    def window(current):
        kernel = tuple(draw(st.integers(1, min(3, current[1 + d]))) for d in range(3))
        return kernel, _triple(draw, 1, 2), tuple(draw(st.integers(0, k // 2)) for k in kernel)

    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "bn", "avg", "max", "adaptive", "relu", "identity", "tucker2"]))
        if kind == "conv":
            kernel, stride, pad = window(current)
            layer = Conv3d(current[0], draw(st.integers(1, 3)), kernel, stride=stride, padding=pad,
                           bias=draw(st.booleans()), rng=rng)
        elif kind == "bn":
            layer = BatchNorm3d(current[0], affine=draw(st.booleans()))
        elif kind == "avg":
            kernel, stride, pad = window(current)
            layer = AvgPool3d(kernel, stride=stride, padding=pad, count_include_pad=draw(st.booleans()),
                              divisor_override=draw(st.sampled_from([None, 1, 5])))
        elif kind == "max":
            kernel, stride, pad = window(current)
            layer = MaxPool3d(kernel, stride=stride, padding=pad)
        elif kind == "adaptive":
            layer = AdaptiveAvgPool3d(tuple(draw(st.integers(1, current[1 + d] + 1)) for d in range(3)))
        elif kind == "relu":
            layer = ReLU()
        elif kind == "identity":
            layer = Identity()
        else:
            kernel, stride, pad = window(current)
            layer = Sequential(Conv3d(current[0], 2, 1, bias=False, rng=rng),
                               Conv3d(2, 2, kernel, stride=stride, padding=pad, bias=False, rng=rng),
                               Conv3d(2, draw(st.integers(1, 3)), 1, rng=rng))
        layers.append(layer)
        current = layer.output_shape(current)
        if kind in ("conv", "tucker2") and draw(st.booleans()):  # the pair folding applies to
            layers.append(BatchNorm3d(current[0], affine=draw(st.booleans())))
    layers += [Flatten(), Linear(int(np.prod(current)), draw(st.integers(1, 3)), rng=rng)]
    return randomise_batchnorm(Sequential(*layers), int(rng.integers(2**16))), shape


@needs_cc
@settings(deadline=None, max_examples=6, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=chains())
def test_drawn_chain_of_supported_layers_in_c_matches_engine(drawn, tmp_path_factory):
    net, shape = drawn
    built = Built(net, shape, tmp_path_factory.mktemp("chain"))
    assert_logits_match(built.logits, built.reference)
