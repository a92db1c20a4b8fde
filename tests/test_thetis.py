"""THETIS importer on a small generated tree of real AVI files (the paper's Section 2.1;
docs/method.md section 10)."""
import argparse
import os
import random
from types import SimpleNamespace

import numpy as np
import pytest

from avi_fixtures import depth_frame, rgb_frame, write_avi
from tuckerref.commands import data as data_command
from tuckerref.data import ClipDataset
from tuckerref.data import thetis
from tuckerref.data.thetis import (ClipSpec, NoClipsError, decode_window, import_thetis, luma601,
                                   nearest_indices, plan_clips, read_annotations, write_template)

# (shot, player, fps, RGB frame count or None, depth frame count or None); None = no such file,
# 0 = an empty (never decoded) file, -1 = a file of garbage bytes.
VIDEOS = [
    ("forehand_flat", "p1", 15, 30, 30),
    ("forehand_flat", "p2", 25, 50, 50),
    ("forehand_flat", "p3", 15, 30, 29),    # frame-count mismatch
    ("forehand_flat", "p4", 15, 2, None),   # missing depth partner
    ("forehand_flat", "p5", 15, None, 2),   # missing RGB partner
    ("forehand_flat", "p6", 15, -1, 2),     # undecodable RGB file
    ("forehand_flat", "p8", 15, 20, 20),    # window outside the video
    ("forehand_flat", "p9", 15, 0, 0),      # annotated without a mid-point
    ("forehand_flat", "p11", 15, 0, 0),     # in the skip list
    ("forehand_flat", "p13", 15, 0, 0),     # not annotated
    ("backhand", "p10", 25, 50, 50),
    ("backhand", "p2", 15, 30, 30),
]
SHORT = {"forehand_flat": "foreflat", "backhand": "backhand"}

FOREHAND_CSV = (  # the real format: depth (or RGB) file;mid-point seconds;ignored third column
    "p1_foreflat_depth_s1.avi;1.0;1000000\n"
    "p2_foreflat_s1.avi;1.039;1039000\n"           # RGB name; int(1.039 * 25) = 25 (truncation, not rounding)
    "p3_foreflat_depth_s1.avi;1.0;1000000\n"
    "p4_foreflat_s1.avi;1.0;1000000\n"
    "p5_foreflat_depth_s1.avi;1.0;1000000\n"
    "p6_foreflat_depth_s1.avi;1.0;1000000\n"
    "p7_foreflat_depth_s1.avi;1.0;1000000\n"       # no such file
    "p8_foreflat_depth_s1.avi;1.0;1000000\n"
    "p9_foreflat_depth_s1.avi;;\n"
    "p11_foreflat_depth_s1.avi;1.0;1000000\n"
    "\n"
    "p1_foreflat_depth_s1.avi;2.0;2000000\n"       # duplicate
)
BACKHAND_CSV = "p10_backhand_depth_s1.avi;1.2;1,200,000,000\np2_backhand_depth_s1.avi;1.0;1,000,000,000"
EXPECTED_SKIPS = {
    "p3_foreflat_s1.avi": thetis.COUNT_MISMATCH,
    "p4_foreflat_s1.avi": thetis.MISSING_PARTNER,
    "p5_foreflat_depth_s1.avi": thetis.MISSING_PARTNER,
    "p6_foreflat_s1.avi": thetis.UNDECODABLE,
    "p7_foreflat_depth_s1.avi": thetis.NO_SUCH_FILE,
    "p8_foreflat_s1.avi": thetis.OUTSIDE,
    "p9_foreflat_depth_s1.avi": thetis.NO_MIDPOINT,
    "p11_foreflat_depth_s1.avi": thetis.IN_SKIP_LIST,
    "p13_foreflat_depth_s1.avi": thetis.NOT_ANNOTATED,
    "p1_foreflat_depth_s1.avi": thetis.DUPLICATE,
}
# name -> (label, fps, 0-based first frame = int(mid * fps) - 14)
EXPECTED_CLIPS = {"p1_foreflat_s1": (0, 15, 1), "p2_foreflat_s1": (0, 25, 11),
                  "p2_backhand_s1": (1, 15, 1), "p10_backhand_s1": (1, 25, 16)}


def _file(root, side, shot, player, count, fps):
    name = f"{player}_{SHORT[shot]}_{'depth_' if side == 'depth' else ''}s1.avi"
    path = root / ("VIDEO_RGB" if side == "rgb" else "VIDEO_Depth") / shot / name
    if count is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if count == 0:
        path.write_bytes(b"")
    elif count == -1:
        path.write_bytes(b"RIFF\x00\x00\x00\x00AVI not really a video" * 10)
    else:
        write_avi(path, rgb_frame if side == "rgb" else depth_frame, count, fps)


def _parser():
    parser = argparse.ArgumentParser(prog="tuckerref")
    data_command.register(parser.add_subparsers(dest="command"))
    return parser


def _cli(*argv):
    args = _parser().parse_args(["data", *map(str, argv)])
    return args.func(args)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("thetis")
    for shot, player, fps, n_rgb, n_depth in VIDEOS:
        _file(root, "rgb", shot, player, n_rgb, fps)
        _file(root, "depth", shot, player, n_depth, fps)
    fh, bh = root / "forehand.csv", root / "backhand.csv"
    fh.write_text(FOREHAND_CSV)
    bh.write_text(BACKHAND_CSV)
    out, report = root / "out" / "thetis.h5", root / "report.txt"
    out.parent.mkdir()  # an output's directory must exist before the command runs (tuckerref.outputs)
    rc = _cli("thetis", root, "--annotations", fh, bh, out, "--skip", "p11_foreflat_s1.avi",
              "--workers", 2, "--no-progress", "--report", report)
    ds = ClipDataset(out)
    yield SimpleNamespace(root=root, fh=fh, bh=bh, out=out, rc=rc, ds=ds, report=report.read_text(),
                          clips={name: ds.read_clips([i])[0] for i, name in enumerate(ds.names)})
    ds.close()


def test_annotation_parser_reads_the_real_format(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes("\ufeffp3_backhand_depth_s2.avi;1.993170;1,993,170,000\n"
                     "p4_foreflat_depth_s1.avi;2.268932;2268932\r\n"
                     "\n"
                     "p5_foreflat_s3.avi; 0.5 ;x;y\n"
                     "p6_foreflat_depth_s1.avi;\n"
                     "p7_foreflat_depth_s1.avi;n/a;1".encode("utf-8"))  # BOM, CRLF, no final newline
    rows = read_annotations(path)
    assert [(r.file, r.mid, r.line) for r in rows] == [
        ("p3_backhand_depth_s2.avi", 1.99317, 1), ("p4_foreflat_depth_s1.avi", 2.268932, 2),
        ("p5_foreflat_s3.avi", 0.5, 4), ("p6_foreflat_depth_s1.avi", None, 5), ("p7_foreflat_depth_s1.avi", None, 6)]


def test_annotation_parser_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="missing.csv"):
        read_annotations(tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("p1_foreflat_depth_s1.avi;1.0\n;2.0;x\n")
    with pytest.raises(ValueError, match="bad.csv line 2"):
        read_annotations(tmp_path / "bad.csv")


def test_pair_key_matches_rgb_and_depth_names():
    assert thetis.pair_key("p13_foreflat_s2.avi") == thetis.pair_key("p13_foreflat_depth_s2.avi") == "p13_foreflat_s2"
    assert thetis.pair_key("p1_backhand_depth_s1.avi") != thetis.pair_key("p10_backhand_depth_s1.avi")


def test_import_writes_every_good_clip_with_labels_in_shot_then_natural_order(tree):
    assert tree.rc == 0
    ds = tree.ds
    assert ds.names == list(EXPECTED_CLIPS)
    assert list(ds.labels) == [EXPECTED_CLIPS[n][0] for n in ds.names]
    assert ds.class_names == ["forehand_flat", "backhand"] and ds.clip_shape == (4, 28, 120, 160)


def test_window_is_28_frames_from_one_based_frame_int_mid_fps_minus_13(tree):
    for i, name in enumerate(tree.ds.names):
        _, fps, start = EXPECTED_CLIPS[name]
        frames = np.arange(start, start + 28)                        # 0-based indices
        assert np.array_equal(tree.clips[name][0, :, 0, 0], (5 * frames) % 256), name  # R encodes the index
        assert tree.ds.metadata["start"][i] == start and tree.ds.metadata["fps_rgb"][i] == fps
        assert tree.ds.metadata["start"][i] + 1 == int(tree.ds.metadata["mid"][i] * fps) - 13


def test_nearest_neighbour_downscale_samples_floor_dst_times_in_over_out(tree):
    assert np.array_equal(nearest_indices(480, 120), 4 * np.arange(120))
    assert list(nearest_indices(10, 4)) == [0, 2, 5, 7]              # floor(dst * 2.5)
    for name, (_, _, start) in EXPECTED_CLIPS.items():
        clip = tree.clips[name]
        for k in (0, 27):
            full = rgb_frame(start + k)
            assert np.array_equal(clip[:3, k], full[::4, ::4].transpose(2, 0, 1)), (name, k)


def test_depth_channel_is_bt601_luma_of_the_decoded_rgb_depth_frame(tree):
    assert list(luma601(np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0],
                                  [10, 20, 30]], np.uint8))) == [76, 150, 29, 255, 0, 18]
    for name, (_, _, start) in EXPECTED_CLIPS.items():
        for k in (0, 13, 27):
            full = depth_frame(start + k)[::4, ::4].astype(np.int64)
            expected = (299 * full[..., 0] + 587 * full[..., 1] + 114 * full[..., 2] + 500) // 1000
            assert np.array_equal(tree.clips[name][3, k], expected), (name, k)


def test_channel_order_is_r_g_b_depth(tree):
    assert tree.ds.channel_order == ("R", "G", "B", "depth")
    clip = tree.clips["p1_foreflat_s1"]
    assert np.all(clip[0, 0] == 5)                                   # R: 5 * frame index (index 1)
    assert np.array_equal(clip[1, 0, 0], (4 * np.arange(160)) % 256)  # G: column
    assert np.array_equal(clip[2, 0, :, 0], (4 * np.arange(120)) % 256)  # B: row
    x, _ = tree.ds.batch([0])
    assert np.array_equal(x[0], clip / np.float32(255))


def test_each_defect_is_reported_with_its_file_name(tree):
    reported = {s[0]: s[1] for s in tree.ds.attrs["skipped"]}
    assert reported == EXPECTED_SKIPS
    for name, reason in EXPECTED_SKIPS.items():
        assert f"{name}: {reason}" in tree.report
    assert tree.report.startswith("4 clips made, 10 skipped\n")


def test_pairing_is_by_name_whatever_the_directory_listing_order(tree, monkeypatch):
    listdir = os.listdir
    rng = random.Random(0)

    def shuffled(path):
        names = listdir(path)
        rng.shuffle(names)
        return names

    rgb = sorted(listdir(tree.root / "VIDEO_RGB" / "forehand_flat"))
    depth = sorted(listdir(tree.root / "VIDEO_Depth" / "forehand_flat"))
    assert any(thetis.pair_key(a) != thetis.pair_key(b) for a, b in zip(rgb, depth))  # by position would mispair
    monkeypatch.setattr(thetis.os, "listdir", shuffled)
    for _ in range(3):
        jobs, skipped = plan_clips(tree.root, [tree.fh, tree.bh], skip=["p11_foreflat_depth_s1.avi"])
        assert [pair.key for pair, _ in jobs] == ["p1_foreflat_s1", "p2_foreflat_s1", "p3_foreflat_s1",
                                                  "p6_foreflat_s1", "p8_foreflat_s1", "p2_backhand_s1",
                                                  "p10_backhand_s1"]
        for pair, _ in jobs:
            assert thetis.pair_key(pair.rgb.name) == thetis.pair_key(pair.depth.name) == pair.key
            assert pair.rgb.parent.name == pair.depth.parent.name == pair.shot


def test_window_frames_and_scale_are_configurable(tree):
    path = tree.root / "VIDEO_Depth" / "backhand" / "p10_backhand_depth_s1.avi"
    d = decode_window(path, 1.2, ClipSpec(frames=5, offset=2, scale=8))
    assert (d.count, d.fps, d.start) == (50, 25.0, 28) and d.frames.shape == (5, 60, 80, 3)
    assert np.array_equal(d.frames[4], depth_frame(32)[::8, ::8])
    assert decode_window(path, 1.2, ClipSpec(frames=40)).frames is None  # 16 + 40 > 50 frames


def test_no_clip_exits_nonzero_and_writes_nothing(tree, tmp_path, capsys):
    csv = tmp_path / "bad.csv"
    csv.write_text("p4_foreflat_s1.avi;1.0;1\np7_foreflat_depth_s1.avi;1.0;1\n")
    out = tmp_path / "none.h5"
    assert _cli("thetis", tree.root, out, "--annotations", csv, "--no-progress") == 1
    captured = capsys.readouterr()
    assert "p4_foreflat_s1.avi: missing partner" in captured.out and "no clip could be made" in captured.err
    assert not out.exists() and os.listdir(tmp_path) == ["bad.csv"]
    with pytest.raises(NoClipsError):
        import_thetis(tree.root, [csv], out, progress=False)


def test_unwritable_output_is_a_clear_error(tree, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="cannot write"):
        import_thetis(tree.root, [tree.bh], blocker / "out.h5", workers=1, progress=False)


def test_unknown_shot_directory_or_skip_entry_is_a_clear_error(tree):
    with pytest.raises(ValueError, match="smash"):
        plan_clips(tree.root, [tree.fh], shots=("smash",))
    with pytest.raises(ValueError, match="p99_foreflat_s1.avi"):
        plan_clips(tree.root, [tree.fh], skip=["p99_foreflat_s1.avi"])


def test_template_lists_every_recording_with_an_empty_mid_point(tree, tmp_path, capsys):
    out = tmp_path / "template.csv"
    assert _cli("thetis-template", tree.root, out) == 0
    rows = read_annotations(out)
    assert all(r.mid is None for r in rows)
    assert [r.file for r in rows] == [
        "p1_foreflat_depth_s1.avi", "p2_foreflat_depth_s1.avi", "p3_foreflat_depth_s1.avi", "p4_foreflat_s1.avi",
        "p5_foreflat_depth_s1.avi", "p6_foreflat_depth_s1.avi", "p8_foreflat_depth_s1.avi",
        "p9_foreflat_depth_s1.avi", "p11_foreflat_depth_s1.avi", "p13_foreflat_depth_s1.avi",
        "p2_backhand_depth_s1.avi", "p10_backhand_depth_s1.avi"]
    assert write_template(tree.root, tmp_path / "bh.csv", shots=("backhand",)) == 2
