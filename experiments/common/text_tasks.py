"""Text corpora, vocabularies and their seqio tasks (language-model pre-training data).

Corpora (``data.name`` in a config):

* ``kjv_bible``: the King James Bible from the Debian packages ``bible-kjv-text`` + ``bible-kjv``
  (the ``bible`` program prints it); one document per chapter, ``"Genesis 1\\n1 In the ..."``
  with one verse a line.
* ``python_docs``: the Python 3.11 documentation from the Debian package ``python3.11-doc``
  (``/usr/share/info/python3.11.info.gz``); one document per Info node, index nodes left out.
* ``c4``: C4 (``c4/en``) through tfds, for the real-scale configs; it must already be prepared in
  the tfds data dir (nothing here downloads).

The two offline corpora are split into training and validation documents by a fixed permutation
(:func:`split_documents`), so the split depends only on the corpus and ``validation_fraction``.
C4 uses its own ``train`` and ``validation`` splits.

Vocabularies (``data.vocab``): ``sentencepiece``, the committed model
``experiments/pretrain/tokenizer/kjv_sp4k.model`` (trained on the KJV text by
``python -m experiments.pretrain.tokenizer``, byte fallback so every string round-trips), and
``byte``, seqio's UTF-8 byte vocabulary. Both reserve 0 = padding, 1 = EOS, 2 = UNK.

seqio and tensorflow are imported inside the functions that need them: importing them takes
seconds, and missing data must fail before that.
"""

from __future__ import annotations

import functools
import gzip
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from experiments.common import data

if TYPE_CHECKING:
    import seqio
    import tensorflow as tf

CORPORA = ("kjv_bible", "python_docs", "c4")
OFFLINE_CORPORA = ("kjv_bible", "python_docs")
VOCABULARIES = ("sentencepiece", "byte")

SENTENCEPIECE_MODEL = (
    Path(__file__).resolve().parents[1] / "pretrain" / "tokenizer" / "kjv_sp4k.model"
)
BIBLE_DATA_DIR = Path("/usr/lib")  # Where bible-kjv-text puts bible.data.
PYTHON_DOCS_INFO = Path("/usr/share/info/python3.11.info.gz")
C4_TFDS_NAME = "c4/en"

# Seed of the permutation that assigns documents to the validation split. Fixed (not the run's
# seed) so that every run of a sweep is evaluated on the same documents.
_SPLIT_SEED = 20250130


class UnknownNameError(ValueError):
    """A corpus or vocabulary name is not known; the message lists the valid ones."""


def check_corpus(name: str) -> None:
    if name not in CORPORA:
        raise UnknownNameError(f"unknown text corpus {name!r}; valid: {', '.join(CORPORA)}")


def check_vocabulary(name: str) -> None:
    if name not in VOCABULARIES:
        raise UnknownNameError(f"unknown vocabulary {name!r}; valid: {', '.join(VOCABULARIES)}")


# ------------------------------------------------------------------------------------ corpora


def require_corpus(corpus: str) -> None:
    """Raises :class:`~experiments.common.data.DatasetMissingError`, saying how to install it,
    unless the offline corpus's Debian package is installed (cheap: looks at files only)."""
    check_corpus(corpus)
    if corpus == "kjv_bible" and (
        shutil.which("bible") is None or not (BIBLE_DATA_DIR / "bible.data").exists()
    ):
        raise data.DatasetMissingError(
            "The King James Bible is not installed: the `bible` program or "
            f"{BIBLE_DATA_DIR / 'bible.data'} is missing. Install the Debian packages "
            "bible-kjv-text and bible-kjv (bash scripts/setup.sh does it as root: "
            "apt-get install -y bible-kjv-text bible-kjv)."
        )
    if corpus == "python_docs" and not PYTHON_DOCS_INFO.exists():
        raise data.DatasetMissingError(
            f"The Python documentation is not installed: {PYTHON_DOCS_INFO} is missing. "
            "Install the Debian package python3.11-doc (bash scripts/setup.sh does it as root: "
            "apt-get install -y python3.11-doc)."
        )


def _run_bible() -> str:
    """The whole KJV text as the ``bible`` program prints it."""
    require_corpus("kjv_bible")
    out = subprocess.run(
        ["bible", "-p", str(BIBLE_DATA_DIR), "gen1:1-rev22:21"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout


def parse_bible(text: str) -> list[str]:
    """Splits the ``bible`` program's output into chapters, one verse a line.

    The program prints a blank line, the chapter title (``Genesis 1``), a blank line, then verses
    that start with two spaces and the verse number and wrap at 80 columns without indentation.
    A title is the only unindented line that follows a blank line.
    """
    chapters: list[list[str]] = []
    previous_blank = True
    for line in text.splitlines():
        if not line.strip():
            previous_blank = True
            continue
        if previous_blank and not line.startswith(" "):
            chapters.append([line.strip()])
        elif line.startswith("  "):
            if not chapters:
                raise ValueError(f"verse before the first chapter title: {line!r}")
            chapters[-1].append(line.strip())
        else:  # A wrapped continuation of the verse above.
            chapters[-1][-1] += " " + line.strip()
        previous_blank = False
    return ["\n".join(lines) for lines in chapters]


def parse_info(text: str) -> list[str]:
    """Splits a GNU Info file into its nodes' texts, without headers, tag tables and indexes."""
    documents = []
    # Nodes are separated by the 0x1f character; the first chunk is the file's preamble.
    for chunk in text.split("\x1f\n")[1:]:
        header, _, body = chunk.partition("\n")
        match = re.search(r"Node: ([^,]*)", header)
        if match is None or "Index" in match.group(1):  # Tag tables; index pages are link lists.
            continue
        body = body.strip("\n")
        if body:
            documents.append(body)
    return documents


def _read_python_docs() -> list[str]:
    require_corpus("python_docs")
    with gzip.open(PYTHON_DOCS_INFO, "rt", encoding="utf-8") as f:
        return parse_info(f.read())


@functools.cache
def documents(corpus: str) -> tuple[str, ...]:
    """All documents of an offline corpus, in the corpus's order."""
    check_corpus(corpus)
    if corpus == "kjv_bible":
        return tuple(parse_bible(_run_bible()))
    if corpus == "python_docs":
        return tuple(_read_python_docs())
    raise ValueError(f"{corpus!r} is not an offline corpus (offline: {', '.join(OFFLINE_CORPORA)})")


def check_validation_fraction(fraction: float) -> None:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {fraction!r}")


def split_documents(num_documents: int, validation_fraction: float) -> dict[str, np.ndarray]:
    """Indices (sorted) of the ``train`` and ``validation`` documents.

    A fixed permutation puts ``round(fraction · n)`` documents (at least one) in validation, so
    the held-out documents come from the whole corpus (not only its end) and do not depend on
    the run's seed.
    """
    check_validation_fraction(validation_fraction)
    if num_documents < 2:
        raise ValueError(f"cannot split {num_documents} document(s) into train and validation")
    num_validation = min(max(1, round(validation_fraction * num_documents)), num_documents - 1)
    permutation = np.random.default_rng(_SPLIT_SEED).permutation(num_documents)
    return {
        "train": np.sort(permutation[num_validation:]),
        "validation": np.sort(permutation[:num_validation]),
    }


def split_texts(corpus: str, split: str, validation_fraction: float) -> list[str]:
    """The documents of one split of an offline corpus."""
    docs = documents(corpus)
    return [docs[i] for i in split_documents(len(docs), validation_fraction)[split]]


# ------------------------------------------------------------------------------- vocabularies


@functools.cache
def load_vocabulary(name: str) -> seqio.Vocabulary:
    """The seqio vocabulary ``"sentencepiece"`` (the committed model) or ``"byte"``."""
    check_vocabulary(name)
    import seqio  # Imports tensorflow (seconds).

    if name == "byte":
        return seqio.ByteVocabulary()
    if not SENTENCEPIECE_MODEL.exists():
        raise FileNotFoundError(
            f"SentencePiece model {SENTENCEPIECE_MODEL} is missing; regenerate it with "
            "python -m experiments.pretrain.tokenizer"
        )
    return seqio.SentencePieceVocabulary(str(SENTENCEPIECE_MODEL))


def vocabulary_fingerprint(name: str) -> str:
    """Changes whenever the token ids of a text could change (names token caches)."""
    check_vocabulary(name)
    if name == "byte":
        return "byte"
    import hashlib

    return "sp-" + hashlib.sha256(SENTENCEPIECE_MODEL.read_bytes()).hexdigest()[:12]


# ------------------------------------------------------------------------------- seqio tasks


def task_name(corpus: str, vocab: str, validation_fraction: float | None = None) -> str:
    """The seqio task name, e.g. ``fdiv_kjv_bible_sentencepiece_val0.05``."""
    name = f"fdiv_{corpus}_{vocab}"
    if validation_fraction is not None:
        name += f"_val{validation_fraction:.6f}".rstrip("0")
    return name


def _offline_dataset_fn(corpus: str, validation_fraction: float):
    """A seqio ``dataset_fn`` over one offline corpus's split documents (``{"text": str}``)."""

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # One in-memory "file"; the batches are shuffled by the caller.
        import tensorflow as tf

        texts = split_texts(corpus, split, validation_fraction)
        return tf.data.Dataset.from_tensor_slices({"text": tf.constant(texts, tf.string)})

    return dataset_fn


def c4_tfds_name(tfds_data_dir: str) -> str:
    """``c4/en:<version>`` of the newest version prepared in the data dir.

    Raises :class:`~experiments.common.data.DatasetMissingError` (before any tensorflow import)
    when none is.
    """
    try:
        data.require_tfds(C4_TFDS_NAME, tfds_data_dir)
    except data.DatasetMissingError as e:
        raise data.DatasetMissingError(
            f"{e} (Preparing C4 runs tfds's Apache Beam pipeline: pip install apache-beam.)"
        ) from None
    root = data.tfds_data_dir(tfds_data_dir) / C4_TFDS_NAME
    versions = [p.parent.name for p in root.glob("*/dataset_info.json")]
    newest = max(versions, key=lambda v: tuple(int(x) for x in v.split(".") if x.isdigit()))
    return f"{C4_TFDS_NAME}:{newest}"


def get_task(
    corpus: str,
    vocab: str,
    *,
    validation_fraction: float | None = None,
    tfds_data_dir: str = "",
) -> seqio.Task:
    """The seqio task (registered on first use) of ``corpus`` tokenized with ``vocab``.

    Each example's ``targets`` is one document's token ids followed by EOS. Offline corpora need
    ``validation_fraction``; C4 needs the tfds data dir and fails fast when it is not there.
    """
    check_corpus(corpus)
    check_vocabulary(vocab)
    if corpus == "c4":
        tfds_name = c4_tfds_name(tfds_data_dir)
        name = task_name(corpus, vocab)
    else:
        if validation_fraction is None:
            raise ValueError(f"the {corpus} task needs a validation_fraction")
        check_validation_fraction(validation_fraction)
        name = task_name(corpus, vocab, validation_fraction)
    import seqio  # Imports tensorflow (seconds).

    if name in seqio.TaskRegistry.names():
        if corpus != "c4":
            return seqio.TaskRegistry.get(name)
        # C4's name does not say which data dir (or version) it reads: define it afresh.
        seqio.TaskRegistry.remove(name)
    if corpus == "c4":
        source = seqio.TfdsDataSource(
            tfds_name=tfds_name,
            tfds_data_dir=str(data.tfds_data_dir(tfds_data_dir)),
            splits=("train", "validation"),
            read_only=True,  # Never download or prepare.
        )
    else:
        source = seqio.FunctionDataSource(
            _offline_dataset_fn(corpus, validation_fraction), splits=("train", "validation")
        )
    return seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=[
            functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
            seqio.preprocessors.tokenize,
            seqio.preprocessors.append_eos,
        ],
        output_features={
            "targets": seqio.Feature(load_vocabulary(vocab), add_eos=True, required=True)
        },
    )
