"""Keep Numba's on-disk kernel cache in step with the kernels' sources.

Numba (``cache=True``) files a compiled kernel under the source file that defines it and checks
only that file's time stamp before reusing it. A kernel also contains what it calls from other
files: the intrinsics of :mod:`.simd`, ``pool._nan_max`` in the fused pooling. After one of those
changes, the old machine code would be loaded as if nothing had (Numba's documented limitation,
numba/numba#1833). So the kernels package stamps its cache folder with a hash of all its sources,
and drops the cached kernels when the hash differs. The stamp also records LLVM's optimisation level
(``NUMBA_OPT``), which Numba's cache does not key on either: the test suite compiles at level 1
(tests/conftest.py), and a later run at the default level 3 must not load those slower kernels.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

STAMP = "tuckerref-kernel-sources.sha256"


def sources_digest(package_dir: Path) -> str:
    """SHA-256 over the names and contents of the package's .py files, in name order."""
    digest = hashlib.sha256()
    for path in sorted(Path(package_dir).glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def optimisation_level() -> str:
    """The LLVM optimisation level Numba compiles at in this process (``NUMBA_OPT``; 3 by default)."""
    from numba.core import config
    return str(int(config.OPT))


def cache_stamp(package_dir: Path) -> str:
    """What the cache folder's stamp must say for its kernels to be reused: the sources' digest and
    the optimisation level."""
    return f"{sources_digest(package_dir)} opt={optimisation_level()}"


def drop_stale_kernels(package_dir: Path) -> bool:
    """Delete the package's cached kernels (``__pycache__/*.nbi``, ``*.nbc``) if its sources or the
    optimisation level changed (:func:`cache_stamp`).

    Returns True when cached kernels were dropped. Does nothing where Numba keeps its cache
    elsewhere (``NUMBA_CACHE_DIR``) or the folder cannot be written (then Numba cannot cache
    either, so nothing stale can be there from this installation).
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return False
    cache = Path(package_dir) / "__pycache__"
    stamp = cache / STAMP
    digest = cache_stamp(package_dir)
    try:
        if stamp.read_text().strip() == digest:
            return False
    except OSError:
        pass
    dropped = False
    try:
        cache.mkdir(exist_ok=True)
        for path in list(cache.glob("*.nbi")) + list(cache.glob("*.nbc")):
            path.unlink(missing_ok=True)
            dropped = True
        tmp = stamp.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(digest + "\n")
        os.replace(tmp, stamp)
    except OSError:
        return dropped
    return dropped
