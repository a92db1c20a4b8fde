"""HDF5 weight files: round trips, atomic replacement, and clear errors for damaged or foreign files."""
import json
import re
from collections import OrderedDict

import h5py
import numpy as np
import pytest

from tuckerref.io import load_model, load_weights, save_model, save_weights
from tuckerref.models import thetis_net

SMALL = (4, 8, 32, 32)


def example_state(rng):
    return OrderedDict([("c1.0.weight", rng.standard_normal((2, 1, 3, 3, 3)).astype(np.float32)),
                        ("c1.0.bias", rng.standard_normal(2)),
                        ("l_out.weight", rng.standard_normal((2, 5)).astype(np.float32))])


def test_save_load_weights_round_trip_keeps_names_order_dtypes_values_and_meta(tmp_path, rng):
    state = example_state(rng)
    meta = {"epochs": 3, "note": "round trip", "shape": [4, 8]}
    path = save_weights(tmp_path / "sub" / "w.h5", state, meta=meta)
    loaded, loaded_meta = load_weights(path)
    assert list(loaded) == list(state)
    for name, value in state.items():
        assert loaded[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded[name], value)
    assert loaded_meta == meta
    with h5py.File(path, "r") as f:  # one dataset per parameter under its PyTorch name
        assert sorted(f.keys()) == sorted(state)


def test_save_load_model_rebuilds_network_with_identical_output(tmp_path, rng):
    net = thetis_net(SMALL, seed=5)
    save_model(tmp_path / "net.h5", net, meta={"trained": False})
    rebuilt, meta = load_model(tmp_path / "net.h5")
    assert meta == {"trained": False, "input_shape": list(SMALL)}
    assert rebuilt.input_shape == SMALL and not rebuilt.training
    x = rng.standard_normal((1,) + SMALL).astype(np.float32)
    np.testing.assert_array_equal(rebuilt.forward(x.copy()), net.eval().forward(x.copy()))
    assert next(iter(rebuilt)).needs_input_grad is False


def test_failed_write_leaves_the_previous_file_intact_and_no_temporary_files(tmp_path, rng):
    path = tmp_path / "w.h5"
    state = example_state(rng)
    save_weights(path, state, meta={"version": "old"})
    before = path.read_bytes()
    # h5py writes the first dataset, then fails on an object array with no HDF5 equivalent.
    broken = OrderedDict([("a", np.ones(3)), ("b", np.array([object()], dtype=object))])
    with pytest.raises(TypeError):
        save_weights(path, broken, meta={"version": "new"})
    assert path.read_bytes() == before
    assert load_weights(path)[1] == {"version": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["w.h5"]


def test_truncated_file_raises_value_error_naming_it(tmp_path, rng):
    path = save_weights(tmp_path / "w.h5", example_state(rng))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_weights(path)


def test_foreign_hdf5_file_raises_value_error_naming_it_and_the_format(tmp_path):
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f["c1.weight"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match=re.escape(f"weights file {path} is not a tuckerref weights file")):
        load_weights(path)


@pytest.mark.parametrize("content, message", [
    (b"not hdf5 at all\n", "is not a readable HDF5 file"),
    (None, "does not exist"),
])
def test_non_hdf5_or_missing_file_raises_value_error_naming_it(tmp_path, content, message):
    path = tmp_path / "w.h5"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(f"{path} {message}")):
        load_weights(path)


def test_file_listing_a_missing_dataset_is_reported_as_damaged(tmp_path, rng):
    path = save_weights(tmp_path / "w.h5", example_state(rng))
    with h5py.File(path, "a") as f:
        f.attrs["names"] = json.dumps(["c1.0.weight", "gone.bias"])
    with pytest.raises(ValueError, match=re.escape(f"weights file {path} is damaged")):
        load_weights(path)


def test_load_model_needs_an_architecture_spec(tmp_path, rng):
    path = save_weights(tmp_path / "w.h5", example_state(rng))
    with pytest.raises(ValueError, match=re.escape(f"weights file {path} has no architecture spec")):
        load_model(path)
