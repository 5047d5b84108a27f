"""Evaluation of a language model on held-out text, with its f-softargmax and with softmax.

:func:`evaluate_lm` scores every unmasked next-token prediction of a set of batches twice from
the same logits: with the operator of the training divergence (``p = f_softargmax(θ; q)``, its
Fenchel–Young loss) and with plain softmax (the cross-entropy). Sparse operators can give the
target exactly zero probability, so beside the loss and the next-token accuracy it reports the
metrics of :mod:`fdiv.metrics` that stay finite: the ε-perplexity, the Jensen–Shannon divergence
to the one-hot target, the sparsemax score and the support size.

Per batch, one jit'd function turns the logits into per-metric sums over the unmasked tokens;
those sums stay on the device (no synchronisation per batch) and are fetched once at the end,
then added in float64 on the host: each batch's sums are float32, the sums across batches
float64, so the means do not drift with the number of batches (they are not exact: a batch's
own float32 sum rounds). :func:`combine_lm_metrics` merges the results of several calls (one
per batch when the reference measure changes from batch to batch).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fdiv

Array = jax.Array
LogitsFn = Callable[[Array], Array]

# Per-token metrics averaged over the unmasked tokens, for the operator and for softmax.
TOKEN_METRICS = ("loss", "accuracy", "eps_perplexity", "js", "sparsemax_score", "support_size")


def _token_sums(probs, logits_loss, targets, mask) -> dict[str, Array]:
    """Sums over the unmasked tokens of ``[B, L]`` per-token metrics of one distribution."""
    weight = mask.astype(jnp.float32)

    def total(x):
        return jnp.sum(jnp.where(mask, x.astype(jnp.float32), 0.0))

    return {
        "loss": total(logits_loss),
        "accuracy": total(fdiv.greedy(probs) == targets),
        # Summed −log p̃_y; exponentiated after averaging.
        "eps_perplexity": total(fdiv.epsilon_cross_entropy(probs, targets)),
        "js": total(fdiv.jensen_shannon_to_label(probs, targets)),
        "sparsemax_score": total(fdiv.sparsemax_score(probs, targets)),
        "support_size": total(fdiv.support_size(probs)),
        "count": jnp.sum(weight),
    }


@functools.partial(jax.jit, static_argnames=("divergence", "q_name"))
def _batch_sums(
    logits_BxLxV: Array,
    targets_BxL: Array,
    mask_BxL: Array,
    q_array: Array | None,
    *,
    divergence: str,
    q_name: str | None,
) -> tuple[dict[str, Array], dict[str, Array]]:
    """The sums of one batch for the f-softargmax and for softmax."""
    q = q_name if q_array is None else q_array
    logits = logits_BxLxV.astype(jnp.float32)
    # Padding positions may carry any target id; clip so the metrics never see one out of range
    # (their values there are masked out of the sums anyway).
    targets = jnp.clip(targets_BxL, 0, logits.shape[-1] - 1)
    probs = fdiv.f_softargmax(logits, divergence, q=q)
    loss = fdiv.fdiv_loss_with_integer_labels(logits, targets, divergence, q=q)
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, targets)
    return (
        _token_sums(probs, loss, targets, mask_BxL),
        _token_sums(jax.nn.softmax(logits), ce, targets, mask_BxL),
    )


def _finalize(sums: dict[str, float]) -> dict[str, float]:
    n = sums["count"]
    means = {k: sums[k] / n for k in TOKEN_METRICS}
    means["eps_perplexity"] = float(np.exp(means["eps_perplexity"]))
    return {k: float(v) for k, v in means.items()}


def evaluate_lm(
    logits_fn: LogitsFn,
    batches: Iterable[Mapping[str, np.ndarray]],
    divergence: str | fdiv.Generator,
    q: str | Array | np.ndarray | None,
) -> dict[str, float]:
    """Next-token metrics of a language model over ``batches``, averaged over unmasked tokens.

    Args:
      logits_fn: ``inputs_BxL -> logits_BxLxV``; jit it (this function only jits the metrics,
        so that the model's parameters are never baked into a compiled constant here).
      batches: ``{"inputs", "targets": int32[B, L], "mask": bool[B, L]}`` (numpy), e.g.
        ``TextSource.validation_batches(batch_size)``; ``mask`` False on padding.
      divergence: the training divergence (a name or :class:`fdiv.Generator`).
      q: its reference measure as in :func:`fdiv.f_softargmax`: ``"uniform"``, ``"unit"``
        (or ``None``) or a non-negative array broadcastable to ``[B, L, V]`` (e.g. the unigram
        frequencies ``[V]``).

    Returns:
      For the f-softargmax ``p`` of the divergence: ``loss`` (its Fenchel–Young loss),
      ``accuracy`` (``argmax p`` is the target), ``eps_perplexity`` (``exp`` of the mean
      :func:`fdiv.epsilon_cross_entropy`, ε = 1e-6), ``js`` (:func:`fdiv.jensen_shannon_to_label`,
      nats), ``sparsemax_score`` and ``support_size``; the same for softmax of the same logits
      with the key prefix ``softmax_`` (its loss is the cross-entropy), and
      ``softmax_perplexity = exp(softmax_loss)``.

    Raises:
      ValueError: if the batches hold no unmasked token, or a batch lacks a key.
    """
    if isinstance(q, str) or q is None:
        q_name, q_array = q, None
    else:
        q_name, q_array = None, jnp.asarray(q, jnp.float32)
    pending = []  # per-batch sums, still on the device
    for batch in batches:
        missing = {"inputs", "targets", "mask"} - set(batch)
        if missing:
            raise ValueError(f"evaluate_lm: batch lacks {sorted(missing)}")
        logits = logits_fn(batch["inputs"])
        targets, mask = np.asarray(batch["targets"]), np.asarray(batch["mask"], bool)
        if logits.shape[:2] != targets.shape:
            raise ValueError(
                f"evaluate_lm: logits of shape {logits.shape} do not match targets "
                f"{targets.shape} (expected [B, L, V])"
            )
        pending.append(
            _batch_sums(logits, targets, mask, q_array, divergence=divergence, q_name=q_name)
        )
    totals = [{k: 0.0 for k in (*TOKEN_METRICS, "count")} for _ in range(2)]
    for sums in jax.device_get(pending):  # the one transfer to the host
        for total, part in zip(totals, sums, strict=True):
            for k, v in part.items():
                total[k] += float(v)
    if totals[0]["count"] == 0:
        raise ValueError("evaluate_lm: the batches hold no unmasked token")
    operator, softmax = (_finalize(t) for t in totals)
    result = {**operator, **{f"softmax_{k}": v for k, v in softmax.items()}}
    result["softmax_perplexity"] = float(np.exp(result["softmax_loss"]))
    return result


def combine_lm_metrics(parts: Iterable[tuple[dict[str, float], int]]) -> dict[str, float]:
    """Metrics of several :func:`evaluate_lm` calls ``(metrics, unmasked tokens)`` as one call on
    all their tokens: token-weighted means, and for perplexities (exponentials of means) the
    token-weighted geometric mean.

    Raises:
      ValueError: if no part holds a token.
    """
    parts = [(m, n) for m, n in parts if n]
    if not parts:
        raise ValueError("combine_lm_metrics: no batch holds an unmasked token")
    total = sum(n for _, n in parts)
    out = {}
    for key in parts[0][0]:
        if "perplexity" in key:
            out[key] = float(np.exp(sum(n * np.log(m[key]) for m, n in parts) / total))
        else:
            out[key] = float(sum(n * m[key] for m, n in parts) / total)
    return out
