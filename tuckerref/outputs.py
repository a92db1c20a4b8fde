"""Output paths of a command, checked before any work starts, and a fallback when a late save fails.

Every command that writes files calls :func:`check_outputs` first, with each output path under the
option (or argument) name a user typed and the paths the command reads. A path that cannot be
written (its parent is missing or is not a writable directory, it names a directory, or it is one
of the inputs) raises ``ValueError`` naming the option and the path, so that no long run ends with
its result lost and no input is overwritten by an output. Long runs save their result with
:func:`save_or_fallback`: if the final save still fails (the directory was removed or made
read-only during the run, the disk filled up), the result goes to a fallback path instead and the
caller is told where.

This module imports only the standard library, so that a parser may use it cheaply.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["check_output_file", "check_output_dir", "check_outputs", "same_file", "save_or_fallback",
           "fallback_path"]


def same_file(a, b) -> bool:
    """True when paths ``a`` and ``b`` name the same file: equal resolved paths, or
    ``os.path.samefile`` (hard links, bind mounts) when both exist."""
    a, b = Path(a), Path(b)
    try:
        if a.resolve() == b.resolve():
            return True
    except (OSError, RuntimeError):  # a symlink loop: fall through to samefile
        pass
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _writable_dir(directory: Path) -> bool:
    return os.access(directory, os.W_OK | os.X_OK)


def check_output_file(option: str, path, inputs=()) -> Path:
    """Check that file ``path`` (given as ``option``) can be written and is none of ``inputs``.

    Raises ``ValueError`` naming ``option`` and ``path`` when ``path`` is an existing directory,
    its parent directory does not exist, is not a directory or is not writable, or it is the same
    file as one of ``inputs`` (an output must never replace what the command reads). Returns
    ``Path(path)``.
    """
    if path is None or str(path) == "":
        raise ValueError(f"{option}: an output path is required")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a directory; give a file path")
    for inp in inputs:
        if inp is not None and same_file(path, inp):
            raise ValueError(f"{option} {path} is also an input of this command ({inp}); "
                             f"writing it would destroy the input")
    parent = path.parent
    if not parent.exists():
        raise ValueError(f"{option} {path}: directory {parent} does not exist")
    if not parent.is_dir():
        raise ValueError(f"{option} {path}: {parent} is not a directory")
    if not _writable_dir(parent):
        raise ValueError(f"{option} {path}: directory {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK) and not _writable_dir(parent):
        raise ValueError(f"{option} {path} is not writable")
    return path


def check_output_dir(option: str, path, inputs=(), *, create_parents=True) -> Path:
    """Check that directory ``path`` (given as ``option``) can hold the command's files.

    An existing ``path`` must be a writable directory; a missing one must be creatable (its
    nearest existing ancestor is a writable directory; with ``create_parents=False`` its parent
    must exist). No input may lie at ``path`` itself. Raises ``ValueError`` naming ``option`` and
    ``path``; returns ``Path(path)``.
    """
    if path is None or str(path) == "":
        raise ValueError(f"{option}: an output directory is required")
    path = Path(path)
    for inp in inputs:
        if inp is not None and same_file(path, inp):
            raise ValueError(f"{option} {path} is also an input of this command ({inp})")
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{option} {path} exists and is not a directory")
        if not _writable_dir(path):
            raise ValueError(f"{option} {path} is not a writable directory")
        return path
    ancestor = path.parent
    if not create_parents and not ancestor.is_dir():
        raise ValueError(f"{option} {path}: directory {ancestor} does not exist")
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{option} {path}: {ancestor} is not a directory")
    if not _writable_dir(ancestor):
        raise ValueError(f"{option} {path}: directory {ancestor} is not writable")
    return path


def check_outputs(files=None, dirs=None, inputs=()) -> None:
    """Check all outputs of a command at once, before it does any work.

    ``files`` and ``dirs`` map an option name (``"OUT"``, ``"--report"``) to a path (``None``
    entries are skipped); ``inputs`` are the paths the command reads. Two outputs naming the same
    file are refused too. See :func:`check_output_file` and :func:`check_output_dir`.
    """
    inputs = [p for p in inputs if p is not None]
    seen = []
    for option, path in (files or {}).items():
        if path is None:
            continue
        check_output_file(option, path, inputs)
        for other, other_path in seen:
            if same_file(path, other_path):
                raise ValueError(f"{option} and {other} name the same file {path}")
        seen.append((option, path))
    for option, path in (dirs or {}).items():
        if path is not None:
            check_output_dir(option, path, inputs)


def fallback_path(path) -> Path:
    """Where :func:`save_or_fallback` puts a result whose own ``path`` could not be written:
    a fresh file named after it in the temporary directory."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f"{path.stem}-", suffix=path.suffix or ".out")
    os.close(fd)
    return Path(name)


def save_or_fallback(save, path, *, log=print, candidates=()) -> Path:
    """Call ``save(path)``; if it raises ``OSError`` (or ``ValueError`` from a path check), call
    ``save`` on each of ``candidates`` and then on :func:`fallback_path`, and return the path
    written. ``log`` is told why the first save failed and where the result went. If every
    attempt fails the first error is raised."""
    try:
        save(path)
        return Path(path)
    except (OSError, ValueError) as exc:
        first = exc
    for alt in list(candidates) + [None]:
        try:
            target = fallback_path(path) if alt is None else Path(alt)
            save(target)
        except (OSError, ValueError):
            continue
        log(f"could not write {path} ({first}); the result was saved to {target} instead")
        return target
    raise first
