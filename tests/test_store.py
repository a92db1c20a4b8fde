"""The tuckerref-clips HDF5 format: round trip, lazy batches, [0, 1] scaling, atomic writes, clear errors."""
import os
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuckerref.data import CHANNEL_ORDER, FORMAT, ClipDataset, DatasetWriter, write_dataset
from tuckerref.io import save_weights


def _clips(n, shape=(4, 3, 5, 6), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype=np.uint8)


@pytest.fixture
def small(tmp_path):
    clips = _clips(6)
    labels = np.array([0, 1, 1, 0, 1, 0])
    names = [f"clip_{i}" for i in range(6)]
    path = write_dataset(tmp_path / "d.h5", clips, labels, names, source="unit test",
                         metadata={"speed": np.linspace(0, 1, 6), "hand": list("lrlrlr"), "seed": np.arange(6)},
                         attrs={"generator": "test", "n": 6})
    return path, clips, labels, names


@settings(deadline=None, max_examples=10)
@given(n=st.integers(0, 4), c=st.integers(1, 4), f=st.integers(1, 3), h=st.integers(1, 4), w=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_round_trip_preserves_clips_labels_names_and_shape(n, c, f, h, w, seed):
    clips = _clips(n, (c, f, h, w), seed)
    labels = np.random.default_rng(seed).integers(0, 2, n)
    names = [f"n{i}\u00e9" for i in range(n)]  # non-ASCII names survive as UTF-8
    with tempfile.TemporaryDirectory() as tmp:
        path = write_dataset(Path(tmp) / "rt.h5", clips, labels, names)
        with ClipDataset(path) as ds:
            assert len(ds) == n and ds.clip_shape == (c, f, h, w)
            assert ds.labels.dtype == np.int64 and np.array_equal(ds.labels, labels)
            assert ds.names == names
            assert np.array_equal(ds.read_clips(np.arange(n)), clips)


def test_layout_and_attributes_match_the_documented_format(small):
    path, clips, labels, names = small
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == FORMAT and f.attrs["version"] == 1 and f.attrs["source"] == "unit test"
        assert f["clips"].dtype == np.uint8 and f["clips"].shape == clips.shape
        assert f["clips"].chunks == (1,) + clips.shape[1:] and f["clips"].maxshape[0] is None
        assert f["labels"].dtype == np.int64 and f["names"].asstr()[0] == "clip_0"
    with ClipDataset(path) as ds:
        assert ds.channel_order == CHANNEL_ORDER == ("R", "G", "B", "depth")
        assert ds.class_names == ["forehand", "backhand"]
        assert ds.attrs["generator"] == "test" and ds.attrs["n"] == 6 and ds.attrs["source"] == "unit test"
        assert np.array_equal(ds.metadata["speed"], np.linspace(0, 1, 6))
        assert list(ds.metadata["hand"]) == list("lrlrlr")
        assert ds.metadata["seed"].dtype == np.int64 and np.array_equal(ds.metadata["seed"], np.arange(6))


def test_batch_returns_requested_order_with_repeats(small):
    path, clips, labels, _ = small
    idx = [4, 0, 4, 2]
    with ClipDataset(path) as ds:
        x, y = ds.batch(idx)
    assert np.array_equal(y, labels[idx]) and y.dtype == np.int64
    assert np.array_equal(x, clips[idx].astype(np.float32) / np.float32(255))


def test_batch_scales_uint8_to_unit_interval_as_value_over_255(tmp_path):
    clips = np.zeros((1, 1, 1, 1, 256), np.uint8)
    clips[0, 0, 0, 0] = np.arange(256)
    with ClipDataset(write_dataset(tmp_path / "s.h5", clips, [0], ["ramp"])) as ds:
        x, _ = ds.batch([0])
    assert x.dtype == np.float32 and x.shape == (1, 1, 1, 1, 256)
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.array_equal(x[0, 0, 0, 0], np.arange(256, dtype=np.float32) / np.float32(255))


def test_reader_is_lazy_clips_are_read_from_the_open_file(small):
    path, clips, _, _ = small
    ds = ClipDataset(path)
    assert np.array_equal(ds.read_clips([5]), clips[[5]])
    ds.close()
    with pytest.raises(ValueError, match="closed"):
        ds.batch([0])


def test_batch_rejects_out_of_range_indices(small):
    with ClipDataset(small[0]) as ds:
        with pytest.raises(ValueError, match="out of range"):
            ds.batch([0, 6])


def test_writer_grows_past_one_allocation_step(tmp_path):
    clips = _clips(70, (1, 1, 2, 2))
    path = write_dataset(tmp_path / "g.h5", clips, np.zeros(70, int), [str(i) for i in range(70)])
    with ClipDataset(path) as ds:
        assert len(ds) == 70 and np.array_equal(ds.read_clips(np.arange(70)[::-1]), clips[::-1])


def _no_temp_files(directory):
    return [p.name for p in Path(directory).iterdir() if p.name.endswith(".tmp")] == []


def test_exception_inside_writer_leaves_no_file(tmp_path):
    target = tmp_path / "atomic.h5"
    with pytest.raises(RuntimeError):
        with DatasetWriter(target, (1, 1, 2, 2)) as w:
            w.append(np.zeros((1, 1, 2, 2), np.uint8), 0, "a")
            raise RuntimeError("boom")
    assert not target.exists() and _no_temp_files(tmp_path)


def test_exception_inside_writer_leaves_existing_target_untouched(small):
    path, clips, _, _ = small
    before = Path(path).read_bytes()
    with pytest.raises(ValueError, match="shape"):
        with DatasetWriter(path, (4, 3, 5, 6)) as w:
            w.append(clips[0], 0, "ok")
            w.append(clips[0][:, :1], 0, "wrong shape")
    assert Path(path).read_bytes() == before and _no_temp_files(Path(path).parent)


@pytest.mark.parametrize("clip, label, name, meta, match", [
    (np.zeros((1, 1, 2, 2), np.float32), 0, "b", {}, "uint8"),
    (np.zeros((1, 1, 2, 2), np.uint8), 2, "b", {}, "label"),
    (np.zeros((1, 1, 2, 2), np.uint8), 0, "a", {}, "twice"),
    (np.zeros((1, 1, 2, 2), np.uint8), 0, "b", {"other": 1}, "metadata keys"),
])
def test_writer_rejects_bad_clips(tmp_path, clip, label, name, meta, match):
    with pytest.raises(ValueError, match=match):
        with DatasetWriter(tmp_path / "w.h5", (1, 1, 2, 2)) as w:
            w.append(np.zeros((1, 1, 2, 2), np.uint8), 0, "a")
            w.append(clip, label, name, **meta)
    assert not (tmp_path / "w.h5").exists()


def test_missing_file_error_names_it(tmp_path):
    with pytest.raises(ValueError, match="nope.h5.*does not exist"):
        ClipDataset(tmp_path / "nope.h5")


def test_truncated_file_error_names_it(small):
    path = Path(small[0])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=str(path.name)):
        with ClipDataset(path) as ds:
            ds.batch(np.arange(len(ds)))


@pytest.mark.parametrize("kind", ["text", "weights"])
def test_foreign_file_error_names_it(tmp_path, kind):
    path = tmp_path / "foreign.h5"
    if kind == "text":
        path.write_text("not hdf5 at all\n")
    else:
        save_weights(path, {"w": np.zeros(3)})
    with pytest.raises(ValueError, match="foreign.h5"):
        ClipDataset(path)


@pytest.mark.parametrize("edit, match", [
    (lambda f: (f.__delitem__("labels"), f.create_dataset("labels", data=np.zeros(5, np.int64))), "inconsistent"),
    (lambda f: f.__delitem__("names"), "damaged"),
    (lambda f: f["labels"].__setitem__(0, 7), "labels outside"),
    (lambda f: f.attrs.__setitem__("version", 99), "version"),
])
def test_inconsistent_file_error_names_it(small, edit, match):
    path = small[0]
    with h5py.File(path, "r+") as f:
        edit(f)
    with pytest.raises(ValueError, match=f"{Path(path).name}.*{match}"):
        ClipDataset(path)
    assert os.path.exists(path)
