"""Module and Parameter: the minimal layer protocol of the engine.

A module maps a batch forward, remembers what its backward pass needs, and maps an
output gradient back to an input gradient while *accumulating* its parameters'
gradients (``param.grad += ...``), as PyTorch's autograd does. Parameter names
follow PyTorch (``c1.weight``, a Sequential's children ``c1.0.weight``), so a
``state_dict`` round-trips between the two.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np


class Parameter:
    """A trainable array and its accumulated gradient."""

    __slots__ = ("data", "grad")

    def __init__(self, data):
        self.data = np.ascontiguousarray(data)
        self.grad = None

    @property
    def shape(self):
        return self.data.shape

    def accumulate(self, g):
        """grad += g (allocates on first use)."""
        if self.grad is None:
            self.grad = np.array(g, dtype=self.data.dtype, copy=True)
        else:
            self.grad += g

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: registers child modules and parameters assigned as attributes."""

    def __init__(self):
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "training", True)
        #: False for a network's first layer: its input gradient is never used, so skip it.
        object.__setattr__(self, "needs_input_grad", True)

    def __setattr__(self, name, value):
        if isinstance(value, Module):
            self._modules[name] = value
        elif isinstance(value, Parameter):
            self._parameters[name] = value
        elif name in self._parameters and value is None:
            del self._parameters[name]
        object.__setattr__(self, name, value)

    # -- computation ---------------------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    def output_shape(self, input_shape: tuple) -> tuple:
        """Per-sample output shape for a per-sample input shape (no batch axis)."""
        raise NotImplementedError

    # -- structure -----------------------------------------------------------------------------
    def named_children(self):
        return iter(self._modules.items())

    def children(self):
        return iter(self._modules.values())

    def chain(self):
        """The child modules that this module's forward applies one after the other, when that is
        all its forward does (a Sequential, :meth:`tuckerref.nn.Sequential.chain`), else None.
        Inference fusion (:mod:`tuckerref.nn.fusion`) looks into a chain for a Tucker-2 block."""
        return None

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix=""):
        for name, p in self._parameters.items():
            yield (f"{prefix}.{name}" if prefix else name), p
        for name, child in self._modules.items():
            yield from child.named_parameters(f"{prefix}.{name}" if prefix else name)

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return int(sum(p.data.size for p in self.parameters()))

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        return OrderedDict((name, p.data.copy()) for name, p in self.named_parameters())

    def load_state_dict(self, state, strict: bool = True):
        """Copy arrays into the parameters by name; shapes must match exactly."""
        own = OrderedDict(self.named_parameters())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise ValueError(f"state_dict mismatch: missing {missing}, unexpected {unexpected}")
        for name, p in own.items():
            if name not in state:
                continue
            value = np.asarray(state[name])
            if value.shape != p.data.shape:
                raise ValueError(f"state_dict entry {name!r} has shape {value.shape}, parameter expects {p.data.shape}")
            p.data = np.ascontiguousarray(value, dtype=p.data.dtype)
        return self

    def astype(self, dtype):
        """Cast every parameter (and its gradient) to ``dtype`` in place."""
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = None if p.grad is None else p.grad.astype(dtype)
        return self

    @property
    def dtype(self):
        params = self.parameters()
        return params[0].data.dtype if params else np.dtype(np.float32)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True):
        for _, m in self.named_modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    # -- description ---------------------------------------------------------------------------
    def config(self) -> dict:
        """Constructor arguments that rebuild this module (see :func:`tuckerref.nn.from_spec`)."""
        return {}

    def spec(self) -> dict:
        """JSON-able description of the module tree (type, config, children)."""
        out = {"type": type(self).__name__, "config": self.config()}
        if self._modules:
            out["children"] = [[name, child.spec()] for name, child in self._modules.items()]
        return out

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())

    def __repr__(self):
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        lines.append(")")
        return "\n".join(lines)
