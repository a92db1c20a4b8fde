"""The kernels' on-disk cache is dropped when any kernel source changes (Numba checks only the
defining file's time stamp, so a changed intrinsic would otherwise leave old machine code in use)."""
from tuckerref.kernels import _cache
from tuckerref.kernels._cache import STAMP, drop_stale_kernels


def _package(tmp_path):
    (tmp_path / "simd.py").write_text("x = 1\n")
    (tmp_path / "conv.py").write_text("y = 2\n")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    for name in ("conv.k-10.py311.nbi", "conv.k-10.py311.1.nbc", "conv.cpython-311.pyc"):
        (cache / name).write_text("")
    return cache


def test_changed_sources_drop_the_cached_kernels_and_only_them(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    cache = _package(tmp_path)
    assert drop_stale_kernels(tmp_path)  # no stamp yet: nothing proves the cache current
    assert sorted(p.name for p in cache.iterdir()) == ["conv.cpython-311.pyc", STAMP]
    (cache / "conv.k-10.py311.nbi").write_text("")  # Numba caches again
    assert not drop_stale_kernels(tmp_path)  # same sources: the cache stays
    assert (cache / "conv.k-10.py311.nbi").exists()
    (tmp_path / "simd.py").write_text("x = 3\n")  # a callee's file changes, the kernel's does not
    assert drop_stale_kernels(tmp_path)
    assert not (cache / "conv.k-10.py311.nbi").exists()


def test_a_cache_kept_elsewhere_is_left_to_numba(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "elsewhere"))
    cache = _package(tmp_path)
    assert not drop_stale_kernels(tmp_path)
    assert len(list(cache.glob("*.nb*"))) == 2


def test_another_optimisation_level_drops_the_cached_kernels(tmp_path, monkeypatch):
    """Kernels compiled at one LLVM optimisation level (the test suite's 1) are not reused at another."""
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    cache = _package(tmp_path)
    monkeypatch.setattr(_cache, "optimisation_level", lambda: "1")
    drop_stale_kernels(tmp_path)
    (cache / "conv.k-10.py311.nbi").write_text("")
    assert not drop_stale_kernels(tmp_path)
    monkeypatch.setattr(_cache, "optimisation_level", lambda: "3")
    assert drop_stale_kernels(tmp_path)
    assert not (cache / "conv.k-10.py311.nbi").exists()
