"""BatchNorm3d, AvgPool3d, AdaptiveAvgPool3d and Identity: float64 loop references, finite differences,
PyTorch's running-statistics rules, weight files, compiled inference, bad arguments.

The references below restate each definition with explicit loops (nothing from tuckerref):

* batch normalisation, per channel c over the M values of (N, D, H, W):
  y = (x - mean_c) / sqrt(var_c + eps) gamma_c + beta_c, var biased; running_var updated with the
  unbiased variance var M / (M - 1);
* average pooling: the mean of each window of the zero-padded input, divided by the window's size
  (``count_include_pad``), by its count of real inputs (without), or by ``divisor_override``;
* adaptive average pooling: output o averages [floor(o I / O), ceil((o + 1) I / O)) per dimension.
"""
from collections import OrderedDict
from itertools import product
from math import ceil, floor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import assert_gradient_along_random_directions, numerical_gradient, pad_input
from tuckerref.kernels import (adaptive_avg_pool3d, adaptive_avg_pool3d_backward, avg_pool3d, avg_pool3d_backward,
                               batch_norm, batch_norm_backward, batch_norm_statistics)
from tuckerref.io import load_model, save_model
from tuckerref.nn import (AdaptiveAvgPool3d, AvgPool3d, BatchNorm3d, Conv3d, Flatten, Identity, Linear, ReLU,
                          Sequential, compile_inference, from_spec, no_grad)


# ----------------------------------------------------------------------------------------------
# Loop references (float64)
# ----------------------------------------------------------------------------------------------

def batch_norm_ref(x, gamma, beta, eps, mean=None, var=None):
    """y, batch mean, biased batch variance; the given mean/var normalise when not None."""
    x = np.asarray(x, np.float64)
    y = np.empty_like(x)
    means, variances = np.empty(x.shape[1]), np.empty(x.shape[1])
    for c in range(x.shape[1]):
        values = x[:, c].ravel()
        m = sum(values) / values.size
        v = sum((values - m) ** 2) / values.size
        means[c], variances[c] = m, v
        use_m, use_v = (m, v) if mean is None else (mean[c], var[c])
        y[:, c] = (x[:, c] - use_m) / np.sqrt(use_v + eps) * gamma[c] + beta[c]
    return y, means, variances


def avg_pool_ref(x, kernel, stride, padding, count_include_pad, divisor_override):
    x = np.asarray(x, np.float64)
    stride = kernel if stride is None else stride
    xp, real = pad_input(x, padding), pad_input(np.ones_like(x), padding)
    out_dims = [(x.shape[2 + d] + 2 * padding[d] - kernel[d]) // stride[d] + 1 for d in range(3)]
    y = np.empty(x.shape[:2] + tuple(out_dims))
    for n, c, a, b, e in product(range(x.shape[0]), range(x.shape[1]), *(range(o) for o in out_dims)):
        box = (n, c, slice(a * stride[0], a * stride[0] + kernel[0]), slice(b * stride[1], b * stride[1] + kernel[1]),
               slice(e * stride[2], e * stride[2] + kernel[2]))
        if divisor_override is not None:
            divisor = divisor_override
        elif count_include_pad:
            divisor = kernel[0] * kernel[1] * kernel[2]
        else:
            divisor = real[box].sum()
        y[n, c, a, b, e] = xp[box].sum() / divisor
    return y


def adaptive_avg_pool_ref(x, output_size):
    x = np.asarray(x, np.float64)
    spans = [[(floor(o * size / out), ceil((o + 1) * size / out)) for o in range(out)]
             for size, out in zip(x.shape[2:], output_size)]
    y = np.empty(x.shape[:2] + tuple(output_size))
    for (a, (d0, d1)), (b, (h0, h1)), (e, (w0, w1)) in product(*(list(enumerate(s)) for s in spans)):
        y[:, :, a, b, e] = x[:, :, d0:d1, h0:h1, w0:w1].mean(axis=(2, 3, 4))
    return y


# ----------------------------------------------------------------------------------------------
# Drawn cases (5-D, float64: one compiled specialisation per kernel)
# ----------------------------------------------------------------------------------------------

@st.composite
def bn_cases(draw):
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) + tuple(draw(st.integers(1, 4)) for _ in range(3))
    if shape[0] * shape[2] * shape[3] * shape[4] < 2:
        shape = (2,) + shape[1:]
    return dict(shape=shape, seed=draw(st.integers(0, 2**31 - 1)), offset=draw(st.sampled_from([0.0, 3.0, -50.0])))


def bn_arrays(case):
    r = np.random.default_rng(case["seed"])
    C = case["shape"][1]
    x = r.standard_normal(case["shape"]) * r.uniform(0.5, 2.0) + case["offset"]
    return x, r.uniform(0.5, 1.5, C), r.uniform(-1, 1, C), r


@st.composite
def avg_pool_cases(draw):
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(3))
    stride = draw(st.none() | st.tuples(*(st.integers(1, 3) for _ in range(3))))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    size = tuple(draw(st.integers(k, 5)) for k in kernel)  # PyTorch: every input size >= its kernel size
    return dict(shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3))) + size, kernel=kernel, stride=stride,
                padding=padding, count_include_pad=draw(st.booleans()),
                divisor_override=draw(st.none() | st.integers(1, 5)), seed=draw(st.integers(0, 2**31 - 1)))


def pool_args(case):
    return (case["kernel"], case["stride"], case["padding"], case["count_include_pad"], case["divisor_override"])


@st.composite
def adaptive_cases(draw):
    size = tuple(draw(st.integers(1, 6)) for _ in range(3))
    out = tuple(draw(st.integers(1, s + 1)) for s in size)  # includes outputs larger than the input
    return dict(shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3))) + size, out=out,
                seed=draw(st.integers(0, 2**31 - 1)))


# ----------------------------------------------------------------------------------------------
# Batch normalisation
# ----------------------------------------------------------------------------------------------

@given(case=bn_cases())
def test_batch_norm_normalises_each_channel_by_batch_mean_and_biased_variance(case):
    x, gamma, beta, _ = bn_arrays(case)
    y_ref, mean_ref, var_ref = batch_norm_ref(x, gamma, beta, 1e-5)
    mean, var = batch_norm_statistics(x)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var, var_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(batch_norm(x, mean, var, gamma, beta), y_ref, rtol=1e-9, atol=1e-9)


@settings(max_examples=10)
@given(case=bn_cases(), batch_statistics=st.booleans())
def test_batch_norm_closed_form_gradient_matches_finite_differences(case, batch_statistics):
    """dx = s (G - sum G / M - xhat sum G xhat / M) with batch statistics, dx = s G with fixed ones."""
    x, gamma, beta, r = bn_arrays(case)
    fixed_mean, fixed_var = r.standard_normal(x.shape[1]), r.uniform(0.5, 2.0, x.shape[1])
    g = r.standard_normal(x.shape)

    def loss(x_, gamma_=gamma, beta_=beta):
        mean, var = batch_norm_statistics(x_) if batch_statistics else (fixed_mean, fixed_var)
        return float(np.vdot(g, batch_norm(x_, mean, var, gamma_, beta_)))

    mean, var = batch_norm_statistics(x) if batch_statistics else (fixed_mean, fixed_var)
    gx, gw, gb = batch_norm_backward(x, g, mean, var, gamma, batch_statistics=batch_statistics)
    scale = 1e-6 * (1 + abs(case["offset"]))
    np.testing.assert_allclose(gx, numerical_gradient(loss, x.copy(), eps=1e-5 * (1 + abs(case["offset"]))),
                               rtol=1e-4, atol=scale * 100)
    np.testing.assert_allclose(gw, numerical_gradient(lambda v: loss(x, v), gamma.copy()), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gb, numerical_gradient(lambda v: loss(x, gamma, v), beta.copy()), rtol=1e-6,
                               atol=1e-6)


def test_batch_norm_float32_agrees_with_float64_far_from_zero_mean(rng):
    x = rng.standard_normal((2, 3, 4, 5, 6)) * 0.1 + 100.0
    g = rng.standard_normal(x.shape)
    x32 = x.astype(np.float32)
    for xs, g_ in ((x32.astype(np.float64), g), (x32, g.astype(np.float32))):
        mean, var = batch_norm_statistics(xs)
        results = (batch_norm(xs, mean, var),) + batch_norm_backward(xs, g_, mean, var)
        if xs.dtype == np.float64:
            expected = results
        else:
            assert all(r.dtype == np.float32 for r in results)
            for got, want in zip(results, expected):
                np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def _train_steps(bn, batches):
    bn.train()
    for x in batches:
        bn.forward(x)
    return bn


def test_batchnorm3d_running_statistics_follow_momentum_with_unbiased_variance(rng):
    batches = [rng.standard_normal((2, 3, 2, 3, 4)) * (i + 1) + i for i in range(3)]
    bn = _train_steps(BatchNorm3d(3, dtype=np.float64), batches)
    mean, var = np.zeros(3), np.ones(3)
    for x in batches:
        _, m, v = batch_norm_ref(x, np.ones(3), np.zeros(3), 1e-5)
        M = x.size // 3
        mean, var = 0.9 * mean + 0.1 * m, 0.9 * var + 0.1 * v * M / (M - 1)
    np.testing.assert_allclose(bn.running_mean, mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, var, rtol=1e-12)
    assert bn.num_batches_tracked.dtype == np.int64 and bn.num_batches_tracked.shape == () and bn.num_batches_tracked == 3


def test_batchnorm3d_momentum_none_keeps_the_cumulative_average(rng):
    batches = [rng.standard_normal((2, 2, 2, 2, 3)) + i for i in range(4)]
    bn = _train_steps(BatchNorm3d(2, momentum=None, dtype=np.float64), batches)
    stats = [batch_norm_ref(x, np.ones(2), np.zeros(2), 1e-5)[1:] for x in batches]
    M = batches[0].size // 2
    np.testing.assert_allclose(bn.running_mean, np.mean([m for m, _ in stats], axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, np.mean([v * M / (M - 1) for _, v in stats], axis=0), rtol=1e-12)


def test_batchnorm3d_eval_mode_normalises_with_running_statistics_and_leaves_them(rng):
    bn = BatchNorm3d(3, eps=1e-3, dtype=np.float64)
    bn.running_mean[:] = rng.standard_normal(3)
    bn.running_var[:] = rng.uniform(0.5, 2, 3)
    bn.weight.data[:] = rng.uniform(0.5, 2, 3)
    bn.bias.data[:] = rng.standard_normal(3)
    before = bn.state_dict()
    x = rng.standard_normal((1, 3, 1, 1, 2))  # 2 values per channel: eval mode takes no batch statistics
    y = bn.eval().forward(x)
    expected, _, _ = batch_norm_ref(x, bn.weight.data, bn.bias.data, 1e-3, bn.running_mean, bn.running_var)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    assert all(np.array_equal(before[k], v) for k, v in bn.state_dict().items())


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm3d_layer_gradients_wrt_input_weight_and_bias(rng, training, affine):
    bn = BatchNorm3d(3, affine=affine, dtype=np.float64)
    bn.running_mean[:], bn.running_var[:] = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    if affine:
        bn.weight.data[:], bn.bias.data[:] = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    bn.train(training)
    x = rng.standard_normal((2, 3, 2, 3, 3))
    g = rng.standard_normal(x.shape)
    bn.forward(x)
    gx = bn.backward(g)
    assert_gradient_along_random_directions(lambda v: float(np.vdot(g, bn.forward(v))), x, gx, rng, name="input")
    for name, p in bn.named_parameters():
        original = p.data.copy()

        def loss(v, p=p):
            p.data = v
            return float(np.vdot(g, bn.forward(x)))
        assert_gradient_along_random_directions(loss, original, p.grad, rng, name=name)
        p.data = original


def test_batchnorm3d_without_running_statistics_uses_batch_statistics_in_eval_mode(rng):
    bn = BatchNorm3d(2, track_running_stats=False, dtype=np.float64).eval()
    assert list(bn.state_dict()) == ["weight", "bias"]
    x = rng.standard_normal((2, 2, 2, 2, 2))
    np.testing.assert_allclose(bn.forward(x), batch_norm_ref(x, np.ones(2), np.zeros(2), 1e-5)[0], atol=1e-12)


def test_batchnorm3d_has_pytorch_names_defaults_and_rebuilds_from_its_spec():
    bn = BatchNorm3d(4)
    state = bn.state_dict()
    assert list(state) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert state["weight"].tolist() == [1.0] * 4 and state["bias"].tolist() == [0.0] * 4
    assert state["running_mean"].tolist() == [0.0] * 4 and state["running_var"].tolist() == [1.0] * 4
    assert state["num_batches_tracked"].dtype == np.int64 and state["num_batches_tracked"].shape == ()
    assert bn.eps == 1e-5 and bn.momentum == 0.1 and bn.weight.data.dtype == np.float32
    assert from_spec(bn.spec()).config() == bn.config()


# ----------------------------------------------------------------------------------------------
# Average pooling and adaptive average pooling
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, padding", [((1, 2, 2), 1), ((2, 4, 4), (1, 0, 0)), ((3, 1, 3), 0)])
def test_avg_pool_refuses_an_input_smaller_than_its_kernel_even_with_padding_as_pytorch_does(size, padding):
    """PyTorch's avg_pool3d raises "input image smaller than kernel size" whenever an input size is under
    its kernel size, padding aside (max pooling accepts it): the kernel and the layer's shape check
    refuse it too, naming both shapes."""
    x = np.zeros((1, 1) + size)
    with pytest.raises(ValueError, match=r"smaller than the average pooling's kernel_size \(3, 2, 2\)"):
        avg_pool3d(x, (3, 2, 2), padding=padding)
    with pytest.raises(ValueError, match=r"AvgPool3d.*spatial input shape \(%d, %d, %d\) is smaller" % size):
        AvgPool3d((3, 2, 2), padding=padding).output_shape((1,) + size)


@settings(max_examples=30)
@given(case=avg_pool_cases())
def test_avg_pool_is_the_window_mean_with_pytorchs_divisors(case):
    x = np.random.default_rng(case["seed"]).standard_normal(case["shape"])
    np.testing.assert_allclose(avg_pool3d(x, *pool_args(case)), avg_pool_ref(x, *pool_args(case)),
                               rtol=1e-12, atol=1e-12)


@settings(max_examples=15)
@given(case=avg_pool_cases())
def test_avg_pool_backward_matches_finite_differences(case):
    r = np.random.default_rng(case["seed"])
    x = r.standard_normal(case["shape"])
    g = r.standard_normal(avg_pool3d(x, *pool_args(case)).shape)
    numeric = numerical_gradient(lambda v: float(np.vdot(g, avg_pool3d(v, *pool_args(case)))), x.copy())
    np.testing.assert_allclose(avg_pool3d_backward(g, x.shape, *pool_args(case)), numeric, rtol=1e-7, atol=1e-8)


@settings(max_examples=30)
@given(case=adaptive_cases())
def test_adaptive_avg_pool_averages_floor_to_ceil_windows(case):
    x = np.random.default_rng(case["seed"]).standard_normal(case["shape"])
    np.testing.assert_allclose(adaptive_avg_pool3d(x, case["out"]), adaptive_avg_pool_ref(x, case["out"]),
                               rtol=1e-12, atol=1e-12)


@settings(max_examples=15)
@given(case=adaptive_cases())
def test_adaptive_avg_pool_backward_matches_finite_differences(case):
    r = np.random.default_rng(case["seed"])
    x = r.standard_normal(case["shape"])
    g = r.standard_normal(x.shape[:2] + case["out"])
    numeric = numerical_gradient(lambda v: float(np.vdot(g, adaptive_avg_pool3d(v, case["out"]))), x.copy())
    np.testing.assert_allclose(adaptive_avg_pool3d_backward(g, x.shape), numeric, rtol=1e-7, atol=1e-8)


def test_global_average_pooling_is_the_mean_of_each_feature_map(rng):
    x = rng.standard_normal((2, 3, 4, 5, 6))
    layer = AdaptiveAvgPool3d(1)
    y = layer.forward(x)
    assert y.shape == (2, 3, 1, 1, 1) and layer.output_shape((3, 4, 5, 6)) == (3, 1, 1, 1)
    np.testing.assert_allclose(y[..., 0, 0, 0], x.mean(axis=(2, 3, 4)), rtol=1e-12)
    np.testing.assert_allclose(layer.backward(np.ones_like(y)), np.full(x.shape, 1 / 120), rtol=1e-12)


def test_pooling_layers_and_identity_keep_float32_and_pass_gradients(rng):
    x = rng.standard_normal((1, 2, 4, 4, 4)).astype(np.float32)
    for layer in (AvgPool3d(2, padding=1, count_include_pad=False), AdaptiveAvgPool3d((2, None, 3)), Identity()):
        y = layer.forward(x)
        assert y.dtype == np.float32 and y.shape[1:] == layer.output_shape(x.shape[1:])
        gx = layer.backward(np.ones_like(y))
        assert gx.shape == x.shape and gx.dtype == np.float32


# ----------------------------------------------------------------------------------------------
# Networks: weight files and compiled inference
# ----------------------------------------------------------------------------------------------

def small_net(seed=0):
    return Sequential(OrderedDict(
        conv1=Conv3d(2, 4, 3, padding=1, rng=seed), bn1=BatchNorm3d(4), relu1=ReLU(inplace=True),
        pool1=AvgPool3d(2, stride=(1, 2, 2), padding=1, count_include_pad=False), skip=Identity(),
        conv2=Conv3d(4, 3, 3, padding=1, rng=seed + 1), bn2=BatchNorm3d(3), relu2=ReLU(),
        gap=AdaptiveAvgPool3d(1), flatten=Flatten(), fc=Linear(3, 2, rng=seed + 2)))


def trained_small_net(rng):
    net = small_net()
    for _ in range(2):
        net.forward(rng.standard_normal((3, 2, 4, 6, 6)).astype(np.float32))
    return net.eval()


def test_save_and_load_model_round_trips_buffers_and_new_layers(tmp_path, rng):
    net = trained_small_net(rng)
    save_model(tmp_path / "net.h5", net)
    loaded, _ = load_model(tmp_path / "net.h5")
    assert loaded.spec() == net.spec()
    for (name, a), (name_b, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert name == name_b and a.dtype == b.dtype and np.array_equal(a, b), name
    assert int(loaded.bn1.num_batches_tracked) == 2
    x = rng.standard_normal((2, 2, 4, 6, 6)).astype(np.float32)
    with no_grad():
        np.testing.assert_array_equal(loaded(x), net(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_inference_equals_the_inference_pass_with_batchnorm_and_average_pooling(rng, dtype):
    net = trained_small_net(rng).astype(dtype)
    x = rng.standard_normal((2, 2, 4, 6, 6)).astype(dtype)
    keep = x.copy()
    with no_grad():
        expected = net(x)
    program = compile_inference(net, x.shape, dtype)
    assert "affine" in program.describe()
    np.testing.assert_array_equal(program(x), expected)
    np.testing.assert_array_equal(x, keep)
    # and the inference pass is the training-free forward in eval mode, layer by layer (float64 reference)
    h = x.astype(np.float64)
    for name, m in net.named_children():
        if isinstance(m, BatchNorm3d):
            h = batch_norm_ref(h, m.weight.data, m.bias.data, m.eps, m.running_mean, m.running_var)[0]
        elif isinstance(m, AvgPool3d):
            h = avg_pool_ref(h, m.kernel_size, m.stride, m.padding, m.count_include_pad, m.divisor_override)
        elif isinstance(m, AdaptiveAvgPool3d):
            h = adaptive_avg_pool_ref(h, (1, 1, 1))
        else:
            h = m.astype(np.float64).forward(h) if name.startswith(("conv", "fc")) else m.forward(h)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(expected, h, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------------------------
# Bad arguments
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: AvgPool3d(2, ceil_mode=True), "ceil_mode=True is not supported"),
    (lambda: AvgPool3d(2, padding=2), r"padding \(2, 2, 2\) must be at most half of kernel_size \(2, 2, 2\)"),
    (lambda: AvgPool3d(2, divisor_override=0), "divisor_override must be None or an integer >= 1, got 0"),
    (lambda: AdaptiveAvgPool3d((1, 0, 1)), "output_size must be >= 1"),
    (lambda: BatchNorm3d(0), "num_features must be an integer >= 1, got 0"),
    (lambda: BatchNorm3d(2, momentum=1.5), r"momentum must be None or in \[0, 1\], got 1.5"),
])
def test_layer_constructors_reject_bad_arguments_naming_them(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_layers_reject_bad_input_naming_layer_and_shape():
    with pytest.raises(ValueError, match=r"BatchNorm3d\(num_features=3.*expects 3 input channels, got shape \(1, 2, 2, 2, 2\)"):
        BatchNorm3d(3).forward(np.zeros((1, 2, 2, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"needs more than one value per channel.*\(1, 3, 1, 1, 1\)"):
        BatchNorm3d(3).forward(np.zeros((1, 3, 1, 1, 1), np.float32))
    with pytest.raises(ValueError, match=r"AvgPool3d\(kernel_size=\[1, 2, 4\].*spatial input shape \(3, 3, 3\) is smaller "
                                         r"than the average pooling's kernel_size \(1, 2, 4\)"):
        AvgPool3d((1, 2, 4)).output_shape((1, 3, 3, 3))
    with pytest.raises(ValueError, match=r"expects a 5-D batch, got shape \(2, 3\)"):
        AdaptiveAvgPool3d(1).forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="needs a forward pass with gradients enabled"):
        AvgPool3d(2).backward(np.zeros((1, 1, 1, 1, 1)))
