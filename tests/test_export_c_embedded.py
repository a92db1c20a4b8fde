"""The exported C as an embedded deliverable (tuckerref.export.memory): the static memory plan, its
footprint, and the generated code built for ARM.

The plan's rule: unit k of net_forward holds live_k = in_k + work_k + out_k floats of the arena at
once (the caller's input and logits count 0, an in-place unit's output is its input), and the
arena is max_k live_k, laid out by alternating ends. It is enough (net_forward run with exactly that
arena under AddressSanitizer reports nothing and computes the engine's logits) and no smaller
arena works for it (one float less is an overflow AddressSanitizer reports).

ARM: the generated net.c and weights.c compile for a Cortex-M7 with -Wall -Werror
(arm-none-eabi-gcc), their section sizes (arm-none-eabi-size) match the planned flash, and a
static aarch64 build of main.c run under qemu-aarch64 computes the engine's logits within 1e-4.
These skip only where their tools are absent. One export per network (module-scoped fixtures).
"""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tuckerref.export import export_c, plan_network
from tuckerref.export.memory import (INPUT_PAD, STACK_BASE_BYTES, conv_tile_bytes, pad_input, pad_rows, place_units,
                                     plan_units, pool_row_bytes)
from tuckerref.models import c3d, thetis_net

from test_export_c import PAPER_RANKS, SMALL, assert_logits_match, compressed, hand_compressed

CC = shutil.which(os.environ.get("CC", "cc"))
ARM_GCC = shutil.which("arm-none-eabi-gcc")
ARM_SIZE = shutil.which("arm-none-eabi-size")
A64_GCC = shutil.which("aarch64-linux-gnu-gcc")
QEMU = shutil.which("qemu-aarch64")
CORTEX_M7 = ["-mcpu=cortex-m7", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard", "-mthumb", "-O2", "-std=c99", "-Wall",
             "-Werror"]
ASAN = ["-O1", "-g", "-std=c99", "-Wall", "-Werror", "-fsanitize=address", "-fno-omit-frame-pointer"]
C3D_CLIP = (3, 16, 32, 32)
#: The issue's figures for the full-size paper network before the static plan: scratch in floats.
ORIGINAL_SCRATCH_BEFORE = 3_326_400


def _sources(outdir: Path) -> list:
    return [name for name in ("main.c", "net.c", "weights.c") if (outdir / name).exists()]


class Exported:
    """A network exported once, with clips and the engine's logits on them."""

    def __init__(self, net, input_shape, outdir, seed=0, n_clips=2, **options):
        self.net = net.eval()
        self.input_shape = input_shape
        self.result = export_c(self.net, outdir, input_shape=input_shape, **options)
        self.outdir = Path(outdir)
        self.clips = np.random.default_rng(seed).standard_normal((n_clips,) + tuple(input_shape)).astype(np.float32)
        self.reference = self.net(self.clips)

    def build(self, compiler, flags, name, extra=()):
        cmd = [compiler, *flags, *extra, "-o", name, *_sources(self.outdir), "-lm"]
        proc = subprocess.run(cmd, cwd=self.outdir, capture_output=True, text=True)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}"
        return self.outdir / name

    def run(self, binary, prefix=()):
        """(return code, stderr, logits or None) of ``binary`` on the clips."""
        self.clips.tofile(self.outdir / "clips.f32")
        out = self.outdir / "logits.f32"
        if out.exists():
            out.unlink()
        proc = subprocess.run([*prefix, str(binary), "clips.f32", "logits.f32"], cwd=self.outdir,
                              capture_output=True, text=True)
        logits = np.fromfile(out, dtype=np.float32).reshape(len(self.clips), -1) if proc.returncode == 0 else None
        return proc.returncode, proc.stderr, logits


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    return Exported(thetis_net(SMALL, seed=0), SMALL, tmp_path_factory.mktemp("paper"))


@pytest.fixture(scope="module")
def paper_padded(tmp_path_factory):
    """The paper network exported with pad_input: its c1 reads a ring of padded clip frames."""
    return Exported(thetis_net(SMALL, seed=0), SMALL, tmp_path_factory.mktemp("paper_pad"), pad_input=True)


@pytest.fixture(scope="module")
def paper_compressed(tmp_path_factory):
    return Exported(compressed(thetis_net(SMALL, seed=0), PAPER_RANKS), SMALL, tmp_path_factory.mktemp("paper_tk"))


@pytest.fixture(scope="module")
def narrow_c3d(tmp_path_factory):
    net = c3d(input_shape=C3D_CLIP, num_classes=5, width=1 / 16, batch_norm=True, head="gap", seed=3)
    return Exported(net, C3D_CLIP, tmp_path_factory.mktemp("c3d"))


NETWORKS = ["paper", "paper_padded", "paper_compressed", "narrow_c3d"]


# -- the plan's rule -------------------------------------------------------------------------------------

def _regions(unit, first, last):
    """[(start, end)] of the arena a unit holds while it runs."""
    out = []
    if not first:
        out.append((unit.src, unit.src + unit.in_size))
    if not last and not (unit.in_place and not first):
        out.append((unit.dst, unit.dst + unit.out_size))
    if unit.work_size:
        out.append((unit.work_at, unit.work_at + unit.work_size))
    return out


def assert_plan_rule(units, size):
    """The arena is max_k live_k; every unit's input, output and working buffers lie inside it, apart;
    each unit reads where the one before it wrote."""
    n = len(units)
    assert size == max(u.live(k == 0, k == n - 1) for k, u in enumerate(units))
    for k, u in enumerate(units):
        regions = sorted(_regions(u, k == 0, k == n - 1))
        assert all(0 <= a <= b <= size for a, b in regions), (u.name, regions, size)
        assert all(b1 <= a2 for (_, b1), (a2, _) in zip(regions, regions[1:])), (u.name, regions)
        assert u.src == ("input" if k == 0 else units[k - 1].dst)
    assert units[-1].dst == "logits"


def full_size_plans(padded_input=False):
    net = thetis_net(seed=0)
    plans = {}
    for name, n in [("original", net), ("compressed", hand_compressed(net, PAPER_RANKS))]:
        steps = plan_network(n, net.input_shape)
        units = plan_units(pad_rows(pad_input(steps) if padded_input else steps))
        plans[name] = (units, place_units(units))
    return plans


def test_arena_is_the_largest_live_set_of_one_unit_and_buffers_never_overlap(paper, paper_padded, paper_compressed,
                                                                             narrow_c3d):
    for built in (paper, paper_padded, paper_compressed, narrow_c3d):
        assert_plan_rule(built.result.units, built.result.scratch_floats)
    for units, size in full_size_plans().values():
        assert_plan_rule(units, size)


def test_full_size_paper_network_scratch_meets_the_targets():
    """Compressed: at most a quarter of the original's scratch before the plan (under 0.83 M floats); the
    original's own scratch lower than before (3,326,400 floats)."""
    plans = full_size_plans()
    (original, original_size), (small, small_size) = plans["original"], plans["compressed"]
    assert small_size < 830_000 and 4 * small_size <= ORIGINAL_SCRATCH_BEFORE
    assert original_size < ORIGINAL_SCRATCH_BEFORE
    # c1, its pooling and ReLU run as one stream: no 6 x 28 x 120 x 160 tensor is ever stored
    assert [s.path for s in original[0].steps] == ["c1", "pool1", "relu1"]
    assert original_size == 6 * 120 * 160 + 6 * 14 * 30 * 40  # one convolution frame + pool1's output
    # the Tucker-2 c1 keeps min(kD, F) = 5 frames of U_s's output (2 channels, in rows padded with zeros: 5
    # before (the core's pad_W), 5 after (as far as its last tile reaches) and 6 more, to 176 = 11 x 16
    # floats), one core frame (2 channels) and one frame of U_t's output (6 channels), and writes pool1's output
    c1 = small[0]
    assert [s.path for s in c1.steps] == ["c1.0", "c1.1", "c1.2", "pool1", "relu1"]
    assert c1.pre.out_pad == c1.conv.in_pad == (5, 11)
    assert c1.work == {"ring": 5 * 2 * 120 * 176, "frame": 2 * 120 * 160, "post_frame": 6 * 120 * 160}
    assert small_size == c1.work_size + 6 * 14 * 30 * 40


def test_padded_input_is_a_ring_of_padded_clip_frames_in_the_first_stream_and_counted_in_the_arena():
    """pad_input: the original's c1 reads min(kD, F) = 5 frames of the clip (4 channels) copied into rows
    padded like the compressed core's (176 floats); that ring is counted in its stream's working buffers
    and the arena; the compressed network (its first layer a 1x1x1 factor) is planned as without it."""
    plain, padded = full_size_plans(), full_size_plans(padded_input=True)
    units, size = padded["original"]
    assert_plan_rule(units, size)
    c1 = units[0]
    assert [s.path for s in c1.steps] == [INPUT_PAD, "c1", "pool1", "relu1"] and c1.pre.kind == "pad"
    assert c1.pre.out_pad == c1.conv.in_pad == (5, 11)
    assert c1.work == {"ring": 5 * 4 * 120 * 176, "frame": 6 * 120 * 160}
    assert size == c1.work_size + 6 * 14 * 30 * 40 == plain["original"][1] + 5 * 4 * 120 * 176
    assert [u.name for u in padded["compressed"][0]] == [u.name for u in plain["compressed"][0]]
    assert padded["compressed"][1] == plain["compressed"][1]


def test_footprint_json_lists_every_unit_and_totals(paper_compressed):
    result = paper_compressed.result
    fp = json.loads((result.outdir / "footprint.json").read_text())
    assert fp == json.loads(json.dumps(result.footprint))
    steps = [s for s in result.steps if s.kind != "identity"]
    assert [p for row in fp["units"] for p in row["layers"]] == [s.path for s in steps]
    assert fp["total"]["param_bytes"] == 4 * result.param_floats == sum(r["param_bytes"] for r in fp["units"])
    assert fp["total"]["scratch_floats"] == result.scratch_floats == max(r["scratch_floats"] for r in fp["units"])
    header = (result.outdir / "net.h").read_text()
    assert re.search(r"#define NET_SCRATCH_FLOATS\s+%d\b" % result.scratch_floats, header)
    # multiply-accumulates: a convolution T*S*kD*kH*kW per output position, a 1x1x1 one T*S
    conv = next(s for s in steps if s.path == "c1.1")
    pre = next(s for s in steps if s.path == "c1.0")
    m = conv.module
    expected = (conv.out_size * m.in_channels * int(np.prod(m.kernel_size)) + pre.out_size * pre.in_shape[0])
    assert fp["units"][0]["macs"] >= expected and fp["total"]["macs"] == sum(r["macs"] for r in fp["units"])


def test_unfused_plan_is_the_layer_by_layer_ping_pong(paper):
    """fuse=False: one unit per computing layer; its arena is then the ping-pong schedule's (place_buffers)."""
    steps = paper.result.steps
    units = plan_units(steps, fuse=False)
    assert [u.name for u in units] == [s.path for s in steps if s.kind != "identity"]
    assert place_units(units) == paper.result.layerwise_scratch_floats > paper.result.scratch_floats


@pytest.mark.skipif(CC is None, reason="no C compiler (cc) found")
@pytest.mark.parametrize("which", ["paper", "paper_padded", "paper_compressed"])
def test_planned_arena_is_enough_and_one_float_less_overflows_under_address_sanitizer(which, request):
    built = request.getfixturevalue(which)
    exact = built.build(CC, ASAN, "net_asan")
    rc, err, logits = built.run(exact)
    assert rc == 0 and "AddressSanitizer" not in err, err
    assert_logits_match(logits, built.reference)
    short = built.build(CC, ASAN, "net_asan_short", ["-DNET_SCRATCH_SHORTFALL=1"])
    rc, err, _ = built.run(short)
    assert rc != 0 and "heap-buffer-overflow" in err


def _stack_usage(outdir: Path) -> dict:
    """{function: bytes} from gcc -fstack-usage's net.su."""
    usage = {}
    for line in (outdir / "net.su").read_text().splitlines():
        where, size, _ = line.split("\t")
        usage[where.rsplit(":", 1)[-1]] = int(size)
    return usage


def assert_stack_bounds(built):
    """The stack bound of each unit covers net_forward, the unit's function and every helper it calls
    (their sum: at most one helper runs at a time)."""
    usage = _stack_usage(built.outdir)
    for unit in built.result.units:
        paths = [re.sub(r"\W", "_", s.path) for s in unit.steps]
        # a stream calls its layers' frame and row helpers; a single layer's function calls its own helpers
        own = ("_frame", "_rows", "_padded_rows") if unit.kind == "stream" else ("", "_frame", "_rows", "_padded_rows")
        names = [n for n in usage if n == "fused_" + "__".join(paths)
                 or any(n in [f"layer_{p}{suffix}" for suffix in own] for p in paths)]
        assert usage["net_forward"] + sum(usage[n] for n in names) <= unit.stack_bytes, (unit.name, names, usage)
    tiles = [conv_tile_bytes(s) + pool_row_bytes(s) for s in built.result.steps if s.kind in ("conv3d", "maxpool3d")]
    assert max(usage.values()) <= STACK_BASE_BYTES + max(tiles or [0])


# -- ARM -------------------------------------------------------------------------------------------------

def cortex_m7_sizes(built):
    """Compile net.c and weights.c for a Cortex-M7 with -Wall -Werror; {object: (text, data, bss)}."""
    objects = []
    for source in ("net.c", "weights.c"):
        obj = source.replace(".c", ".o")
        cmd = [ARM_GCC, *CORTEX_M7, "-fstack-usage", "-c", source, "-o", obj]
        proc = subprocess.run(cmd, cwd=built.outdir, capture_output=True, text=True)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}"
        objects.append(obj)
    proc = subprocess.run([ARM_SIZE, *objects], cwd=built.outdir, capture_output=True, text=True, check=True)
    sizes = {}
    for line in proc.stdout.splitlines()[1:]:
        text, data, bss, *_, name = line.split()
        sizes[name] = (int(text), int(data), int(bss))
    return sizes


@pytest.mark.skipif(ARM_GCC is None or ARM_SIZE is None, reason="arm-none-eabi-gcc / arm-none-eabi-size not found")
@pytest.mark.parametrize("which", NETWORKS)
def test_cortex_m7_build_fits_the_planned_footprint(which, request, capsys):
    built = request.getfixturevalue(which)
    sizes = cortex_m7_sizes(built)
    param_bytes = built.result.footprint["total"]["param_bytes"]
    text, data, bss = sizes["weights.o"]
    assert text + data + bss == param_bytes  # const arrays: the parameters, in flash, nothing else
    net_text, net_data, net_bss = sizes["net.o"]
    assert net_data == net_bss == 0  # no static RAM: the scratch arena is the caller's
    assert_stack_bounds(built)
    with capsys.disabled():
        print(f"\n{which}: arm-none-eabi-size net.o {sizes['net.o']}, weights.o {sizes['weights.o']} "
              f"(text, data, bss); planned: {param_bytes:,} parameter bytes, "
              f"{built.result.scratch_floats:,} scratch floats")


@pytest.mark.skipif(A64_GCC is None or QEMU is None, reason="aarch64-linux-gnu-gcc / qemu-aarch64 not found")
@pytest.mark.parametrize("which", NETWORKS)
def test_aarch64_build_under_qemu_matches_engine_logits(which, request):
    built = request.getfixturevalue(which)
    binary = built.build(A64_GCC, ["-static", "-O2", "-std=c99", "-Wall", "-Werror"], "net_aarch64")
    rc, err, logits = built.run(binary, prefix=[QEMU])
    assert rc == 0, err
    assert_logits_match(logits, built.reference)
    assert not np.allclose(logits[0], logits[1])
