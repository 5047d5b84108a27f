"""Verifiable instruction data for SFT: question–answer problems generated offline by reasoning-gym.

A problem is a ``(question, answer)`` pair of strings from a reasoning-gym task (default
``chain_sum``: ``"State the final answer to the following arithmetic problem: 4 - 1 ="`` →
``"3"``), generated from a fixed seed, so the data needs no network and is the same everywhere.

Train and test are disjoint *problems*, not just disjoint draws: reasoning-gym's item ``i`` of
seed ``s`` is drawn from ``random.Random(s + i)``, so two seeds share most items, and a small task
(single-digit sums have 200 distinct questions) repeats its questions many times. Each distinct
question is therefore assigned once and for all to the test split when a hash of its text falls
below ``test_fraction``; the training examples are the items of ``train_seed`` outside the test
split, the test problems the distinct items of ``test_seed`` inside it.

An example is encoded as ``prompt_ids + answer_ids + [eos]`` (question and answer encoded
separately with the experiment's vocabulary, e.g. ``text.load_vocabulary("sentencepiece")``) and
becomes the text batch of ``interfaces.md``: ``inputs`` = the sequence without its last token,
``targets`` = without its first, padded to ``seq_len``; ``mask`` is True exactly on the targets
that are answer tokens or the final eos, so no loss falls on the prompt or the padding.

Answers are checked by exact match: the generated tokens up to the first eos, decoded and
stripped, equal the reference answer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np
import seqio

Batch = dict[str, np.ndarray]
PAD_ID = 0  # seqio's pad id: padding positions are also masked.


@dataclasses.dataclass(frozen=True)
class Problem:
    """One question and its reference answer (reasoning-gym's ``question`` and ``answer``)."""

    question: str
    answer: str


def in_test_split(question: str, test_fraction: float) -> bool:
    """Whether ``question`` belongs to the test split: a fixed hash of its text, below the fraction.

    SHA-256 rather than ``hash()``: the assignment must not change between processes.
    """
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def generate(task: str, seed: int, size: int, task_kwargs: dict[str, Any]) -> Iterator[Problem]:
    """Up to ``size`` items of the reasoning-gym task ``task`` drawn from ``seed`` (repeats
    possible), generated lazily: a caller that needs fewer stops early."""
    import reasoning_gym  # Imported here: only SFT and its tests need it.

    try:
        dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **task_kwargs)
    except (ValueError, TypeError, AssertionError) as e:
        raise ValueError(f"reasoning-gym task {task!r} with {task_kwargs}: {e}") from e
    for i in range(size):
        item = dataset[i]
        yield Problem(str(item["question"]), str(item["answer"]))


def split_problems(cfg: ml_collections.ConfigDict) -> tuple[list[Problem], list[Problem]]:
    """``(train, test)`` problems of ``cfg`` (keys: see :class:`InstructionSource`).

    ``train`` has ``cfg.train_size`` examples (repeats allowed: they are draws), ``test`` up to
    ``cfg.test_size`` distinct problems; no question is in both. Raises ``ValueError`` when the
    task has too few distinct questions on either side.
    """
    kwargs = dict(cfg.task_kwargs)
    # At most 20× as many draws as needed: the split keeps only a share of each seed's items.
    train_items = generate(cfg.task, cfg.train_seed, 20 * cfg.train_size, kwargs)
    train = list(
        itertools.islice(
            (p for p in train_items if not in_test_split(p.question, cfg.test_fraction)),
            cfg.train_size,
        )
    )
    seen: set[str] = set()
    test = []
    for p in generate(cfg.task, cfg.test_seed, 20 * cfg.test_size, kwargs):
        if p.question not in seen and in_test_split(p.question, cfg.test_fraction):
            seen.add(p.question)
            test.append(p)
            if len(test) == cfg.test_size:
                break
    if len(train) < cfg.train_size or not test:
        raise ValueError(
            f"reasoning-gym task {cfg.task!r} {kwargs} gave {len(train)} training examples (want "
            f"{cfg.train_size}) and {len(test)} test problems with test_fraction "
            f"{cfg.test_fraction}: widen the task (e.g. more digits) or change test_fraction"
        )
    return train, test


def answer_matches(generated: str, answer: str) -> bool:
    """Exact match after stripping surrounding white space."""
    return generated.strip() == answer.strip()


class InstructionSource:
    """Encoded train and test problems of a reasoning-gym task, as masked text batches.

    ``cfg`` keys: ``task`` (a reasoning-gym dataset name), ``task_kwargs`` (its config, e.g.
    ``min_digits``), ``train_size`` (training examples), ``test_size`` (at most this many
    distinct test problems), ``train_seed``, ``test_seed``, ``test_fraction`` (share of the
    distinct questions held out), ``seq_len`` (L: the batch length; an example longer than
    L + 1 tokens is an error).
    """

    def __init__(self, cfg: ml_collections.ConfigDict, vocab: seqio.Vocabulary):
        self.vocab = vocab
        self.seq_len = cfg.seq_len
        self.train_problems, self.test_problems = split_problems(cfg)
        # Distinct training problems, as many as test problems: how well the answers were fitted.
        seen = {p.question: p for p in self.train_problems}
        self.seen_problems = list(seen.values())[: len(self.test_problems)]
        self._train = self._encode_all(self.train_problems)
        self._test = self._encode_all(self.test_problems)

    def encode_prompt(self, question: str) -> list[int]:
        """The prompt's token ids; a clear error when the vocabulary cannot represent it."""
        return self._encode_exactly(question)

    def _encode_exactly(self, text: str) -> list[int]:
        ids = list(self.vocab.encode(text))
        if self.vocab.decode(ids).strip() != text.strip():
            raise ValueError(
                f"the vocabulary does not round-trip {text!r} (decodes to "
                f"{self.vocab.decode(ids)!r}): some characters are unknown to it, so answers "
                "could not be told apart. Use a vocabulary that covers them (e.g. 'byte')."
            )
        return ids

    def _encode_all(self, problems: Sequence[Problem]) -> Batch:
        """``[N, L]`` inputs/targets/mask of the problems (prompt and padding masked)."""
        n, length = len(problems), self.seq_len
        tokens = np.full((n, length + 1), PAD_ID, np.int32)
        mask = np.zeros((n, length), bool)
        for i, p in enumerate(problems):
            prompt = self._encode_exactly(p.question)
            answer = self._encode_exactly(p.answer)
            sequence = prompt + answer + [self.vocab.eos_id]
            if len(sequence) > length + 1:
                raise ValueError(
                    f"example {p} has {len(sequence)} tokens, more than seq_len + 1 = "
                    f"{length + 1}: raise config.data.seq_len"
                )
            tokens[i, : len(sequence)] = sequence
            # Target j is token j + 1: the answer tokens and the eos are targets
            # len(prompt) - 1 … len(sequence) - 2.
            mask[i, len(prompt) - 1 : len(sequence) - 1] = True
        return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask}

    def train_batches(self, batch_size: int, seed: int, start_step: int) -> Iterator[Batch]:
        """Training batches from ``start_step`` on, drawn with replacement; batch ``s`` depends
        only on ``(seed, s)``, so a resumed run sees the same batches."""
        n = len(self.train_problems)
        step = start_step
        while True:
            rows = np.random.default_rng([seed, step]).integers(0, n, batch_size)
            yield {k: v[rows] for k, v in self._train.items()}
            step += 1

    def validation_batches(self, batch_size: int) -> Iterator[Batch]:
        """Every test problem once, in order; the last batch is padded with masked rows."""
        n = len(self.test_problems)
        for start in range(0, n, batch_size):
            batch = {k: v[start : start + batch_size] for k, v in self._test.items()}
            pad = batch_size - len(batch["inputs"])
            if pad:
                batch = {
                    k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)])
                    for k, v in batch.items()
                }
            yield batch

    def decode_answer(self, generated: Sequence[int]) -> str:
        """The text of generated ids up to (not including) the first eos."""
        ids = list(generated)
        if self.vocab.eos_id in ids:
            ids = ids[: ids.index(self.vocab.eos_id)]
        return self.vocab.decode(ids)

    def prompt_groups(
        self, max_batch: int, problems: Sequence[Problem] | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(problem indices [B], prompt ids [B, P])`` over ``problems`` (default: the test
        problems), prompts of one length together (no padding inside a prompt), at most
        ``max_batch`` per group."""
        problems = self.test_problems if problems is None else problems
        prompts = [self.encode_prompt(p.question) for p in problems]
        by_length: dict[int, list[int]] = {}
        for i, prompt in enumerate(prompts):
            by_length.setdefault(len(prompt), []).append(i)
        for length in sorted(by_length):
            indices = by_length[length]
            for start in range(0, len(indices), max_batch):
                chunk = np.asarray(indices[start : start + max_batch])
                yield chunk, np.asarray([prompts[i] for i in chunk], np.int32)
