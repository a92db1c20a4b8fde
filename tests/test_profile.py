"""Per-layer profiling: every layer and sub-layer is timed on the input it sees; bad arguments fail clearly."""
from collections import OrderedDict

import numba
import numpy as np
import pytest

from tuckerref.commands.scaling import tucker1_linear_stand_in, tucker2_stand_in
from tuckerref.models import feature_volume, thetis_net
from tuckerref.nn import Flatten, Sequential
from tuckerref.profile import capture_inputs, profile_network

SHAPE = (2, 8, 32, 32)  # smallest clip the paper network accepts: pool2 gives a 16 x 1 x 1 x 1 volume


@pytest.fixture(scope="module")
def nets():
    net = thetis_net(SHAPE, seed=0)
    volume = feature_volume(net, SHAPE, "l1")
    layers = OrderedDict()
    for name, m in net.named_children():
        if name == "flatten":
            continue
        if name == "c1":
            m = tucker2_stand_in(2, 6, (5, 11, 11), 2, 2, padding=(2, 5, 5), rng=0)
        elif name == "l1":
            layers["l1"] = tucker2_stand_in(16, 128, volume[1:], 4, 7, rng=1)
            m, name = Flatten(), "flatten"
        elif name == "l2":
            m = tucker1_linear_stand_in(128, 84, 1, rng=2)
        layers[name] = m
    comp = Sequential(layers)
    comp.input_shape = SHAPE
    x = np.random.default_rng(0).random((1,) + SHAPE, dtype=np.float32)
    return net, comp, x


def test_profile_contains_every_layer_and_sublayer(nets):
    _, comp, x = nets
    comp.train()
    prof = profile_network(comp, x, repeats=2, warmup=0, threads=1)
    expected = [name for name, _ in comp.named_modules() if name]
    assert prof.names() == expected
    assert [t.name for t in prof["c1"].children] == ["c1.0", "c1.1", "c1.2"]
    for rec in [prof.total] + [prof[n] for n in expected]:
        assert len(rec.wall.samples) == len(rec.cpu.samples) == 2
        assert rec.wall.median >= 0 and rec.cpu.std >= 0
    assert comp.training, "the network's training mode is restored"
    assert prof.threads == 1 and prof.as_dict()["layers"][0]["name"] == "c1"


def test_captured_inputs_are_what_each_layer_sees(nets):
    net, comp, x = nets
    net.eval()
    inputs = capture_inputs(comp, x)
    assert inputs["c1.1"].shape == (1, 2) + SHAPE[1:]
    # the in-place ReLU after c1 must not have altered the captured input of relu1 (the raw conv output)
    assert (inputs["relu1"] < 0).any()
    np.testing.assert_array_equal(inputs["pool1"], np.maximum(inputs["relu1"], 0))
    np.testing.assert_array_equal(inputs["l2.1"], comp.l2[0](inputs["l2"]))


@pytest.mark.parametrize("kwargs, message", [
    ({"repeats": 0}, "repeats must be an integer >= 1"),
    ({"warmup": -1}, "warmup must be an integer >= 0"),
    ({"threads": 0}, "threads must be an integer in 1.."),
    ({"threads": numba.config.NUMBA_NUM_THREADS + 1}, "threads must be an integer in 1.."),
])
def test_bad_arguments_give_clear_errors(nets, kwargs, message):
    net, _, x = nets
    with pytest.raises(ValueError, match=message):
        profile_network(net, x, **kwargs)


def test_wrong_input_gives_clear_error(nets):
    net, _, x = nets
    with pytest.raises(ValueError, match="does not match the network's input shape"):
        profile_network(net, x[:, :, :6])
    with pytest.raises(ValueError, match="must be a batch"):
        profile_network(net, x[0, 0, 0, 0])
    with pytest.raises(ValueError, match="float numpy array"):
        profile_network(net, x.astype(np.int32))
    with pytest.raises(ValueError, match="expects a Sequential"):
        profile_network(net.c1, x)
