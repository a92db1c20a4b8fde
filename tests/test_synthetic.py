"""Synthetic THETIS-like data set (tuckerref.data.synthetic): determinism, format, and the property
that defines it: the classes share one distribution of still frames, and only the order of the
motion (combined with the visible handedness) tells them apart."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuckerref.cli import main
from tuckerref.data.store import ClipDataset
from tuckerref.data.synthetic import (BACKHAND, CLASS_NAMES, FOREHAND, clip_label, generate, make_clip,
                                      sample_scene, sweep, synthesize)

SMALL = (16, 48, 64)


@pytest.fixture(scope="module")
def sample():
    """160 clips of the small shape: uint8 clips (N, 4, F, H, W), labels, left-handedness."""
    clips, labels, left = [], [], []
    for clip, label, _, meta in generate(160, seed=11, shape=SMALL):
        clips.append(clip)
        labels.append(label)
        left.append(meta["left_handed"])
    return np.stack(clips), np.array(labels), np.array(left)


def test_same_seed_gives_identical_bytes_and_another_seed_differs():
    a, la, na, ma = make_clip(3, seed=5, shape=SMALL)
    b, lb, nb, mb = make_clip(3, seed=5, shape=SMALL)
    assert a.tobytes() == b.tobytes() and (la, na, ma) == (lb, nb, mb)
    c = make_clip(3, seed=6, shape=SMALL)[0]
    assert a.tobytes() != c.tobytes()


def test_clip_depends_only_on_seed_and_index_not_on_n():
    whole = [clip for clip, *_ in generate(6, seed=2, shape=SMALL)]
    subset = [clip for clip, *_ in generate([4, 1], seed=2, shape=SMALL)]
    assert np.array_equal(subset[0], whole[4]) and np.array_equal(subset[1], whole[1])
    assert not np.array_equal(whole[0], whole[1])


@settings(deadline=None, max_examples=12)
@given(f=st.integers(4, 10), h=st.integers(24, 40), w=st.integers(24, 48),
       seed=st.integers(0, 2**31), index=st.integers(0, 10**6))
def test_clip_shape_dtype_and_range(f, h, w, seed, index):
    clip, label, name, meta = make_clip(index, seed=seed, shape=(f, h, w))
    assert clip.shape == (4, f, h, w) and clip.dtype == np.uint8
    assert label in (FOREHAND, BACKHAND) and name == f"synth_{index:06d}_{CLASS_NAMES[label]}"
    assert all(isinstance(v, (bool, int, float)) for v in meta.values())
    # every channel carries an image, not a constant
    assert all(clip[c].std() > 5 for c in range(4))


def test_depth_channel_figure_is_nearer_than_wall():
    clip, _, _, meta = make_clip(0, seed=1, shape=(8, 60, 80))
    depth = clip[3].astype(float)
    x, y = int(round(meta["centre_x"])), int(round(meta["feet_y"] - 0.62 * meta["height_px"]))
    torso, wall = np.median(depth[:, y, x]), np.median(depth[:, 1, :])  # 255 = nearest
    assert torso > wall + 40


def test_balanced_labels_every_prefix_within_one():
    labels = np.array([clip_label(i, seed=4) for i in range(301)])
    counts = np.cumsum(labels)
    n = np.arange(1, labels.size + 1)
    assert np.all(np.abs(2 * counts - n) <= 1)
    assert 0 < np.mean(labels[0::2]) < 1  # the order inside each pair is random, not alternating


def test_unbalanced_labels_are_independent_coins():
    labels = np.array([clip_label(i, seed=4, balance=False) for i in range(400)])
    assert 0.4 < labels.mean() < 0.6
    assert np.any(labels[0::2] == labels[1::2])  # pairs are not forced apart


def test_time_reversed_forehand_sweep_is_a_backhand_sweep():
    """The mechanism behind still-frame ambiguity: a forehand played backwards (sweep centre c ->
    F - 1 - c) is a backhand with the same parameters, so both classes have the same frames."""
    n_frames = 16
    fore = sample_scene(0, FOREHAND, seed=3, shape=(n_frames, 48, 64))
    back = sample_scene(0, BACKHAND, seed=3, shape=(n_frames, 48, 64))
    assert (back.sweep_from, back.sweep_to) == (fore.sweep_to, fore.sweep_from)
    import dataclasses
    mirrored = dataclasses.replace(back, swing_start=n_frames - 1 - fore.swing_end)
    np.testing.assert_allclose(sweep(fore, n_frames)[::-1], sweep(mirrored, n_frames), atol=1e-12)


def _block_features(frames, block=8):
    """Per-frame block means: (N, F, C, H, W) -> (N, F, C * H/block * W/block)."""
    n, f, c, h, w = frames.shape
    x = frames[..., : h - h % block, : w - w % block].astype(np.float32)
    x = x.reshape(n, f, c, h // block, block, w // block, block).mean(axis=(4, 6))
    return x.reshape(n, f, -1)


def _colour_histograms(frames, bins=16):
    n, f, c = frames.shape[:3]
    rows = frames.reshape(n * f * c, -1).astype(np.int64) * bins // 256
    rows += (np.arange(n * f * c) * bins)[:, None]  # one histogram per (clip, frame, channel)
    hist = np.bincount(rows.ravel(), minlength=n * f * c * bins)
    return hist.reshape(n, f, c * bins).astype(np.float32)


def _nearest_centroid_frame_accuracy(features, labels):
    """Train on the frames of the first half of the clips, test on every frame of the second half."""
    n, f, _ = features.shape
    train, test = np.arange(n) < n // 2, np.arange(n) >= n // 2
    x_tr, y_tr = features[train].reshape(-1, features.shape[-1]), np.repeat(labels[train], f)
    x_te, y_te = features[test].reshape(-1, features.shape[-1]), np.repeat(labels[test], f)
    c0, c1 = x_tr[y_tr == 0].mean(axis=0), x_tr[y_tr == 1].mean(axis=0)
    pred = ((x_te - c1) ** 2).sum(axis=1) < ((x_te - c0) ** 2).sum(axis=1)
    return float(np.mean(pred.astype(int) == y_te))


def test_single_frames_do_not_reveal_the_class(sample):
    """Nearest-centroid classifiers on single frames (block-mean images, colour histograms) are at chance."""
    clips, labels, _ = sample
    frames = clips.transpose(0, 2, 1, 3, 4)  # (N, F, C, H, W)
    assert abs(_nearest_centroid_frame_accuracy(_block_features(frames), labels) - 0.5) < 0.1
    assert abs(_nearest_centroid_frame_accuracy(_colour_histograms(frames), labels) - 0.5) < 0.1


def _racket_x(clips):
    """Horizontal centroid of the racket-coloured (saturated red-orange) pixels per frame, NaN if none."""
    r, g, b = (clips[:, c].astype(np.int16) for c in range(3))
    mask = (r > 120) & (r - np.maximum(g, b) > 100)
    count = mask.sum(axis=(2, 3))
    x = (mask * np.arange(clips.shape[-1])).sum(axis=(2, 3)) / np.maximum(count, 1)
    return np.where(count > 0, x, np.nan)


def _left_handed_from_depth(clips):
    """The dominant shoulder is nearer: in the clip's static depth image (second-smallest value over
    time, which drops the moving arm and sensor drop-outs), nearness falls towards the dominant side."""
    depth = np.partition(clips[:, 3], 1, axis=1)[:, 1].astype(np.float64)  # (N, H, W)
    n, h, w = depth.shape
    xs = np.broadcast_to(np.arange(w, dtype=np.float64), (h, w))
    left = []
    for d in depth:
        figure = d > np.median(d, axis=1, keepdims=True) + 12
        rows = np.flatnonzero(figure.any(axis=1))
        top, bottom = rows[0], rows[-1]
        band = np.zeros(h, bool)
        band[top + (bottom - top) * 15 // 100: top + (bottom - top) * 45 // 100] = True
        figure &= band[:, None]
        left.append(np.corrcoef(xs[figure], d[figure])[0, 1] > 0)
    return np.array(left)


def test_handedness_is_visible_in_depth(sample):
    clips, _, left = sample
    assert np.mean(_left_handed_from_depth(clips) == left) >= 0.95


def test_motion_direction_with_handedness_separates_the_classes(sample):
    """Forehand: the racket moves from the dominant side across the body; for a right-hander facing
    the camera that is left to right in the image. Early-vs-late racket displacement times the
    handedness sign read from depth classifies >= 95 % of clips; the displacement alone cannot
    exceed the right-handed share by much."""
    clips, labels, left = sample
    x = _racket_x(clips)
    third = clips.shape[2] // 3
    shift = np.nanmean(x[:, -third:], axis=1) - np.nanmean(x[:, :third], axis=1)
    sign = np.where(_left_handed_from_depth(clips), -1.0, 1.0)
    predicted = np.where(shift * sign > 0, FOREHAND, BACKHAND)
    assert np.mean(predicted == labels) >= 0.95
    without_hand = np.mean(np.where(shift > 0, FOREHAND, BACKHAND) == labels)
    assert without_hand <= np.mean(~left) + 0.03


def test_store_round_trip(tmp_path):
    path = synthesize(tmp_path / "s.h5", n=5, seed=9, shape=(6, 32, 40))
    expected = list(generate(5, seed=9, shape=(6, 32, 40)))
    with ClipDataset(path) as ds:
        assert len(ds) == 5 and ds.clip_shape == (4, 6, 32, 40)
        assert ds.class_names == list(CLASS_NAMES)
        assert ds.names == [name for _, _, name, _ in expected]
        assert ds.labels.tolist() == [label for _, label, _, _ in expected]
        assert ds.attrs["seed"] == 9
        for key in ("left_handed", "swing_start", "swing_speed", "centre_x", "scale"):
            assert ds.metadata[key].tolist() == [meta[key] for *_, meta in expected]
        x, y = ds.batch([3, 0])
        assert x.dtype == np.float32 and y.tolist() == [expected[3][1], expected[0][1]]
        np.testing.assert_array_equal(ds.read_clips([3, 0]), np.stack([expected[3][0], expected[0][0]]))
        np.testing.assert_allclose(x[0], expected[3][0] / np.float32(255.0), rtol=1e-6)


def test_cli_data_synth_writes_the_set_and_rejects_bad_arguments(tmp_path, capsys):
    out = tmp_path / "d.h5"
    assert main(["data", "synth", str(out), "--n", "3", "--shape", "4", "24", "32", "--seed", "2",
                 "--no-progress"]) == 0
    with ClipDataset(out) as ds:
        assert len(ds) == 3 and ds.names[0] == make_clip(0, seed=2, shape=(4, 24, 32))[2]
    assert main(["data", "synth", str(tmp_path / "e.h5"), "--n", "0", "--no-progress"]) == 2
    assert "--n" in capsys.readouterr().err
    assert main(["data", "synth", str(tmp_path / "e.h5"), "--shape", "2", "10", "10", "--no-progress"]) == 2
    assert not (tmp_path / "e.h5").exists()


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="seed"):
        make_clip(0, seed=-1)
    with pytest.raises(ValueError, match="index"):
        make_clip(-2)
    with pytest.raises(ValueError, match="label"):
        sample_scene(0, 2)
    with pytest.raises(ValueError, match="left_handed_fraction"):
        make_clip(0, shape=SMALL, left_handed_fraction=1.5)
    with pytest.raises(ValueError, match="shape"):
        make_clip(0, shape=(16, 48))
