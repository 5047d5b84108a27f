"""Exact-match task accuracy of a language model on instruction problems: the answers it decodes
(greedily or by sampling, with an f-softargmax operator or with softmax) checked against the
reference answers. Shared by SFT (the fine-tuned model) and distillation on the SFT task (the
student, and the teacher for comparison).

A model's operator is given as a :class:`Decoder`: a jit'd ``logits_fn`` and the ``divergence``
and ``q`` that :func:`experiments.common.generate.generate` applies to its logits. A reference
measure that depends on the tokens (SFT's frozen base, distillation's teacher) cannot be passed
to ``generate``, which takes one measure for every step: such a model decodes through
:func:`log_probs` of its operator output ``p`` with softmax, which is ``p`` exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import generate as generate_lib
from experiments.common import instructions

Array = jax.Array
# (metric prefix, problems, decode with the model's operator (else softmax of its logits),
# greedy?). "seen" problems are distinct training problems: how well the answers were fitted.
DECODINGS = (
    ("greedy", "test", True, True),
    ("sampled", "test", True, False),
    ("softmax_greedy", "test", False, True),
    ("softmax_sampled", "test", False, False),
    ("seen_greedy", "seen", True, True),
    ("seen_softmax_greedy", "seen", False, True),
)
GREEDY_DECODINGS = tuple(d for d in DECODINGS if d[3])


@dataclasses.dataclass(frozen=True)
class Decoder:
    """How to pick tokens: ``logits_fn(inputs_BxT) -> logits_BxTxV`` (jit'd), the operator
    applied to them (``divergence`` None: softmax) and the model's longest sequence ``max_len``
    (``Transformer.max_len``; None: no limit), past which a prompt and its answer are cut, so a
    learned position table is never read out of range."""

    logits_fn: Callable[[Array], Array]
    divergence: str | None = None
    q: str | None = None
    max_len: int | None = None


def log_probs(p: Array) -> Array:
    """``log p`` with ``-inf`` where ``p = 0``: logits whose softmax is ``p`` exactly."""
    return jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), -jnp.inf)


def max_new_tokens(source: instructions.InstructionSource, configured: int) -> int:
    """``configured``, or (0) the longest answer plus its eos, over the test problems and the
    seen training problems (both are decoded)."""
    problems = [*source.test_problems, *source.seen_problems]
    return configured or 1 + max(len(source.vocab.encode(p.answer)) for p in problems)


def accuracy(
    decoder: Decoder,
    source: instructions.InstructionSource,
    problems: Sequence[instructions.Problem],
    *,
    greedy: bool,
    rng: Array,
    batch_size: int,
    max_new: int,
) -> float:
    """Share of ``problems`` whose decoded answer (up to the first eos) matches exactly."""
    correct = 0
    groups = source.prompt_groups(batch_size, problems)
    for i, (indices, prompts) in enumerate(groups):
        generated = generate_lib.generate(
            decoder.logits_fn,
            prompts,
            max_new,
            divergence=decoder.divergence,
            q=decoder.q,
            greedy=greedy,
            rng=jax.random.fold_in(rng, i),
            eos_id=source.vocab.eos_id,
            max_len=decoder.max_len,
        )
        new_tokens = np.asarray(generated)[:, prompts.shape[1] :]
        for j, row in zip(indices, new_tokens, strict=True):
            answer = source.decode_answer(row.tolist())
            correct += instructions.answer_matches(answer, problems[j].answer)
    return correct / len(problems)


def accuracies(
    operator: Decoder,
    softmax_logits_fn: Callable[[Array], Array],
    source: instructions.InstructionSource,
    *,
    batch_size: int,
    max_new: int,
    seed: int,
    decodings: Iterable[tuple[str, str, bool, bool]] = DECODINGS,
) -> dict[str, float]:
    """``{<prefix>_accuracy: share correct}`` for each of ``decodings`` (see :data:`DECODINGS`):
    with ``operator`` or with softmax of ``softmax_logits_fn`` (the same model: its
    ``max_len``), on the test or the seen problems.
    Sampling uses ``seed`` (the same key for every decoding)."""
    rng = jax.random.key(seed)
    softmax = Decoder(softmax_logits_fn, max_len=operator.max_len)
    out = {}
    for name, split, use_operator, greedy in decodings:
        problems = source.test_problems if split == "test" else source.seen_problems
        out[f"{name}_accuracy"] = accuracy(
            operator if use_operator else softmax,
            source,
            problems,
            greedy=greedy,
            rng=rng,
            batch_size=batch_size,
            max_new=max_new,
        )
    return out
