"""SGD and Adam against hand-computed updates and, when available, torch.optim on the same gradients."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuckerref.nn import Parameter
from tuckerref.optim import SGD, Adam, make_optimizer


def _param(values, grad, dtype=np.float64):
    p = Parameter(np.array(values, dtype=dtype))
    p.grad = np.array(grad, dtype=dtype)
    return p


def test_sgd_momentum_weight_decay_two_steps_match_hand_computation():
    p = _param([1.0, -2.0], [0.5, 0.25])
    opt = SGD([p], lr=0.1, momentum=0.7, weight_decay=0.01)
    # step 1: g = grad + wd p = [0.51, 0.23]; buf = g; p = p - lr buf
    opt.step()
    np.testing.assert_allclose(p.data, [1.0 - 0.1 * 0.51, -2.0 - 0.1 * 0.23], rtol=0, atol=1e-15)
    # step 2 with a new gradient: buf = 0.7 buf + g
    p.grad = np.array([-1.0, 0.0])
    p1 = p.data.copy()
    g2 = np.array([-1.0, 0.0]) + 0.01 * p1
    buf = 0.7 * np.array([0.51, 0.23]) + g2
    opt.step()
    np.testing.assert_allclose(p.data, p1 - 0.1 * buf, rtol=0, atol=1e-15)


def test_sgd_dampening_and_nesterov_follow_torch_equations():
    p = _param([2.0], [1.0])
    opt = SGD([p], lr=0.5, momentum=0.9, dampening=0.0, nesterov=True)
    opt.step()  # buf = 1; d = g + 0.9 buf = 1.9
    np.testing.assert_allclose(p.data, [2.0 - 0.5 * 1.9])
    q = _param([0.0], [1.0])
    opt = SGD([q], lr=1.0, momentum=0.5, dampening=0.5)
    opt.step()  # first buffer is g, undamped
    opt.step()  # buf = 0.5 * 1 + 0.5 * 1 = 1
    np.testing.assert_allclose(q.data, [-2.0])


def test_adam_two_steps_match_hand_computation():
    p = _param([1.0, -1.0], [0.2, -0.4])
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.1
    opt = Adam([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    x = p.data.copy()
    m = v = np.zeros(2)
    for t, grad in enumerate(([0.2, -0.4], [0.1, 0.3]), start=1):
        p.grad = np.array(grad)
        g = np.array(grad) + wd * x
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        x = x - lr * mhat / (np.sqrt(vhat) + eps)
        opt.step()
        np.testing.assert_allclose(p.data, x, rtol=1e-12)


def test_parameters_without_gradient_are_left_alone():
    p, q = _param([1.0], [1.0]), Parameter(np.array([5.0]))
    SGD([p, q], lr=0.1, momentum=0.7).step()
    assert q.data[0] == 5.0 and p.data[0] == pytest.approx(0.9)


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(0)
    grads = rng.standard_normal((4, 3)).astype(np.float32)
    for name in ("sgd", "adam"):
        a = [Parameter(np.ones(3, np.float32))]
        opt = make_optimizer(name, a, lr=0.05)
        for g in grads[:2]:
            a[0].grad = g.copy()
            opt.step()
        b = [Parameter(a[0].data.copy())]
        opt_b = make_optimizer(name, b, lr=0.05).load_state_dict(opt.state_dict())
        for g in grads[2:]:
            a[0].grad, b[0].grad = g.copy(), g.copy()
            opt.step()
            opt_b.step()
        assert np.array_equal(a[0].data, b[0].data), name


def test_load_state_dict_rejects_other_optimizer_or_shape():
    p = [_param([1.0, 2.0], [1.0, 1.0])]
    sgd = SGD(p, lr=0.1, momentum=0.5)
    sgd.step()
    with pytest.raises(ValueError, match="SGD"):
        Adam(p).load_state_dict(sgd.state_dict())
    with pytest.raises(ValueError, match="shape"):
        SGD([Parameter(np.zeros(3))], lr=0.1, momentum=0.5).load_state_dict(sgd.state_dict())
    with pytest.raises(ValueError, match="hyper-parameters"):
        SGD(p, lr=0.2, momentum=0.5).load_state_dict(sgd.state_dict())


def test_invalid_hyper_parameters_are_rejected():
    p = [_param([1.0], [1.0])]
    with pytest.raises(ValueError, match="lr"):
        SGD(p, lr=-1.0)
    with pytest.raises(ValueError, match="nesterov"):
        SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        Adam(p, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("rmsprop", p)


@settings(deadline=None, max_examples=15)
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["sgd", "nesterov", "adam"]),
       wd=st.sampled_from([0.0, 0.01, 0.3]))
def test_trajectory_equals_torch_optim_on_same_gradients(seed, kind, wd):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    shapes = [(3, 2), (4,)]
    init = [rng.standard_normal(s) for s in shapes]
    ours = [Parameter(x.copy()) for x in init]
    theirs = [torch.tensor(x.copy(), requires_grad=True) for x in init]
    if kind == "adam":
        opt = Adam(ours, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd)
        ref = torch.optim.Adam(theirs, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd)
    else:
        nesterov = kind == "nesterov"
        opt = SGD(ours, lr=0.05, momentum=0.7, weight_decay=wd, dampening=0.0 if nesterov else 0.1,
                  nesterov=nesterov)
        ref = torch.optim.SGD(theirs, lr=0.05, momentum=0.7, weight_decay=wd, dampening=0.0 if nesterov else 0.1,
                              nesterov=nesterov)
    for _ in range(5):
        for p, t in zip(ours, theirs):
            g = rng.standard_normal(p.shape)
            p.grad = g.copy()
            t.grad = torch.tensor(g)
        opt.step()
        ref.step()
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-14)
