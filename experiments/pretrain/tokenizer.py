"""Trains the committed SentencePiece tokenizer on the King James Bible (seconds, deterministic).

    python -m experiments.pretrain.tokenizer [--vocab_size=4096] [--output_dir=...]

writes ``kjv_sp4k.model`` and ``kjv_sp4k.vocab`` to ``experiments/pretrain/tokenizer/`` (the
``sentencepiece`` vocabulary of ``experiments.common.text``). The model is a unigram
SentencePiece model over every line (chapter titles and verses) of the KJV text, with

* ids 0 = padding, 1 = EOS, 2 = UNK and no BOS (seqio's convention);
* byte fallback and the identity normaliser, so that any string — arithmetic prompts, code,
  other scripts, runs of spaces, newlines — decodes back to itself exactly;
* digits split into single tokens (numbers are then spelt digit by digit, as arithmetic needs).

Training runs on one thread over the whole input in order, so the same text gives the same
model bytes. Token caches of ``experiments.common.text`` are keyed on the model's hash, so a
regenerated model never meets ids of the old one.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from absl import app, flags, logging

from experiments.common import text_tasks

_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 4096, "Number of pieces, including specials.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir",
    str(text_tasks.SENTENCEPIECE_MODEL.parent),
    "Where to write <prefix>.model and <prefix>.vocab.",
)
_PREFIX = flags.DEFINE_string("prefix", text_tasks.SENTENCEPIECE_MODEL.stem, "File name stem.")


def training_lines() -> list[str]:
    """Every line of the KJV text: chapter titles and verses (the trainer's sentences)."""
    return [line for doc in text_tasks.documents("kjv_bible") for line in doc.split("\n")]


def _without_temporary_path(model_file: Path) -> bytes:
    """The model's bytes with the trainer's (random, temporary) output path blanked out."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto.FromString(model_file.read_bytes())
    proto.trainer_spec.ClearField("model_prefix")
    return proto.SerializeToString(deterministic=True)


def train(vocab_size: int, output_dir: Path, prefix: str) -> Path:
    """Trains the model and writes ``<output_dir>/<prefix>.{model,vocab}``; returns the model."""
    import sentencepiece as spm

    lines = training_lines()
    logging.info("training SentencePiece (%d pieces) on %d KJV lines", vocab_size, len(lines))
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_prefix=str(Path(tmp) / prefix),
            model_type="unigram",
            vocab_size=vocab_size,
            character_coverage=1.0,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            input_sentence_size=0,  # All lines, in order: no sampling.
            shuffle_input_sentence=False,
            num_threads=1,
            minloglevel=2,
        )
        model = output_dir / (prefix + ".model")
        model.write_bytes(_without_temporary_path(Path(tmp) / (prefix + ".model")))
        shutil.copyfile(Path(tmp) / (prefix + ".vocab"), model.with_suffix(".vocab"))
    logging.info("wrote %s and %s", model, model.with_suffix(".vocab"))
    return model


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    train(_VOCAB_SIZE.value, Path(_OUTPUT_DIR.value), _PREFIX.value)


if __name__ == "__main__":
    app.run(main)
