"""Run a sweep: on this machine (a pool of training processes) or on SLURM (through submitit).

    python -m experiments.sweep <name> [--max-parallel N] [--dry-run]
        [--filter SUBSTRING] [--set KEY=VALUE ...]
    python -m experiments.sweep <name> --executor slurm [--partition P] [--gpus-per-node N]
        [--cpus-per-task N] [--mem-gb G] [--time MINUTES] [--array-parallelism K]
        [--slurm-arg KEY=VALUE ...]

A sweep is code: ``experiments/<name>/sweeps.py`` defines ``SWEEP``, a base config and the list of
runs (a name and config overrides each). A run whose row already exists in the results table
(same experiment, config name and run name) is skipped, so an interrupted sweep continues where it
stopped, and a run interrupted mid-training resumes from its checkpoint. Relative paths (results
table, run directories, and the logs ``runs/sweeps/<name>/<run name>.log``) are relative to the
working directory; run it from the repository root. ``--set`` adds an override to every run (e.g.
``--set train.steps=10 --set results_csv=/tmp/r.csv``). The exit status is non-zero when a run
failed; the rows of the runs that succeeded are kept.

``--executor slurm`` submits the runs as one SLURM job array (one run per job, on one node with
``--gpus-per-node`` GPUs, at most ``--array-parallelism`` at a time) and waits for them, printing
the same progress and summary. The jobs run this checkout's code with the launcher's Python, so
both must be on a file system the nodes share; submitit's own logs go to
``runs/sweeps/<name>/submitit/``. A job killed by its time limit counts as failed; rerunning the
sweep resumes it from its checkpoint. ``--cluster local`` (or ``debug``) runs the same path through
submitit's local (or in-process debug) executor, to try a sweep's SLURM set-up on this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import submitit

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


@dataclasses.dataclass(frozen=True)
class Task:
    """One run to launch: its command line and the file that receives its output."""

    run: Run
    cmd: list[str]
    log: Path


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a run ended: the exit status of its process (-1 when its job died before it could
    report one), its duration, and why it failed when its log cannot say (a job the scheduler
    killed)."""

    code: int
    seconds: float
    error: str = ""


def available_sweeps() -> list[str]:
    """The names ``python -m experiments.sweep`` accepts: packages with a ``sweeps.py``."""
    return sorted(p.parent.name for p in (REPO / "experiments").glob("*/sweeps.py"))


def load_sweep(name: str) -> Sweep:
    """``experiments/<name>/sweeps.py``'s ``SWEEP``; an unknown name lists the valid ones."""
    valid = available_sweeps()
    if name not in valid:
        raise ValueError(f"unknown sweep {name!r}; valid sweeps: {', '.join(valid)}")
    return importlib.import_module(f"experiments.{name}.sweeps").SWEEP


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
    parser = argparse.ArgumentParser(
        prog="python -m experiments.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("experiment", help=f"a sweep: {', '.join(available_sweeps())}")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local")
    parser.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    parser.add_argument("--filter", default="", help="only runs whose name contains this")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run"
    )
    local = parser.add_argument_group("local executor")
    local.add_argument("--max-parallel", type=int, default=1, help="runs at the same time")
    slurm = parser.add_argument_group("slurm executor (one job per run, in one job array)")
    slurm.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    slurm.add_argument("--gpus-per-node", type=int, default=1, help="GPUs of each run")
    slurm.add_argument("--cpus-per-task", type=int, default=8, help="CPU cores of each run")
    slurm.add_argument("--mem-gb", type=int, help="memory of each run (default: the cluster's)")
    slurm.add_argument("--time", type=int, default=240, metavar="MINUTES", help="limit per run")
    slurm.add_argument(
        "--array-parallelism", type=int, default=64, help="runs of the array at the same time"
    )
    slurm.add_argument(
        "--slurm-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other sbatch option, e.g. account=my_account or qos=high",
    )
    slurm.add_argument(
        "--cluster",
        choices=("slurm", "local", "debug"),
        default="slurm",
        help="submitit backend: SLURM, or submitit's local/debug executor on this machine",
    )
    args = parser.parse_args(argv)
    for option, least in [
        ("max_parallel", 1),
        ("gpus_per_node", 0),
        ("cpus_per_task", 1),
        ("time", 1),
        ("array_parallelism", 1),
    ]:
        if getattr(args, option) < least:
            parser.error(f"--{option.replace('_', '-')} must be ≥ {least}")
    if any("=" not in s for s in (*args.set, *args.slurm_arg)):
        parser.error("--set and --slurm-arg take KEY=VALUE")
    return args


def _execute(cmd: list[str], log: Path, cwd: Path, single_thread_xla: bool) -> tuple[int, float]:
    """Runs one command with its output into ``log``: ``(exit status, seconds)``.

    Runs in the launcher (local executor) or in a SLURM job, so the environment is completed
    here, on top of the one the job got (its GPUs, its SLURM variables).
    """
    # The runs import experiments.* from this checkout, whatever the working directory.
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=pythonpath, TF_CPP_MIN_LOG_LEVEL="3")
    if single_thread_xla:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {_SINGLE_THREAD_XLA}".strip()
    log.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd).returncode
    return code, time.perf_counter() - began


def _run_local(tasks: list[Task], args: argparse.Namespace) -> Iterator[tuple[Task, Outcome]]:
    """A pool of ``--max-parallel`` processes on this machine; outcomes as runs finish."""
    single_thread = args.max_parallel > 1
    with futures.ThreadPoolExecutor(args.max_parallel) as pool:
        jobs = {pool.submit(_execute, t.cmd, t.log, Path.cwd(), single_thread): t for t in tasks}
        for job in futures.as_completed(jobs):
            yield jobs[job], Outcome(*job.result())


def _run_slurm(
    tasks: list[Task], args: argparse.Namespace, folder: Path
) -> Iterator[tuple[Task, Outcome]]:
    """One job per run, submitted as a job array through submitit; outcomes as jobs finish."""
    executor = submitit.AutoExecutor(folder=folder, cluster=args.cluster)
    # The job unpickles _execute, so it imports experiments.* from this checkout.
    setup = [f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}"]
    executor.update_parameters(
        name=f"sweep-{args.experiment}",
        nodes=1,
        tasks_per_node=1,  # One process drives all the node's GPUs (jax.sharding).
        gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task,
        mem_gb=args.mem_gb,
        timeout_min=args.time,
        slurm_partition=args.partition,
        slurm_array_parallelism=args.array_parallelism,
        slurm_additional_parameters=dict(s.split("=", 1) for s in args.slurm_arg),
        slurm_setup=setup,
        local_setup=setup,
    )
    with executor.batch():
        jobs = [executor.submit(_execute, t.cmd, t.log, Path.cwd(), False) for t in tasks]
    print(f"submitted {len(jobs)} jobs ({jobs[0].job_id}, ...), submitit logs {folder}", flush=True)
    task_of = {id(job): task for job, task in zip(jobs, tasks, strict=True)}
    # Poll the scheduler gently; local jobs can be checked often.
    poll_s = 30.0 if args.cluster == "slurm" else 0.5
    for job in submitit.helpers.as_completed(jobs, poll_frequency=poll_s):
        task = task_of[id(job)]
        try:
            yield task, Outcome(*job.result())
        except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as e:
            # The job itself died (time limit, node failure, preemption): its log says why.
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            yield task, Outcome(-1, 0.0, f"job {job.job_id}: {reason}")


def main(argv: Sequence[str]) -> int:
    args = _parse_args(argv)
    try:
        sweep = load_sweep(args.experiment)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    base = config_lib.load_file(sweep.config_path)
    results_csv = dict(s.split("=", 1) for s in args.set).get("results_csv", base.results_csv)
    done = results.done_runs(results_csv)
    runs = [r for r in sweep.runs if args.filter in r.name]
    todo = [r for r in runs if (sweep.experiment, base.name, r.name) not in done]
    at_once = args.max_parallel if args.executor == "local" else args.array_parallelism
    print(
        f"{sweep.experiment}: {len(runs)} runs, {len(runs) - len(todo)} done in {results_csv}, "
        f"{len(todo)} to run, {at_once} at a time ({args.executor} executor)",
        flush=True,
    )
    if args.dry_run:
        for run in todo:
            print(shlex.join(command(sweep, run, args.set)))
        return 0
    if not todo:
        return 0

    began = time.perf_counter()
    log_dir = Path.cwd() / "runs/sweeps" / sweep.experiment
    tasks = [Task(r, command(sweep, r, args.set), log_dir / f"{r.name}.log") for r in todo]
    if args.executor == "local":
        outcomes = _run_local(tasks, args)
    else:
        outcomes = _run_slurm(tasks, args, log_dir / "submitit")
    failed = []
    for i, (task, outcome) in enumerate(outcomes, 1):
        if outcome.code == 0:
            status = "ok"
        else:
            failed.append(task.run.name)
            why = outcome.error or f"exit {outcome.code}"
            status = f"FAILED ({why}, log {task.log})"
        took = f"{outcome.seconds:.0f} s"
        print(f"[{i}/{len(tasks)}] {task.run.name}: {status} in {took}", flush=True)
    minutes = (time.perf_counter() - began) / 60
    print(
        f"{sweep.experiment}: {len(tasks) - len(failed)} ok, {len(failed)} failed, "
        f"{len(runs) - len(todo)} skipped (already done) in {minutes:.1f} min",
        flush=True,
    )
    if failed:
        print(f"{len(failed)} failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
