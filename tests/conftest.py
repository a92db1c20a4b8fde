"""Shared test settings: a Hypothesis profile sized for the 2-core CI budget, and a seeded rng fixture.

Profiles (choose with the environment variable ``TUCKERREF_HYPOTHESIS_PROFILE``):

* ``fast`` (default): no deadline (the first call of a Numba kernel compiles it), at most 20
  examples unless a test asks for another number with ``@settings``.
* ``ci``: as ``fast`` but derandomized (examples derived from each test), the default when the
  environment variable ``CI`` is set: a CI verdict is then reproducible, while local runs keep
  drawing new examples.
* ``thorough``: 10x the examples, for an occasional long local run.
"""
from __future__ import annotations

import os
import zlib

# The suite's time is mostly Numba compiling kernels (about 180 of 250 s from a fresh clone). LLVM's
# optimisation level 1 compiles them in about 60 % of the time at level 3 and computes the same
# values: the register tiles are explicit vector IR, and no test depends on speed. Set before
# anything imports Numba; worker processes the tests start inherit it. NUMBA_OPT=3 in the
# environment tests the kernels exactly as they run elsewhere. The kernels' cache stamp records
# the level, so kernels compiled here are not reused at level 3 (tuckerref.kernels._cache).
os.environ.setdefault("NUMBA_OPT", "1")

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("fast", deadline=None, max_examples=20,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, max_examples=20, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, max_examples=200,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("TUCKERREF_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "fast"))


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A NumPy Generator seeded from the test's node id: reproducible, and different per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
