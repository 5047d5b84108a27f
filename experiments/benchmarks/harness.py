"""What the benchmarks share: compiled peak memory, interleaved timing, provenance, the CSV.

Timing: every candidate of one configuration is compiled first, called once (warm-up), then
called in rounds, one call of each candidate per round and the starting candidate rotating, so
that a slow-down of the machine (it is shared) hits all candidates alike; each candidate's time
is the median over the rounds, and ratios are taken between candidates of the same rounds.

Peak memory: XLA's compiled ``memory_analysis()``: the temporaries plus the outputs of the
executable (its inputs are the same for every candidate and are not counted).
"""

from __future__ import annotations

import csv
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

from experiments.common import results, sharding

RESULTS_DIR = Path(__file__).resolve().parents[2] / "results" / "benchmarks"
PROVENANCE = ("hardware", "device_kind", "jax_version", "git_commit", "timestamp")


def progress(message: str) -> None:
    """One progress line on stderr, flushed at once (runs take minutes)."""
    print(message, file=sys.stderr, flush=True)


def provenance() -> dict[str, str]:
    """The hardware, software and code of this run: identical in all its rows."""
    return {
        "hardware": sharding.hardware(),
        "device_kind": jax.devices()[0].device_kind,
        "jax_version": jax.__version__,
        "git_commit": results.git_commit(),
        "timestamp": results.timestamp(),
    }


def compile_with_memory(fn: Callable, *args: Any) -> tuple[Callable, int | None]:
    """``fn`` jit-compiled for ``args``, and its peak memory in bytes (temporaries + outputs).

    The peak is ``None`` where the backend gives no memory analysis.
    """
    compiled = jax.jit(fn).lower(*args).compile()
    stats = compiled.memory_analysis()
    if stats is None:
        return compiled, None
    return compiled, int(stats.temp_size_in_bytes + stats.output_size_in_bytes)


def time_interleaved(
    calls: dict[Any, Callable[[], Any]],
    repeats: int,
    *,
    time_budget_s: float | None = None,
    on_warm_up: Callable[[Any, Any], None] | None = None,
) -> tuple[dict[Any, float], int]:
    """Median wall time of each call over interleaved rounds, and the number of rounds.

    Each call is made once to warm up; ``on_warm_up(name, output)`` may inspect that output
    (which is then dropped: outputs can be large). With ``time_budget_s`` the rounds are cut
    (to no fewer than 3) so that they take about that long in all, judged from the warm-up.
    """
    warm_up = {}
    for name, call in calls.items():
        start = time.perf_counter()
        output = jax.block_until_ready(call())
        warm_up[name] = time.perf_counter() - start
        if on_warm_up is not None:
            on_warm_up(name, output)
        del output
    if time_budget_s is not None:
        per_round = sum(warm_up.values())
        repeats = max(3, min(repeats, int(time_budget_s / max(per_round, 1e-9))))
    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            jax.block_until_ready(calls[name]())
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}, repeats


def write_csv(path: Path, rows: Sequence[dict[str, Any]], key: Sequence[str] | None = None) -> None:
    """Writes ``rows`` to the table at ``path`` atomically (a temporary file renamed over it).

    Without ``key`` (a run of the whole grid) the table is replaced. With ``key`` (a run of
    part of it) only the rows with the same ``key`` columns as a new row are replaced; the
    others are kept, each with the provenance of its own run. Columns are in order of first
    appearance, the provenance columns last.
    """
    new_keys = {tuple(str(row[k]) for k in key or ()) for row in rows}
    kept = []
    if key is not None and path.exists():
        with path.open(newline="") as f:
            kept = [r for r in csv.DictReader(f) if tuple(r[k] for k in key) not in new_keys]
    rows = [*kept, *rows]
    columns: dict[str, None] = {}
    for row in rows:
        columns.update((k, None) for k in row if k not in PROVENANCE)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, [*columns, *PROVENANCE], restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the table is for everyone
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def mib(n_bytes: int | None) -> str:
    return "n/a" if n_bytes is None else f"{n_bytes / 2**20:.1f} MiB"
