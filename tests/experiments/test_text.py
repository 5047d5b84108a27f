"""Tests of the language-model text data (experiments/common/text.py, text_tasks.py) and the
committed SentencePiece tokenizer (experiments/pretrain/tokenizer.py)."""

import itertools
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from exputil import REPO, subprocess_env

from experiments.common import text, text_tasks

needs_bible = pytest.mark.skipif(
    shutil.which("bible") is None or not (text_tasks.BIBLE_DATA_DIR / "bible.data").exists(),
    reason="Debian packages bible-kjv-text and bible-kjv are not installed",
)
needs_python_docs = pytest.mark.skipif(
    not text_tasks.PYTHON_DOCS_INFO.exists(),
    reason="Debian package python3.11-doc is not installed",
)

SEQ_LEN = 32

# Strings a tokenizer must give back unchanged: arithmetic prompts (SFT), code, runs of
# spaces, tabs and newlines, leading/trailing spaces, accents, other scripts, emoji.
ROUND_TRIP = [
    "What is 37 + 5?",
    "Calculate 1234 * 5678 - 90 / 3 = ?",
    "-12.5e-3",
    "",
    " ",
    "  leading and trailing  ",
    "a\tb\n\nc   d",
    "def f(x):\n    return {'k': x ** 2}  # comment\n",
    "Ünïcödé: café, naïve, Straße — “quotes” ‘single’ …",
    "日本語のテキスト, 中文, русский, ελληνικά, עברית, العربية",
    "emoji 🙂🚀 and \u200b zero width",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("text_cache")


@pytest.fixture(scope="module")
def kjv_sp(cache):
    """The KJV with the committed SentencePiece model (tokenized once into a test cache)."""
    if shutil.which("bible") is None:
        pytest.skip("Debian packages bible-kjv-text and bible-kjv are not installed")
    return text.make_text_source(text.data_config(seq_len=SEQ_LEN, cache_dir=str(cache)))


# ------------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("vocab_name", ["sentencepiece", "byte"])
def test_vocabulary_round_trips_any_text(vocab_name):
    vocab = text.load_vocabulary(vocab_name)
    for s in ROUND_TRIP:
        ids = list(vocab.encode(s))
        assert vocab.unk_id not in ids, s
        assert max(ids, default=0) < vocab.vocab_size
        assert vocab.decode(ids) == s


def test_sentencepiece_specials_and_digits():
    vocab = text.load_vocabulary("sentencepiece")
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id, vocab.vocab_size) == (0, 1, 2, 4096)
    pieces = [vocab.tokenizer.id_to_piece(i) for i in vocab.encode("37 + 5")]
    assert "3" in pieces and "7" in pieces  # Digits split: numbers are spelt digit by digit.


@needs_bible
def test_sentencepiece_round_trips_the_bible_without_byte_fallback_on_words():
    vocab = text.load_vocabulary("sentencepiece")
    docs = text_tasks.documents("kjv_bible")  # Every chapter.
    encoded = [list(vocab.encode(d)) for d in docs]
    assert [vocab.decode(ids) for ids in encoded] == list(docs)
    ids = np.concatenate(encoded)
    # Byte pieces <0x00>..<0xFF> are ids 3..258; in KJV text only the newline needs one.
    bytes_used = {vocab.tokenizer.id_to_piece(int(i)) for i in ids[(ids >= 3) & (ids < 259)]}
    assert bytes_used <= {"<0x0A>"}
    assert len(ids) < 0.3 * sum(len(d) for d in docs)  # A real subword vocabulary.


@needs_bible
def test_tokenizer_script_regenerates_the_committed_model(tmp_path):
    from experiments.pretrain import tokenizer

    model = tokenizer.train(4096, tmp_path, "kjv_sp4k")
    assert model.read_bytes() == text_tasks.SENTENCEPIECE_MODEL.read_bytes()
    vocab_file = text_tasks.SENTENCEPIECE_MODEL.with_suffix(".vocab")
    assert model.with_suffix(".vocab").read_bytes() == vocab_file.read_bytes()


# --------------------------------------------------------------------------------- corpora


def test_parse_bible_titles_verses_and_wrapped_lines():
    printed = (
        "\nGenesis 1\n\n  1 In the beginning.\n  2 And the earth was\nwithout form 42\n"
        "  3 Light.\n\nExodus 1\n\n  1 Names.\n"
    )
    assert text_tasks.parse_bible(printed) == [
        "Genesis 1\n1 In the beginning.\n2 And the earth was without form 42\n3 Light.",
        "Exodus 1\n1 Names.",
    ]


def test_parse_info_keeps_nodes_drops_indexes_and_tag_tables():
    info = (
        "preamble\n\x1f\nFile: x.info,  Node: Top,  Next: A\n\nTop text\n"
        "\x1f\nFile: x.info,  Node: A,  Prev: Top\n\nA text\n  code\n"
        "\x1f\nFile: x.info,  Node: Index,  Prev: A\n\n* foo: A. (line 1)\n"
        "\x1f\nTag Table:\nNode: Top\x7f1\n\x1f\nEnd Tag Table\n"
    )
    assert text_tasks.parse_info(info) == ["Top text", "A text\n  code"]


@needs_bible
def test_bible_has_every_chapter_and_verse():
    docs = text_tasks.documents("kjv_bible")
    assert len(docs) == 1189
    assert docs[0].startswith("Genesis 1\n1 In the beginning God created the heaven and the earth.")
    assert docs[-1].split("\n")[0] == "Revelation 22"
    assert sum(doc.count("\n") for doc in docs) == 31102  # One line per verse after the title.


@needs_python_docs
def test_python_docs_are_info_nodes():
    docs = text_tasks.documents("python_docs")
    assert len(docs) > 4000
    assert any("The Python Tutorial" in d for d in docs[:20])
    assert not any("(line " in d[:200] and d.count("(line ") > 50 for d in docs)  # No indexes.


def test_split_is_a_fixed_partition():
    split = text_tasks.split_documents(1000, 0.05)
    assert len(split["validation"]) == 50
    assert np.array_equal(np.sort(np.concatenate(list(split.values()))), np.arange(1000))
    again = text_tasks.split_documents(1000, 0.05)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    assert split["validation"].max() - split["validation"].min() > 500  # Spread, not the tail.
    assert len(text_tasks.split_documents(10, 0.001)["validation"]) == 1
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="validation_fraction"):
            text_tasks.split_documents(10, bad)


# --------------------------------------------------------------------------------- batches


def test_source_shapes_and_tokens_match_the_vocabulary(kjv_sp):
    assert kjv_sp.vocab_size == kjv_sp.vocab.vocab_size == 4096
    val_docs = text_tasks.split_texts("kjv_bible", "validation", 0.05)
    want = [t for doc in val_docs for t in [*kjv_sp.vocab.encode(doc), kjv_sp.vocab.eos_id]]
    np.testing.assert_array_equal(kjv_sp.validation_tokens, want)  # seqio tf == python encode
    assert len(kjv_sp.train_tokens) > 15 * len(kjv_sp.validation_tokens)
    batch = next(kjv_sp.train_batches(8, seed=0, start_step=0))
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "inputs": ((8, SEQ_LEN), np.int32),
        "targets": ((8, SEQ_LEN), np.int32),
        "mask": ((8, SEQ_LEN), np.bool_),
    }
    assert batch["mask"].all()
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    windows = np.lib.stride_tricks.sliding_window_view(kjv_sp.train_tokens, SEQ_LEN + 1)
    for inputs, targets in zip(batch["inputs"], batch["targets"], strict=True):
        row = np.concatenate([inputs[:1], targets])
        assert (windows == row).all(axis=1).any()  # A real window of the training tokens.


def test_training_batches_are_a_function_of_seed_and_step(kjv_sp):
    run = list(itertools.islice(kjv_sp.train_batches(4, seed=3, start_step=0), 6))
    resumed = list(itertools.islice(kjv_sp.train_batches(4, seed=3, start_step=4), 2))
    for a, b in zip(run[4:], resumed, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(run[0]["inputs"], run[1]["inputs"])
    other = next(kjv_sp.train_batches(4, seed=4, start_step=0))
    assert not np.array_equal(run[0]["inputs"], other["inputs"])


def test_validation_covers_the_split_once_with_padding_masked(kjv_sp):
    batches = list(kjv_sp.validation_batches(16))
    assert all(b["inputs"].shape == (16, SEQ_LEN) for b in batches)
    targets = np.concatenate([b["targets"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(targets, kjv_sp.validation_tokens[1:])
    inputs = np.concatenate([b["inputs"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(inputs, kjv_sp.validation_tokens[:-1])
    last = batches[-1]
    assert not last["mask"].all() and not last["mask"][-1].any()
    assert (last["targets"][~last["mask"]] == 0).all()
    assert list(kjv_sp.validation_batches(16))[3]["inputs"].tolist() == (
        batches[3]["inputs"].tolist()
    )


def test_each_host_gets_its_rows_of_the_global_batch(kjv_sp, monkeypatch):
    whole_train = next(kjv_sp.train_batches(8, seed=1, start_step=5))
    whole_val = list(kjv_sp.validation_batches(8))
    parts_train, parts_val = [], []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    for host in range(2):
        monkeypatch.setattr(jax, "process_index", lambda host=host: host)
        parts_train.append(next(kjv_sp.train_batches(8, seed=1, start_step=5)))
        parts_val.append(list(kjv_sp.validation_batches(8)))
    for k in whole_train:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts_train]), whole_train[k])
        for i, batch in enumerate(whole_val):
            np.testing.assert_array_equal(np.concatenate([p[i][k] for p in parts_val]), batch[k])
    with pytest.raises(ValueError, match="divisible"):
        next(kjv_sp.train_batches(7, seed=1, start_step=0))


def test_unigram_is_smoothed_training_frequencies(kjv_sp):
    q = kjv_sp.unigram()
    assert q.shape == (4096,) and q.dtype == np.float32
    assert (q > 0).all()
    np.testing.assert_allclose(q.sum(), 1.0, rtol=1e-6)
    counts = np.bincount(kjv_sp.train_tokens, minlength=4096)
    np.testing.assert_allclose(q, (counts + 1) / (counts + 1).sum(), rtol=1e-5)
    assert q[kjv_sp.vocab.pad_id] < 1e-5 and q[kjv_sp.vocab.eos_id] > 1e-4


def test_second_source_reads_the_cache(kjv_sp, cache, monkeypatch):
    assert not list(cache.rglob("*.tmp"))
    monkeypatch.setattr(text_tasks, "get_task", pytest.fail)  # Tokenizing again would fail.
    again = text.make_text_source(text.data_config(seq_len=SEQ_LEN, cache_dir=str(cache)))
    np.testing.assert_array_equal(again.train_tokens, kjv_sp.train_tokens)


@needs_bible
def test_byte_vocabulary_source(tmp_path):
    cfg = text.data_config(vocab="byte", seq_len=16, validation_fraction=0.01)
    cfg.cache_dir = str(tmp_path)
    source = text.make_text_source(cfg)
    assert source.vocab_size == 259
    batch = next(source.validation_batches(2))
    assert (
        source.vocab.decode(batch["inputs"][0].tolist())
        == (text_tasks.split_texts("kjv_bible", "validation", 0.01)[0][:16])
    )


# ---------------------------------------------------------------------------- bad config


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(text.UnknownNameError, match="kjv_bible, python_docs, c4"):
        text.make_text_source(text.data_config(name="wikipedia"))
    with pytest.raises(text.UnknownNameError, match="sentencepiece, byte"):
        text.load_vocabulary("gpt2")
    with pytest.raises(KeyError, match="seq_len"):
        text.data_config(sequence_length=64)
    with pytest.raises(ValueError, match="seq_len"):
        text.make_text_source(text.data_config(seq_len=0))


def test_c4_missing_fails_fast_without_tensorflow(tmp_path):
    code = (
        "import sys, time\n"
        "from experiments.common import text\n"
        "start = time.time()\n"
        "try:\n"
        f"    text.make_text_source(text.data_config(name='c4', tfds_data_dir={str(tmp_path)!r}))\n"
        "except text.DatasetMissingError as e:\n"
        "    print(e)\n"
        "assert 'tensorflow' not in sys.modules and 'seqio' not in sys.modules\n"
        "assert time.time() - start < 1.0\n"
    )
    start = time.time()
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "c4/en" in out.stdout and "download_and_prepare" in out.stdout
    assert str(tmp_path) in out.stdout
    assert time.time() - start < 60


# -------------------------------------------------------------------------- C4 (mocked)

C4_DOCS = {
    "train": [f"train document {i}: " + "word " * (i % 7) for i in range(60)],
    "validation": [f"validation document {i} " + "x" * (i % 5) for i in range(9)],
}


@pytest.fixture
def fake_c4(tmp_path):
    """A tfds data dir with C4's metadata, and tfds mocked to read ``C4_DOCS`` from it."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = tfds.builder("c4/en", data_dir=str(tmp_path))
    splits = [
        tfds.core.SplitInfo(
            name=split,
            shard_lengths=[len(docs)],
            num_bytes=sum(map(len, docs)),
            filename_template=tfds.core.ShardedFileTemplate(
                data_dir=builder.data_dir,
                dataset_name="c4",
                split=split,
                filetype_suffix="tfrecord",
            ),
        )
        for split, docs in C4_DOCS.items()
    ]
    builder.info.set_splits(tfds.core.SplitDict(splits))
    Path(builder.data_dir).mkdir(parents=True)
    builder.info.write_to_directory(builder.data_dir)

    def as_dataset(self, split, **kwargs):
        docs = C4_DOCS[str(split)]
        n = len(docs)
        return tf.data.Dataset.from_tensor_slices(
            {"text": docs, "url": ["u"] * n, "timestamp": ["t"] * n}
        )

    with tfds.testing.mock_data(
        as_dataset_fn=as_dataset, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tmp_path)
    ):
        yield tmp_path


def test_c4_batches_through_seqio(fake_c4):
    cfg = text.data_config(
        name="c4", vocab="byte", seq_len=16, tfds_data_dir=str(fake_c4), unigram_documents=20
    )
    cfg.cache_dir = str(fake_c4 / "cache")
    source = text.make_text_source(cfg)
    assert source.vocab_size == 259

    # Validation: rows of L + 1 tokens of the stream, in order; padding masked.
    stream = [t for d in C4_DOCS["validation"] for t in [*source.vocab.encode(d), 1]]
    batches = list(source.validation_batches(4))
    rows = [
        np.concatenate([b["inputs"][i, :1], b["targets"][i][b["mask"][i]]])
        for b in batches
        for i in range(4)
        if b["mask"][i].any()
    ]
    np.testing.assert_array_equal(np.concatenate(rows), stream)
    assert not batches[-1]["mask"][-1].any()

    run = list(itertools.islice(source.train_batches(4, seed=2, start_step=0), 5))
    resumed = next(source.train_batches(4, seed=2, start_step=3))
    for k in resumed:
        np.testing.assert_array_equal(resumed[k], run[3][k])
    assert run[0]["mask"].all() and run[0]["inputs"].shape == (4, 16)
    np.testing.assert_array_equal(run[0]["inputs"][:, 1:], run[0]["targets"][:, :-1])

    q = source.unigram()
    counts = np.bincount(
        [t for d in C4_DOCS["train"][:20] for t in [*source.vocab.encode(d), 1]], minlength=259
    )
    np.testing.assert_allclose(q, (counts + 1) / (counts + 1).sum(), rtol=1e-5)
    assert list((fake_c4 / "cache").rglob("c4-unigram-*.npy"))
