"""Helpers for the experiment tests (a distinct name: `conftest` is taken by tests/)."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python that imports this checkout's experiments, on CPU."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": pythonpath, "JAX_PLATFORMS": "cpu", **extra}
