"""HDF5 weight files: one dataset per parameter under its PyTorch name, written atomically.

Layout: root attribute ``format = "tuckerref-weights"``, ``version``, ``meta`` (JSON object), and
``spec`` (JSON module tree, when saved from a network); one dataset per ``state_dict``
entry, with a '.'-separated name stored as-is ("c1.0.weight"), carrying attribute ``sha256``:
the SHA-256 of its dtype, shape and bytes (:func:`array_digest`), checked at every load so that
bytes changed inside a parameter are reported rather than loaded. Files written before the
checksums existed (no ``sha256`` attribute) load as before.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

FORMAT = "tuckerref-weights"
VERSION = 1


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; the result should look like any other file
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def open_h5(path, what="file"):
    """Open an HDF5 file for reading with a clear error for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what} {path} does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{what} {path} is not a readable HDF5 file (truncated or foreign?): {exc}") from None


def array_digest(value) -> str:
    """SHA-256 (hex) of an array's dtype (``dtype.str``), shape and C-order bytes."""
    a = np.ascontiguousarray(value)
    h = hashlib.sha256(f"{a.dtype.str}|{list(a.shape)}|".encode())
    h.update(memoryview(a).cast("B") if a.size else b"")
    return h.hexdigest()


def save_weights(path, state_dict, meta=None, spec=None):
    """Write ``state_dict`` (name -> array) to ``path`` atomically, with JSON ``meta`` and ``spec``."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["meta"] = json.dumps(meta or {})
            if spec is not None:
                f.attrs["spec"] = json.dumps(spec)
            f.attrs["names"] = json.dumps(list(state_dict))
            for name, value in state_dict.items():
                if "/" in name:
                    raise ValueError(f"parameter name {name!r} contains '/', which HDF5 reads as a group path")
                value = np.asarray(value)
                if value.dtype.kind not in "biuf":
                    raise TypeError(f"parameter {name!r} has dtype {value.dtype}; weights must be numbers")
                ds = f.create_dataset(name, data=value)
                ds.attrs["sha256"] = array_digest(value)
    return Path(path)


def _read(path):
    with open_h5(path, "weights file") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"weights file {path} is not a tuckerref weights file "
                             f"(format attribute {f.attrs.get('format')!r}, expected {FORMAT!r})")
        try:
            names = json.loads(f.attrs["names"])
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"attribute 'names' must be a JSON list of strings, got {type(names).__name__}")
            state = OrderedDict((name, _read_array(f, name, path)) for name in names)
            meta = json.loads(f.attrs.get("meta", "{}"))
            spec = json.loads(f.attrs["spec"]) if "spec" in f.attrs else None
        except (KeyError, OSError, ValueError, TypeError) as exc:
            raise ValueError(f"weights file {path} is damaged: {exc}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"weights file {path}: attribute 'meta' must be a JSON object, got {type(meta).__name__}")
    if spec is not None and not isinstance(spec, dict):
        raise ValueError(f"weights file {path}: attribute 'spec' must be a JSON object, got {type(spec).__name__}")
    return state, meta, spec


def _read_array(f, name, path):
    """Dataset ``name`` as an array: numeric, and equal to its stored checksum when it has one."""
    if name not in f or not isinstance(f[name], h5py.Dataset):
        raise ValueError(f"parameter {name!r} is listed but has no dataset")
    ds = f[name]
    if ds.dtype.kind not in "biuf":
        raise ValueError(f"parameter {name!r} has dtype {ds.dtype}; weights must be numbers")
    value = ds[()]
    expected = ds.attrs.get("sha256")
    if expected is not None:
        if isinstance(expected, bytes):
            expected = expected.decode("ascii", "replace")
        if array_digest(value) != str(expected):
            raise ValueError(f"parameter {name!r} does not match its checksum (the file was changed "
                             f"or corrupted after it was written)")
    return value


def load_weights(path):
    """Read a weights file: returns ``(state_dict, meta)``."""
    state, meta, _ = _read(path)
    return state, meta


def save_model(path, net, meta=None):
    """Save a network's parameters together with its architecture spec (and its input shape, if known)."""
    meta = dict(meta or {})
    if getattr(net, "input_shape", None) is not None:
        meta.setdefault("input_shape", list(net.input_shape))
    return save_weights(path, net.state_dict(), meta=meta, spec=net.spec())


def _build(spec, path, where):
    """:func:`tuckerref.nn.from_spec` with each module of the tree checked, so that a bad entry is
    reported with the file and the module's name (``where``)."""
    from .nn import Sequential, from_spec
    if not isinstance(spec, dict):
        raise ValueError(f"weights file {path}: spec of {where} must be a JSON object, got {type(spec).__name__}")
    kind, config = spec.get("type"), spec.get("config", {})
    if kind == "Sequential":
        children = spec.get("children", [])
        if not isinstance(children, list) or not all(isinstance(c, list) and len(c) == 2 and isinstance(c[0], str)
                                                      for c in children):
            raise ValueError(f"weights file {path}: children of {where} must be a list of [name, spec] pairs")
        return Sequential(OrderedDict((name, _build(child, path, name if where == "network" else f"{where}.{name}"))
                                      for name, child in children))
    if not isinstance(config, dict):
        raise ValueError(f"weights file {path}: config of {where} ({kind}) must be a JSON object")
    try:
        return from_spec(spec)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"weights file {path}: layer {where!r} ({kind}) cannot be built from {config}: {exc}") from None


def load_model(path):
    """Rebuild a network saved by :func:`save_model`: returns ``(net, meta)``."""
    state, meta, spec = _read(path)
    if spec is None:
        raise ValueError(f"weights file {path} has no architecture spec; build the network and use load_weights()")
    net = _build(spec, path, "network")
    params = dict(net.named_parameters())
    for name, value in state.items():
        if name in params and np.asarray(value).dtype.kind != "f":
            raise ValueError(f"weights file {path}: parameter {name!r} has dtype {np.asarray(value).dtype}; "
                             f"parameters must be floating point")
    try:
        net.load_state_dict(state)
    except ValueError as exc:
        raise ValueError(f"weights file {path} does not fit its architecture spec: {exc}") from None
    first_leaf = next((m for _, m in net.named_modules() if m.parameters() and not m._modules), None)
    if first_leaf is not None:
        first_leaf.needs_input_grad = False
    if "input_shape" in meta:
        net.input_shape = tuple(meta["input_shape"])
    net.eval()
    return net, meta
