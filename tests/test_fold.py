"""fold_batchnorm: w' = w gamma / sqrt(var + eps), b' = (b - mean) gamma / sqrt(var + eps) + beta per output channel.

Folded and unfolded networks agree in eval mode; the input network is untouched; a BatchNorm3d
that does not follow a convolution stays.
"""
from collections import OrderedDict

import numpy as np

from tuckerref.fold import fold_batchnorm
from tuckerref.nn import (AdaptiveAvgPool3d, BatchNorm3d, Conv3d, Flatten, Linear, MaxPool3d, ReLU, Sequential,
                          no_grad)


def randomise(bn, rng):
    """Running statistics, weight and bias far from the defaults, so a wrong fold cannot pass."""
    C = bn.num_features
    bn.running_mean[:] = rng.standard_normal(C)
    bn.running_var[:] = rng.uniform(0.2, 3.0, C)
    if bn.affine:
        bn.weight.data[:] = rng.uniform(-2.0, 2.0, C)
        bn.bias.data[:] = rng.standard_normal(C)
    return bn


def network(rng):
    dt = np.float64
    block = Sequential(Conv3d(3, 2, 1, bias=False, rng=1, dtype=dt), Conv3d(2, 2, 3, padding=1, bias=False, rng=2, dtype=dt),
                       Conv3d(2, 5, 1, rng=3, dtype=dt))
    net = Sequential(OrderedDict(
        bn0=BatchNorm3d(2, dtype=dt),  # first layer: nothing to fold into
        conv1=Conv3d(2, 3, 3, padding=1, bias=False, rng=0, dtype=dt), bn1=BatchNorm3d(3, dtype=dt),
        relu1=ReLU(), bn_after_relu=BatchNorm3d(3, dtype=dt),
        conv2=block, bn2=BatchNorm3d(5, affine=False, dtype=dt),
        pool=MaxPool3d((1, 2, 2)), inner=Sequential(OrderedDict(conv3=Conv3d(5, 4, 3, padding=1, rng=4, dtype=dt),
                                                                bn3=BatchNorm3d(4, eps=1e-3, dtype=dt))),
        gap=AdaptiveAvgPool3d(1), flatten=Flatten(), fc=Linear(4, 2, rng=5, dtype=dt)))
    for _, m in net.named_modules():
        if isinstance(m, BatchNorm3d):
            randomise(m, rng)
    return net.eval()


def test_folded_network_equals_the_original_in_eval_mode(rng):
    net = network(rng)
    folded, pairs = fold_batchnorm(net, report=True)
    assert pairs == [("inner.conv3", "inner.bn3"), ("conv1", "bn1"), ("conv2.2", "bn2")]
    x = rng.standard_normal((2, 2, 3, 6, 6))
    with no_grad():
        np.testing.assert_allclose(folded(x), net(x), rtol=1e-12, atol=1e-12)
    y, y_folded = net.forward(x), folded.forward(x)  # the training-time forward, still in eval mode
    np.testing.assert_allclose(y_folded, y, rtol=1e-12, atol=1e-12)


def test_folding_removes_the_folded_batchnorms_keeps_the_others_and_creates_biases(rng):
    net = network(rng)
    folded = fold_batchnorm(net)
    assert folded.names() == ["bn0", "conv1", "relu1", "bn_after_relu", "conv2", "pool", "inner", "gap", "flatten", "fc"]
    assert folded.inner.names() == ["conv3"]
    assert folded.conv1.bias is not None and "conv1.bias" in folded.state_dict()
    assert folded.conv2[2].bias is not None and folded.conv2[0].bias is None


def test_folding_leaves_the_input_network_untouched(rng):
    net = network(rng)
    before = net.state_dict()
    spec = net.spec()
    fold_batchnorm(net)
    assert net.spec() == spec and net.conv1.bias is None
    after = net.state_dict()
    assert list(after) == list(before) and all(np.array_equal(after[k], before[k]) for k in before)


def test_folded_weight_and_bias_follow_the_equations(rng):
    conv = Conv3d(2, 3, (1, 2, 2), rng=0, dtype=np.float64)
    bn = randomise(BatchNorm3d(3, eps=0.01, dtype=np.float64), rng)
    folded = fold_batchnorm(Sequential(conv, bn))
    s = bn.weight.data / np.sqrt(bn.running_var + 0.01)
    np.testing.assert_allclose(folded[0].weight.data, conv.weight.data * s[:, None, None, None, None], rtol=1e-15)
    np.testing.assert_allclose(folded[0].bias.data, (conv.bias.data - bn.running_mean) * s + bn.bias.data, rtol=1e-14)
    assert len(folded) == 1


def test_float32_network_folds_in_float32():
    net = Sequential(Conv3d(1, 2, 1, rng=0), BatchNorm3d(2))
    folded = fold_batchnorm(net)
    assert folded[0].weight.data.dtype == np.float32 and folded[0].bias.data.dtype == np.float32


def test_fold_command_writes_the_folded_network_and_names_each_pair(tmp_path, rng, capsys):
    from tuckerref.cli import main
    from tuckerref.io import load_model, save_model
    net = network(rng)
    net.input_shape = (2, 3, 6, 6)
    save_model(tmp_path / "in.h5", net)
    assert main(["fold", str(tmp_path / "in.h5"), str(tmp_path / "out.h5")]) == 0
    out = capsys.readouterr().out
    assert "3 BatchNorm3d folded" in out and "bn1 -> conv1" in out and "left in place" in out and "bn0" in out
    folded, meta = load_model(tmp_path / "out.h5")
    assert meta["folded"] == [["inner.conv3", "inner.bn3"], ["conv1", "bn1"], ["conv2.2", "bn2"]]
    x = rng.standard_normal((1, 2, 3, 6, 6))
    with no_grad():
        np.testing.assert_allclose(folded.astype(np.float64)(x), net(x), rtol=1e-5, atol=1e-6)
