"""What every experiment's command line shares: the ``--config`` flag, the error policy and the
end of a run (the final evaluation and the result row).

An experiment's ``__main__`` calls :func:`run_module` with its ``main``; its ``main(argv, config)``
calls :func:`command_line` with its ``run``; its ``run`` starts with :func:`start` and ends with
:func:`finish`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import app
from ml_collections import config_flags

from experiments.common import config as config_lib
from experiments.common import progress, results, trainer
from experiments.common.progress import log

# Keys that may change between a run and its resumption in every experiment: they do not change
# the trajectory.
RESUMABLE_CHANGES = (
    "distributed",
    "eval.",
    "results_csv",
    "train.checkpoint_every_steps",
    "train.keep_checkpoints",
    "train.log_every_steps",
    "train.stop_after_steps",
)


def default_run_name(divergence: str, q: str, seed: int) -> str:
    """``alpha1.5-uniform-seed0``: the divergence, reference measure and seed, file-name safe."""
    return f"{divergence.replace(':', '')}-{q}-seed{seed}"


def run_module(
    main: Callable[[list[str], ml_collections.ConfigDict], None], default_config: str
) -> None:
    """``python -m experiments.<name> --config=<file> [--config.<key>=<value> ...]``.

    The flag is defined here, when the module runs, not when ``main`` is imported, so that
    tests can import the ``main`` of several experiments into one process.
    """
    flag = config_flags.DEFINE_config_file(
        "config",
        default_config,
        "Config file; override keys with --config.<key>=<value>.",
        lock_config=True,
    )
    app.run(lambda argv: main(argv, flag.value))


def command_line(
    run: Callable[[ml_collections.ConfigDict], Any],
    argv: list[str],
    config: ml_collections.ConfigDict,
    expected_errors: tuple[type[Exception], ...] = (),
) -> None:
    """Runs ``config``; a bad config, missing data or checkpoints (``expected_errors``) or a
    diverged run end the process with a one-line message instead of a traceback."""
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    progress.setup_logging()
    try:
        run(config)
    except (config_lib.ConfigError, trainer.NonFiniteLossError, *expected_errors) as e:
        sys.exit(f"error: {e}")


def start(
    experiment: str,
    config: ml_collections.ConfigDict,
    validate: Callable[[ml_collections.ConfigDict], None],
    resumable_changes: Sequence[str] = (),
) -> tuple[str, Path]:
    """The start of a run: ``(run name, workdir)`` after validating ``config``, joining the
    distributed job if ``config.distributed``, and checking that a workdir left by an earlier
    run holds the same config up to :data:`RESUMABLE_CHANGES` and ``resumable_changes``."""
    validate(config)
    if config.distributed:
        jax.distributed.initialize()
    run_name = config.run_name or default_run_name(
        config.loss.divergence, config.loss.q, config.seed
    )
    workdir = Path(config.workdir or f"runs/{experiment}/{config.name}/{run_name}")
    config_lib.check_resumable(workdir, config, RESUMABLE_CHANGES + tuple(resumable_changes))
    return run_name, workdir


def finish(
    experiment: str,
    config: ml_collections.ConfigDict,
    run_name: str,
    trained: tuple[trainer.TrainResult, progress.MetricsWriter],
    evaluate: Callable[[trainer.TrainState], dict[str, float]],
    *,
    split: str = "test",
    throughput: str = "train_examples_per_s",
    columns: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The end of a run: ``None`` if training stopped before the final step (rerun to
    resume); otherwise the final evaluation, logged and appended to the run's metrics, and the
    result row — identity columns, ``<split>_<metric>``, the last training loss and throughput
    (``throughput`` names its column), ``columns``, wall time, provenance — written to
    ``config.results_csv`` by process 0 and returned."""
    result, writer = trained
    steps = int(result.state.step)
    if steps < config.train.steps:
        log.info("stopped at step %d of %d; rerun to resume", steps, config.train.steps)
        return None
    began = time.perf_counter()
    metrics = evaluate(result.state)
    eval_time_s = time.perf_counter() - began
    writer.write(steps, "test", metrics)
    log.info("%s metrics: %s", split, metrics)
    train_last = writer.last("train")
    row = {
        **results.leading_columns(experiment, config, run_name, steps),
        **{f"{split}_{k}": v for k, v in metrics.items()},
        "train_loss": train_last.get("loss"),
        throughput: train_last.get("examples_per_s"),
        **(columns or {}),
        "wall_time_s": round(result.train_time_s + eval_time_s, 2),
        **results.provenance(config_lib.to_json(config)),
    }
    if jax.process_index() == 0:
        results.write_row(config.results_csv, row)
        log.info("result row written to %s", config.results_csv)
    return row
