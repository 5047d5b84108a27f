"""What is particular to SFT: the frozen base model as reference measure, the loss on the response
tokens only, and the evaluation (exact-match answers and LM metrics on the held-out responses)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

import fdiv
from experiments.common import generate as generate_lib
from experiments.common import instructions, lm_eval, reference, trainer
from experiments.common.reference import frozen

Array = jax.Array
REFERENCE_MEASURES = ("uniform", "unit", "base")
# Answer decoding: (metric prefix, operator of the fine-tuned model or plain softmax, greedy?).
DECODINGS = (
    ("greedy", True, True),
    ("sampled", True, False),
    ("softmax_greedy", False, True),
    ("softmax_sampled", False, False),
)


def default_run_name(divergence: str, q: str, seed: int) -> str:
    """``alpha1.5-base-seed0``: the divergence, reference measure and seed, file-name safe."""
    return f"{divergence.replace(':', '')}-{q}-seed{seed}"


def make_reference(base: nnx.Module | None, q: str) -> Callable[[Array], str | Array]:
    """``inputs [B, L]`` → the ``q`` argument of the fdiv functions for ``config.loss.q``:
    the name for ``uniform``/``unit``, else the frozen base model's softmax ``[B, L, V]``."""
    if q != "base":
        return lambda inputs: q
    if base is None:
        raise ValueError("q = 'base' needs the base model")
    base_fn = frozen(base)

    def q_of(inputs):
        logits = base_fn(inputs)
        return reference.token_distribution(logits.reshape(-1, logits.shape[-1])).reshape(
            logits.shape
        )

    return q_of


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
    graphdef: nnx.GraphDef, config: ml_collections.ConfigDict, base: nnx.Module | None
) -> trainer.LossFn:
    """The training loss (see ``trainer.LossFn``); the base model is frozen (a constant)."""
    q_of = make_reference(base, config.loss.q)

    def loss_fn(params, model_state, batch, rng):
        model = nnx.merge(graphdef, params, model_state)
        loss = response_loss(model, batch, config.loss.divergence, q_of(batch["inputs"]))
        return loss, (model_state, {})

    return loss_fn


def operator_logits_fn(
    logits_fn: Callable[[Array], Array], divergence: str, q_of: Callable[[Array], str | Array]
) -> Callable[[Array], Array]:
    """``inputs → log p`` with ``p`` the model's operator (the f-softargmax with its q; −inf
    where p is 0): softmax of it is ``p`` exactly, so plain-softmax generation decodes with the
    operator. Used for a per-token q (the base model's), which ``generate`` cannot take."""

    def fn(inputs):
        p = fdiv.f_softargmax(logits_fn(inputs), divergence, q=q_of(inputs))
        return jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), -jnp.inf)

    return fn


def make_evaluate(
    graphdef: nnx.GraphDef,
    config: ml_collections.ConfigDict,
    base: nnx.Module | None,
    source: instructions.InstructionSource,
) -> Callable[[trainer.TrainState], dict[str, float]]:
    """Evaluation on the test problems: the LM metrics of ``lm_eval.evaluate_lm`` on the
    held-out responses (operator and ``softmax_`` keys), and the exact-match accuracy of the
    answers decoded greedily and by sampling, with the operator and with softmax
    (``greedy_accuracy``, ``sampled_accuracy``, ``softmax_greedy_accuracy``,
    ``softmax_sampled_accuracy``)."""
    divergence, q_name = config.loss.divergence, config.loss.q
    q_of = make_reference(base, q_name)
    max_new = config.eval.max_new_tokens or 1 + max(
        len(source.vocab.encode(p.answer)) for p in source.test_problems
    )

    @jax.jit
    def logits(params, model_state, inputs):
        return nnx.merge(graphdef, params, model_state)(inputs)

    def evaluate(state: trainer.TrainState) -> dict[str, float]:
        params, model_state = state.params, state.model_state

        def logits_fn(inputs):
            return logits(params, model_state, inputs)

        if q_name == "base":
            # The whole test split is one batch so that its per-token q is one array.
            batch = next(source.validation_batches(len(source.test_problems)))
            metrics = lm_eval.evaluate_lm(
                logits_fn, [batch], divergence, q_of(jnp.asarray(batch["inputs"]))
            )
            op_fn, op_div, op_q = operator_logits_fn(logits_fn, divergence, q_of), None, None
        else:
            metrics = lm_eval.evaluate_lm(
                logits_fn, source.validation_batches(config.eval.batch_size), divergence, q_name
            )
            op_fn, op_div, op_q = logits_fn, divergence, q_name
        rng = jax.random.key(config.eval.sample_seed)
        for name, use_operator, greedy in DECODINGS:
            correct = 0
            for i, (indices, prompts) in enumerate(source.prompt_groups(config.eval.batch_size)):
                generated = generate_lib.generate(
                    op_fn if use_operator else logits_fn,
                    prompts,
                    max_new,
                    divergence=op_div if use_operator else None,
                    q=op_q if use_operator else None,
                    greedy=greedy,
                    rng=jax.random.fold_in(rng, i),
                    eos_id=source.vocab.eos_id,
                )
                new_tokens = np.asarray(generated)[:, prompts.shape[1] :]
                for j, row in zip(indices, new_tokens, strict=True):
                    answer = source.decode_answer(row.tolist())
                    correct += instructions.answer_matches(answer, source.test_problems[j].answer)
            metrics[f"{name}_accuracy"] = correct / len(source.test_problems)
        return metrics

    return evaluate
