"""HDF5 weight files: one dataset per parameter under its PyTorch name, written atomically.

Layout: root attribute ``format = "tuckerref-weights"``, ``version``, ``meta`` (JSON), and
``spec`` (JSON module tree, when saved from a network); one dataset per ``state_dict``
entry, with a '.'-separated name stored as-is ("c1.0.weight").
"""
from __future__ import annotations

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
                f.create_dataset(name, data=np.asarray(value))
    return Path(path)


def _read(path):
    with open_h5(path, "weights file") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"weights file {path} is not a tuckerref weights file "
                             f"(format attribute {f.attrs.get('format')!r}, expected {FORMAT!r})")
        try:
            names = json.loads(f.attrs["names"])
            state = OrderedDict((name, f[name][()]) for name in names)
            meta = json.loads(f.attrs.get("meta", "{}"))
            spec = json.loads(f.attrs["spec"]) if "spec" in f.attrs else None
        except (KeyError, OSError, ValueError) as exc:
            raise ValueError(f"weights file {path} is damaged: {exc}") from None
    return state, meta, spec


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


def load_model(path):
    """Rebuild a network saved by :func:`save_model`: returns ``(net, meta)``."""
    from .nn import from_spec
    state, meta, spec = _read(path)
    if spec is None:
        raise ValueError(f"weights file {path} has no architecture spec; build the network and use load_weights()")
    net = from_spec(spec)
    net.load_state_dict(state)
    first_leaf = next((m for _, m in net.named_modules() if m.parameters() and not m._modules), None)
    if first_leaf is not None:
        first_leaf.needs_input_grad = False
    if "input_shape" in meta:
        net.input_shape = tuple(meta["input_shape"])
    net.eval()
    return net, meta
