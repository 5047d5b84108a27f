"""The train state, the jit'd data-parallel train step, and the training loop.

An experiment supplies a loss function

    loss_fn(params, model_state, batch, rng) -> (loss, (new_model_state, metrics))

(``params`` are differentiated, ``model_state`` holds non-trained state such as batch statistics)
and an iterator of batches; :func:`resume_and_train` does the rest: resuming from the latest
checkpoint, sharding, logging, the metrics file, periodic and final checkpoints, and stopping on a
non-finite loss.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from experiments.common import checkpoint, progress, sharding
from experiments.common.progress import log

Batch = dict[str, Any]
Metrics = dict[str, jax.Array]
LossFn = Callable[[Any, Any, Batch, jax.Array], tuple[jax.Array, tuple[Any, Metrics]]]


@struct.dataclass
class TrainState:
    """Everything a checkpoint must hold to continue training exactly."""

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: optax.OptState
    rng: jax.Array


def create_state(
    params: Any, model_state: Any, tx: optax.GradientTransformation, rng: jax.Array
) -> TrainState:
    return TrainState(jnp.zeros((), jnp.int32), params, model_state, tx.init(params), rng)


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    state_sharding: Any = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """One jit'd optimiser step; batches are sharded by the caller.

    The new state keeps ``state_sharding`` (a sharding or a tree of them, e.g.
    ``sharding.state_sharding(state, mesh, fsdp=True)``); by default it is replicated.
    """

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        # A fresh key per step, from the seed and the step: identical after a resume.
        rng = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (model_state, metrics)), grads = grad_fn(state.params, state.model_state, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
            model_state=model_state,
        )
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "lr": schedule(state.step),
            **metrics,
        }
        return new_state, metrics

    repl = sharding.replicated(mesh)
    state_out = repl if state_sharding is None else state_sharding
    return jax.jit(step, donate_argnums=0, out_shardings=(state_out, repl))


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped without saving that state."""


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    train_time_s: float  # Wall time of the training loop, summed over resumed segments.


def _check_finite(pending: list[Metrics], last_step: int, last_saved: int | None, where: Any):
    """Raises :class:`NonFiniteLossError` at the first non-finite loss among ``pending``."""
    losses = np.asarray(jax.device_get([m["loss"] for m in pending]), np.float64)
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        step = last_step - len(pending) + 1 + bad[0]
        kept = (
            f"the last good checkpoint (step {last_saved}) is kept in {where}"
            if last_saved is not None
            else "no checkpoint was saved before it"
        )
        raise NonFiniteLossError(
            f"non-finite training loss ({losses[bad[0]]}) at step {step}; training stopped and "
            f"{kept}. Lower config.optim.learning_rate or set config.optim.grad_clip_norm."
        )


def train(
    state: TrainState,
    train_step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]],
    batches: Callable[[int], Iterator[dict[str, np.ndarray]]],
    *,
    mesh: Mesh,
    total_steps: int,
    examples_per_step: int,
    checkpointer: checkpoint.Checkpointer,
    writer: progress.MetricsWriter,
    log_every: int,
    checkpoint_every: int,
    train_time_s: float = 0.0,
    stop_after: int = 0,
    eval_fn: Callable[[TrainState], dict[str, float]] | None = None,
    eval_every: int = 0,
) -> TrainResult:
    """Trains from ``state.step`` to ``total_steps`` (or ``stop_after``, to test resumption).

    ``batches(start_step)`` yields process-local numpy batches from ``start_step`` on. Metrics are
    averaged over ``log_every`` steps, logged and written; the state is saved every
    ``checkpoint_every`` steps and at the end, after checking that every loss since the previous
    check is finite; ``eval_fn`` runs every ``eval_every`` steps (0: never) before the end.
    """
    start = int(state.step)
    end = min(total_steps, stop_after) if stop_after else total_steps
    last_saved = checkpointer.latest_step()
    throughput = progress.Throughput(start, total_steps, examples_per_step)
    began = time.perf_counter()
    pending: list[Metrics] = []
    if start < end:
        log.info("training steps %d → %d of %d", start, end, total_steps)
    batch_iter = batches(start)
    for step in range(start + 1, end + 1):
        state, metrics = train_step(state, sharding.shard_batch(next(batch_iter), mesh))
        pending.append(metrics)
        # An early stop (stop_after) logs nothing extra, like a killed run.
        log_now = step % log_every == 0 or step == total_steps
        save_now = step % checkpoint_every == 0 or step == end
        if log_now or save_now:
            _check_finite(pending, step, last_saved, checkpointer.directory)
        if log_now:
            means = {k: float(np.mean(v)) for k, v in jax.device_get(_stack(pending)).items()}
            pending = []
            rate, eta = throughput.update(step)
            log.info(progress.format_line(step, total_steps, means, rate, eta))
            writer.write(step, "train", {**means, "examples_per_s": rate})
        # Evaluate before saving: a run killed during the evaluation resumes from the previous
        # checkpoint and evaluates this step again, instead of skipping it for good.
        if eval_fn is not None and eval_every and step % eval_every == 0 and step < total_steps:
            test_metrics = eval_fn(state)
            log.info("step %d test %s", step, test_metrics)
            writer.write(step, "test", test_metrics)
        if save_now:
            elapsed = train_time_s + time.perf_counter() - began
            checkpointer.save(step, state, {"train_time_s": elapsed})
            last_saved = step
    return TrainResult(state, train_time_s + time.perf_counter() - began)


def resume_and_train(
    state: TrainState,
    train_step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]],
    batches: Callable[[int], Iterator[dict[str, np.ndarray]]],
    *,
    workdir: Path,
    mesh: Mesh,
    train_cfg: ml_collections.ConfigDict,
    examples_per_step: int,
    eval_fn: Callable[[TrainState], dict[str, float]] | None = None,
) -> tuple[TrainResult, progress.MetricsWriter]:
    """:func:`train` from the latest checkpoint in ``workdir/checkpoints``, if any.

    ``train_cfg`` (``config.train``) gives ``steps``, ``log_every_steps``,
    ``checkpoint_every_steps``, ``keep_checkpoints``, ``stop_after_steps`` and
    ``eval_every_steps``. Metrics go to ``workdir/metrics.jsonl`` (other hosts of a multi-host
    run write ``metrics.host<i>.jsonl``); the writer is returned for the final evaluation.
    """
    checkpointer = checkpoint.Checkpointer(workdir / "checkpoints", keep=train_cfg.keep_checkpoints)
    try:
        train_time_s = 0.0
        restored = checkpointer.restore_latest(state)
        if restored is not None:
            state, record = restored
            train_time_s = record["train_time_s"]
            log.info("resuming %s from step %d", workdir, int(state.step))
        host = jax.process_index()
        name = "metrics.jsonl" if host == 0 else f"metrics.host{host}.jsonl"
        writer = progress.MetricsWriter(workdir / name, resume_step=int(state.step))
        result = train(
            state,
            train_step,
            batches,
            mesh=mesh,
            total_steps=train_cfg.steps,
            examples_per_step=examples_per_step,
            checkpointer=checkpointer,
            writer=writer,
            log_every=train_cfg.log_every_steps,
            checkpoint_every=train_cfg.checkpoint_every_steps,
            train_time_s=train_time_s,
            stop_after=train_cfg.stop_after_steps,
            eval_fn=eval_fn,
            eval_every=train_cfg.eval_every_steps,
        )
    finally:
        checkpointer.close()
    return result, writer


def _stack(metrics: list[Metrics]) -> Metrics:
    return {k: jnp.stack([m[k] for m in metrics]) for k in metrics[0]}
