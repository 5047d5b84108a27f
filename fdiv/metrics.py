r"""Evaluation metrics for predicted distributions that may be sparse.

A sparse operator (``"alpha:1.5"``, ``"chi2"``, ...) can give the target class exactly zero
probability, so the perplexity ``exp(mean −log p_y)`` is infinite as soon as one token is
missed. These metrics stay finite and compare sparse and dense distributions on one scale:

* :func:`epsilon_cross_entropy`: ``−log p̃_y`` with ``p̃ = (p + ε) / (Σ_j p_j + kε)``, the
  distribution with ``ε`` mixed into every class and renormalised; the **ε-perplexity** is
  ``exp`` of its mean over tokens;
* :func:`jensen_shannon_to_label`: ``JS(p, e_y)``, the Jensen–Shannon divergence to the one-hot
  target, in nats, in ``[0, log 2]``;
* :func:`sparsemax_score`: ``1 − (½‖p‖² − p_y + ½) = 1 − ½‖p − e_y‖²``, in ``[0, 1]``;
* :func:`support_size`: the number of classes with non-zero probability.

Like optax's losses they return one value per example (no reduction), take the classes along
``axis`` and a ``where`` mask of the classes to keep, so a caller averages them over the
unmasked tokens of a batch itself. The probabilities are used as given (the f-softargmax
sums to one to its solver's tolerance); masked classes count as probability zero.

References:
  Martins, Marinho, Martins. Sparse Text Generation. EMNLP 2020 (the ε-perplexity, the
  sparsemax score and the Jensen–Shannon divergence as metrics of sparse language models).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fdiv import _rows

Array = jax.Array


def _prepare(probs, where, axis: int) -> tuple[Array, Array]:
    """``(p, keep)``: classes last, float32 or wider, masked classes at probability 0."""
    probs = jnp.asarray(probs)
    if not jnp.issubdtype(probs.dtype, jnp.floating):
        raise ValueError(f"probs must be floating point, got dtype {probs.dtype}")
    if probs.ndim == 0:
        raise ValueError("probs must have at least one axis (the classes)")
    p = probs.astype(_rows.compute_dtype(probs.dtype))
    if where is None:
        keep = jnp.ones((1,) * p.ndim, bool)
    else:
        keep = jnp.asarray(where, bool)
        if keep.ndim > p.ndim:
            raise ValueError(f"where of shape {keep.shape} has more axes than probs {p.shape}")
        keep = keep.reshape((1,) * (p.ndim - keep.ndim) + keep.shape)
        try:
            jnp.broadcast_shapes(keep.shape, p.shape)
        except ValueError:
            raise ValueError(
                f"where of shape {keep.shape} does not broadcast to probs {p.shape}"
            ) from None
        p = jnp.where(keep, p, 0.0)
    axis = axis % p.ndim
    return jnp.moveaxis(p, axis, -1), jnp.moveaxis(keep, axis, -1)


def _label_probability(p: Array, labels, axis: int, ndim: int) -> Array:
    """``p_y`` per example (classes last in ``p``); checks the labels like the fdiv losses."""
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"integer labels expected, got dtype {labels.dtype}")
    expected = p.shape[:-1]
    if labels.shape != expected:
        raise ValueError(
            f"labels of shape {labels.shape} must be the probs shape without axis "
            f"{axis % ndim}: {expected}"
        )
    k = p.shape[-1]
    known = _rows.concrete_or_none(labels)
    if known is not None and known.size and (known.min() < 0 or known.max() >= k):
        raise ValueError(
            f"labels must lie in [0, {k}), got values in [{known.min()}, {known.max()}]"
        )
    p_y = jnp.take_along_axis(p, jnp.clip(labels, 0, k - 1)[..., None], axis=-1)[..., 0]
    # Under jit a label out of range cannot raise: it makes its example NaN.
    return jnp.where((labels >= 0) & (labels < k), p_y, jnp.nan)


def epsilon_cross_entropy(
    probs: Array,
    labels: Array,
    *,
    epsilon: float = 1e-6,
    axis: int = -1,
    where: Array | None = None,
) -> Array:
    r"""``−log p̃_y``, the log loss of ``p`` with ``ε`` mixed in; its mean gives the ε-perplexity.

    ``p̃_j = (p_j + ε) / (Σ_i p_i + k ε)`` over the ``k`` classes kept by ``where``: every class
    gets at least about ``ε`` probability, so the value is finite even where a sparse ``p``
    gives the target zero mass (it is then about ``−log ε ≈ 13.8`` for ``ε = 1e-6``). The
    ε-perplexity of a set of tokens is ``exp(mean(epsilon_cross_entropy))``. Each term differs
    from ``−log p_y`` by about ``kε − ε/p_y``, so for tokens with ``p_y ≫ ε`` the ε-perplexity
    is the perplexity.

    Args:
      probs: probabilities (e.g. :func:`fdiv.f_softargmax` or ``jax.nn.softmax``); the classes
        lie along ``axis``.
      labels: integer targets, the shape of ``probs`` without ``axis``.
      epsilon: the mass mixed into every class, ``> 0``.
      axis: the class axis.
      where: boolean mask broadcastable to ``probs``; ``False`` classes are left out (no ``ε``,
        not counted in ``k``).

    Returns:
      ``−log p̃_y`` per example, the shape of ``labels`` (NaN for a label outside ``[0, k)``
      under ``jit``; eagerly that raises ``ValueError``).

    Example:
      >>> import jax.numpy as jnp, fdiv
      >>> p = fdiv.f_softargmax(jnp.array([[3.0, 1.0, -2.0]]), "alpha:1.5", q="unit")
      >>> nll = fdiv.epsilon_cross_entropy(p, jnp.array([2]))  # p_2 = 0 exactly
      >>> bool(jnp.isfinite(nll).all()), round(float(jnp.exp(nll.mean())) / 1e6, 2)
      (True, 1.0)
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    p, keep = _prepare(probs, where, axis)
    p_y = _label_probability(p, labels, axis, p.ndim)
    k = jnp.sum(jnp.broadcast_to(keep, p.shape), axis=-1).astype(p.dtype)
    total = jnp.sum(p, axis=-1) + k * epsilon
    return jnp.log(total) - jnp.log(p_y + epsilon)


def jensen_shannon_to_label(
    probs: Array,
    labels: Array,
    *,
    axis: int = -1,
    where: Array | None = None,
) -> Array:
    r"""The Jensen–Shannon divergence ``JS(p, e_y)`` to the one-hot target, in nats.

    ``JS(p, e_y) = ½ KL(p ‖ m) + ½ KL(e_y ‖ m)`` with ``m = (p + e_y) / 2``. Only ``p_y`` and
    ``S = Σ_j p_j`` enter, because ``m_j = p_j / 2`` off the target::

        JS(p, e_y) = ½ [(S + 1) log 2 + p_y log p_y − (1 + p_y) log(1 + p_y)]

    which, for ``S = 1``, is ``0`` when ``p = e_y`` and ``log 2`` when ``p_y = 0``. Finite for
    every ``p``, including sparse ones that miss the target.

    Args:
      probs, labels, axis, where: as :func:`epsilon_cross_entropy`.

    Returns:
      The divergence per example, the shape of ``labels``.

    Example:
      >>> import jax.numpy as jnp, fdiv
      >>> p = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
      >>> fdiv.jensen_shannon_to_label(p, jnp.array([0, 0, 0]))
      Array([0.        , 0.6931472 , 0.2157615...], dtype=float32)
    """
    p, _ = _prepare(probs, where, axis)
    p_y = _label_probability(p, labels, axis, p.ndim)
    total = jnp.sum(p, axis=-1)
    return 0.5 * (
        (total + 1.0) * np.log(2.0) + jax.scipy.special.xlogy(p_y, p_y) - jnp.log1p(p_y) * (1 + p_y)
    )


def sparsemax_score(
    probs: Array,
    labels: Array,
    *,
    axis: int = -1,
    where: Array | None = None,
) -> Array:
    r"""The sparsemax score ``1 − (½‖p‖² − p_y + ½) = 1 − ½‖p − e_y‖²``.

    One minus the sparsemax loss evaluated at ``p`` (the squared distance to the one-hot
    target, halved): ``1`` when ``p = e_y``, ``0`` when ``p`` is one-hot on another class,
    in ``[0, 1]`` for every distribution.

    Args:
      probs, labels, axis, where: as :func:`epsilon_cross_entropy`.

    Returns:
      The score per example, the shape of ``labels``.

    Example:
      >>> import jax.numpy as jnp, fdiv
      >>> p = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
      >>> fdiv.sparsemax_score(p, jnp.array([0, 0, 0]))
      Array([1.  , 0.  , 0.75], dtype=float32)

    References:
      Martins, Astudillo. From Softmax to Sparsemax. ICML 2016.
    """
    p, _ = _prepare(probs, where, axis)
    p_y = _label_probability(p, labels, axis, p.ndim)
    return 0.5 + p_y - 0.5 * jnp.sum(p * p, axis=-1)


def support_size(probs: Array, *, axis: int = -1, where: Array | None = None) -> Array:
    r"""The number of classes with non-zero probability, ``|{j : p_j > 0}|``.

    ``k`` for softmax (up to underflow), often far fewer for sparse operators.

    Args:
      probs: probabilities; the classes lie along ``axis``.
      axis: the class axis.
      where: boolean mask broadcastable to ``probs``; ``False`` classes are not counted.

    Returns:
      The count per example (int32), ``probs`` without ``axis``.

    Example:
      >>> import jax.numpy as jnp, fdiv
      >>> p = fdiv.f_softargmax(jnp.array([[3.0, 1.0, -2.0], [0.0, 0.0, 0.0]]), "alpha:2")
      >>> fdiv.support_size(p)  # uniform q: sparsemax of the logits / 3
      Array([2, 3], dtype=int32)
    """
    p, _ = _prepare(probs, where, axis)
    return jnp.sum(p > 0, axis=-1, dtype=jnp.int32)
