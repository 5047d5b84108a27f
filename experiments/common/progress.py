"""Progress while training (log lines on the ``experiments`` logger) and the per-run metrics
file (JSON lines).

Each line of ``metrics.jsonl`` is ``{"step": s, "split": "train" | "test", <metric>: value, ...}``.
When a run resumes from step ``s``, lines with a later step (written after the checkpoint the run
resumes from) are dropped, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from absl import logging as absl_logging

log = logging.getLogger("experiments")


def setup_logging() -> None:
    """Progress lines at INFO on stderr; other libraries' absl logs (orbax's) at WARNING only."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


class MetricsWriter:
    """Appends metrics to a JSON-lines file; remembers the last line of each split."""

    def __init__(self, path: str | Path, *, resume_step: int):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.path.exists():
            kept = [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]
            kept = [x for x in kept if x["step"] <= resume_step]
        self.path.write_text("".join(json.dumps(x) + "\n" for x in kept))
        self._last = {x["split"]: x for x in kept}

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        line = {"step": step, "split": split, **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        self._last[split] = line

    def last(self, split: str) -> dict[str, Any]:
        """The last line written for ``split`` (empty if none)."""
        return dict(self._last.get(split, {}))


class Throughput:
    """Examples per second and time left, measured between consecutive calls."""

    def __init__(self, step: int, total_steps: int, examples_per_step: int):
        self._step, self._time = step, time.perf_counter()
        self._total, self._examples = total_steps, examples_per_step

    def update(self, step: int) -> tuple[float, float]:
        """``(examples/s, seconds left)`` since the previous call."""
        now = time.perf_counter()
        steps_per_s = (step - self._step) / max(now - self._time, 1e-9)
        self._step, self._time = step, now
        return steps_per_s * self._examples, (self._total - step) / max(steps_per_s, 1e-9)


def format_line(step: int, total: int, metrics: dict[str, float], rate: float, eta: float) -> str:
    """``step 200/938 | loss 0.4321 | accuracy 0.8750 | 3512 ex/s | ETA 0:00:21``."""
    values = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    eta_text = str(datetime.timedelta(seconds=round(eta)))
    return f"step {step}/{total} | {values} | {rate:.0f} ex/s | ETA {eta_text}"
