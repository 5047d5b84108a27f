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
_BISECT_MASS = (
    "bisect leaves |Σp − 1| above 1e-5 on adversarial rows since p is no longer renormalised "
    "(issue 3)"
)
KNOWN_FAILURES = {
    "tests/test_operators.py::test_float64_check_grads_and_accuracy[js]": (
        "float64 accuracy/check_grads tolerance not met for js (issue 2)"
    ),
    "tests/test_operators.py::test_float64_check_grads_and_accuracy[alpha:1.5]": (
        "float64 accuracy/check_grads tolerance not met for alpha:1.5 (issue 2)"
    ),
    "tests/test_operators.py::test_huge_logits[alpha:-1]": "alpha < 0 with logits of 1e9 (issue 2)",
    "tests/test_losses.py::test_huge_logits[reverse_kl]": (
        "reverse_kl loss with logits of 1e9 is not finite/non-negative (issue 2)"
    ),
    **{
        f"tests/test_solvers.py::test_solver_accuracy[{case}]": _BISECT_MASS
        for case in [
            "hellinger-uniform",
            "reverse_kl-uniform",
            "js-uniform",
            "chi2-unit",
            "alpha:2-unit",
            "alpha:1.7-unit",
            "alpha:3-uniform",
            "alpha:3-unit",
            "alpha:0.5-uniform",
            "alpha:-1-uniform",
        ]
    },
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
