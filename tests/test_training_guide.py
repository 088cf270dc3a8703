"""The training guide's script runs: two steps of a tiny model, in one process and under torchrun."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "docs" / "guides" / "train.py"
# KernelWarehouse ResNet-18 at 32x32: the smallest zoo model with BatchNorm and a temperature schedule.
ARGS = ["--model", "kw_resnet18_1x", "--synthetic", "--img-size", "32", "--batch-size", "4", "--steps", "2"]
LOSS = re.compile(r"^epoch 0 step (\d+) loss (\d+\.\d+) lr \S+ tau (\d+\.\d+)$", re.M)


def _run(command: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _check(stdout: str) -> None:
    steps = LOSS.findall(stdout)
    assert [int(step) for step, _, _ in steps] == [1, 2], stdout  # printed once per step, by rank 0 only
    assert all(0 < float(loss) < 100 for _, loss, _ in steps), stdout
    # The temperature schedule runs: tau falls from 1 by 1 / (iterations of 20 epochs) per step.
    assert [float(tau) for _, _, tau in steps] == [0.975, 0.95], stdout


def test_single_process() -> None:
    _check(_run([sys.executable, str(SCRIPT), *ARGS]))


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo on CPU is tested on Linux")
def test_torchrun_two_processes() -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT)]
    _check(_run([*command, *ARGS]))
