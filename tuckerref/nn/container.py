"""Sequential: children applied in order, gradients propagated in reverse (some sequences fused in inference);
the shape a child of it receives."""
from __future__ import annotations

from collections import OrderedDict

from .fusion import inference_forward
from .grad_mode import is_grad_enabled
from .layers import Flatten
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

    def chain(self):
        """The children in order; None for a subclass, whose forward may do something else."""
        return tuple(self._modules.values()) if type(self) is Sequential else None

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


def feature_volume(net: Sequential, input_shape, before: str) -> tuple:
    """Per-sample shape entering child ``before`` (unflattened if a Flatten precedes it).

    For the first linear layer after a Flatten this is the feature volume (C, D, H, W) over which
    Algorithm 1 treats it as a convolution (Section 3.2 of the paper; l1's 16 x 6 x 6 x 9).
    """
    shape = tuple(input_shape)
    for name, m in net.named_children():
        if name == before:
            return shape
        if not isinstance(m, Flatten):
            shape = m.output_shape(shape)
    raise ValueError(f"network has no child named {before!r} (children: {net.names()})")
