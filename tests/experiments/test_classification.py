"""End-to-end classification runs on a small offline subset: smoke, resume, errors."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from exputil import REPO, subprocess_env

from experiments.classification import main
from experiments.common import config as config_lib
from experiments.common import data, results

TEST_METRICS = [
    f"test_{p}{m}" for p in ("", "softmax_") for m in ("accuracy", "loss", "ece", "support_size")
]


def _metric_lines(workdir: str) -> list[dict]:
    return [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def test_smoke_run_writes_metrics_checkpoints_and_one_row(tiny_config):
    row = main.run(tiny_config)
    rows = results.read_rows(tiny_config.results_csv)
    assert len(rows) == 1
    assert rows[0]["run_name"] == "alpha1.5-uniform-seed0" == row["run_name"]
    assert list(rows[0])[: len(results.LEADING)] == list(results.LEADING)
    assert rows[0]["alpha"] == "1.5" and rows[0]["steps"] == "6"
    for name in [*TEST_METRICS, "train_loss", "wall_time_s"]:
        assert math.isfinite(float(rows[0][name])), name
    assert 0 <= float(rows[0]["test_accuracy"]) <= 1
    assert 1 <= float(rows[0]["test_support_size"]) <= 10
    assert float(rows[0]["test_softmax_support_size"]) == 10
    assert json.loads(rows[0]["config"])["train"]["steps"] == 6
    lines = _metric_lines(tiny_config.workdir)
    assert [(x["step"], x["split"]) for x in lines] == [
        (2, "train"),
        (4, "train"),
        (6, "train"),
        (6, "test"),
    ]
    assert all(math.isfinite(v) for x in lines for v in x.values() if not isinstance(v, str))
    saved = sorted(p.name for p in (Path(tiny_config.workdir) / "checkpoints").iterdir())
    assert saved == ["3", "6"]


def test_resumed_run_matches_an_uninterrupted_one(tiny_config, tmp_path):
    reference = main.run(tiny_config)

    tiny_config.workdir = str(tmp_path / "interrupted")
    tiny_config.results_csv = str(tmp_path / "interrupted.csv")
    tiny_config.train.stop_after_steps = 3  # Stops right after the first checkpoint.
    assert main.run(tiny_config) is None
    assert not Path(tiny_config.results_csv).exists()
    tiny_config.train.stop_after_steps = 0
    resumed = main.run(tiny_config)
    assert resumed["steps"] == 6
    for name in TEST_METRICS:
        assert resumed[name] == reference[name], name
    steps = [x["step"] for x in _metric_lines(tiny_config.workdir) if x["split"] == "train"]
    assert steps == [2, 4, 6]
    # Rerunning a finished run re-evaluates and replaces its row: still exactly one.
    main.run(tiny_config)
    assert len(results.read_rows(tiny_config.results_csv)) == 1


@pytest.mark.parametrize(
    ("divergence", "q", "dtype"),
    [("chi2", "prior", "float32"), ("alpha:2", "learned", "float32"), ("kl", "unit", "bfloat16")],
)
def test_reference_measures_and_bfloat16(tiny_config, divergence, q, dtype):
    tiny_config.loss.divergence, tiny_config.loss.q = divergence, q
    tiny_config.model.dtype = dtype
    tiny_config.train.steps = 2
    row = main.run(tiny_config)
    assert row["reference_measure"] == q and row["alpha"] == (
        2.0 if divergence == "alpha:2" else None
    )
    assert all(math.isfinite(row[name]) for name in TEST_METRICS)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("loss.divergence", "alpha_1.5", "valid names: kl, reverse_kl"),
        ("loss.q", "uniformm", "config.loss.q = 'uniformm' is invalid: expected one of uniform"),
        ("train.steps", 0, "config.train.steps = 0 is invalid: expected a number > 0"),
        ("data.name", "mnist", "expected one of fashion_mnist, cifar10"),
    ],
)
def test_bad_config_values_are_clear_errors(tiny_config, key, value, message):
    section, name = key.split(".")
    tiny_config[section][name] = value
    with pytest.raises(config_lib.ConfigError, match=message.replace(".", r"\.")):
        main.run(tiny_config)


def test_resuming_with_another_config_is_refused(tiny_config):
    tiny_config.train.stop_after_steps = 3
    main.run(tiny_config)
    tiny_config.train.steps = 8
    with pytest.raises(config_lib.ConfigError, match=r"train\.steps: 6 → 8"):
        main.run(tiny_config)


def test_missing_datasets_fail_fast_with_instructions(tiny_config, tmp_path):
    tiny_config.data.idx_dir = str(tmp_path / "nowhere")
    tiny_config.data.tfds_data_dir = str(tmp_path / "tfds")
    with pytest.raises(data.DatasetMissingError, match=r"apt|dataset-fashion-mnist"):
        main.run(tiny_config)
    for name in ("cifar10", "imagenet2012"):
        tiny_config.data.name = name
        with pytest.raises(data.DatasetMissingError, match=f"'{name}' is not prepared"):
            main.run(tiny_config)


def test_command_line_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.classification",
            "--config.loss.divergence=bogus",
            f"--config.workdir={tmp_path}",
        ],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "error: config.loss.divergence = 'bogus'" in proc.stderr
    assert "valid names" in proc.stderr and "Traceback" not in proc.stderr
