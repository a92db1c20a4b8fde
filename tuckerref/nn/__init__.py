"""Layers over the Numba kernels, with PyTorch's names, semantics and default initialisation."""
from .container import Sequential, feature_volume
from .grad_mode import is_grad_enabled, no_grad
from .layers import Conv3d, Dropout, Dropout3d, Flatten, Identity, Linear, MaxPool3d, ReLU
from .module import Module, Parameter
from .normalization import BatchNorm3d
from .pooling import AdaptiveAvgPool3d, AvgPool3d
from .program import InferenceProgram, compile_inference

LAYER_TYPES = {cls.__name__: cls for cls in (Conv3d, Linear, MaxPool3d, ReLU, Dropout, Dropout3d, Flatten,
                                             BatchNorm3d, AvgPool3d, AdaptiveAvgPool3d, Identity)}


def from_spec(spec: dict) -> Module:
    """Rebuild a module tree from :meth:`Module.spec` (parameters freshly initialised)."""
    kind = spec.get("type")
    if kind == "Sequential":
        from collections import OrderedDict
        return Sequential(OrderedDict((name, from_spec(child)) for name, child in spec.get("children", [])))
    if kind not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {kind!r} in network spec (known: {sorted(LAYER_TYPES)} and Sequential)")
    return LAYER_TYPES[kind](**spec.get("config", {}))


__all__ = ["Module", "Parameter", "Sequential", "Conv3d", "Linear", "MaxPool3d", "ReLU", "Dropout",
           "Dropout3d", "Flatten", "from_spec", "LAYER_TYPES", "no_grad", "is_grad_enabled", "InferenceProgram",
           "compile_inference", "BatchNorm3d", "AvgPool3d", "AdaptiveAvgPool3d", "Identity",
           "feature_volume"]
