"""nn layers and the paper's network: gradients, PyTorch initialisation and names, modes, bad input."""
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import assert_gradient_along_random_directions
from tuckerref.models import thetis_net
from tuckerref.nn import (Conv3d, Dropout, Dropout3d, Flatten, Linear, MaxPool3d, ReLU, Sequential,
                          feature_volume, from_spec)


def reseed_dropouts(module, seed=123):
    """Give every dropout layer a fresh Generator with a fixed seed: the same masks on every forward."""
    def reseed():
        for _, m in module.named_modules():
            if isinstance(m, Dropout):
                m.rng = np.random.default_rng(seed)
    return reseed


def check_module_gradients(module, x, rng, before_forward=lambda: None, directions=2):
    """backward() of L = <G, module(x)> against central differences w.r.t. the input and each parameter.

    Inputs are copied before every forward because in-place ReLUs overwrite what they receive.
    """
    before_forward()
    y = module.forward(x.copy())
    g = rng.standard_normal(y.shape)
    module.zero_grad()
    gx = module.backward(g)

    def loss(v):
        before_forward()
        return float(np.vdot(g, module.forward(v.copy())))

    if gx is not None:
        assert_gradient_along_random_directions(loss, x, gx, rng, directions=directions, name="input")
    for name, p in module.named_parameters():
        grad, original = p.grad.copy(), p.data.copy()

        def loss_p(v, p=p):
            p.data = v
            before_forward()
            return float(np.vdot(g, module.forward(x.copy())))

        assert_gradient_along_random_directions(loss_p, original, grad, rng, directions=directions, name=name)
        p.data = original
    return gx


def away_from_zero(rng, shape):
    return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.1, 2.0, shape)


# ----------------------------------------------------------------------------------------------
# Gradients of every layer, a Sequential and the whole network (float64)
# ----------------------------------------------------------------------------------------------

def test_conv3d_layer_gradients_wrt_input_weight_and_bias(rng):
    layer = Conv3d(2, 3, (2, 3, 3), stride=(2, 1, 1), padding=(1, 1, 0), rng=rng, dtype=np.float64)
    check_module_gradients(layer, rng.standard_normal((2, 2, 5, 4, 6)), rng)


def test_linear_layer_gradients_wrt_input_weight_and_bias(rng):
    layer = Linear(7, 4, rng=rng, dtype=np.float64)
    check_module_gradients(layer, rng.standard_normal((3, 7)), rng)


def test_maxpool3d_layer_gradient(rng):
    x = rng.permutation(2 * 3 * 4 * 5 * 6).reshape(2, 3, 4, 5, 6).astype(np.float64)
    check_module_gradients(MaxPool3d((2, 3, 2), stride=(1, 2, 2), padding=(1, 1, 0)), x, rng)


@pytest.mark.parametrize("inplace", [False, True])
def test_relu_layer_gradient(inplace, rng):
    check_module_gradients(ReLU(inplace=inplace), away_from_zero(rng, (3, 4, 5)), rng)


@pytest.mark.parametrize("layer_type", [Dropout, Dropout3d])
def test_dropout_layers_in_train_mode_gradient_with_fixed_rng(layer_type, rng):
    layer = layer_type(0.4)
    gx = check_module_gradients(layer, rng.standard_normal((3, 4, 2, 3, 2)), rng, reseed_dropouts(layer))
    assert np.any(gx == 0) and np.any(gx != 0)


def test_flatten_layer_gradient_and_c_order(rng):
    x = rng.standard_normal((2, 3, 2, 2, 4))
    layer = Flatten()
    np.testing.assert_array_equal(layer.forward(x), x.reshape(2, -1))
    check_module_gradients(layer, x, rng)


def test_sequential_gradient_in_train_mode_with_fixed_dropout_rng(rng):
    net = Sequential(Conv3d(2, 3, (2, 3, 3), padding=1, rng=rng, dtype=np.float64), ReLU(), MaxPool3d(2),
                     Dropout3d(0.3), Flatten(), Linear(54, 4, rng=rng, dtype=np.float64), ReLU(inplace=True),
                     Dropout(0.3), Linear(4, 2, rng=rng, dtype=np.float64))
    x = rng.standard_normal((2, 2, 4, 6, 6))
    assert net.output_shape(x.shape[1:]) == (2,)
    check_module_gradients(net, x, rng, reseed_dropouts(net))


def test_whole_thetis_net_gradient_float64_eval_mode(rng):
    """Every parameter of Figure 1's network (and the input) on a small clip, dropout off."""
    net = thetis_net((4, 8, 32, 32), seed=int(rng.integers(2**31))).astype(np.float64).eval()
    net.needs_input_grad = True  # also check dL/dx through c1
    x = rng.standard_normal((1, 4, 8, 32, 32))
    gx = check_module_gradients(net, x, rng, directions=1)
    assert gx.shape == x.shape
    for name, p in net.named_parameters():
        assert np.any(p.grad != 0), f"{name} received no gradient"


def test_backward_accumulates_parameter_gradients_until_zero_grad(rng):
    layer = Linear(3, 2, rng=rng, dtype=np.float64)
    x, g = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    layer.forward(x)
    layer.backward(g)
    first = layer.weight.grad.copy()
    layer.backward(g)
    np.testing.assert_allclose(layer.weight.grad, 2 * first)
    layer.zero_grad()
    assert layer.weight.grad is None and layer.bias.grad is None


def test_first_layer_of_thetis_net_skips_its_input_gradient():
    net = thetis_net((4, 8, 32, 32), seed=0)
    assert net.c1.needs_input_grad is False
    y = net.forward(np.ones((1, 4, 8, 32, 32), np.float32))
    assert net.backward(np.ones_like(y)) is None
    assert net.c1.weight.grad.shape == (6, 4, 5, 11, 11)


# ----------------------------------------------------------------------------------------------
# Initialisation, names, state
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, fan_in", [
    (lambda: Conv3d(3, 40, (2, 3, 4), rng=0), 3 * 2 * 3 * 4),
    (lambda: Linear(200, 50, rng=0), 200),
])
def test_pytorch_default_init_is_uniform_within_one_over_sqrt_fan_in(make, fan_in):
    layer = make()
    bound = 1 / np.sqrt(fan_in)
    w, b = layer.weight.data, layer.bias.data
    assert w.dtype == np.float32 and b.dtype == np.float32
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(w).max() > 0.95 * bound  # uniform over the whole interval, not a narrower law
    assert w.std() == pytest.approx(bound / np.sqrt(3), rel=0.1)
    assert abs(w.mean()) < 0.1 * bound


def test_same_seed_gives_same_network_and_dtype_is_respected():
    a, b = thetis_net((4, 8, 32, 32), seed=3), thetis_net((4, 8, 32, 32), seed=3)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        np.testing.assert_array_equal(pa.data, pb.data)
    c = thetis_net((4, 8, 32, 32), seed=4)
    assert not np.array_equal(a.c1.weight.data, c.c1.weight.data)
    assert thetis_net((4, 8, 32, 32), seed=3, dtype=np.float64).l1.weight.data.dtype == np.float64


def test_state_dict_uses_pytorch_names():
    net = thetis_net(seed=0)
    assert list(net.state_dict()) == [f"{layer}.{kind}" for layer in ("c1", "c2", "l1", "l2", "l_out")
                                      for kind in ("weight", "bias")]
    nested = Sequential(OrderedDict(c1=Sequential(Conv3d(2, 3, 3, rng=0), ReLU()), l_out=Linear(3, 2, rng=0)))
    assert list(nested.state_dict()) == ["c1.0.weight", "c1.0.bias", "l_out.weight", "l_out.bias"]
    assert nested.c1[0] is nested["c1"][0] and nested.names() == ["c1", "l_out"]


def test_load_state_dict_round_trip_gives_identical_outputs(rng):
    a = thetis_net((4, 8, 32, 32), seed=1).eval()
    b = thetis_net((4, 8, 32, 32), seed=2).eval()
    x = rng.standard_normal((2, 4, 8, 32, 32)).astype(np.float32)
    assert not np.array_equal(a.forward(x.copy()), b.forward(x.copy()))
    state = a.state_dict()
    b.load_state_dict(state)
    np.testing.assert_array_equal(a.forward(x.copy()), b.forward(x.copy()))
    state["c1.weight"][...] = 0  # state_dict() returns copies
    assert np.any(a.c1.weight.data != 0)


def test_load_state_dict_rejects_shape_mismatch_and_missing_or_unexpected_names():
    net = thetis_net((4, 8, 32, 32), seed=0)
    state = net.state_dict()
    bad = dict(state, **{"c1.weight": np.zeros((6, 4, 5, 11, 1), np.float32)})
    with pytest.raises(ValueError, match=r"state_dict entry 'c1.weight' has shape \(6, 4, 5, 11, 1\), "
                                         r"parameter expects \(6, 4, 5, 11, 11\)"):
        net.load_state_dict(bad)
    missing = {k: v for k, v in state.items() if k != "l2.bias"}
    with pytest.raises(ValueError, match=r"missing \['l2.bias'\], unexpected \[\]"):
        net.load_state_dict(missing)
    with pytest.raises(ValueError, match=r"unexpected \['extra.weight'\]"):
        net.load_state_dict(dict(state, **{"extra.weight": np.zeros(1)}))


def test_spec_rebuilds_the_same_architecture():
    net = thetis_net((4, 8, 32, 32), seed=0)
    rebuilt = from_spec(net.spec())
    assert rebuilt.spec() == net.spec()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# Modes and dropout semantics
# ----------------------------------------------------------------------------------------------

def test_train_and_eval_modes_switch_dropout_on_and_off(rng):
    net = thetis_net((4, 8, 32, 32), seed=0)
    assert all(m.training for _, m in net.named_modules())
    x = rng.standard_normal((2, 4, 8, 32, 32)).astype(np.float32)
    net.eval()
    assert not any(m.training for _, m in net.named_modules())
    y_eval = net.forward(x.copy())
    np.testing.assert_array_equal(net.forward(x.copy()), y_eval)
    without_dropout = x.copy()
    for m in net:
        if not isinstance(m, Dropout):
            without_dropout = m.forward(without_dropout)
    np.testing.assert_array_equal(y_eval, without_dropout)
    net.train()
    assert all(m.training for _, m in net.named_modules())
    assert not np.array_equal(net.forward(x.copy()), y_eval)


def test_dropout3d_zeroes_whole_channels_and_scales_kept_ones_by_inverse_keep_probability():
    p = 0.25
    layer = Dropout3d(p, rng=0)
    y = layer.forward(np.ones((8, 16, 2, 3, 4), np.float32))
    per_map = y.reshape(8 * 16, -1)
    assert np.all(per_map == per_map[:, :1])  # each (sample, channel) map is constant
    assert set(np.unique(per_map)) == {0.0, np.float32(1 / (1 - p))}
    g = layer.backward(np.ones_like(y))
    np.testing.assert_array_equal(g, y)
    layer.eval()
    x = np.arange(24.0).reshape(1, 2, 1, 3, 4)
    assert layer.forward(x) is x and layer.backward(x) is x


def test_dropout_zeroes_single_elements():
    y = Dropout(0.5, rng=0).forward(np.ones((4, 3, 2, 5, 5)))
    assert set(np.unique(y)) == {0.0, 2.0}
    per_map = y.reshape(12, -1)
    assert np.any(per_map.min(axis=1) != per_map.max(axis=1))


# ----------------------------------------------------------------------------------------------
# The paper's network (Figure 1; docs/method.md section 1) and bad input
# ----------------------------------------------------------------------------------------------

def test_thetis_net_has_figure1_shapes_and_parameter_count():
    net = thetis_net(seed=0)
    shapes = dict(net.shapes((4, 28, 120, 160)))
    assert shapes["c1"] == (6, 28, 120, 160)
    assert shapes["pool1"] == (6, 14, 30, 40)
    assert shapes["c2"] == (16, 12, 26, 36)
    assert shapes["pool2"] == (16, 6, 6, 9)
    assert shapes["flatten"] == (5184,)
    assert (shapes["l1"], shapes["l2"], shapes["l_out"]) == ((128,), (84,), (2,))
    assert net.l1.weight.shape == (128, 5184)
    assert net.num_parameters() == 696_428
    assert feature_volume(net, (4, 28, 120, 160), "l1") == (16, 6, 6, 9)
    # ReLU after pooling: the two commute exactly (see thetis_net's docstring)
    assert net.names() == ["c1", "pool1", "relu1", "drop1", "c2", "pool2", "relu2", "drop2", "flatten",
                           "l1", "relu3", "drop3", "l2", "relu4", "drop4", "l_out"]


def test_thetis_net_rejects_a_clip_too_small_for_it():
    with pytest.raises(ValueError, match=r"input_shape \(4, 8, 24, 32\) is too small for the network"):
        thetis_net((4, 8, 24, 32))


@pytest.mark.parametrize("layer, x, message", [
    (Conv3d(4, 2, 3, rng=0), np.zeros((1, 3, 4, 4, 4)), r"Conv3d\(.*\) expects 4 input channels, got shape \(1, 3, 4, 4, 4\)"),
    (Conv3d(4, 2, 3, rng=0), np.zeros((4, 4, 4, 4)), r"Conv3d\(.*\) expects a 5-D batch, got shape \(4, 4, 4, 4\)"),
    (Conv3d(1, 2, 3, rng=0), np.zeros((1, 1, 2, 4, 4)), r"empty output: input spatial shape \(2, 4, 4\)"),
    (Linear(5, 2, rng=0), np.zeros((3, 4)), r"Linear\(.*\) expects 5 input features, got shape \(3, 4\)"),
    (Linear(5, 2, rng=0), np.zeros(5), r"Linear\(.*\) expects a 2-D batch, got shape \(5,\)"),
    (Dropout3d(0.2), np.zeros((3, 4)), r"Dropout3d\(p=0.2\) expects a 5-D batch, got shape \(3, 4\)"),
    (MaxPool3d(2), np.zeros((2, 4, 4)), r"MaxPool3d\(.*\) expects a 5-D batch, got shape \(2, 4, 4\)"),
])
def test_layers_reject_bad_input_naming_layer_and_shape(layer, x, message):
    with pytest.raises(ValueError, match=message):
        layer.forward(x)


@pytest.mark.parametrize("make, message", [
    (lambda: Conv3d(0, 2, 3), r"Conv3d channels must be >= 1, got 0 -> 2"),
    (lambda: Conv3d(1, 2, (3, 3)), r"kernel_size must be an int or a 3-tuple, got \(3, 3\)"),
    (lambda: Conv3d(1, 2, 3, stride=0), r"stride must be >= 1 in every dimension, got 0"),
    (lambda: Linear(3, 0), r"Linear features must be >= 1, got 3 -> 0"),
    (lambda: Dropout(1.0), r"dropout probability must be in \[0, 1\), got 1.0"),
])
def test_layer_constructors_reject_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@settings(deadline=None, max_examples=15)
@given(seed=st.integers(0, 2**31 - 1), shift=st.floats(-1.0, 1.0))
def test_relu_commutes_with_max_pooling_in_values_and_gradients(seed, shift):
    """relu(maxpool(x)) == maxpool(relu(x)), and both orders route the same gradient to x."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 4, 8, 8)) + shift
    x[0, 0, :2, :4, :4] = -1.0  # a whole window <= 0, ties included
    g = rng.standard_normal((2, 3, 2, 2, 2))
    relu_first = Sequential(ReLU(), MaxPool3d((2, 4, 4)))
    pool_first = Sequential(MaxPool3d((2, 4, 4)), ReLU())
    np.testing.assert_array_equal(relu_first(x), pool_first(x))
    np.testing.assert_array_equal(relu_first.backward(g), pool_first.backward(g))
