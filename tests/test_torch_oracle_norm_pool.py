"""BatchNorm3d, AvgPool3d and AdaptiveAvgPool3d against torch.nn (float64), when PyTorch is installed.

Forward values, input and parameter gradients, and the running statistics and batch counter over
several training steps (momentum 0.1 and None), then eval mode; average pooling with padding,
count_include_pad both ways and divisor_override; adaptive pooling to drawn output sizes.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuckerref.nn import AdaptiveAvgPool3d, AvgPool3d, BatchNorm3d

torch = pytest.importorskip("torch")

TOL = dict(rtol=1e-10, atol=1e-10)


def run_torch(module, x, g):
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ty = module(tx)
    ty.backward(torch.from_numpy(g))
    return ty.detach().numpy(), tx.grad.numpy()


def run_ours(layer, x, g):
    y = layer.forward(x)
    return y, layer.backward(g)


@settings(max_examples=10)
@given(N=st.integers(1, 3), C=st.integers(1, 3), D=st.integers(1, 3), H=st.integers(1, 4), W=st.integers(2, 4),
       momentum=st.sampled_from([0.1, None, 0.5]), affine=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_batchnorm3d_matches_torch_in_training_steps_and_in_eval(N, C, D, H, W, momentum, affine, seed):
    r = np.random.default_rng(seed)
    ours = BatchNorm3d(C, momentum=momentum, affine=affine, dtype=np.float64)
    theirs = torch.nn.BatchNorm3d(C, momentum=momentum, affine=affine, dtype=torch.float64)
    if affine:
        ours.weight.data[:], ours.bias.data[:] = r.uniform(0.5, 2, C), r.standard_normal(C)
        with torch.no_grad():
            theirs.weight.copy_(torch.from_numpy(ours.weight.data))
            theirs.bias.copy_(torch.from_numpy(ours.bias.data))
    for step in range(3):
        x = r.standard_normal((N, C, D, H, W)) * (step + 1) + step
        g = r.standard_normal(x.shape)
        ours.zero_grad()
        theirs.zero_grad()
        y, gx = run_ours(ours.train(), x, g)
        ty, tgx = run_torch(theirs.train(), x, g)
        np.testing.assert_allclose(y, ty, **TOL)
        np.testing.assert_allclose(gx, tgx, **TOL)
        if affine:
            np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), **TOL)
            np.testing.assert_allclose(ours.bias.grad, theirs.bias.grad.numpy(), **TOL)
        for name, value in theirs.state_dict().items():
            np.testing.assert_allclose(ours.state_dict()[name], value.numpy(), **TOL, err_msg=name)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = r.standard_normal((N, C, D, H, W))
    g = r.standard_normal(x.shape)
    ours.zero_grad()
    theirs.zero_grad()
    y, gx = run_ours(ours.eval(), x, g)
    ty, tgx = run_torch(theirs.eval(), x, g)
    np.testing.assert_allclose(y, ty, **TOL)
    np.testing.assert_allclose(gx, tgx, **TOL)
    if affine:
        np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), **TOL)


@settings(max_examples=25)
@given(data=st.data(), count_include_pad=st.booleans(), divisor_override=st.none() | st.integers(1, 7),
       seed=st.integers(0, 2**31 - 1))
def test_avgpool3d_matches_torch(data, count_include_pad, divisor_override, seed):
    kernel = tuple(data.draw(st.integers(1, 3)) for _ in range(3))
    stride = data.draw(st.none() | st.tuples(*(st.integers(1, 3) for _ in range(3))))
    padding = tuple(data.draw(st.integers(0, k // 2)) for k in kernel)
    size = tuple(data.draw(st.integers(k, 6)) for k in kernel)  # torch refuses inputs smaller than the kernel
    r = np.random.default_rng(seed)
    x = r.standard_normal((data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))) + size)
    args = dict(kernel_size=kernel, stride=stride, padding=padding, count_include_pad=count_include_pad,
                divisor_override=divisor_override)
    ours = AvgPool3d(**args)
    y = ours.forward(x)
    g = r.standard_normal(y.shape)
    ty, tgx = run_torch(torch.nn.AvgPool3d(**args), x, g)
    np.testing.assert_allclose(y, ty, **TOL)
    np.testing.assert_allclose(ours.backward(g), tgx, **TOL)
    assert y.shape[1:] == ours.output_shape(x.shape[1:])


@settings(max_examples=25)
@given(size=st.tuples(*(st.integers(1, 7) for _ in range(3))), data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_adaptive_avgpool3d_matches_torch(size, data, seed):
    out = tuple(data.draw(st.none() | st.integers(1, s + 2)) for s in size)
    r = np.random.default_rng(seed)
    x = r.standard_normal((2, 2) + size)
    ours = AdaptiveAvgPool3d(out)
    y = ours.forward(x)
    g = r.standard_normal(y.shape)
    ty, tgx = run_torch(torch.nn.AdaptiveAvgPool3d(out), x, g)
    np.testing.assert_allclose(y, ty, **TOL)
    np.testing.assert_allclose(ours.backward(g), tgx, **TOL)
    assert y.shape[1:] == ours.output_shape(x.shape[1:])
