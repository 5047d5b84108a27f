"""What is particular to pre-training: the reference measure, the fused-head loss, validation
with ``lm_eval.evaluate_lm``, the greedy sample, and the validation-curve table."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

import fdiv
from experiments.common import generate as generate_lib
from experiments.common import lm_eval, sharding, text, trainer

REFERENCE_MEASURES = ("uniform", "unit", "unigram")


def reference_measure(q: str, source: text.TextSource) -> str | np.ndarray:
    """The ``q`` argument of the fdiv functions for ``config.loss.q``."""
    if q == "unigram":
        return source.unigram()
    return q  # "uniform" or "unit": fdiv knows them by name.


def make_loss_fn(
    graphdef: nnx.GraphDef, config: ml_collections.ConfigDict, q: str | np.ndarray
) -> trainer.LossFn:
    """Mean f-divergence loss over the unmasked tokens of a batch, through the fused LM head
    (the ``[B·L, V]`` logits are never held in memory at once)."""
    q_arg = q if isinstance(q, str) else jnp.asarray(q, jnp.float32)

    def loss_fn(params, model_state, batch, rng):
        del rng  # No dropout: the loss is deterministic.
        model = nnx.merge(graphdef, params, model_state)
        hidden_BxLxD = model.hidden(batch["inputs"])
        loss = fdiv.fused_linear_fdiv_loss(
            hidden_BxLxD.reshape(-1, hidden_BxLxD.shape[-1]),
            model.output_weight(),
            batch["targets"].reshape(-1),
            config.loss.divergence,
            q=q_arg,
            where=batch["mask"].reshape(-1),
            chunk_size=config.loss.chunk_size,
            reduction="mean",
        )
        return loss, (model_state, {})

    return loss_fn


def make_logits_fn(graphdef: nnx.GraphDef, mesh: Mesh) -> Callable[..., Callable]:
    """``logits_fn(state)``: the jit'd ``inputs_BxL -> logits_BxLxV`` of the state's model.

    Inputs are this process's rows (numpy) and are sharded over the mesh; with several
    processes the logits come back as this process's rows, matching its batches.
    """

    @jax.jit
    def logits(params, model_state, inputs_BxL):
        return nnx.merge(graphdef, params, model_state)(inputs_BxL)

    def bind(state: trainer.TrainState) -> Callable[[np.ndarray], Any]:
        def logits_fn(inputs_BxL):
            inputs = sharding.shard_batch({"inputs": np.asarray(inputs_BxL)}, mesh)["inputs"]
            out = logits(state.params, state.model_state, inputs)
            if jax.process_count() == 1:
                return out
            return np.concatenate([np.asarray(s.data) for s in out.addressable_shards])

        return logits_fn

    return bind


def make_evaluate(
    bind: Callable[[trainer.TrainState], Callable],
    config: ml_collections.ConfigDict,
    q: str | np.ndarray,
    source: text.TextSource,
) -> Callable[[trainer.TrainState], dict[str, float]]:
    """Validation: every metric of ``lm_eval.evaluate_lm`` (the operator's and softmax's) on the
    validation split, or on its first ``eval.max_batches`` batches; ``bind`` is
    :func:`make_logits_fn`'s."""

    def evaluate(state: trainer.TrainState) -> dict[str, float]:
        batches: Iterator = source.validation_batches(config.eval.batch_size)
        if config.eval.max_batches:
            batches = itertools.islice(batches, config.eval.max_batches)
        return lm_eval.evaluate_lm(bind(state), batches, config.loss.divergence, q)

    return evaluate


def sample(
    logits_fn: Callable[[np.ndarray], Any],
    config: ml_collections.ConfigDict,
    q: str | np.ndarray,
    source: text.TextSource,
) -> str:
    """Greedy continuation of ``config.sample.prompt`` with the model's operator (its training
    divergence and q), decoded to text; ``logits_fn`` is :func:`make_logits_fn`'s for a state."""
    ids = generate_lib.generate(
        # One prompt, repeated so that its batch splits over the devices.
        lambda x: logits_fn(np.repeat(np.asarray(x), jax.local_device_count(), axis=0))[:1],
        np.asarray(source.vocab.encode(config.sample.prompt), np.int32),
        config.sample.max_new_tokens,
        divergence=config.loss.divergence,
        q=q,
        greedy=True,
        rng=None,
        eos_id=source.vocab.eos_id,
        max_len=config.model.max_len,
    )
    return source.vocab.decode(ids.tolist())


def curve_rows(metrics_path: Path, run: dict[str, Any], commit: str) -> list[dict[str, Any]]:
    """The validation curve of a run: one row per validated step of its metrics file
    (``progress.MetricsWriter``; the last line of a step re-validated by a rerun wins), with
    the run's identifiers first and the commit last."""
    lines = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    by_step = {line["step"]: line for line in lines if line["split"] == "test"}
    return [
        {
            **run,
            "step": step,
            **{f"val_{k}": v for k, v in line.items() if k not in ("step", "split")},
            "git_commit": commit,
        }
        for step, line in sorted(by_step.items())
    ]
