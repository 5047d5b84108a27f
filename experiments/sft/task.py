"""What is particular to SFT: the frozen base model as reference measure, the loss on the response
tokens only, and the evaluation (exact-match answers and LM metrics on the held-out responses)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from flax import nnx

import fdiv
from experiments.common import answers, instructions, lm_eval, reference, trainer

Array = jax.Array
REFERENCE_MEASURES = ("uniform", "unit", "base")


def initial_model_state(rest: nnx.State, base: nnx.Module | None) -> dict[str, Any]:
    """The train state's ``model_state``: the fine-tuned model's non-parameter state and, for
    ``q = "base"``, the frozen base model's whole state (an argument of the jit'd step, not a
    compiled constant; it is saved with the checkpoints)."""
    if base is None:
        return {"model": rest}
    return {"model": rest, "base": nnx.split(base)[1]}


def reference_measure(
    base_graphdef: nnx.GraphDef | None, model_state: dict[str, Any], q: str, inputs_BxL: Array
) -> str | Array:
    """The ``q`` argument of the fdiv functions for ``config.loss.q``: the name for
    ``uniform``/``unit``, else the frozen base model's softmax ``[B, L, V]``."""
    if q != "base":
        return q
    logits = reference.frozen_logits(base_graphdef, model_state["base"], inputs_BxL)
    return reference.token_distribution(logits.reshape(-1, logits.shape[-1])).reshape(logits.shape)


def response_loss(
    model: nnx.Module, batch: dict[str, Array], divergence: str, q: str | Array
) -> Array:
    """Mean f-divergence loss over the unmasked targets (the response tokens), through the fused
    LM head; ``q`` is a name or a per-token ``[B, L, V]`` measure."""
    hidden_BxLxD = model.hidden(batch["inputs"])
    d = hidden_BxLxD.shape[-1]
    if not isinstance(q, str):
        q = q.reshape(-1, q.shape[-1])
    return fdiv.fused_linear_fdiv_loss(
        hidden_BxLxD.reshape(-1, d),
        model.output_weight(),
        batch["targets"].reshape(-1),
        divergence,
        q=q,
        where=batch["mask"].reshape(-1),
        reduction="mean",
    )


def make_loss_fn(
    graphdef: nnx.GraphDef, config: ml_collections.ConfigDict, base_graphdef: nnx.GraphDef | None
) -> trainer.LossFn:
    """The training loss (see ``trainer.LossFn``); ``model_state`` as made by
    :func:`initial_model_state` (the base model in it stays frozen)."""

    def loss_fn(params, model_state, batch, rng):
        model = nnx.merge(graphdef, params, model_state["model"])
        q = reference_measure(base_graphdef, model_state, config.loss.q, batch["inputs"])
        loss = response_loss(model, batch, config.loss.divergence, q)
        return loss, (model_state, {})

    return loss_fn


def make_evaluate(
    graphdef: nnx.GraphDef,
    config: ml_collections.ConfigDict,
    base_graphdef: nnx.GraphDef | None,
    source: instructions.InstructionSource,
) -> Callable[[trainer.TrainState], dict[str, float]]:
    """Evaluation on the test problems: the LM metrics of ``lm_eval.evaluate_lm`` on the
    held-out responses (operator and ``softmax_`` keys), and the exact-match accuracy of the
    answers decoded greedily and by sampling, with the operator and with softmax
    (``answers.DECODINGS``: ``greedy_accuracy``, ``sampled_accuracy``, ``softmax_greedy_accuracy``,
    ``softmax_sampled_accuracy``), and of the greedy answers to as many distinct training
    problems (``seen_greedy_accuracy``, ``seen_softmax_greedy_accuracy``: the fit, not
    generalisation).

    For ``q = "base"`` the reference measure depends on the tokens, which ``generate`` cannot
    take: the operator's answers are decoded as softmax of ``log p`` (−inf where ``p = 0``),
    which is ``p`` exactly."""
    divergence, q_name = config.loss.divergence, config.loss.q
    max_new = answers.max_new_tokens(source, config.eval.max_new_tokens)

    @jax.jit
    def logits(params, model_state, inputs):
        return nnx.merge(graphdef, params, model_state["model"])(inputs)

    @jax.jit
    def base_q(model_state, inputs):
        return reference_measure(base_graphdef, model_state, q_name, inputs)

    @jax.jit
    def operator_log_probs(params, model_state, inputs):
        q = reference_measure(base_graphdef, model_state, q_name, inputs)
        return answers.log_probs(
            fdiv.f_softargmax(logits(params, model_state, inputs), divergence, q=q)
        )

    def evaluate(state: trainer.TrainState) -> dict[str, float]:
        params, model_state = state.params, state.model_state

        def logits_fn(inputs):
            return logits(params, model_state, inputs)

        max_len = nnx.merge(graphdef, params, model_state["model"]).max_len
        if q_name == "base":
            # One evaluate_lm call per batch: its per-token q is that batch's.
            parts = [
                (
                    lm_eval.evaluate_lm(
                        logits_fn, [batch], divergence, base_q(model_state, batch["inputs"])
                    ),
                    int(batch["mask"].sum()),
                )
                for batch in source.validation_batches(config.eval.batch_size)
                if batch["mask"].any()
            ]
            metrics = lm_eval.combine_lm_metrics(parts)
            operator = answers.Decoder(
                lambda x: operator_log_probs(params, model_state, x), max_len=max_len
            )
        else:
            metrics = lm_eval.evaluate_lm(
                logits_fn, source.validation_batches(config.eval.batch_size), divergence, q_name
            )
            operator = answers.Decoder(logits_fn, divergence, q_name, max_len)
        metrics |= answers.accuracies(
            operator,
            logits_fn,
            source,
            batch_size=config.eval.batch_size,
            max_new=max_new,
            seed=config.eval.sample_seed,
        )
        return metrics

    return evaluate
