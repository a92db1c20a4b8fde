"""models.c3d: Tran et al. 2015's architecture (children, shapes, 38.5 G multiply-accumulates and 27.7 M
convolution parameters at full size), and a narrow C3D with BatchNorm that runs, trains and saves."""
from math import prod

import numpy as np
import pytest

from tuckerref.flops import conv_multiplications
from tuckerref.io import load_model, save_model
from tuckerref.models import c3d
from tuckerref.nn import AdaptiveAvgPool3d, BatchNorm3d, Conv3d, MaxPool3d, no_grad
from tuckerref.optim import SGD
from tuckerref.train import ArrayDataset, fit, load_checkpoint

NARROW = dict(width=1 / 16, num_classes=5, batch_norm=True)
NARROW_CLIP = (3, 16, 32, 32)  # the smallest square clip that keeps pool5 (padding (0, 1, 1)) non-empty


def test_full_size_c3d_has_38_5_g_multiply_accumulates_and_27_7_m_convolution_parameters():
    net = c3d()
    shape, macs, conv_params = net.input_shape, 0, 0
    assert shape == (3, 16, 112, 112)
    for name, m in net.named_children():
        out = m.output_shape(shape)
        if isinstance(m, Conv3d):
            macs += conv_multiplications(m.in_channels, m.out_channels, prod(m.kernel_size), prod(out[1:]))
            conv_params += m.weight.data.size + m.bias.data.size
        shape = out
    assert macs == 38_496_632_832  # Tran et al.: 8 convolutions 3x3x3 on 16 x 112 x 112 clips
    assert abs(macs / 38.5e9 - 1) < 0.001 and conv_params == 27_655_936
    assert net.fc6.in_features == 512 * 1 * 4 * 4 and net.fc6.out_features == 4096 and net.fc8.out_features == 487
    assert [n for n in net.names() if n.startswith(("conv", "pool", "fc"))] == [
        "conv1a", "pool1", "conv2a", "pool2", "conv3a", "conv3b", "pool3", "conv4a", "conv4b", "pool4", "conv5a",
        "conv5b", "pool5", "fc6", "fc7", "fc8"]
    assert [net[f"conv{s}"].out_channels for s in ("1a", "2a", "3a", "3b", "4a", "4b", "5a", "5b")] == [
        64, 128, 256, 256, 512, 512, 512, 512]
    assert net.pool1.kernel_size == (1, 2, 2) and net.pool5.padding == (0, 1, 1)


def test_c3d_options_batchnorm_width_and_global_average_pooling_head():
    net = c3d((3, 8, 32, 32), width=1 / 16, batch_norm=True, head="gap", num_classes=7)
    assert net.names()[:4] == ["conv1a", "bn1a", "relu1a", "pool1"]
    assert isinstance(net.bn5b, BatchNorm3d) and isinstance(net.pool5, AdaptiveAvgPool3d)
    assert [m.out_channels for m in net if isinstance(m, Conv3d)] == [4, 8, 16, 16, 32, 32, 32, 32]
    assert net.fc6.in_features == 32 and net.fc6.out_features == 256 and net.output_shape((3, 8, 32, 32)) == (7,)
    assert not any(isinstance(m, BatchNorm3d) for m in c3d(NARROW_CLIP, width=1 / 16))
    assert isinstance(c3d(NARROW_CLIP, width=1 / 16).pool5, MaxPool3d)
    assert c3d((3, 8, 16, 16), width=0.001, head="gap").conv5b.out_channels == 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(input_shape=(3, 8, 32, 32)), r"too small for C3D's poolings \(use head='gap'"),
    (dict(head="avg"), "head must be 'fc'"),
    (dict(width=0), "width must be a positive number"),
    (dict(num_classes=0), "num_classes must be an integer >= 1"),
])
def test_c3d_rejects_bad_options_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        c3d(**{"width": 1 / 16, **kwargs})


def test_narrow_c3d_with_batchnorm_runs_forward_and_backward_and_round_trips_through_a_file(tmp_path, rng):
    net = c3d(NARROW_CLIP, seed=0, **NARROW)
    x = rng.uniform(0, 1, (2,) + NARROW_CLIP).astype(np.float32)
    y = net.forward(x)
    assert y.shape == (2, 5) and np.isfinite(y).all()
    assert net.backward(np.ones_like(y)) is None  # the first convolution skips its input gradient
    assert all(p.grad is not None and np.isfinite(p.grad).all() for p in net.parameters())
    assert int(net.bn1a.num_batches_tracked) == 1
    save_model(tmp_path / "c3d.h5", net)
    loaded, meta = load_model(tmp_path / "c3d.h5")
    assert meta["input_shape"] == list(NARROW_CLIP) and list(loaded.state_dict()) == list(net.state_dict())
    with no_grad():
        np.testing.assert_array_equal(loaded(x), net.eval()(x))


def test_narrow_c3d_with_batchnorm_trains_one_sgd_step_and_checkpoints_its_buffers(tmp_path, rng):
    net = c3d(NARROW_CLIP, seed=0, **NARROW)
    data = ArrayDataset(rng.integers(0, 256, (4,) + NARROW_CLIP, dtype=np.uint8), np.array([0, 1, 2, 3]))
    before = net.state_dict()
    history = fit(net, data, epochs=1, optimizer=SGD(net.parameters(), lr=0.01, momentum=0.9), batch_size=4,
                  checkpoint_dir=tmp_path, seed=0)
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
    after = net.state_dict()
    assert not np.array_equal(after["conv1a.weight"], before["conv1a.weight"])
    assert not np.array_equal(after["bn1a.weight"], before["bn1a.weight"])
    assert not np.array_equal(after["bn1a.running_mean"], before["bn1a.running_mean"])
    assert int(after["bn1a.num_batches_tracked"]) == 1
    saved = load_checkpoint(tmp_path / "checkpoint.h5")["state_dict"]
    assert list(saved) == list(after) and all(np.array_equal(saved[k], after[k]) for k in after)


def test_narrow_c3d_inference_fuses_conv_relu_pool_and_equals_the_layer_by_layer_pass(rng):
    """C3D orders conv, relu, pool; relu(max(x)) = max(relu(x)), so inference fuses the three into one
    pass with the same bits. After fold_batchnorm a BatchNorm C3D fuses the same way."""
    from tuckerref.fold import fold_batchnorm
    from tuckerref.nn import compile_inference
    net = c3d(NARROW_CLIP, seed=0, **NARROW)
    for m in net:
        if isinstance(m, BatchNorm3d):
            m.running_mean[:] = rng.normal(0, 0.1, m.num_features)
            m.running_var[:] = rng.uniform(0.5, 2.0, m.num_features)
    net.eval()
    x = rng.uniform(0, 1, (1,) + NARROW_CLIP).astype(np.float32)
    folded, pairs = fold_batchnorm(net, report=True)
    assert len(pairs) == 8 and not any(isinstance(m, BatchNorm3d) for m in folded)
    layer_by_layer = folded.forward(x.copy())
    program = compile_inference(folded, x.shape)
    assert program.describe()[:2] == ["fused", "fused"]  # conv1a/relu1a/pool1, conv2a/relu2a/pool2 (rows >= 16 wide)
    with no_grad():
        np.testing.assert_array_equal(folded(x), layer_by_layer)
        np.testing.assert_allclose(folded(x), net(x), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(program(x), layer_by_layer)
