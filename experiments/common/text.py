"""Language-model text data: packed next-token batches from the seqio tasks of ``text_tasks``.

Documents are tokenized by their seqio task (each followed by EOS), concatenated, and cut into
sequences of ``seq_len + 1`` tokens (nanodo-style packing: no padding inside a sequence, a
sequence may span several documents). A batch is the process-local part of a global batch::

    {"inputs": int32[B, L], "targets": int32[B, L], "mask": bool[B, L]}

with ``targets[:, t] = inputs[:, t + 1]`` inside each sequence and ``mask`` False on padding.

Offline corpora (``kjv_bible``, ``python_docs``) are tokenized once per (corpus, vocabulary,
validation fraction) and the token arrays cached under ``<cache_dir>/text`` (``data.cache_dir``,
else ``$FDIV_DATA_DIR``, else ``~/.cache/fdiv``); concurrent processes that miss the cache each
write a temporary file and rename it into place, so a reader never sees a partial file.
Training batches are windows at uniformly random offsets of the training tokens, drawn by a
generator seeded with ``(seed, step)``: batch ``s`` depends on nothing else, so a resumed run
sees exactly the batches of an uninterrupted one. Validation batches cover the validation tokens
once, in order: every token but the first is a target exactly once.

C4 (``c4``) is streamed through tf.data; see :class:`C4Source`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import jax
import ml_collections
import numpy as np
from absl import logging

from experiments.common import data, text_tasks
from experiments.common.data import DatasetMissingError
from experiments.common.text_tasks import UnknownNameError, load_vocabulary

if TYPE_CHECKING:
    import seqio
    import tensorflow as tf

__all__ = [
    "Batch",
    "C4Source",
    "DatasetMissingError",
    "TextSource",
    "TokenArraySource",
    "UnknownNameError",
    "data_config",
    "load_vocabulary",
    "make_text_source",
]

Batch = dict[str, np.ndarray]

# Bump when the extraction or tokenization of the offline corpora changes (names cache files).
_CACHE_VERSION = 1


def data_config(**overrides) -> ml_collections.ConfigDict:
    """``config.data`` of a language-model experiment, with its defaults.

    Keys: ``name`` (corpus), ``vocab``, ``seq_len`` (L), ``validation_fraction`` (offline
    corpora), ``tfds_data_dir`` (C4; empty: $TFDS_DATA_DIR or ~/tensorflow_datasets),
    ``cache_dir`` (empty: $FDIV_DATA_DIR or ~/.cache/fdiv), ``unigram_documents`` (C4: how
    many training documents estimate the unigram frequencies).
    """
    cfg = ml_collections.ConfigDict(
        {
            "name": "kjv_bible",
            "vocab": "sentencepiece",
            "seq_len": 128,
            "validation_fraction": 0.05,
            "tfds_data_dir": "",
            "cache_dir": "",
            "unigram_documents": 100_000,
        }
    )
    unknown = sorted(set(overrides) - set(cfg.keys()))
    if unknown:
        raise KeyError(f"unknown data config keys {unknown}; valid: {', '.join(cfg.keys())}")
    cfg.update(overrides)
    return cfg


class TextSource(Protocol):
    """What a language-model experiment needs from its text data."""

    vocab: seqio.Vocabulary
    vocab_size: int

    def train_batches(self, batch_size: int, seed: int, start_step: int) -> Iterator[Batch]:
        """Endless process-local training batches from global step ``start_step`` on."""
        ...

    def validation_batches(self, batch_size: int) -> Iterator[Batch]:
        """One pass over the validation split, the last batch padded (``mask`` False)."""
        ...

    def unigram(self) -> np.ndarray:
        """Smoothed token frequencies of the training split: ``[vocab_size]``, > 0, sum 1."""
        ...


def cache_dir(cfg: ml_collections.ConfigDict) -> Path:
    """Where token arrays are cached: ``data.cache_dir``, $FDIV_DATA_DIR or ~/.cache/fdiv."""
    root = cfg.get("cache_dir") or os.environ.get("FDIV_DATA_DIR") or "~/.cache/fdiv"
    return Path(root).expanduser() / "text"


def _save_atomic(path: Path, array: np.ndarray) -> None:
    """Writes ``array`` to ``path`` through a temporary file and a rename (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _token_counts(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    counts = np.bincount(tokens, minlength=vocab_size)
    if len(counts) != vocab_size:
        raise ValueError(f"token id {len(counts) - 1} is outside the vocabulary ({vocab_size})")
    return counts


def _smoothed_frequencies(counts: np.ndarray) -> np.ndarray:
    """Add-one smoothing: tokens never seen in training (padding, UNK) keep a small mass."""
    smoothed = counts.astype(np.float64) + 1.0
    return (smoothed / smoothed.sum()).astype(np.float32)


def _to_batch(rows: np.ndarray, mask: np.ndarray) -> Batch:
    """Sequences of L + 1 tokens → inputs, targets (shifted by one) and the targets' mask."""
    return {
        "inputs": rows[:, :-1].astype(np.int32),
        "targets": rows[:, 1:].astype(np.int32),
        "mask": mask.astype(bool),
    }


# ------------------------------------------------------------------------- offline corpora


def _tokenize_split(
    corpus: str, vocab: str, split: str, validation_fraction: float, cache: Path
) -> np.ndarray:
    """All tokens of one split (each document followed by EOS) as int32, through the cache."""
    fingerprint = text_tasks.vocabulary_fingerprint(vocab)
    name = text_tasks.task_name(corpus, vocab, validation_fraction)
    path = cache / f"{name}-{fingerprint}-{split}-v{_CACHE_VERSION}.npy"
    if path.exists():
        return np.load(path)
    logging.info("tokenizing %s (%s split) with %s; caching it in %s", corpus, split, vocab, path)
    task = text_tasks.get_task(corpus, vocab, validation_fraction=validation_fraction)
    dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1)
    tokens = np.concatenate([ex["targets"] for ex in dataset.as_numpy_iterator()])
    tokens = tokens.astype(np.int32)
    _save_atomic(path, tokens)
    logging.info("%s %s: %d tokens", corpus, split, len(tokens))
    return tokens


@dataclasses.dataclass
class TokenArraySource:
    """A corpus held in memory as the token arrays of its two splits."""

    vocab: seqio.Vocabulary
    vocab_size: int
    seq_len: int
    train_tokens: np.ndarray
    validation_tokens: np.ndarray

    def __post_init__(self):
        for split, tokens in (("train", self.train_tokens), ("validation", self.validation_tokens)):
            if len(tokens) < self.seq_len + 1:
                raise ValueError(
                    f"the {split} split has {len(tokens)} tokens, fewer than seq_len + 1 = "
                    f"{self.seq_len + 1}; lower data.seq_len or raise data.validation_fraction"
                )

    def train_batches(self, batch_size: int, seed: int, start_step: int) -> Iterator[Batch]:
        """Batch ``s``: ``batch_size`` windows of L + 1 tokens at offsets drawn from (seed, s)."""
        lo, hi = data._process_slice(batch_size)  # This host's rows of the global batch.
        num_offsets = len(self.train_tokens) - self.seq_len
        window = np.arange(self.seq_len + 1)
        for step in itertools.count(start_step):
            offsets = np.random.default_rng((seed, step)).integers(0, num_offsets, batch_size)
            mask = np.ones((hi - lo, self.seq_len), bool)  # Fresh: callers may edit batches.
            yield _to_batch(self.train_tokens[offsets[lo:hi, None] + window], mask)

    def validation_batches(self, batch_size: int) -> Iterator[Batch]:
        """Row r holds tokens ``[r·L, r·L + L]``: consecutive rows share one token, so every
        token after the first is a target exactly once; padding rows and positions are masked."""
        lo, hi = data._process_slice(batch_size)
        tokens, length = self.validation_tokens, self.seq_len
        num_rows = math.ceil((len(tokens) - 1) / length)
        padded = np.zeros(num_rows * length + 1, np.int32)
        padded[: len(tokens)] = tokens
        target_position = np.arange(1, num_rows * length + 1).reshape(num_rows, length)
        window = np.arange(length + 1)
        for start in range(0, num_rows, batch_size):
            rows = np.arange(start + lo, start + hi)
            valid = rows < num_rows
            rows = np.where(valid, rows, 0)
            mask = (target_position[rows] < len(tokens)) & valid[:, None]
            sequences = padded[rows[:, None] * length + window]
            sequences[~valid] = 0  # Padding rows hold padding ids, not a copy of row 0.
            yield _to_batch(sequences, mask)

    def unigram(self) -> np.ndarray:
        return _smoothed_frequencies(_token_counts(self.train_tokens, self.vocab_size))


# ----------------------------------------------------------------------------------- C4


def _pack(dataset: tf.data.Dataset, seq_len: int, *, drop_remainder: bool) -> tf.data.Dataset:
    """Concatenates the examples' ``targets`` and cuts the stream into L + 1 token rows."""
    tokens = dataset.map(lambda ex: ex["targets"]).unbatch()
    return tokens.batch(seq_len + 1, drop_remainder=drop_remainder)


class C4Source:
    """C4 (``c4/en``) streamed through its seqio task, for the real-scale configs.

    Training: each host reads its own shard of the training split, shuffled with the run's seed
    (seqio's file and example shuffling), packs it, and a resumed run skips the rows of the steps
    already done — the order of an uninterrupted run on the same host count, at the cost of
    re-reading those rows. Validation: every host reads the whole split in order (so all hosts
    agree on the number of batches) and keeps its rows of each global batch; the split is large
    (~360k documents), so experiments normally evaluate a fixed number of its first batches.
    Rows do not overlap (T5/nanodo packing): the first token of each row is an input only.
    """

    def __init__(self, cfg: ml_collections.ConfigDict):
        # Fails fast (no tensorflow import) when C4 is not prepared.
        self._task = text_tasks.get_task(
            "c4", cfg.vocab, tfds_data_dir=cfg.get("tfds_data_dir", "")
        )
        self.vocab = load_vocabulary(cfg.vocab)
        self.vocab_size = self.vocab.vocab_size
        self._seq_len = cfg.seq_len
        self._unigram_documents = cfg.get("unigram_documents", 100_000)
        self._cache = cache_dir(cfg)
        self._fingerprint = text_tasks.vocabulary_fingerprint(cfg.vocab)

    def train_batches(self, batch_size: int, seed: int, start_step: int) -> Iterator[Batch]:
        import seqio

        lo, hi = data._process_slice(batch_size)
        dataset = self._task.get_dataset(
            sequence_length=None,
            split="train",
            shuffle=True,
            seed=seed,
            shard_info=seqio.ShardInfo(jax.process_index(), jax.process_count()),
            num_epochs=None,
        )
        rows = _pack(dataset, self._seq_len, drop_remainder=True).batch(hi - lo)
        for batch in rows.skip(start_step).as_numpy_iterator():
            yield _to_batch(batch, np.ones((hi - lo, self._seq_len), bool))

    def validation_batches(self, batch_size: int) -> Iterator[Batch]:
        lo, hi = data._process_slice(batch_size)
        dataset = self._task.get_dataset(
            sequence_length=None, split="validation", shuffle=False, num_epochs=1
        )
        # The last row may be short and the last batch may hold fewer rows: -1 marks padding.
        rows = _pack(dataset, self._seq_len, drop_remainder=False).padded_batch(
            batch_size, padded_shapes=[self._seq_len + 1], padding_values=-1
        )
        for chunk in rows.as_numpy_iterator():
            sequences = np.full((batch_size, self._seq_len + 1), -1, np.int32)
            sequences[: len(chunk)] = chunk
            valid = sequences >= 0
            sequences[~valid] = 0
            yield _to_batch(sequences[lo:hi], valid[lo:hi, 1:])

    def unigram(self) -> np.ndarray:
        """Estimated from the first ``data.unigram_documents`` training documents (cached)."""
        path = self._cache / (
            f"c4-unigram-{self._fingerprint}-{self._unigram_documents}docs-v{_CACHE_VERSION}.npy"
        )
        if path.exists():
            return np.load(path)
        logging.info("counting tokens of %d C4 documents for unigram q", self._unigram_documents)
        dataset = self._task.get_dataset(
            sequence_length=None, split="train", shuffle=False, num_epochs=1
        ).take(self._unigram_documents)
        counts = np.zeros(self.vocab_size, np.int64)
        for ex in dataset.as_numpy_iterator():
            counts += _token_counts(ex["targets"], self.vocab_size)
        q = _smoothed_frequencies(counts)
        _save_atomic(path, q)
        return q


# ----------------------------------------------------------------------------------- entry


def make_text_source(cfg: ml_collections.ConfigDict) -> TextSource:
    """The text source of ``config.data`` (keys: see :func:`data_config`)."""
    text_tasks.check_corpus(cfg.name)
    text_tasks.check_vocabulary(cfg.vocab)
    if not isinstance(cfg.seq_len, int) or cfg.seq_len < 1:
        raise ValueError(f"data.seq_len must be a positive integer, got {cfg.seq_len!r}")
    if cfg.name == "c4":
        return C4Source(cfg)
    text_tasks.check_validation_fraction(cfg.validation_fraction)
    text_tasks.require_corpus(cfg.name)
    vocab = load_vocabulary(cfg.vocab)
    cache = cache_dir(cfg)
    tokens = {
        split: _tokenize_split(cfg.name, cfg.vocab, split, cfg.validation_fraction, cache)
        for split in ("train", "validation")
    }
    return TokenArraySource(
        vocab=vocab,
        vocab_size=vocab.vocab_size,
        seq_len=cfg.seq_len,
        train_tokens=tokens["train"],
        validation_tokens=tokens["validation"],
    )
