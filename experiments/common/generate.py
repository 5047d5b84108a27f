"""Text generation from a language model with its f-softargmax or with softmax.

:func:`generate` continues prompts token by token in a fixed-size buffer (prompt + new tokens,
capped at the model's longest sequence): each step runs the model on the whole buffer, takes the
logits at the last filled position, turns them into a distribution (the f-softargmax of a
divergence and reference measure, or softmax), and picks the next token greedily or by sampling
with :func:`fdiv.sample`, which never draws a token of probability zero. A row that emits the
end-of-sequence id stops there; the rest of its buffer stays padding.

Without a key-value cache a step costs a forward pass over the whole buffer: fine for the small
models and short answers of the experiments here, quadratic in the length in general. The
buffer has a fixed shape, so the model compiles once per prompt batch shape, and the token
choice is one jit'd function compiled once per (shape, operator, decoding) for every model: the
model is called outside it, as the caller's jit'd ``logits_fn``, so that its parameters are
arguments of the caller's compiled function and never baked into this one as constants.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import fdiv

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("divergence", "q_name", "greedy", "eos_id", "pad_id"))
def _advance(
    logits_BxTxV: Array,
    buffer_BxT: Array,
    done_B: Array,
    pos: Array,
    rng: Array | None,
    q_array: Array | None,
    *,
    divergence: str | fdiv.Generator | None,
    q_name: str | None,
    greedy: bool,
    eos_id: int | None,
    pad_id: int,
) -> tuple[Array, Array]:
    """Writes the token chosen from the logits at ``pos − 1`` into column ``pos``."""
    logits_BxV = jax.lax.dynamic_index_in_dim(logits_BxTxV, pos - 1, axis=1, keepdims=False)
    logits_BxV = logits_BxV.astype(jnp.float32)
    if divergence is None:
        probs_BxV = jax.nn.softmax(logits_BxV)
    else:
        q = q_name if q_array is None else q_array
        probs_BxV = fdiv.f_softargmax(logits_BxV, divergence, q=q)
    if greedy:
        token_B = fdiv.greedy(probs_BxV)
    else:
        token_B = fdiv.sample(jax.random.fold_in(rng, pos), probs_BxV)
    token_B = jnp.where(done_B, pad_id, token_B)
    buffer_BxT = jax.lax.dynamic_update_index_in_dim(buffer_BxT, token_B, pos, axis=1)
    if eos_id is not None:
        done_B = done_B | (token_B == eos_id)
    return buffer_BxT, done_B


def generate(
    logits_fn: Callable[[Array], Array],
    prompt_ids,
    max_new_tokens: int,
    *,
    divergence: str | fdiv.Generator | None,
    q: str | Array | np.ndarray | None,
    greedy: bool,
    rng: Array | None,
    eos_id: int | None = None,
    pad_id: int = 0,
    max_len: int | None = None,
) -> np.ndarray:
    """Continues prompts by up to ``max_new_tokens`` tokens.

    Args:
      logits_fn: ``inputs_BxT -> logits_BxTxV``, causal; jit it (its compiled function is
        reused for every step: the buffer shape is fixed).
      prompt_ids: one prompt ``[P]`` or a batch of prompts of one length ``[B, P]`` (P ≥ 1).
      max_new_tokens: how many tokens to add at most.
      divergence: the operator: an fdiv divergence (its f-softargmax) or ``None`` for softmax.
      q: the reference measure of the f-softargmax (as in :func:`fdiv.f_softargmax`, one
        measure for every step: ``"uniform"``, ``"unit"`` or an array broadcastable to
        ``[B, V]``, e.g. unigram frequencies); ``None`` is the uniform measure for a divergence
        and required for softmax.
      greedy: pick the most probable token (``True``) or sample one (``False``).
      rng: a PRNG key for sampling (``None`` allowed when greedy); step ``t`` uses
        ``fold_in(rng, t)``, so a run is a pure function of the key.
      eos_id: the end-of-sequence id: a row stops after emitting it (the eos is kept).
      pad_id: the id written after a row's eos.
      max_len: the model's longest sequence (e.g. ``Transformer.max_len``): the buffer is
        ``min(P + max_new_tokens, max_len)`` long.

    Returns:
      int32 ``[B, T]`` (``[T]`` for one prompt): the prompt followed by the generated tokens,
      ``pad_id`` after an eos and after the last step, ``T = min(P + max_new_tokens, max_len)``.

    Raises:
      ValueError: on an empty, non-integer or ragged prompt, a prompt that fills ``max_len``,
        a missing ``rng`` when sampling, a ``q`` given with softmax, logits of the wrong shape,
        or logits with no valid distribution (NaN).
    """
    try:
        prompts = np.asarray(prompt_ids)
    except ValueError:
        raise ValueError("generate: prompts of one batch must have one length") from None
    if prompts.dtype == object or not np.issubdtype(prompts.dtype, np.integer):
        raise ValueError(f"generate: integer prompt ids of one length expected, got {prompts!r}")
    single = prompts.ndim == 1
    prompts = prompts[None] if single else prompts
    if prompts.ndim != 2 or prompts.shape[0] == 0 or prompts.shape[1] == 0:
        raise ValueError(
            f"generate: prompt_ids must be [P] or [B, P] with B, P ≥ 1, got {prompts.shape}"
        )
    if max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be ≥ 0, got {max_new_tokens}")
    if not greedy and rng is None:
        raise ValueError("generate: sampling (greedy=False) needs an rng key")
    if divergence is None and q is not None:
        raise ValueError("generate: q is the f-softargmax's reference measure; softmax takes none")
    batch, prompt_len = prompts.shape
    length = prompt_len + max_new_tokens
    if max_len is not None:
        if prompt_len >= max_len and max_new_tokens > 0:
            raise ValueError(
                f"generate: a prompt of {prompt_len} tokens leaves no room in max_len {max_len}"
            )
        length = min(length, max_len)
    q_name, q_array = (q, None) if q is None or isinstance(q, str) else (None, jnp.asarray(q))

    buffer = jnp.asarray(np.full((batch, length), pad_id, np.int32)).at[:, :prompt_len].set(prompts)
    done = jnp.zeros((batch,), bool)
    for pos in range(prompt_len, length):
        logits = logits_fn(buffer)
        if logits.ndim != 3 or logits.shape[:2] != buffer.shape:
            raise ValueError(
                f"generate: logits_fn returned shape {logits.shape} for inputs {buffer.shape} "
                "(expected [B, T, V])"
            )
        buffer, done = _advance(
            logits,
            buffer,
            done,
            jnp.int32(pos),
            rng,
            q_array,
            divergence=divergence,
            q_name=q_name,
            greedy=greedy,
            eos_id=eos_id,
            pad_id=pad_id,
        )
        if eos_id is not None and bool(done.all()):
            break
    out = np.asarray(buffer)
    if (out < 0).any():
        raise ValueError("generate: the model's logits gave no valid distribution (NaN logits?)")
    return out[0] if single else out
