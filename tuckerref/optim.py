"""First-order optimisers with PyTorch's update rules (``torch.optim.SGD`` and ``torch.optim.Adam``).

Both act on :class:`tuckerref.nn.Parameter` objects in place (``p.data``), read the gradient that
``net.backward`` accumulated in ``p.grad`` and skip parameters whose gradient is ``None``, as PyTorch
does. Weight decay is L2 regularisation added to the gradient (not AdamW's decoupled decay).
``state_dict()`` / ``load_state_dict()`` carry the hyper-parameters, the step count and every
per-parameter buffer as arrays, so that a checkpoint restores an optimiser exactly.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np


class Optimizer:
    """Common bookkeeping: the parameter list, per-parameter buffers, the step count and state I/O.

    Subclasses name their buffers in ``BUFFERS`` and implement ``_update(i, p, g)``.
    """

    BUFFERS: tuple = ()

    def __init__(self, params, **hyper):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        self.hyper = hyper
        self.step_count = 0
        #: buffers[name][i] is the buffer of parameter i, or None before its first update.
        self.buffers = {name: [None] * len(self.params) for name in self.BUFFERS}

    def zero_grad(self):
        """Drop every parameter's gradient (the next backward pass starts from zero)."""
        for p in self.params:
            p.grad = None

    def step(self):
        """Apply one update to every parameter that has a gradient."""
        self.step_count += 1
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if p.grad.shape != p.data.shape:
                raise ValueError(f"{type(self).__name__}: parameter {i} has shape {p.data.shape} "
                                 f"but its gradient has shape {p.grad.shape}")
            self._update(i, p, p.grad)

    def _update(self, i, p, g):
        raise NotImplementedError

    def _decayed(self, p, g):
        """g + weight_decay * p (a new array; ``g`` itself is left untouched)."""
        wd = self.hyper["weight_decay"]
        return g + p.data.dtype.type(wd) * p.data if wd else g.copy()

    def _scalar(self, p, name):
        return p.data.dtype.type(self.hyper[name])

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"type", "hyper", "step", "arrays"}``; arrays are named ``"<buffer>.<parameter index>"``."""
        arrays = OrderedDict()
        for name, bufs in self.buffers.items():
            for i, b in enumerate(bufs):
                if b is not None:
                    arrays[f"{name}.{i}"] = b.copy()
        return {"type": type(self).__name__, "hyper": dict(self.hyper), "step": int(self.step_count),
                "arrays": arrays}

    def load_state_dict(self, state: dict):
        """Restore buffers and the step count saved by :meth:`state_dict` for the same parameter list."""
        if state.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state is for {state.get('type')!r}, not {type(self).__name__}")
        hyper = {k: state["hyper"].get(k) for k in self.hyper}
        if hyper != self.hyper:
            raise ValueError(f"optimizer state has hyper-parameters {state['hyper']}, this optimizer has {self.hyper}")
        buffers = {name: [None] * len(self.params) for name in self.BUFFERS}
        for key, value in state["arrays"].items():
            name, _, index = key.rpartition(".")
            if name not in buffers or not index.isdigit() or int(index) >= len(self.params):
                raise ValueError(f"optimizer state has an unexpected entry {key!r} "
                                 f"({len(self.params)} parameters, buffers {list(self.BUFFERS)})")
            p = self.params[int(index)]
            value = np.asarray(value)
            if value.shape != p.data.shape:
                raise ValueError(f"optimizer state entry {key!r} has shape {value.shape}, parameter has {p.data.shape}")
            buffers[name][int(index)] = np.array(value, dtype=p.data.dtype, copy=True)
        self.buffers = buffers
        self.step_count = int(state["step"])
        return self

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.hyper.items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, exactly ``torch.optim.SGD``.

    For each parameter p with gradient grad, at step t:

        g   = grad + weight_decay * p
        b_t = g                                       (t = 1)
        b_t = momentum * b_{t-1} + (1 - dampening) * g (t > 1)
        d   = g + momentum * b_t   if nesterov   else   b_t      (d = g when momentum = 0)
        p   = p - lr * d
    """

    BUFFERS = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, dampening=0.0, nesterov=False):
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"SGD {name} must be a finite value >= 0, got {value}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"SGD nesterov momentum requires momentum > 0 and dampening = 0, "
                             f"got momentum={momentum}, dampening={dampening}")
        super().__init__(params, lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay),
                         dampening=float(dampening), nesterov=bool(nesterov))

    def _update(self, i, p, g):
        d = self._decayed(p, g)
        mu = self.hyper["momentum"]
        if mu:
            bufs = self.buffers["momentum_buffer"]
            if bufs[i] is None:
                bufs[i] = d.copy()
            else:
                bufs[i] *= self._scalar(p, "momentum")
                bufs[i] += p.data.dtype.type(1.0 - self.hyper["dampening"]) * d
            d = d + self._scalar(p, "momentum") * bufs[i] if self.hyper["nesterov"] else bufs[i]
        p.data -= self._scalar(p, "lr") * d


class Adam(Optimizer):
    """Adam (Kingma & Ba), exactly ``torch.optim.Adam`` with L2 weight decay and amsgrad off.

    For each parameter p with gradient grad, at step t (m_0 = v_0 = 0):

        g   = grad + weight_decay * p
        m_t = beta1 * m_{t-1} + (1 - beta1) * g
        v_t = beta2 * v_{t-1} + (1 - beta2) * g^2
        p   = p - (lr / (1 - beta1^t)) * m_t / (sqrt(v_t) / sqrt(1 - beta2^t) + eps)
    """

    BUFFERS = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        b1, b2 = (float(b) for b in betas)
        if not np.isfinite(lr) or lr < 0:
            raise ValueError(f"Adam lr must be a finite value >= 0, got {lr}")
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"Adam betas must lie in [0, 1), got {tuple(betas)}")
        if not eps > 0 or not np.isfinite(weight_decay) or weight_decay < 0:
            raise ValueError(f"Adam needs eps > 0 and weight_decay >= 0, got eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, lr=float(lr), beta1=b1, beta2=b2, eps=float(eps), weight_decay=float(weight_decay))

    def _update(self, i, p, g):
        d = self._decayed(p, g)
        h, t, dt = self.hyper, self.step_count, p.data.dtype.type
        m, v = self.buffers["exp_avg"], self.buffers["exp_avg_sq"]
        if m[i] is None:
            m[i], v[i] = np.zeros_like(p.data), np.zeros_like(p.data)
        m[i] *= dt(h["beta1"])
        m[i] += dt(1.0 - h["beta1"]) * d
        v[i] *= dt(h["beta2"])
        v[i] += dt(1.0 - h["beta2"]) * d * d
        step_size = h["lr"] / (1.0 - h["beta1"] ** t)
        denom = np.sqrt(v[i]) / dt(np.sqrt(1.0 - h["beta2"] ** t)) + dt(h["eps"])
        p.data -= dt(step_size) * (m[i] / denom)


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def make_optimizer(name, params, lr=None, momentum=0.7, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8):
    """Build ``"sgd"`` (paper defaults: lr 0.001, momentum 0.7, weight decay 0.01) or ``"adam"`` (lr 0.001)."""
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r} (choose from {sorted(OPTIMIZERS)})")
    lr = 1e-3 if lr is None else lr
    if key == "sgd":
        return SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
