"""Agreement with torch.nn.functional (float64), when PyTorch is installed; skipped otherwise.

PyTorch is only an oracle here: the engine never imports it.
"""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from reference import WIDE_CASE, conv_arrays, conv_cases, distinct_input, pool_cases
from tuckerref import conv3d, conv3d_backward, linear, linear_backward, max_pool3d, max_pool3d_backward
from tuckerref import softmax_cross_entropy
from tuckerref.models import thetis_net

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = dict(rtol=1e-10, atol=1e-10)


def leaf(a):
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


def to_numpy(t):
    return t.detach().numpy()


@settings(max_examples=15)
@given(case=conv_cases())
@example(case=WIDE_CASE)
def test_conv3d_forward_and_backward_match_torch(case):
    x, w, b = conv_arrays(case)
    tx, tw = leaf(x), leaf(w)
    tb = None if b is None else leaf(b)
    ty = F.conv3d(tx, tw, tb, stride=case["stride"], padding=case["padding"])
    y = conv3d(x, w, b, stride=case["stride"], padding=case["padding"])
    np.testing.assert_allclose(y, to_numpy(ty), **TOL)
    g = np.random.default_rng(case["seed"] + 1).standard_normal(y.shape)
    ty.backward(torch.from_numpy(g))
    gx, gw, gb = conv3d_backward(x, w, g, stride=case["stride"], padding=case["padding"])
    np.testing.assert_allclose(gx, to_numpy(tx.grad), **TOL)
    np.testing.assert_allclose(gw, to_numpy(tw.grad), **TOL)
    if tb is not None:
        np.testing.assert_allclose(gb, to_numpy(tb.grad), **TOL)


@settings(max_examples=15)
@given(case=pool_cases())
def test_max_pool3d_values_indices_and_gradient_match_torch(case):
    x, r = distinct_input(case)
    tx = leaf(x)
    ty, tidx = F.max_pool3d(tx, case["kernel"], case["stride"], case["padding"], return_indices=True)
    y, idx = max_pool3d(x, case["kernel"], case["stride"], case["padding"])
    np.testing.assert_array_equal(y, to_numpy(ty))
    np.testing.assert_array_equal(idx, tidx.numpy())  # both: flat index within each (D, H, W) map
    g = r.standard_normal(y.shape)
    ty.backward(torch.from_numpy(g))
    np.testing.assert_allclose(max_pool3d_backward(g, idx, x.shape), to_numpy(tx.grad), **TOL)


@settings(max_examples=10)
@given(N=st.integers(1, 5), I=st.integers(1, 20), O=st.integers(1, 8), seed=st.integers(0, 2**31 - 1))
def test_linear_forward_and_backward_match_torch(N, I, O, seed):
    r = np.random.default_rng(seed)
    x, w, b = r.standard_normal((N, I)), r.standard_normal((O, I)), r.standard_normal(O)
    tx, tw, tb = leaf(x), leaf(w), leaf(b)
    ty = F.linear(tx, tw, tb)
    np.testing.assert_allclose(linear(x, w, b), to_numpy(ty), **TOL)
    g = r.standard_normal((N, O))
    ty.backward(torch.from_numpy(g))
    for ours, theirs in zip(linear_backward(x, w, g), (tx, tw, tb)):
        np.testing.assert_allclose(ours, to_numpy(theirs.grad), **TOL)


@settings(max_examples=10)
@given(N=st.integers(1, 6), K=st.integers(2, 5), scale=st.sampled_from([1.0, 50.0]), seed=st.integers(0, 2**31 - 1))
def test_cross_entropy_loss_and_gradient_match_torch(N, K, scale, seed):
    r = np.random.default_rng(seed)
    z, y = scale * r.standard_normal((N, K)), r.integers(0, K, N)
    tz = leaf(z)
    tloss = F.cross_entropy(tz, torch.from_numpy(y))
    tloss.backward()
    loss, grad = softmax_cross_entropy(z, y)
    assert loss == pytest.approx(tloss.item(), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(grad, to_numpy(tz.grad), rtol=1e-10, atol=1e-14)


class TorchThetis(torch.nn.Module):
    """Figure 1's network written directly in PyTorch (dropout omitted: both sides run in eval mode)."""

    def __init__(self, channels, l1_in):
        super().__init__()
        self.c1 = torch.nn.Conv3d(channels, 6, (5, 11, 11), padding=(2, 5, 5))
        self.c2 = torch.nn.Conv3d(6, 16, (3, 5, 5))
        self.l1 = torch.nn.Linear(l1_in, 128)
        self.l2 = torch.nn.Linear(128, 84)
        self.l_out = torch.nn.Linear(84, 2)

    def forward(self, x):
        x = F.max_pool3d(F.relu(self.c1(x)), (2, 4, 4))
        x = F.max_pool3d(F.relu(self.c2(x)), (2, 4, 4))
        x = F.relu(self.l1(torch.flatten(x, 1)))
        return self.l_out(F.relu(self.l2(x)))


def test_whole_thetis_net_forward_and_backward_match_torch_with_identical_weights(rng):
    shape = (4, 8, 32, 32)
    net = thetis_net(shape, seed=11).astype(np.float64).eval()
    net.needs_input_grad = True
    tnet = TorchThetis(shape[0], net.l1.in_features).double().eval()
    # The state_dict names are PyTorch's: a strict load succeeds without renaming.
    tnet.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()}, strict=True)

    x = rng.standard_normal((2,) + shape)
    labels = np.array([0, 1])
    tx = leaf(x)
    tlogits = tnet(tx)
    tloss = F.cross_entropy(tlogits, torch.from_numpy(labels))
    tloss.backward()

    logits = net.forward(x.copy())
    loss, dlogits = softmax_cross_entropy(logits, labels)
    net.zero_grad()
    gx = net.backward(dlogits)

    np.testing.assert_allclose(logits, to_numpy(tlogits), rtol=1e-9, atol=1e-12)
    assert loss == pytest.approx(tloss.item(), rel=1e-10)
    np.testing.assert_allclose(gx, to_numpy(tx.grad), rtol=1e-8, atol=1e-14)
    tparams = dict(tnet.named_parameters())
    for name, p in net.named_parameters():
        np.testing.assert_allclose(p.grad, to_numpy(tparams[name].grad), rtol=1e-8, atol=1e-14, err_msg=name)
