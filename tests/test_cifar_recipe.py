"""The CIFAR-10 experiment: `train.py --dataset cifar10` trains ResNet-20 with the
recipe of He et al. 2016 (crop-and-flip augmentation included) on tiny files
written here in the official binary format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def write_cifar_bin(directory: Path, n_train: int = 24, n_test: int = 16) -> None:
    """data_batch_{1..5}.bin and test_batch.bin: records of 1 label byte and
    3072 pixel bytes (R, G, B planes of 32x32), as the official files."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True)
    for name, n in [(f"data_batch_{i}.bin", n_train) for i in range(1, 6)] + [
        ("test_batch.bin", n_test)
    ]:
        labels = rng.integers(0, 10, (n, 1), dtype=np.uint8)
        pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        (directory / name).write_bytes(np.concatenate([labels, pixels], 1).tobytes())


def train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"  # compiles faster
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "train.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def test_resnet20_trains_a_few_steps_with_the_papers_recipe(tmp_path):
    write_cifar_bin(tmp_path / "cifar")
    run = tmp_path / "run"
    proc = train(
        "--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar"),
        "--out-dir", str(run), "--max-steps", "3", "--batch-size", "8",
        "--no-progress", "--no-plots", "--log-every", "1",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = json.loads((run / "config.json").read_text())
    recipe = {
        "model": "resnet20",
        "optimizer": "nesterov",
        "lr": 0.1,
        "schedule": "cosine",
        "weight_decay": 5e-4,
        "augment": "crop-flip",
        "label_smoothing": 0.0,
        "batch_size": 8,  # given explicitly: it wins over the recipe's 128
    }
    assert {k: config[k] for k in recipe} == recipe
    steps = [
        json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [r["loss"] for r in steps if r["type"] == "step"]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert "test accuracy" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "resnet50"], "invalid choice: 'resnet50'"),
        (["--precision", "fp8"], "invalid choice: 'fp8'"),
        (["--data-dir", "{empty}"], "found no complete set"),
    ],
)
def test_bad_cifar_input_is_a_one_line_error(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty") for a in args]
    if "--data-dir" not in args:
        args += ["--data-dir", str(tmp_path / "empty")]
    proc = train("--dataset", "cifar10", "--out-dir", str(tmp_path / "r"), *args,
                 cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    assert message in proc.stderr, proc.stderr
