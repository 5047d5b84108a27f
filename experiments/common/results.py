"""The results tables: one CSV row per finished run, written atomically under a file lock.

Columns (design.md): ``experiment, config_name, run_name, divergence, alpha, reference_measure,
seed, steps``, then every metric of the experiment, then ``wall_time_s, hardware, git_commit,
timestamp, config`` (the full config as JSON). A run is identified by ``(experiment, config_name,
run_name)``: writing a row replaces the row of the same run, so a repeated run never duplicates
one. Each write rewrites the table into a temporary file and renames it over the old one, inside a
lock (a ``.<name>.lock`` file next to the table), so concurrent runs and crashes never leave a
partial row.
"""

from __future__ import annotations

import csv
import datetime
import os
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import filelock

import fdiv
from experiments.common import sharding

KEY = ("experiment", "config_name", "run_name")
LEADING = (*KEY, "divergence", "alpha", "reference_measure", "seed", "steps")
TRAILING = ("wall_time_s", "hardware", "git_commit", "timestamp", "config")


def leading_columns(experiment: str, config: Any, run_name: str, steps: int) -> dict[str, Any]:
    """The ``LEADING`` columns of a run's row, from its config (``loss.divergence``, ``loss.q``,
    ``seed``, ``name``); ``alpha`` is the α of an α-divergence, empty otherwise."""
    generator = fdiv.get_generator(config.loss.divergence)
    return {
        "experiment": experiment,
        "config_name": config.name,
        "run_name": run_name,
        "divergence": config.loss.divergence,
        "alpha": getattr(generator, "alpha", None),
        "reference_measure": config.loss.q,
        "seed": config.seed,
        "steps": steps,
    }


def _lock(path: Path) -> filelock.FileLock:
    return filelock.FileLock(path.with_name(f".{path.name}.lock"))


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """All rows of the table (empty if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def done_runs(path: str | Path) -> set[tuple[str, ...]]:
    """The ``KEY`` tuples of the runs that have a row."""
    return {tuple(row[k] for k in KEY) for row in read_rows(path)}


def write_row(path: str | Path, row: dict[str, Any]) -> None:
    """Adds ``row`` to the table at ``path``, replacing any row of the same run."""
    missing = [k for k in (*LEADING, *TRAILING) if k not in row]
    if missing:
        raise ValueError(f"result row lacks columns {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = {k: _cell(v) for k, v in row.items()}
    with _lock(path):
        rows = [r for r in read_rows(path) if any(r[k] != new[k] for k in KEY)]
        rows.append(new)
        _write_table(path, rows, _columns(rows))


def replace_run_rows(path: str | Path, run_key: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Replaces every row of the run ``run_key`` (its ``KEY`` columns) in the table at ``path``
    by ``rows`` (e.g. a run's validation curve, one row per step), atomically and under the
    table's lock: a crash leaves the old table or the new one, never half of a run's rows.
    Columns keep their order of first appearance."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = tuple(_cell(run_key[k]) for k in KEY)
    new = [{k: _cell(v) for k, v in row.items()} for row in rows]
    with _lock(path):
        kept = [r for r in read_rows(path) if tuple(r[k] for k in KEY) != key]
        all_rows = kept + new
        columns: dict[str, None] = {}
        for row in all_rows:
            columns.update((k, None) for k in row)
        _write_table(path, all_rows, list(columns))


def _write_table(path: Path, rows: list[dict[str, str]], columns: list[str]) -> None:
    """Writes a temporary file beside ``path``, syncs it and renames it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # Shortest string that round-trips exactly.
    return str(value)


def _columns(rows: Iterable[dict[str, str]]) -> list[str]:
    """Leading columns, metrics in order of first appearance, trailing columns."""
    metrics: dict[str, None] = {}
    for row in rows:
        metrics.update((k, None) for k in row if k not in LEADING and k not in TRAILING)
    return [*LEADING, *metrics, *TRAILING]


_REPO = Path(__file__).resolve().parents[2]


def git_commit(repo: str | Path = _REPO) -> str:
    """HEAD's commit; ``-dirty`` when tracked files under fdiv/ or experiments/ have changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "fdiv", "experiments")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def provenance(config_json: str) -> dict[str, str]:
    """The trailing columns but the wall time: hardware, git commit, timestamp, config."""
    return {
        "hardware": sharding.hardware(),
        "git_commit": git_commit(),
        "timestamp": timestamp(),
        "config": config_json,
    }


def timestamp() -> str:
    """Now, in UTC, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
