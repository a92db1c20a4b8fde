"""Gradient mode, as ``torch.no_grad``: inference that keeps nothing for a backward pass.

Inside ``with no_grad():`` layers store no inputs, masks or argmax indices for ``backward`` and
may take faster inference-only kernels (max pooling without argmax bookkeeping). ``eval()`` is a
different switch (dropout off); it does not disable gradients, exactly as in PyTorch.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

_state = threading.local()


def is_grad_enabled() -> bool:
    """True unless inside :func:`no_grad` (per thread)."""
    return getattr(_state, "enabled", True)


@contextmanager
def no_grad():
    """Disable gradient bookkeeping inside the block."""
    previous = is_grad_enabled()
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = previous
