"""End-to-end pre-training runs on the KJV Bible with a very small model: rows and curves,
kill-and-resume, clear errors, the real-scale configs failing fast, and the sweep's grid."""

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from exputil import REPO, subprocess_env
from flax import nnx

from experiments.common import config as config_lib
from experiments.common import results, text, transformer
from experiments.pretrain import main, sweeps
from experiments.pretrain.configs import c4_1b, c4_100m, tiny

VAL_METRICS = [
    f"val_{p}{m}"
    for p in ("", "softmax_")
    for m in ("loss", "accuracy", "eps_perplexity", "js", "sparsemax_score", "support_size")
] + ["val_softmax_perplexity"]


@pytest.fixture
def config(tmp_path: Path) -> ml_collections.ConfigDict:
    """tiny.py shrunk: 1 layer of width 32, sequences of 32 tokens, 6 steps of 8 sequences,
    validation on 2 batches of 8 sequences at steps 0, 3 and 6."""
    c = tiny.get_config()
    c.workdir = str(tmp_path / "run")
    c.results_csv = str(tmp_path / "results.csv")
    c.curves_csv = str(tmp_path / "curves.csv")
    c.data.seq_len = 32
    c.model.update(num_layers=1, d_model=32, num_heads=2, mlp_dim=64, max_len=40)
    c.train.update(
        batch_size=8, steps=6, log_every_steps=2, checkpoint_every_steps=3, eval_every_steps=3
    )
    c.optim.warmup_steps = 2
    c.eval.update(batch_size=8, max_batches=2)
    c.sample.max_new_tokens = 4
    return c


def _metric_lines(workdir: str) -> list[dict]:
    return [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def test_smoke_run_writes_its_row_its_curve_and_a_sample(config, caplog):
    with caplog.at_level(logging.INFO, logger="experiments"):
        row = main.run(config)
    (saved,) = results.read_rows(config.results_csv)
    assert saved["run_name"] == "alpha1.5-uniform-seed0" == row["run_name"]
    assert list(saved)[: len(results.LEADING)] == list(results.LEADING)
    assert saved["experiment"] == "pretrain" and saved["config_name"] == "tiny"
    assert saved["alpha"] == "1.5" and saved["reference_measure"] == "uniform"
    assert saved["steps"] == "6" and saved["git_commit"] and saved["hardware"]
    for name in [*VAL_METRICS, "train_loss", "train_tokens_per_s", "wall_time_s"]:
        assert math.isfinite(float(saved[name])), name
    assert 0 <= float(saved["val_accuracy"]) <= 1
    assert 1 <= float(saved["val_support_size"]) <= 4096
    assert float(saved["val_softmax_support_size"]) == 4096
    assert json.loads(saved["config"])["train"]["steps"] == 6
    lines = _metric_lines(config.workdir)
    assert [(x["step"], x["split"]) for x in lines] == [
        (0, "test"),
        (2, "train"),
        (3, "test"),
        (4, "train"),
        (6, "train"),
        (6, "test"),
    ]
    curve = results.read_rows(config.curves_csv)
    assert [r["step"] for r in curve] == ["0", "3", "6"]
    assert all(r["run_name"] == row["run_name"] and r["git_commit"] for r in curve)
    assert float(curve[-1]["val_loss"]) == row["val_loss"]
    assert float(curve[0]["val_loss"]) > float(curve[-1]["val_loss"])  # It learns a little.
    assert "greedy sample (alpha:1.5 operator): 'And God said" in caplog.text

    # A rerun of the finished run re-validates and replaces its row and its curve.
    main.run(config)
    assert len(results.read_rows(config.results_csv)) == 1
    assert [r["step"] for r in results.read_rows(config.curves_csv)] == ["0", "3", "6"]


def test_resumed_run_matches_an_uninterrupted_one(config, tmp_path):
    reference = main.run(config)

    config.workdir = str(tmp_path / "interrupted")
    config.results_csv = str(tmp_path / "interrupted.csv")
    config.curves_csv = str(tmp_path / "interrupted_curves.csv")
    config.train.stop_after_steps = 3  # Stops right after the first checkpoint.
    assert main.run(config) is None
    assert not Path(config.results_csv).exists() and not Path(config.curves_csv).exists()
    config.train.stop_after_steps = 0
    resumed = main.run(config)
    assert resumed["steps"] == 6
    for name in [*VAL_METRICS, "train_loss"]:
        assert resumed[name] == reference[name], name
    steps = [(x["step"], x["split"]) for x in _metric_lines(config.workdir)]
    assert steps == [
        (0, "test"),
        (2, "train"),
        (3, "test"),
        (4, "train"),
        (6, "train"),
        (6, "test"),
    ]
    curves = [results.read_rows(tmp_path / n) for n in ("curves.csv", "interrupted_curves.csv")]
    drop = ("git_commit",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in curves[1]] == [
        {k: v for k, v in r.items() if k not in drop} for r in curves[0]
    ]


def test_kl_with_unigram_q_and_bfloat16(config):
    config.loss.divergence, config.loss.q = "kl", "unigram"
    config.model.dtype = "bfloat16"
    config.train.update(steps=2, eval_every_steps=0)
    config.sample.max_new_tokens = 0
    row = main.run(config)
    assert row["reference_measure"] == "unigram" and row["alpha"] is None
    assert all(math.isfinite(row[name]) for name in VAL_METRICS)
    # KL's operator is softmax of logits + log q: a dense distribution.
    assert row["val_support_size"] == 4096


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("loss.divergence", "alpha_1.5", "valid names: kl, reverse_kl"),
        ("loss.q", "teacher", "config.loss.q = 'teacher' is invalid: expected one of uniform"),
        ("data.seq_len", 64, "config.data.seq_len = 64 is invalid: exceeds model.max_len=40"),
        ("data.name", "wikipedia", "expected one of kjv_bible, python_docs, c4"),
        ("model.num_heads", 3, "config.model.d_model = 32 is invalid: not divisible by"),
        ("train.steps", 0, "config.train.steps = 0 is invalid: expected a number > 0"),
    ],
)
def test_bad_config_values_are_clear_errors(config, key, value, message):
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(config_lib.ConfigError, match=message.replace(".", r"\.")):
        main.run(config)


def test_resuming_with_another_config_is_refused(config):
    config.train.stop_after_steps = 3
    main.run(config)
    config.loss.q = "unit"
    with pytest.raises(config_lib.ConfigError, match=r"loss\.q: 'uniform' → 'unit'"):
        main.run(config)


@pytest.mark.parametrize(("module", "params"), [(c4_100m, (95e6, 110e6)), (c4_1b, (0.95e9, 1.1e9))])
def test_c4_configs_fail_fast_without_c4_and_have_their_size(module, params, tmp_path):
    config = module.get_config()
    config.workdir = str(tmp_path / "run")
    config.data.tfds_data_dir = str(tmp_path / "tfds")
    with pytest.raises(text.DatasetMissingError, match=r"'c4/en' is not prepared"):
        main.run(config)
    assert not (tmp_path / "run").exists()  # Nothing written before the data check.
    size = transformer.num_params(
        nnx.eval_shape(lambda: transformer.Transformer(config.model, 4096, rngs=nnx.Rngs(0)))
    )
    assert params[0] < size < params[1]


def test_sweep_covers_every_divergence_and_q_before_the_next_seed():
    runs = sweeps.SWEEP.runs
    assert len(runs) == 32 == len({r.name for r in runs})
    first_seed = [r.overrides for r in runs[:16]]
    assert {o["seed"] for o in first_seed} == {0}
    assert {(o["loss.divergence"], o["loss.q"]) for o in first_seed} == {
        (d, q) for d in sweeps.DIVERGENCES for q in ("uniform", "unit")
    }
    for run in runs:  # Every run's config is valid.
        c = tiny.get_config()
        for key, value in run.overrides.items():
            section, _, name = key.rpartition(".")
            (c[section] if section else c)[name] = value
        main.validate(c)


_FSDP_SCRIPT = """
import json, sys
import jax
from experiments.common import sharding
from experiments.pretrain import main
from experiments.pretrain.configs import tiny

config = tiny.get_config()
config.update_from_flattened_dict(json.loads(sys.argv[1]))
assert jax.device_count() == 4
main.run(config)
# The sharding the run's train step keeps: large arrays split over the 4 devices.
shapes = {"embedding": jax.ShapeDtypeStruct((4096, 32), "float32"),
          "norm": jax.ShapeDtypeStruct((32,), "float32")}
specs = sharding.state_sharding(shapes, sharding.make_mesh(), fsdp=True, min_size=1024)
print("SPECS", json.dumps({k: list(v.spec) for k, v in specs.items()}))
"""


def test_fsdp_on_four_devices_matches_one_device(config, tmp_path):
    """Parameters and optimiser state split over 4 (forced host) devices: the same losses as the
    replicated run on one device."""
    config.train.update(steps=4, log_every_steps=1, checkpoint_every_steps=2, eval_every_steps=0)
    config.sample.max_new_tokens = 0
    reference = main.run(config)
    one_device = [x["loss"] for x in _metric_lines(config.workdir) if x["split"] == "train"]

    overrides = {
        "workdir": str(tmp_path / "fsdp"),
        "results_csv": str(tmp_path / "fsdp.csv"),
        "curves_csv": str(tmp_path / "fsdp_curves.csv"),
        "sharding.fsdp": True,
        "sharding.fsdp_min_size": 1024,  # The embedding, attention and MLP matrices.
    }
    flat = {
        **{f"data.{k}": v for k, v in config.data.to_dict().items()},
        **{f"model.{k}": v for k, v in config.model.to_dict().items()},
        **{f"train.{k}": v for k, v in config.train.to_dict().items()},
        **{f"eval.{k}": v for k, v in config.eval.to_dict().items()},
        "optim.warmup_steps": config.optim.warmup_steps,
        "sample.max_new_tokens": 0,
        **overrides,
    }
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run(
        [sys.executable, "-c", _FSDP_SCRIPT, json.dumps(flat)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    specs = json.loads(proc.stdout.split("SPECS", 1)[1])
    assert specs == {"embedding": ["data", None], "norm": []}
    four_devices = [x["loss"] for x in _metric_lines(overrides["workdir"]) if x["split"] == "train"]
    np.testing.assert_allclose(four_devices, one_device, rtol=1e-5)
    (row,) = results.read_rows(overrides["results_csv"])
    assert row["hardware"].startswith("4x cpu")
    np.testing.assert_allclose(float(row["val_loss"]), reference["val_loss"], rtol=1e-5)


def test_train_step_benchmark_quick_run_writes_its_table(tmp_path):
    from experiments.benchmarks import main as benchmarks

    path = benchmarks.main(["train_step", "--quick", "--out", str(tmp_path)])
    rows = results.read_rows(path)
    assert [(r["divergence"], r["reference_measure"]) for r in rows] == [
        ("kl", "uniform"),
        ("alpha:1.5", "uniform"),
    ]
    assert float(rows[0]["ratio_to_kl"]) == 1.0
    for row in rows:
        assert row["benchmark"] == "train_step" and row["mode"] == "quick" and row["git_commit"]
        assert float(row["tokens_per_s"]) > 0
        expected = int(row["batch"]) * int(row["seq_len"]) / float(row["median_s"])
        assert float(row["tokens_per_s"]) == pytest.approx(expected)


def test_command_line_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.pretrain",
            "--config.loss.q=bogus",
            f"--config.workdir={tmp_path}",
        ],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "error: config.loss.q = 'bogus' is invalid" in proc.stderr
    assert "Traceback" not in proc.stderr
