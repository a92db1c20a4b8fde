"""ONNX in and out: read a chain-shaped ONNX model into a tuckerref network, write any network as ONNX.

The ``onnx`` package reads and writes the format (protobuf, checker); no ONNX runtime is used. It is
imported inside the functions, so importing this package (and ``tuckerref --help``) stays cheap.

* :func:`import_onnx` / :func:`read_onnx` (:mod:`.reader`): what ``torch.onnx.export`` writes for a
  video CNN built as a chain of Conv, BatchNormalization, Relu, MaxPool, AveragePool,
  GlobalAveragePool, Flatten/Reshape, Gemm or MatMul + Add, Dropout and Identity nodes.
* :func:`to_onnx` / :func:`export_onnx` (:mod:`.writer`): any tuckerref network, compressed ones
  included (a Tucker-2 block is three Conv nodes), as a checked ONNX model.
"""
from __future__ import annotations

from .requirement import require_onnx


def read_onnx(path, dtype=None):
    """See :func:`tuckerref.onnx_io.reader.read_onnx`."""
    from .reader import read_onnx as _read
    return _read(path, dtype=dtype)


def import_onnx(path, out_path, dtype=None):
    """See :func:`tuckerref.onnx_io.reader.import_onnx`."""
    from .reader import import_onnx as _import
    return _import(path, out_path, dtype=dtype)


def to_onnx(net, input_shape=None, **options):
    """See :func:`tuckerref.onnx_io.writer.to_onnx`."""
    from .writer import to_onnx as _to_onnx
    return _to_onnx(net, input_shape=input_shape, **options)


def export_onnx(net, path, input_shape=None, **options):
    """See :func:`tuckerref.onnx_io.writer.export_onnx`."""
    from .writer import export_onnx as _export
    return _export(net, path, input_shape=input_shape, **options)


__all__ = ["require_onnx", "read_onnx", "import_onnx", "to_onnx", "export_onnx"]
