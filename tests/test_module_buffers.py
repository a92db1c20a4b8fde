"""Module buffers: registration, PyTorch's state_dict order (own parameters, own buffers, children), loading, casts."""
from collections import OrderedDict

import numpy as np
import pytest

from tuckerref.io import load_weights, save_weights
from tuckerref.nn import Module, Parameter, Sequential


class Stats(Module):
    """A module with one parameter, a floating buffer, an integer buffer and an empty (None) buffer."""

    def __init__(self, n=3):
        super().__init__()
        self.weight = Parameter(np.ones(n, np.float32))
        self.register_buffer("running", np.zeros(n, np.float32))
        self.register_buffer("count", np.array(0, np.int64))
        self.register_buffer("absent", None)


def test_state_dict_lists_own_parameters_then_own_buffers_then_children_as_pytorch():
    outer = Stats()
    outer.child = Sequential(Stats(), Stats())
    assert list(outer.state_dict()) == [
        "weight", "running", "count",
        "child.0.weight", "child.0.running", "child.0.count",
        "child.1.weight", "child.1.running", "child.1.count"]
    assert [name for name, _ in outer.named_buffers()] == [
        "running", "count", "child.0.running", "child.0.count", "child.1.running", "child.1.count"]
    assert [name for name, _ in outer.named_parameters()] == ["weight", "child.0.weight", "child.1.weight"]


def test_buffers_are_attributes_and_reassignment_updates_the_registry():
    m = Stats()
    m.running = np.full(3, 2.0, np.float32)
    assert m.state_dict()["running"].tolist() == [2.0, 2.0, 2.0]
    m.running[0] = 5.0  # in place, through the attribute
    assert m.state_dict()["running"][0] == 5.0
    m.absent = np.ones(1)
    assert "absent" in m.state_dict()


def test_load_state_dict_loads_buffers_keeping_their_dtype_and_checks_shapes():
    m = Stats()
    state = OrderedDict(weight=np.full(3, 2.0), running=np.arange(3.0), count=np.array(7.0))
    m.load_state_dict(state)
    assert m.weight.data.dtype == np.float32 and m.running.dtype == np.float32
    assert m.count.dtype == np.int64 and m.count.shape == () and int(m.count) == 7
    assert m.running.tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match=r"'running' has shape \(4,\), buffer expects \(3,\)"):
        m.load_state_dict(dict(state, running=np.zeros(4)))
    with pytest.raises(ValueError, match=r"missing \['count'\]"):
        m.load_state_dict({"weight": np.ones(3), "running": np.ones(3)})


def test_astype_casts_floating_buffers_but_not_integer_ones():
    m = Stats().astype(np.float64)
    assert m.weight.data.dtype == np.float64 and m.running.dtype == np.float64 and m.count.dtype == np.int64


def test_buffers_are_not_parameters():
    m = Stats()
    assert len(m.parameters()) == 1 and m.num_parameters() == 3


def test_register_buffer_rejects_bad_names():
    m = Stats()
    with pytest.raises(ValueError, match="already has a parameter or child named 'weight'"):
        m.register_buffer("weight", np.zeros(1))
    with pytest.raises(ValueError, match="without '.'"):
        m.register_buffer("a.b", np.zeros(1))


def test_weights_file_round_trip_keeps_scalar_integer_buffers(tmp_path):
    m = Stats()
    m.count = np.array(12, np.int64)
    m.running[:] = [1.0, 2.0, 3.0]
    save_weights(tmp_path / "w.h5", m.state_dict())
    state, _ = load_weights(tmp_path / "w.h5")
    fresh = Stats().load_state_dict(state)
    assert int(fresh.count) == 12 and fresh.count.shape == () and fresh.running.tolist() == [1.0, 2.0, 3.0]
