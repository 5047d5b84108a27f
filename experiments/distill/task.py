"""What is particular to distillation: the teacher's targets, the soft-label loss, and the
evaluation (agreement with the teacher, the distillation loss and the LM metrics on held-out text,
and on the SFT task the exact-match accuracy of the answers).

The target of a token is the teacher's distribution ``y = softmax(teacher logits / T)``, or its
``k`` most likely tokens renormalised (passed to the fused head as ``(indices, values)``, never
as a dense ``[N, V]`` array); the loss is the Fenchel–Young loss of the student's logits ``/ T``
with ``D_f(y, q)`` included, so it is zero exactly when the student's operator output equals y.
With ``q = "teacher"`` the reference measure is the teacher's full distribution (dense): the
target itself (so ``D_f(y, q) = 0``) unless the target is cut to the top k. The
operator ``q ⊙ (f*)'(θ − τ)`` then starts from the teacher: the student's logits learn only a
correction to it (constant logits reproduce the teacher), so its operator needs the teacher at
inference, and softmax of its logits alone is no language model.

The data are the teacher's: its pre-training text (``data.kind = "text"``), or, for a teacher
fine-tuned by ``python -m experiments.sft``, that run's instruction task (``"instructions"``:
the same problems and train/test split, the loss on the response tokens only, the prompt masked
as in SFT).
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
from experiments.common import answers, instructions, lm_eval, reference, text, trainer
from experiments.common import config as config_lib

Array = jax.Array
REFERENCE_MEASURES = ("uniform", "unit", "teacher")
DATA_KINDS = ("text", "instructions")


def make_source(
    config: ml_collections.ConfigDict,
    teacher_config: ml_collections.ConfigDict,
    teacher_pretraining: ml_collections.ConfigDict,
) -> text.TextSource | instructions.InstructionSource:
    """The training and held-out data for ``config.data.kind``, at ``config.data.seq_len``:
    the teacher's pre-training corpus (``teacher_pretraining.data``), or the instruction task
    of the teacher's SFT run (``teacher_config.data``, in its pre-training vocabulary)."""
    if config.data.kind == "text":
        data_cfg = teacher_pretraining.data.copy_and_resolve_references()
        data_cfg.seq_len = config.data.seq_len
        if config.data.cache_dir:
            data_cfg.cache_dir = config.data.cache_dir
        return text.make_text_source(data_cfg)
    if "task" not in teacher_config.get("data", {}):
        raise config_lib.ConfigError(
            f"config.data.kind = 'instructions' needs a teacher fine-tuned by python -m "
            f"experiments.sft (its config records the instruction task); {config.teacher.workdir} "
            "is not such a run"
        )
    data_cfg = teacher_config.data.copy_and_resolve_references()
    data_cfg.seq_len = config.data.seq_len
    try:
        return instructions.InstructionSource(
            data_cfg, text.load_vocabulary(teacher_pretraining.data.vocab)
        )
    except ValueError as e:
        raise config_lib.ConfigError(f"the teacher's instruction data: {e}") from e


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


def make_evaluate(
    graphdef: nnx.GraphDef,
    config: ml_collections.ConfigDict,
    teacher_graphdef: nnx.GraphDef,
    batches: Callable[[], Iterable[dict[str, np.ndarray]]],
    source: instructions.InstructionSource | None = None,
) -> Callable[[trainer.TrainState], dict[str, float]]:
    """Evaluation on held-out text: ``agreement`` (top-1 of the student's operator = the
    teacher's top-1) and ``softmax_agreement`` (of its logits), ``distill_loss`` (the training
    loss), and the LM metrics of ``lm_eval.evaluate_lm`` against the text's next tokens (on
    instruction data: the masked-in response tokens of the test problems).

    With an instruction ``source``, also the exact-match accuracy of the student's greedy
    answers (``answers.GREEDY_DECODINGS``: with its operator and with softmax, on the test
    problems and on as many seen training problems) and, for comparison, that of the teacher's
    greedy answers from its softmax (the distillation target) on the test problems,
    ``teacher_greedy_accuracy``. With ``q = "teacher"`` the operator's answers are decoded
    through ``answers.log_probs`` (its reference measure depends on the tokens).

    The student's logits are divided by ``distill.temperature`` throughout, as in training (the
    fused head's temperature): the evaluated and decoded operator is the trained one."""
    d, divergence, q_name = config.distill, config.loss.divergence, config.loss.q
    teacher_accuracy: list[float] = []  # Computed at the first evaluation: the teacher is frozen.

    @jax.jit
    def student_logits(params, model_state, inputs):
        # Divided by the temperature, as in training (the loss fuses it into the output layer):
        # the evaluated and decoded operator is the trained one, f_softargmax(logits / T).
        return nnx.merge(graphdef, params, model_state["model"])(inputs) / d.temperature

    @jax.jit
    def teacher_q(model_state, inputs):
        flat = _flat_teacher_logits(teacher_graphdef, model_state, inputs)
        _, q = targets_and_q(flat, q_name, top_k=d.top_k, temperature=d.temperature)
        return q.reshape(*inputs.shape, -1)

    @jax.jit
    def teacher_logits(model_state, inputs):
        return reference.frozen_logits(teacher_graphdef, model_state["teacher"], inputs)

    @jax.jit
    def operator_log_probs(params, model_state, inputs):
        q = teacher_q(model_state, inputs)
        logits = student_logits(params, model_state, inputs)
        return answers.log_probs(fdiv.f_softargmax(logits, divergence, q=q))

    def answer_accuracies(params, model_state) -> dict[str, float]:
        def logits_fn(inputs):
            return student_logits(params, model_state, inputs)

        max_len = nnx.merge(graphdef, params, model_state["model"]).max_len
        if q_name == "teacher":
            operator = answers.Decoder(
                lambda x: operator_log_probs(params, model_state, x), max_len=max_len
            )
        else:
            operator = answers.Decoder(logits_fn, divergence, q_name, max_len)
        max_new = answers.max_new_tokens(source, config.eval.max_new_tokens)
        out = answers.accuracies(
            operator,
            logits_fn,
            source,
            batch_size=config.eval.batch_size,
            max_new=max_new,
            seed=0,  # Unused: greedy decodings only.
            decodings=answers.GREEDY_DECODINGS,
        )
        if not teacher_accuracy:
            teacher = answers.Decoder(
                lambda x: teacher_logits(model_state, x),
                max_len=nnx.merge(teacher_graphdef, model_state["teacher"]).max_len,
            )
            teacher_accuracy.append(
                answers.accuracy(
                    teacher,
                    source,
                    source.test_problems,
                    greedy=True,
                    rng=jax.random.key(0),
                    batch_size=config.eval.batch_size,
                    max_new=max_new,
                )
            )
        return {**out, "teacher_greedy_accuracy": teacher_accuracy[0]}

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
        logits = student(batch["inputs"]).reshape(flat_teacher.shape) / d.temperature
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
        metrics = {
            **{k: v / tokens for k, v in totals.items()},
            **lm_eval.combine_lm_metrics(lm_parts),
        }
        if source is not None:
            metrics |= answer_accuracies(params, model_state)
        return metrics

    return evaluate
