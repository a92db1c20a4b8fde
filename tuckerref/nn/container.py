"""Sequential: children applied in order, gradients propagated in reverse (some sequences fused in inference)."""
from __future__ import annotations

from collections import OrderedDict

from .fusion import inference_forward
from .grad_mode import is_grad_enabled
from .module import Module


class Sequential(Module):
    """Ordered container. Children are named "0", "1", ... or by an OrderedDict, as in PyTorch."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, m in items:
            if not isinstance(m, Module):
                raise ValueError(f"Sequential child {name!r} is not a Module: {m!r}")
            setattr(self, name, m)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, key):
        if isinstance(key, int):
            return list(self._modules.values())[key]
        return self._modules[key]

    def names(self):
        return list(self._modules)

    @property
    def needs_input_grad(self):
        return self.__dict__.get("_needs_input_grad", True)

    @needs_input_grad.setter
    def needs_input_grad(self, value):
        self.__dict__["_needs_input_grad"] = value
        for i, m in enumerate(self._modules.values()):
            m.needs_input_grad = value if i == 0 else True

    def forward(self, x):
        if not is_grad_enabled():
            return inference_forward(self._modules.values(), x)
        for m in self._modules.values():
            x = m.forward(x)
        return x

    def backward(self, grad):
        for m in reversed(self._modules.values()):
            grad = m.backward(grad)
        return grad

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for m in self._modules.values():
            shape = m.output_shape(shape)
        return shape

    def shapes(self, input_shape):
        """[(name, output shape)] of each child for a per-sample input shape."""
        out, shape = [], tuple(input_shape)
        for name, m in self._modules.items():
            shape = m.output_shape(shape)
            out.append((name, shape))
        return out
