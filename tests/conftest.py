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
