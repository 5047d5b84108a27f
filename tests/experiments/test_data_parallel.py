"""The same run on 1 and on 8 (forced host) devices: same losses, same test metrics."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from exputil import REPO, subprocess_env

from experiments.common import results


def _run(tmp_path: Path, devices: int) -> tuple[list[float], dict[str, str]]:
    workdir, csv = tmp_path / f"run{devices}", tmp_path / f"results{devices}.csv"
    overrides = {
        "workdir": workdir,
        "results_csv": csv,
        "data.train_size": 256,
        "data.test_size": 100,
        "train.batch_size": 64,
        "eval.batch_size": 64,
        "train.steps": 2,
        "train.log_every_steps": 1,
    }
    subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.classification",
            *[f"--config.{k}={v}" for k, v in overrides.items()],
        ],
        cwd=REPO,
        env=subprocess_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"),
        check=True,
        capture_output=True,
        timeout=300,
    )
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if x["split"] == "train"]
    (row,) = results.read_rows(csv)
    return losses, row


def test_one_and_eight_devices_agree(tmp_path):
    losses1, row1 = _run(tmp_path, 1)
    losses8, row8 = _run(tmp_path, 8)
    assert row1["hardware"].startswith("1x cpu") and row8["hardware"].startswith("8x cpu")
    # Step 1 checks the sharded forward pass, step 2 the all-reduced gradient of step 1.
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
    for name in ("test_loss", "test_accuracy", "test_ece", "test_softmax_loss"):
        np.testing.assert_allclose(float(row8[name]), float(row1[name]), rtol=1e-5, atol=1e-6)
