"""C99 export (tuckerref.export): the generated C, compiled with cc -O2 -std=c99 -Wall -Werror, computes
the engine's logits (eq. (1) convolutions, eqs. (8)/(10) 1x1x1 convolutions, pooling, linear layers)."""
import argparse
import os
import re
import shutil
import subprocess
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tuckerref.export import compile_c, export_c, place_buffers, plan_network, profile_c, run_c
from tuckerref.io import save_model
from tuckerref.models import thetis_net
from tuckerref.nn import (Conv3d, Dropout, Dropout3d, Flatten, Linear, MaxPool3d, Module, ReLU, Sequential,
                          feature_volume)

CC = shutil.which(os.environ.get("CC", "cc"))
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (cc) found")
CFLAGS = ["-O2", "-std=c99", "-Wall", "-Werror"]
SMALL = (4, 8, 36, 48)  # the smallest paper-like clip the paper network accepts, roughly


def build(outdir):
    """The acceptance build: cc -O2 -std=c99 -Wall -Werror (compile_c fails on any warning)."""
    return compile_c(outdir, CFLAGS)


def assert_logits_match(c_logits, ref, rtol=1e-4):
    """|C - engine| <= rtol * max |engine|, elementwise over all clips."""
    ref = np.asarray(ref, dtype=np.float64)
    scale = max(float(np.abs(ref).max()), 1e-30)
    err = float(np.abs(c_logits - ref).max())
    assert err <= rtol * scale, f"C logits differ from the engine's by {err:.3g} (scale {scale:.3g})"


def export_build_compare(net, input_shape, tmp_path, n_clips=2, seed=0, weights_format="array"):
    net.eval()
    export_c(net, tmp_path, input_shape=input_shape, weights_format=weights_format)
    binary = build(tmp_path)
    clips = np.random.default_rng(seed).standard_normal((n_clips,) + tuple(input_shape)).astype(np.float32)
    logits, _ = run_c(binary, clips)
    assert_logits_match(logits, net(clips))
    return binary, clips, logits


PAPER_RANKS = {"c1": (2, 2), "c2": (2, 3), "l1": (4, 7), "l2": 1}
SMALL_RANKS = {"c1": (1, 2), "c2": (3, 1), "l1": (2, 3), "l2": 2}


def compressed(net, ranks):
    """The Table 2 plan (Tucker-2 c1, c2, l1 as a convolution; Tucker-1 l2) by compress_network, or by
    structure (hand_compressed) in a checkout without tuckerref.compress."""
    try:
        from tuckerref.compress import compress_network
    except ModuleNotFoundError:
        return hand_compressed(net, ranks)
    return compress_network(net, "table2", ranks=ranks, method="hosvd")


def hand_compressed(net, ranks):
    """The Table 2 plan by structure, with random weights: Tucker-2 c1, c2 and l1 (as a convolution over the
    unflattened volume, then Flatten), Tucker-1 l2, as eqs. (8)-(10) lay the factors out."""
    rng = np.random.default_rng(1)
    volume = feature_volume(net, net.input_shape, "l1")

    def tucker2(S, T, kernel, rs, rt, padding=0):
        return Sequential(Conv3d(S, rs, 1, bias=False, rng=rng), Conv3d(rs, rt, kernel, padding=padding, bias=False,
                                                                          rng=rng), Conv3d(rt, T, 1, rng=rng))

    layers = OrderedDict()
    for name, m in net.named_children():
        if name == "flatten":
            continue
        if name == "c1":
            m = tucker2(net.c1.in_channels, 6, (5, 11, 11), *ranks["c1"], padding=(2, 5, 5))
        elif name == "c2":
            m = tucker2(6, 16, (3, 5, 5), *ranks["c2"])
        elif name == "l1":
            layers["l1"] = tucker2(16, 128, volume[1:], *ranks["l1"])
            m, name = Flatten(), "flatten"
        elif name == "l2":
            m = Sequential(Linear(128, ranks["l2"], bias=False, rng=rng), Linear(ranks["l2"], 84, rng=rng))
        layers[name] = m
    out = Sequential(layers)
    out.input_shape = net.input_shape
    return out


# -- end to end: export, compile, run, compare -------------------------------------------------------------

@needs_cc
def test_eq1_paper_network_in_c_matches_engine_float32_and_float64(tmp_path):
    net = thetis_net(SMALL, seed=0)
    binary, clips, logits = export_build_compare(net, SMALL, tmp_path, n_clips=3)
    reference64 = net.astype(np.float64)(clips.astype(np.float64))
    assert_logits_match(logits, reference64)
    assert not np.allclose(logits[0], logits[1])  # distinct clips give distinct logits
    # -t N times every computing layer N times and leaves the logits alone
    timed, timings = run_c(binary, clips, repeats=2, warmup=0)
    np.testing.assert_array_equal(timed, logits)
    assert [name for name, _, _ in timings] == [s.path for s in plan_network(net, SMALL) if s.kind != "identity"]
    assert all(len(cpu) == len(wall) == 2 and min(cpu + wall) >= 0 for _, cpu, wall in timings)


@needs_cc
@pytest.mark.parametrize("ranks", [PAPER_RANKS, SMALL_RANKS], ids=["paper-ranks", "small-ranks"])
def test_eqs8_10_tucker_compressed_network_in_c_matches_engine(tmp_path, ranks):
    net = compressed(thetis_net(SMALL, seed=0), ranks)
    kinds = {s.path: s.kind for s in plan_network(net, SMALL)}
    assert kinds["c1.0"] == kinds["c1.2"] == kinds["l1.0"] == "pointwise" and kinds["c1.1"] == "conv3d"
    export_build_compare(net, SMALL, tmp_path)


@needs_cc
def test_weight_blob_build_matches_engine_and_rejects_a_truncated_blob(tmp_path):
    net = thetis_net(SMALL, seed=3)
    binary, clips, _ = export_build_compare(net, SMALL, tmp_path, weights_format="blob")
    blob = (tmp_path / "weights.bin").read_bytes()
    (tmp_path / "short.bin").write_bytes(blob[:-4])
    proc = subprocess.run([str(binary), "-w", "short.bin", "clips.f32", "out.f32"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "truncated" in proc.stderr


@needs_cc
@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_generated_makefile_builds_with_cflags_override(tmp_path):
    net = Sequential(OrderedDict(c=Conv3d(1, 2, 3, padding=1, rng=0), flat=Flatten(), out=Linear(2 * 27, 3, rng=1)))
    export_c(net, tmp_path, input_shape=(1, 3, 3, 3))
    subprocess.run(["make", "-s", "CFLAGS=-O1 -std=c99 -Wall -Werror"], cwd=tmp_path, check=True, capture_output=True)
    clips = np.random.default_rng(0).standard_normal((2, 1, 3, 3, 3)).astype(np.float32)
    logits, _ = run_c(tmp_path / "net", clips)
    assert_logits_match(logits, net.eval()(clips))


@needs_cc
def test_padded_pool_counts_minus_infinity_and_strided_padded_1x1x1_conv(tmp_path):
    """All-negative clips: a padded max-pool window must ignore its padding (-inf, not 0), and a 1x1x1
    convolution with stride and padding is eq. (1), not the pointwise path (its border outputs are the bias)."""
    net = Sequential(Conv3d(2, 3, 1, stride=2, padding=1, rng=0), MaxPool3d(3, stride=(2, 1, 2), padding=1),
                     Flatten(), Linear(3 * 2 * 4 * 2, 2, bias=False, rng=1))
    shape = (2, 3, 5, 3)
    assert [s.kind for s in plan_network(net, shape)][:2] == ["conv3d", "maxpool3d"]
    net[0].bias.data[:] = -5.0
    net.eval()
    export_c(net, tmp_path, input_shape=shape)
    clips = -np.abs(np.random.default_rng(0).standard_normal((2,) + shape)).astype(np.float32)
    logits, _ = run_c(build(tmp_path), clips)
    assert_logits_match(logits, net(clips))


@needs_cc
def test_max_pool_propagates_nan_like_the_engine(tmp_path):
    """PyTorch's max_pool3d: a NaN in a window makes its maximum NaN, wherever in the window it lies
    (also before larger values), and the padding counts as -infinity."""
    net = Sequential(MaxPool3d((1, 3, 2), stride=(1, 2, 2), padding=(0, 1, 1)), Flatten()).eval()
    shape = (2, 2, 7, 6)
    clips = np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32)
    clips[0, 0, 0, 2, 3] = np.nan
    clips[1, 1, 1, 6, 0] = np.nan
    clips[1, 1, 1, 5, 0] = 100.0  # read before the NaN of its window: the maximum is still NaN
    export_c(net, tmp_path, input_shape=shape)
    logits, _ = run_c(build(tmp_path), clips)
    reference = net(clips)
    assert np.array_equal(np.isnan(logits), np.isnan(reference)) and np.isnan(logits).sum() >= 2
    assert np.array_equal(logits[~np.isnan(logits)], reference[~np.isnan(reference)])



def _assert_tile_variants_match(outdir, variants, clips, reference):
    """The exported code in ``outdir`` built with each (NET_TILE_TAPS, NET_TILE_FLOATS) of ``variants``
    gives the engine's logits."""
    for taps, floats in variants:
        binary = compile_c(outdir, CFLAGS + [f"-DNET_TILE_TAPS={taps}", f"-DNET_TILE_FLOATS={floats}"],
                           output=f"net_{taps}_{floats}")
        logits, _ = run_c(binary, clips)
        assert_logits_match(logits, reference)

@needs_cc
def test_eq1_every_tile_variant_matches_engine(tmp_path):
    """Eq. (1) in the register tiles of every shape the macros select (taps per pass NET_TILE_TAPS 1 or
    2; NET_TILE_FLOATS giving 8 to 32 columns), with even and odd kernel rows, a stride along W, padding
    and tiles that end past the row: all compute the engine's logits."""
    net = Sequential(Conv3d(2, 6, (3, 5, 4), stride=(1, 2, 1), padding=(1, 2, 1), rng=0), ReLU(),
                     Conv3d(6, 4, (1, 3, 3), stride=(1, 1, 2), padding=1, rng=1), Flatten(),
                     Linear(4 * 6 * 5 * 11, 3, rng=2)).eval()
    shape = (2, 4, 9, 23)
    export_c(net, tmp_path, input_shape=shape)
    clips = np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32)
    reference = net(clips)
    _assert_tile_variants_match(tmp_path, ((1, 64), (2, 96), (1, 16), (2, 256)), clips, reference)


@needs_cc
def test_eq1_multi_row_tiles_and_padded_rows_match_engine(tmp_path):
    """Eq. (1) in tiles of several output rows (stride 1 along H: CT x R up to 4 (channel, row) pairs, the
    most channels among those, R at most kH and OH), each input row feeding the output rows r - j of its
    window, every pair accumulating both halves of the tile's columns: 2 channels x 2 rows with the
    window's first and last rows partial and OH not a multiple of 2, 1 channel x 2 rows (kH = 2), 1
    channel x 4 rows (OH = 6). The convolution after a 1x1x1 one reads rows its producer padded with
    zeros (fused as the stream's last factor, and layer by layer with fuse=False); tiles wider than the
    pads allow (NET_TILE_FLOATS=256) copy their edges instead. Both NET_TILE_TAPS variants."""
    from tuckerref.export.memory import tile_shape

    net = Sequential(Conv3d(2, 2, (2, 5, 3), padding=(1, 2, 1), rng=0), Conv3d(2, 2, 1, rng=1),
                     Conv3d(2, 2, (1, 3, 3), padding=(0, 1, 2), rng=2), ReLU(),
                     Conv3d(2, 1, (1, 2, 3), padding=(0, 0, 2), rng=3),
                     Conv3d(1, 1, (1, 5, 1), padding=(0, 2, 0), rng=4), Flatten(),
                     Linear(1 * 5 * 6 * 76, 3, rng=5)).eval()
    shape = (2, 4, 7, 72)
    clips = np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32)
    reference = net(clips)
    for fuse in (True, False):
        outdir = tmp_path / f"fuse_{fuse}"
        result = export_c(net, outdir, input_shape=shape, fuse=fuse)
        convs = [s for s in result.steps if s.kind == "conv3d"]
        assert [tile_shape(s) for s in convs] == [(2, 2), (2, 2), (1, 2), (1, 4)]
        assert [s.in_pad for s in convs] == [(0, 0), (2, 38), (0, 0), (0, 0)]  # rows of 112 floats
        _assert_tile_variants_match(outdir, ((1, 64), (2, 96), (2, 128), (1, 256)), clips, reference)


@needs_cc
def test_eq1_first_convolution_on_a_padded_copy_of_the_clip_gives_the_same_sums(tmp_path):
    """pad_input: c1 reads the clip copied into zero-padded rows (a ring of padded frames in net_forward, a
    padded tensor layer by layer) where it otherwise copies each edge tile's row segment: the same terms
    in the same order, so the same logits bit for bit, in net_forward and in net_run_layer (-t)."""
    net = thetis_net(SMALL, seed=0).eval()
    clips = np.random.default_rng(0).standard_normal((2,) + SMALL).astype(np.float32)
    plain = export_c(net, tmp_path / "plain", input_shape=SMALL)
    padded = export_c(net, tmp_path / "padded", input_shape=SMALL, pad_input=True)
    steps = [s for s in padded.steps if s.kind != "identity"]
    assert [s.path for s in steps[:2]] == ["input_pad", "c1"] and steps[0].out_pad == steps[1].in_pad != (0, 0)
    assert [s.path for s in plain.steps] == [s.path for s in padded.steps if s.path != "input_pad"]
    assert padded.scratch_floats > plain.scratch_floats and padded.units[0].pre is steps[0]
    logits_plain, _ = run_c(build(tmp_path / "plain"), clips)
    binary = build(tmp_path / "padded")
    logits, _ = run_c(binary, clips)
    assert_logits_match(logits, net(clips))
    np.testing.assert_array_equal(logits, logits_plain)
    timed, timings = run_c(binary, clips, repeats=1, warmup=0)
    np.testing.assert_array_equal(timed, logits)
    assert [name for name, _, _ in timings] == [s.path for s in steps]
    # profile_c builds with pad_input and counts the copy as c1's time: the module tree's names only
    profile = profile_c(net, clips[:1], repeats=2, warmup=0)
    assert profile.names() == [name for name, _ in net.named_modules() if name]
    assert min(profile["c1"].cpu.samples) > 0


@needs_cc
def test_c_backend_times_every_layer_and_sub_layer_for_table2():
    from tuckerref.commands.table2 import build_table
    from tuckerref.profile import PROFILERS

    original = thetis_net(SMALL, seed=0).eval()
    small = compressed(original, PAPER_RANKS).eval()
    x = np.random.default_rng(0).random((1,) + SMALL, dtype=np.float32)
    profile = profile_c(small, x, repeats=2, warmup=0)
    assert profile.names() == [name for name, _ in small.named_modules() if name]
    c1 = profile["c1"]
    np.testing.assert_allclose(c1.cpu.samples, np.sum([c.cpu.samples for c in c1.children], axis=0))
    assert profile["drop1"].cpu.samples == [0.0, 0.0] and profile.threads == 1
    with pytest.raises(ValueError, match="single-threaded"):
        profile_c(small, x, threads=2)
    table = build_table(original, small, x, PROFILERS["c"], repeats=1, warmup=0, clock="cpu")
    assert table["backend"] == "c" and [r["layer"] for r in table["rows"]] == ["c1", "c2", "l1", "l2", "l_out"]
    assert round(table["total"]["improvement"]["theoretical_speedup"], 1) > 1


def _triple(draw, lo, hi):
    return tuple(draw(st.integers(lo, hi)) for _ in range(3))


@st.composite
def small_networks(draw):
    """A random stack of Conv3d (any kernel/stride/padding, with or without bias, sometimes nested in a
    Sequential), MaxPool3d, ReLU and dropout, then Flatten and one or two Linear layers."""
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    layers, current = [], shape

    def conv(c_in, current):
        pad = _triple(draw, 0, 1)
        kernel = tuple(draw(st.integers(1, min(3, current[1 + d] + 2 * pad[d]))) for d in range(3))
        return Conv3d(c_in, draw(st.integers(1, 3)), kernel, stride=_triple(draw, 1, 2), padding=pad,
                      bias=draw(st.booleans()), rng=rng)

    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["conv", "pointwise", "pool", "relu", "dropout", "nested"]))
        if kind == "conv":
            layer = conv(current[0], current)
        elif kind == "pointwise":
            layer = Conv3d(current[0], draw(st.integers(1, 3)), 1, bias=draw(st.booleans()), rng=rng)
        elif kind == "pool":
            kernel = tuple(draw(st.integers(1, min(3, current[1 + d]))) for d in range(3))
            pad = tuple(draw(st.integers(0, k // 2)) for k in kernel)
            layer = MaxPool3d(kernel, stride=_triple(draw, 1, 2), padding=pad)
        elif kind == "relu":
            layer = ReLU(inplace=draw(st.booleans()))
        elif kind == "dropout":
            layer = Dropout3d(0.3, rng=rng)
        else:
            first = Conv3d(current[0], 2, 1, bias=False, rng=rng)
            layer = Sequential(first, conv(2, first.output_shape(current)), ReLU())
        layers.append(layer)
        current = layer.output_shape(current)
    n = int(np.prod(current))
    hidden = draw(st.integers(1, 5))
    layers += [Flatten(), Linear(n, hidden, bias=draw(st.booleans()), rng=rng)]
    if draw(st.booleans()):
        layers += [ReLU(), Dropout(0.5, rng=rng), Linear(hidden, draw(st.integers(1, 3)), rng=rng)]
    return Sequential(*layers), shape


@needs_cc
@settings(deadline=None, max_examples=8, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=small_networks())
def test_eq1_drawn_network_in_c_matches_engine(drawn, tmp_path_factory):
    net, shape = drawn
    export_build_compare(net, shape, tmp_path_factory.mktemp("drawn"))


# -- generated text: weights, determinism, buffers -------------------------------------------------------

def test_weights_c_round_trips_float32_exactly(tmp_path):
    net = Sequential(Conv3d(1, 2, (1, 2, 2), rng=0), Flatten(), Linear(2 * 1 * 2 * 2, 3, rng=1))
    special = np.array([1.0, -0.0, 3.4028235e38, 1e-45, 1.1754944e-38, -123456.789, 0.1, 2.0 ** -20],
                       dtype=np.float32)
    net[0].weight.data = special.reshape(2, 1, 1, 2, 2)
    export_c(net, tmp_path, input_shape=(1, 1, 3, 3))
    text = (tmp_path / "weights.c").read_text()
    for name, value in net.state_dict().items():
        ident = "param_" + name.replace(".", "_")
        body = re.search(rf"const float {ident}\[{value.size}\] = {{(.*?)}};", text, re.S).group(1)
        parsed = np.array([float(v.strip().rstrip("f")) for v in body.replace("\n", " ").split(",")], dtype=np.float32)
        np.testing.assert_array_equal(parsed.view(np.uint32), value.ravel().view(np.uint32), err_msg=name)
        assert f"/* {name} {value.shape} */" in text


def test_export_is_deterministic(tmp_path):
    net = compressed(thetis_net(SMALL, seed=0), PAPER_RANKS)
    for fmt in ("array", "blob"):
        a = export_c(net, tmp_path / f"a_{fmt}", weights_format=fmt)
        b = export_c(net, tmp_path / f"b_{fmt}", weights_format=fmt)
        assert [f.name for f in a.files] == [f.name for f in b.files]
        for fa, fb in zip(a.files, b.files):
            assert fa.read_bytes() == fb.read_bytes(), fa.name


def test_scratch_holds_the_largest_live_pair_of_the_full_size_networks():
    """Ping-pong buffers A (from the start) and B (to the end): the scratch is the largest sum of the live
    A and B tensors. Paper network: c1's output (6x28x120x160) in A while pool1 writes 6x14x30x40 to B."""
    net = thetis_net(seed=0)
    steps = plan_network(net, net.input_shape)
    placements, scratch = place_buffers(steps)
    assert scratch == 6 * 28 * 120 * 160 + 6 * 14 * 30 * 40
    assert placements[0].src == "input" and [p for p in placements if p][-1].dst == "logits"
    relu1 = next(p for s, p in zip(steps, placements) if s.path == "relu1")
    assert relu1.src == relu1.dst  # ReLU in place
    # Compressed c1: Q (2x28x120x160) in B while the last factor writes Y (6x28x120x160) to A.
    small = hand_compressed(net, PAPER_RANKS)  # structure only: no full-size decomposition needed
    assert place_buffers(plan_network(small, net.input_shape))[1] == (2 + 6) * 28 * 120 * 160


def test_identity_only_network_copies_its_input():
    steps = plan_network(Sequential(Dropout(0.1), Flatten()), (1, 2, 2, 2))
    placements, scratch = place_buffers(steps)
    assert [s.kind for s in steps] == ["identity", "identity", "copy"] and scratch == 0
    assert placements[-1].src == "input" and placements[-1].dst == "logits"


def test_export_rejects_unknown_layers_bad_shapes_and_formats(tmp_path):
    class Odd(Module):
        def output_shape(self, input_shape):
            return input_shape

    with pytest.raises(ValueError, match="'1'.*Odd"):
        export_c(Sequential(ReLU(), Odd()), tmp_path, input_shape=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="'c1'"):
        export_c(thetis_net(SMALL, seed=0), tmp_path, input_shape=(3,) + SMALL[1:])
    with pytest.raises(ValueError, match="weights_format"):
        export_c(thetis_net(SMALL, seed=0), tmp_path, weights_format="json")
    with pytest.raises(ValueError, match="input shape"):
        export_c(Sequential(ReLU()), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written on failure


def test_export_c_command_writes_the_sources(tmp_path, capsys):
    from tuckerref.commands import export_c as command
    save_model(tmp_path / "net.h5", thetis_net(SMALL, seed=0))
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args(["export-c", str(tmp_path / "net.h5"), str(tmp_path / "out"), "--weights-format", "blob"])
    assert args.func(args) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Makefile", "footprint.json", "main.c", "net.c",
                                                                    "net.h", "weights.bin"]
    header = (tmp_path / "out" / "net.h").read_text()
    assert re.search(r"#define NET_INPUT_SIZE\s+%d\b" % np.prod(SMALL), header)
    assert "scratch" in capsys.readouterr().out
    args = parser.parse_args(["export-c", str(tmp_path / "net.h5"), str(tmp_path / "padded"), "--pad-input"])
    assert args.func(args) == 0 and "input_pad+c1" in capsys.readouterr().out
