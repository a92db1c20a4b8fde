"""Moving-digit clips (tuckerref.data.digits): determinism by (seed, index), a well-formed data set
with balanced labels 0..9, distinct digit images across clips, and clear errors for bad options."""
import numpy as np
import pytest

pytest.importorskip("sklearn")

from tuckerref.cli import main
from tuckerref.data.digits import (CLASS_NAMES, clip_image, clip_label, digit_images, distinct_images, generate,
                                   make_clip, write_digits)
from tuckerref.data.store import ClipDataset

SMALL = (6, 20, 24)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    a = write_digits(tmp_path / "a.h5", n=12, seed=3, shape=SMALL)
    b = write_digits(tmp_path / "b.h5", n=12, seed=3, shape=SMALL)
    with ClipDataset(a) as da, ClipDataset(b) as db:
        assert da.read_clips(range(12)).tobytes() == db.read_clips(range(12)).tobytes()
        assert np.array_equal(da.labels, db.labels) and da.names == db.names
    other = make_clip(0, seed=4, shape=SMALL)[0]
    with ClipDataset(a) as da:
        assert other.tobytes() != da.read_clips([0]).tobytes()


def test_clip_i_alone_regenerates_identically():
    whole = list(generate(13, seed=2, shape=SMALL))
    for i in (12, 5, 0):
        clip, label, name, meta = make_clip(i, seed=2, shape=SMALL)
        assert clip.tobytes() == whole[i][0].tobytes() and (label, name, meta) == whole[i][1:]


def test_data_set_is_well_formed_with_balanced_labels(tmp_path):
    path = write_digits(tmp_path / "d.h5", n=25, seed=0, shape=SMALL, channels=4)
    with ClipDataset(path) as ds:
        clips = ds.read_clips(range(len(ds)))
        assert clips.shape == (25, 4) + SMALL and clips.dtype == np.uint8
        assert ds.class_names == list(CLASS_NAMES) and ds.channel_order == ("R", "G", "B", "depth")
        assert set(ds.labels[:20]) == set(range(10))                    # two of each class in 0..19
        assert np.bincount(ds.labels, minlength=10).max() - np.bincount(ds.labels, minlength=10).min() <= 1
        assert all(clips[:, c].std() > 5 for c in range(4))            # every channel carries an image
        assert all(name.endswith(f"_{label}") for name, label in zip(ds.names, ds.labels))


@pytest.mark.parametrize("channels", [1, 3])
def test_channel_count_is_configurable(channels):
    clip = make_clip(1, seed=0, shape=SMALL, channels=channels)[0]
    assert clip.shape == (channels,) + SMALL


def test_clip_shows_an_image_of_its_class_and_images_are_distinct_across_clips():
    _, labels = digit_images()
    n = 60
    images = [clip_image(i, seed=7) for i in range(n)]
    assert all(labels[img] == clip_label(i, seed=7) for i, img in enumerate(images))
    assert len(set(images)) == n and distinct_images() == 10 * np.bincount(labels).min()


def test_digit_moves_along_its_class_direction():
    """The digit's direction is 36 degrees per class (jitter of at most 8 degrees)."""
    for i in range(10):
        _, label, _, meta = make_clip(i, seed=1, shape=SMALL)
        diff = (meta["direction_deg"] - 36.0 * label + 180.0) % 360.0 - 180.0
        assert abs(diff) <= 8.0


@pytest.mark.parametrize("args, message", [
    (["--shape", "2", "8", "8"], "--shape"),
    (["--n", "0"], "--n must be >= 1"),
    (["--seed", "-1"], "--seed must be >= 0"),
])
def test_bad_option_gives_a_clear_error(tmp_path, capsys, args, message):
    assert main(["data", "digits", str(tmp_path / "x.h5"), "--no-progress"] + args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_bad_channel_count_is_rejected():
    with pytest.raises(ValueError, match="channels must be one of"):
        make_clip(0, channels=2)


def test_command_writes_the_data_set(tmp_path, capsys):
    out = tmp_path / "d.h5"
    assert main(["data", "digits", str(out), "--n", "10", "--shape", *map(str, SMALL), "--no-progress"]) == 0
    assert "10 clips" in capsys.readouterr().out
    with ClipDataset(out) as ds:
        assert sorted(ds.labels) == list(range(10))
