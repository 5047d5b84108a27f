"""Shared fixtures for the fdiv tests.

Compiling the root solvers dominates the run time of the suite, so:

* the JAX persistent compilation cache is switched on (a directory under the system temp dir,
  shared by the xdist workers and by later runs); set ``FDIV_TEST_JAX_CACHE=0`` to switch it off,
  or to a path to move it;
* the core tests compute everything one divergence needs in one compiled function, and under
  ``pytest -n N`` all the tests of one divergence run on the same worker (xdist's ``loadgroup``
  scheduling, switched on here for ``-n`` runs), so each divergence is compiled once.
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


# Known library failures, listed here in one place so that they stay visible: each is marked
# xfail(strict=True), so a fix makes the suite fail until its line is removed. See the notes
# on issues 2 and 3.
KNOWN_FAILURES: dict[str, str] = {
    "tests/test_operators.py::test_logits_scaled_by_the_caller_inside_the_jit_near_a_pole": (
        "logits scaled inside the caller's jit are recomputed in each solver pass with "
        "different rounding (README, Status)"
    ),
}


_GROUPED_FILES = ("test_operators.py", "test_losses.py", "test_solvers.py")


def pytest_configure(config):
    # `pytest -n N` schedules with "load"; "loadgroup" is the same for tests without an
    # xdist_group mark and keeps the marked ones (below) together on one worker.
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadgroup"
    if hasattr(config, "workerinput"):  # an xdist worker: it must tag the grouped tests
        config.option.loadgroup = True


@pytest.hookimpl(tryfirst=True)  # before xdist renames the grouped tests' node ids
def pytest_collection_modifyitems(config, items):
    for item in items:
        reason = KNOWN_FAILURES.get(item.nodeid)
        if reason is not None:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.path.name in _GROUPED_FILES and "divergence" in params:
            item.add_marker(pytest.mark.xdist_group(f"fdiv-{params['divergence']}"))
