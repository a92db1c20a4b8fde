"""The optional ``onnx`` package, imported on use with an install hint when it is missing."""
from __future__ import annotations


def require_onnx():
    """The ``onnx`` module, or a ValueError saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise ValueError("reading and writing ONNX needs the onnx package: pip install 'onnx>=1.14'") from None
    return onnx
