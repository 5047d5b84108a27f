"""Run a sweep on this machine: a pool of training processes that skips finished runs.

    python -m experiments.sweep classification [--max-parallel N] [--dry-run]
        [--filter SUBSTRING] [--set KEY=VALUE ...]

A sweep is code: ``experiments/<name>/sweeps.py`` defines ``SWEEP``, a base config and the list of
runs (a name and config overrides each). A run whose row already exists in the results table
(same experiment, config name and run name) is skipped, so an interrupted sweep continues where it
stopped, and a run interrupted mid-training resumes from its checkpoint. Relative paths (results
table, run directories, and the logs ``runs/sweeps/<name>/<run name>.log``) are relative to the
working directory; run it from the repository root. ``--set`` adds an override to every run (e.g.
``--set train.steps=10 --set results_csv=/tmp/r.csv``). The exit status is non-zero when a run
failed; the rows of the runs that succeeded are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

from experiments.common import config as config_lib
from experiments.common import results

REPO = Path(__file__).resolve().parents[1]
# One XLA thread per process when several share the CPU: two single-threaded runs on two cores
# finish sooner than two runs that each spread over both.
_SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    overrides: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Sweep:
    experiment: str
    config: str  # Base config file, relative to the repository root.
    runs: tuple[Run, ...]

    @property
    def config_path(self) -> Path:
        return REPO / self.config


def command(sweep: Sweep, run: Run, extra: Sequence[str]) -> list[str]:
    """The command line of one run: the experiment's entry point with the run's overrides."""
    overrides = [f"--config.{k}={v}" for k, v in run.overrides.items()]
    return [
        sys.executable,
        "-m",
        f"experiments.{sweep.experiment}",
        f"--config={sweep.config_path}",
        *overrides,
        f"--config.run_name={run.name}",
        *[f"--config.{s}" for s in extra],
    ]


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__)
    parser.add_argument("experiment", help="package under experiments/ with a sweeps.py")
    parser.add_argument("--max-parallel", type=int, default=1, help="runs at the same time")
    parser.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    parser.add_argument("--filter", default="", help="only runs whose name contains this")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run"
    )
    args = parser.parse_args(argv)
    if args.max_parallel < 1:
        parser.error("--max-parallel must be ≥ 1")
    if any("=" not in s for s in args.set):
        parser.error("--set takes KEY=VALUE")
    return args


def _execute(cmd: list[str], log_path: Path, env: dict[str, str]) -> tuple[int, float]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    with log_path.open("w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    return code, time.perf_counter() - began


def main(argv: Sequence[str]) -> int:
    args = _parse_args(argv)
    sweep: Sweep = importlib.import_module(f"experiments.{args.experiment}.sweeps").SWEEP
    base = config_lib.load_file(sweep.config_path)
    results_csv = dict(s.split("=", 1) for s in args.set).get("results_csv", base.results_csv)
    done = results.done_runs(results_csv)
    runs = [r for r in sweep.runs if args.filter in r.name]
    todo = [r for r in runs if (sweep.experiment, base.name, r.name) not in done]
    print(
        f"{sweep.experiment}: {len(runs)} runs, {len(runs) - len(todo)} done in {results_csv}, "
        f"{len(todo)} to run, {args.max_parallel} at a time",
        flush=True,
    )
    if args.dry_run:
        for run in todo:
            print(" ".join(command(sweep, run, args.set)))
        return 0

    # The runs import experiments.* from this checkout, whatever the working directory.
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=pythonpath, TF_CPP_MIN_LOG_LEVEL="3")
    if args.max_parallel > 1:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {_SINGLE_THREAD_XLA}".strip()
    log_dir = Path("runs/sweeps") / sweep.experiment
    failed = []
    with futures.ThreadPoolExecutor(args.max_parallel) as pool:
        jobs = {
            pool.submit(_execute, command(sweep, r, args.set), log_dir / f"{r.name}.log", env): r
            for r in todo
        }
        for i, job in enumerate(futures.as_completed(jobs), 1):
            run = jobs[job]
            code, seconds = job.result()
            status = "ok" if code == 0 else f"FAILED (exit {code}, log {log_dir / run.name}.log)"
            print(f"[{i}/{len(todo)}] {run.name}: {status} in {seconds:.0f} s", flush=True)
            if code:
                failed.append(run.name)
    if failed:
        print(f"{len(failed)} failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
