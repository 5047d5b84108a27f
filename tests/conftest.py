"""Shared fixtures for the fdiv tests.

Compiling the root solvers dominates the run time of the suite, so the JAX persistent compilation
cache is switched on (a directory under the system temp dir, shared by the xdist workers and by
later runs). Set ``FDIV_TEST_JAX_CACHE=0`` to switch it off, or to a path to move it.
"""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
import pytest

_cache = os.environ.get(
    "FDIV_TEST_JAX_CACHE", os.path.join(tempfile.gettempdir(), "fdiv-jax-cache")
)
if _cache != "0":
    jax.config.update("jax_compilation_cache_dir", _cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture
def x64():
    """Enable float64 for the duration of one test only (never globally)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)
