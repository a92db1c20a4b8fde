"""Module and Parameter: the minimal layer protocol of the engine.

A module maps a batch forward, remembers what its backward pass needs, and maps an
output gradient back to an input gradient while *accumulating* its parameters'
gradients (``param.grad += ...``), as PyTorch's autograd does. Parameter names
follow PyTorch (``c1.weight``, a Sequential's children ``c1.0.weight``), so a
``state_dict`` round-trips between the two.

Buffers (:meth:`Module.register_buffer`) are arrays a module keeps that are not trained, such
as a batch normalisation's running statistics. They are saved and loaded with the parameters:
``state_dict`` lists, as PyTorch's does, a module's own parameters, then its own buffers, then
its children's entries in order.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np


def _buffer_array(value):
    """``value`` as a C-contiguous array of any rank, a 0-d one included (None stays None)."""
    if value is None:
        return None
    value = np.asarray(value)
    return value if value.flags.c_contiguous else value.copy()


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
        object.__setattr__(self, "_buffers", OrderedDict())
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
        elif name in self._buffers:
            self._buffers[name] = _buffer_array(value)
            value = self._buffers[name]
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for registry in (self._modules, self._parameters, self._buffers):
            registry.pop(name, None)
        object.__delattr__(self, name)

    def register_buffer(self, name: str, array):
        """Keep ``array`` as the buffer ``name`` (an attribute, saved in ``state_dict``, never trained).

        ``None`` registers the name without an array (left out of ``state_dict``), as PyTorch does for
        a batch normalisation without running statistics.
        """
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"buffer name must be a non-empty string without '.', got {name!r}")
        if name in self._parameters or name in self._modules:
            raise ValueError(f"{type(self).__name__} already has a parameter or child named {name!r}")
        self._buffers[name] = _buffer_array(array)
        object.__setattr__(self, name, self._buffers[name])

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

    def named_buffers(self, prefix=""):
        """(name, array) of every buffer that holds an array, this module's first, then its children's."""
        for name, b in self._buffers.items():
            if b is not None:
                yield (f"{prefix}.{name}" if prefix else name), b
        for name, child in self._modules.items():
            yield from child.named_buffers(f"{prefix}.{name}" if prefix else name)

    def buffers(self):
        return [b for _, b in self.named_buffers()]

    def _named_state(self, prefix=""):
        """(name, owner, key, is_parameter) of every state entry in PyTorch's ``state_dict`` order:
        own parameters, own buffers, then each child's entries."""
        for key, p in self._parameters.items():
            yield (f"{prefix}.{key}" if prefix else key), self, key, True
        for key, b in self._buffers.items():
            if b is not None:
                yield (f"{prefix}.{key}" if prefix else key), self, key, False
        for key, child in self._modules.items():
            yield from child._named_state(f"{prefix}.{key}" if prefix else key)

    def num_parameters(self) -> int:
        return int(sum(p.data.size for p in self.parameters()))

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter and buffer by name, in PyTorch's order (see the module docstring)."""
        return OrderedDict((name, (owner._parameters[key].data if is_param else owner._buffers[key]).copy())
                           for name, owner, key, is_param in self._named_state())

    def load_state_dict(self, state, strict: bool = True):
        """Copy arrays into the parameters and buffers by name; shapes must match exactly, and each
        keeps its own dtype (a buffer such as ``num_batches_tracked`` stays an integer)."""
        own = OrderedDict((name, (owner, key, is_param)) for name, owner, key, is_param in self._named_state())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise ValueError(f"state_dict mismatch: missing {missing}, unexpected {unexpected}")
        for name, (owner, key, is_param) in own.items():
            if name not in state:
                continue
            current = owner._parameters[key].data if is_param else owner._buffers[key]
            value = np.asarray(state[name])
            if value.shape != current.shape:
                what = "parameter" if is_param else "buffer"
                raise ValueError(f"state_dict entry {name!r} has shape {value.shape}, {what} expects {current.shape}")
            value = np.array(value, dtype=current.dtype, copy=True)
            if is_param:
                owner._parameters[key].data = value
            else:
                setattr(owner, key, value)
        return self

    def astype(self, dtype):
        """Cast every parameter (and its gradient) and every floating-point buffer to ``dtype`` in place
        (integer buffers such as ``num_batches_tracked`` keep their type, as in PyTorch)."""
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = None if p.grad is None else p.grad.astype(dtype)
        for _, m in self.named_modules():
            for key, b in list(m._buffers.items()):
                if b is not None and b.dtype.kind == "f":
                    setattr(m, key, b.astype(dtype))
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
