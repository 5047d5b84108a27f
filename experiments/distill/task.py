"""What is particular to distillation: the teacher's targets, the soft-label loss, and the
evaluation (agreement with the teacher, the distillation loss and the LM metrics on held-out text).

The target of a token is the teacher's distribution ``y = softmax(teacher logits / T)``, or its
``k`` most likely tokens renormalised (passed to the fused head as ``(indices, values)``, never
as a dense ``[N, V]`` array); the loss is the Fenchel–Young loss of the student's logits ``/ T``
with ``D_f(y, q)`` included, so it is zero exactly when the student's operator output equals y.
With ``q = "teacher"`` the reference measure is the teacher's full distribution (dense): the
target itself (so ``D_f(y, q) = 0``) unless the target is cut to the top k. The
operator ``q ⊙ (f*)'(θ − τ)`` then starts from the teacher: the student's logits learn only a
correction to it (constant logits reproduce the teacher), so its operator needs the teacher at
inference, and softmax of its logits alone is no language model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

import fdiv
from experiments.common import lm_eval, reference, trainer

Array = jax.Array
REFERENCE_MEASURES = ("uniform", "unit", "teacher")


def default_run_name(divergence: str, q: str, seed: int) -> str:
    """``alpha1.5-teacher-seed0``: the divergence, reference measure and seed, file-name safe."""
    return f"{divergence.replace(':', '')}-{q}-seed{seed}"


def targets_and_q(
    teacher_logits_NxV: Array, q: str, *, top_k: int, temperature: float
) -> tuple[Array | tuple[Array, Array], str | Array]:
    """The fused head's ``labels`` (dense ``[N, V]``, or a top-k pair when ``top_k > 0``) and its
    ``q`` (a name, or for ``"teacher"`` the teacher's full softmax at the temperature, dense)."""
    if top_k:
        target = reference.top_k_distribution(teacher_logits_NxV, top_k, temperature=temperature)
    else:
        target = reference.token_distribution(teacher_logits_NxV, temperature=temperature)
    if q != "teacher":
        return target, q
    # The teacher's full distribution even for top-k targets: a token outside the top k keeps
    # some reference mass (a zero there would make the loss of that token infinite).
    full = reference.token_distribution(teacher_logits_NxV, temperature=temperature)
    return target, full if top_k else target


def distillation_loss(
    hidden_NxD: Array,
    weight_DxV: Array,
    teacher_logits_NxV: Array,
    mask_N: Array,
    divergence: str,
    q: str,
    *,
    top_k: int = 0,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Array:
    """The soft-label f-divergence loss of the student ``hidden @ weight / T`` against the
    teacher's targets, over the unmasked tokens (fused head: no student ``[N, V]`` logits)."""
    target, q_arg = targets_and_q(teacher_logits_NxV, q, top_k=top_k, temperature=temperature)
    return fdiv.fused_linear_fdiv_loss(
        hidden_NxD,
        weight_DxV,
        target,
        divergence,
        q=q_arg,
        where=mask_N,
        temperature=temperature,
        reduction=reduction,
    )


def initial_model_state(rest: nnx.State, teacher: nnx.Module) -> dict[str, Any]:
    """The train state's ``model_state``: the student's non-parameter state and the frozen
    teacher's whole state (an argument of the jit'd step, not a compiled constant; it is saved
    with the checkpoints)."""
    return {"model": rest, "teacher": nnx.split(teacher)[1]}


def _flat_teacher_logits(
    teacher_graphdef: nnx.GraphDef, model_state: dict[str, Any], inputs_BxL: Array
) -> Array:
    logits = reference.frozen_logits(teacher_graphdef, model_state["teacher"], inputs_BxL)
    return logits.reshape(-1, logits.shape[-1])


def make_loss_fn(
    graphdef: nnx.GraphDef, config: ml_collections.ConfigDict, teacher_graphdef: nnx.GraphDef
) -> trainer.LossFn:
    """The training loss (see ``trainer.LossFn``); ``model_state`` as made by
    :func:`initial_model_state` (the teacher in it stays frozen)."""
    d = config.distill

    def loss_fn(params, model_state, batch, rng):
        student = nnx.merge(graphdef, params, model_state["model"])
        hidden = student.hidden(batch["inputs"])
        loss = distillation_loss(
            hidden.reshape(-1, hidden.shape[-1]),
            student.output_weight(),
            _flat_teacher_logits(teacher_graphdef, model_state, batch["inputs"]),
            batch["mask"].reshape(-1),
            config.loss.divergence,
            config.loss.q,
            top_k=d.top_k,
            temperature=d.temperature,
        )
        return loss, (model_state, {})

    return loss_fn


def combine_lm_metrics(parts: Iterable[tuple[dict[str, float], int]]) -> dict[str, float]:
    """Metrics of several ``evaluate_lm`` calls ``(metrics, unmasked tokens)`` as one call on all
    their tokens: token-weighted means, and for perplexities (exponentials of means) the
    token-weighted geometric mean."""
    parts = [(m, n) for m, n in parts if n]
    total = sum(n for _, n in parts)
    out = {}
    for key in parts[0][0]:
        if "perplexity" in key:
            out[key] = float(np.exp(sum(n * np.log(m[key]) for m, n in parts) / total))
        else:
            out[key] = float(sum(n * m[key] for m, n in parts) / total)
    return out


def make_evaluate(
    graphdef: nnx.GraphDef,
    config: ml_collections.ConfigDict,
    teacher_graphdef: nnx.GraphDef,
    batches: Callable[[], Iterable[dict[str, np.ndarray]]],
) -> Callable[[trainer.TrainState], dict[str, float]]:
    """Evaluation on held-out text: ``agreement`` (top-1 of the student's operator = the
    teacher's top-1) and ``softmax_agreement`` (of its logits), ``distill_loss`` (the training
    loss), and the LM metrics of ``lm_eval.evaluate_lm`` against the text's next tokens."""
    d, divergence, q_name = config.distill, config.loss.divergence, config.loss.q

    @jax.jit
    def student_logits(params, model_state, inputs):
        return nnx.merge(graphdef, params, model_state["model"])(inputs)

    @jax.jit
    def teacher_q(model_state, inputs):
        flat = _flat_teacher_logits(teacher_graphdef, model_state, inputs)
        _, q = targets_and_q(flat, q_name, top_k=d.top_k, temperature=d.temperature)
        return q.reshape(*inputs.shape, -1)

    @jax.jit
    def sums(params, model_state, batch):
        student = nnx.merge(graphdef, params, model_state["model"])
        hidden = student.hidden(batch["inputs"])
        flat_teacher = _flat_teacher_logits(teacher_graphdef, model_state, batch["inputs"])
        mask = batch["mask"].reshape(-1)
        loss = distillation_loss(
            hidden.reshape(-1, hidden.shape[-1]),
            student.output_weight(),
            flat_teacher,
            mask,
            divergence,
            q_name,
            top_k=d.top_k,
            temperature=d.temperature,
            reduction="sum",
        )
        logits = student(batch["inputs"]).reshape(flat_teacher.shape)
        _, q_arg = targets_and_q(flat_teacher, q_name, top_k=d.top_k, temperature=d.temperature)
        p = fdiv.f_softargmax(logits, divergence, q=q_arg)
        top = flat_teacher.argmax(-1)
        return {
            "distill_loss": loss,
            "agreement": jnp.sum((p.argmax(-1) == top) & mask),
            "softmax_agreement": jnp.sum((logits.argmax(-1) == top) & mask),
            "tokens": jnp.sum(mask),
        }

    def evaluate(state: trainer.TrainState) -> dict[str, float]:
        params, model_state = state.params, state.model_state

        def logits_fn(inputs):
            return student_logits(params, model_state, inputs)

        totals: dict[str, float] = {}
        lm_parts = []
        for batch in batches():
            batch_sums = jax.device_get(sums(params, model_state, batch))
            for k, v in batch_sums.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            if batch_sums["tokens"]:
                # One evaluate_lm call per batch: with q = teacher its measure is the batch's.
                q = teacher_q(model_state, batch["inputs"]) if q_name == "teacher" else q_name
                part = lm_eval.evaluate_lm(logits_fn, [batch], divergence, q)
                lm_parts.append((part, int(batch_sums["tokens"])))
        tokens = max(totals.pop("tokens"), 1.0)
        return {
            **{k: v / tokens for k, v in totals.items()},
            **combine_lm_metrics(lm_parts),
        }

    return evaluate
