"""The operator shoot-out: reports, identical data order, resume after an interruption, DDP, and bad input.

Runs here are tiny (a two-stage backbone of widths 16 and 32 on 16×16 digits, a few dozen steps); the real ``--quick``
shoot-out is measured outside the tests (docs/guides/shootout.md).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DistributedSampler, Subset

from unifiedops.cli import main
from unifiedops.odconv import OmniAttention
from unifiedops.warehouse import WarehouseAttention
from zoo.builder import MIXERS, BackboneSpec, register_mixer
from zoo.shootout import (
    DEFAULT_MIXERS,
    MixerEntry,
    Recipe,
    Splits,
    build_model,
    check_slot,
    default_backbone,
    digits_splits,
    image_folder_splits,
    resolve_mixers,
    run_shootout,
    temperature_schedules,
)
from zoo.shootout.recipe import amp_dtype
from zoo.shootout.runner import _epoch_batches
from zoo.shootout.state import saved_step

ROOT = Path(__file__).resolve().parent.parent
RECIPE = Recipe(epochs=3, batch_size=16, warmup_epochs=1, eval_batch_size=32)


def tiny_spec() -> BackboneSpec:
    return BackboneSpec.pyramid(
        16, (1, 1), stage=dict(mixer="dwconv", mixer_kwargs={"kernel_size": 3}, mlp_ratio=1.0), patch_size=4
    )


@pytest.fixture(scope="module")
def tiny_data() -> Splits:
    full = digits_splits(img_size=16)
    return Splits(Subset(full.train, range(64)), Subset(full.test, range(32)), 10, 1, (16, 16), "digits subset, 16x16")


def _shootout(tmp_path: Path, data: Splits, mixers: list[str], **kwargs) -> object:
    kwargs = {"recipe": RECIPE, "seeds": (0,), "progress": False, "log": None, **kwargs}
    return run_shootout(tiny_spec(), mixers, data, out_dir=tmp_path, **kwargs)


# -- the report -----------------------------------------------------------------------------------------------------


def test_report_summarises_every_run(tmp_path: Path, tiny_data: Splits) -> None:
    result = _shootout(tmp_path, tiny_data, ["dwconv", "odconv"], seeds=(0, 1))
    assert [(r["mixer"], r["seed"]) for r in result.runs] == [
        ("dwconv", 0),
        ("dwconv", 1),
        ("odconv", 0),
        ("odconv", 1),
    ]
    for row in result.summary:
        top1 = [r["top1"] for r in result.runs if r["mixer"] == row["mixer"]]
        assert row["top1_mean"] == pytest.approx(statistics.fmean(top1))
        assert row["top1_std"] == pytest.approx(statistics.stdev(top1))
        assert row["seeds"] == 2 and row["flops"] > 0 and row["throughput"] > 0 and row["train_seconds"] > 0
    # The parameter count is the model's: ODConv's four candidate kernels make it the larger one.
    model = build_model(tiny_spec(), resolve_mixers(["odconv"])[0], tiny_data, RECIPE, 0)
    assert result.summary[1]["params"] == sum(p.numel() for p in model.parameters()) > result.summary[0]["params"]
    assert result.table.count("\n") == 3 and "| odconv |" in result.table
    assert (tmp_path / "summary.md").read_text().strip() == result.table
    with open(tmp_path / "runs.csv") as f:
        assert [row["mixer"] for row in csv.DictReader(f)] == ["dwconv", "dwconv", "odconv", "odconv"]
    report = json.loads((tmp_path / "shootout.json").read_text())
    assert report["recipe"] == RECIPE.to_dict() and report["seeds"] == [0, 1] and len(report["runs"]) == 4
    assert (tmp_path / "accuracy_vs_flops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Each run keeps its trained weights, loadable without unpickling.
    weights = load_file(str(tmp_path / "runs" / "odconv" / "seed1" / "model.safetensors"))
    assert any(k.endswith("attention.kernel_fc.weight") for k in weights)


def test_seeds_change_the_run_and_mixers_share_the_data_order(tmp_path: Path, tiny_data: Splits) -> None:
    losses = {}
    for mixer, seed in (("dwconv", 0), ("dwconv", 1), ("window_attention", 0)):
        result = _shootout(tmp_path / f"{mixer}{seed}", tiny_data, [mixer], seeds=(seed,))
        losses[mixer, seed] = result.runs[0]["epoch_losses"]
    assert losses["dwconv", 0] != losses["dwconv", 1]
    # The batches a seed draws depend on the seed and the epoch only, not on the mixer.
    sampler = DistributedSampler(tiny_data.train, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True)
    sampler.set_epoch(1)
    first = list(_epoch_batches(sampler, 16, 0))
    sampler.set_epoch(1)
    assert list(_epoch_batches(sampler, 16, 0)) == first


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), world=st.integers(1, 4), batch=st.integers(1, 6), epoch=st.integers(0, 3))
def test_ranks_batches_make_up_the_single_process_batch(n: int, world: int, batch: int, epoch: int) -> None:
    data = list(range(n))

    def batches(replicas: int, rank: int, size: int) -> list[list[int]]:
        sampler = DistributedSampler(data, num_replicas=replicas, rank=rank, shuffle=True, seed=3, drop_last=True)
        sampler.set_epoch(epoch)
        return list(_epoch_batches(sampler, size, 0))

    single = batches(1, 0, world * batch)
    per_rank = [batches(world, r, batch) for r in range(world)]
    assert all(len(b) == len(single) for b in per_rank)
    for k, global_batch in enumerate(single):
        assert sorted(global_batch) == sorted(i for rank in per_rank for i in rank[k])
    skipped = list(_epoch_batches(_sampler_at(data, epoch), world * batch, 1))
    assert skipped == single[1:]


def _sampler_at(data: list[int], epoch: int) -> DistributedSampler:
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3, drop_last=True)
    sampler.set_epoch(epoch)
    return sampler


def test_mixed_precision_runs_where_asked(tmp_path: Path, tiny_data: Splits) -> None:
    # On the CPU the recipe's default is float32; amp=True asks for bfloat16 autocast there too.
    recipe = Recipe(**{**RECIPE.to_dict(), "epochs": 1, "amp": True})
    assert amp_dtype(RECIPE, torch.device("cpu")) is None and amp_dtype(recipe, torch.device("cpu")) == torch.bfloat16
    run = _shootout(tmp_path, tiny_data, ["odconv"], recipe=recipe).runs[0]
    assert run["steps"] == 4 and 0 <= run["top1"] <= 100 and all(map(math.isfinite, run["epoch_losses"]))


def test_temperature_schedules_follow_the_attentions_present(tiny_data: Splits) -> None:
    def kinds(mixer: str) -> list[type]:
        model = build_model(tiny_spec(), resolve_mixers([mixer])[0], tiny_data, RECIPE, 0)
        return [(s.kind, s.temp_epochs) for s in temperature_schedules(model, RECIPE, 4)]

    # The official shares of the training: KernelWarehouse 20 of 100 epochs, ODConv 10 of 100.
    assert kinds("dwconv") == []
    assert kinds("odconv") == [(OmniAttention, pytest.approx(0.3))]
    assert kinds("kernelwarehouse") == [(WarehouseAttention, pytest.approx(0.6))]


# -- resume ---------------------------------------------------------------------------------------------------------


class Crash(Exception):
    """A failure that leaves no checkpoint behind (unlike Ctrl-C or SIGTERM, which save one)."""


def _comparable(run: dict) -> dict:
    return {k: v for k, v in run.items() if k not in ("train_seconds", "throughput")}


@pytest.mark.parametrize(
    ("error", "resumes_after"),
    # 4 steps per epoch: Ctrl-C saves at the step it interrupts (7), a crash leaves the epoch-end checkpoint (4).
    [(KeyboardInterrupt(), 7), (Crash(), 4), (KeyboardInterrupt(), 8)],
    ids=["ctrl-c", "crash", "ctrl-c-at-an-epoch-end"],
)
def test_an_interrupted_shootout_resumes(
    tmp_path: Path, tiny_data: Splits, error: BaseException, resumes_after: int
) -> None:
    mixers = ["dwconv", "odconv"]  # ODConv: a temperature schedule and BatchNorm statistics to restore
    reference = _shootout(tmp_path / "reference", tiny_data, mixers)

    out, calls = tmp_path / "interrupted", []

    def interrupt(step: int) -> None:
        calls.append(step)
        if len(calls) == 12 + max(resumes_after, 7):  # each run has 3 epochs of 4 steps: the second run's step
            raise error

    with pytest.raises(type(error)):
        _shootout(out, tiny_data, mixers, on_step=interrupt)
    finished, unfinished = out / "runs" / "dwconv" / "seed0", out / "runs" / "odconv" / "seed0"
    assert (finished / "result.json").is_file() and not (unfinished / "result.json").exists()
    assert (unfinished / "checkpoint.safetensors").is_file()
    stamp = (finished / "result.json").stat().st_mtime_ns

    resumed: list[int] = []
    result = _shootout(out, tiny_data, mixers, on_step=resumed.append)
    # The finished run is skipped; the unfinished one continues after its last checkpoint.
    assert resumed == list(range(resumes_after + 1, 13))
    assert (finished / "result.json").stat().st_mtime_ns == stamp
    assert not (unfinished / "checkpoint.safetensors").exists()
    # ... and ends exactly where the uninterrupted shoot-out ended.
    assert [_comparable(r) for r in result.runs] == [_comparable(r) for r in reference.runs]
    for run in ("dwconv", "odconv"):
        got = load_file(str(out / "runs" / run / "seed0" / "model.safetensors"))
        want = load_file(str(tmp_path / "reference" / "runs" / run / "seed0" / "model.safetensors"))
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), run


KILL_ARGS = ["--mixers", "dwconv,odconv", "--seeds", "0", "--epochs", "5", "--batch-size", "64", "--img-size", "16"]
STEPS_PER_EPOCH = 1437 // 64


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "spec.json"
    path.write_text(json.dumps(tiny_spec().to_dict()))
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, spec_file: Path) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    assert main(["shootout", *KILL_ARGS, "--spec", str(spec_file), "--no-progress", "--out", str(out)]) == 0
    return out


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_killed_command_resumes_when_started_again(tmp_path: Path, spec_file: Path, uninterrupted: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "unifiedops.cli", "shootout", *KILL_ARGS, "--spec", str(spec_file)]
    command += ["--no-progress", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    checkpoint = out / "runs" / "odconv" / "seed0" / "checkpoint.safetensors"

    def start_and_signal(signum: int, after_step: int) -> subprocess.Popen:
        """Start the command, and send it ``signum`` once ODConv's checkpoint is past ``after_step``."""
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if checkpoint.is_file() and saved_step(checkpoint) > after_step:
                break
            time.sleep(0.02)
        process.send_signal(signum)
        process.communicate(timeout=60)
        return process

    # SIGTERM: the run checkpoints the step it has reached and the command says how to resume.
    terminated = start_and_signal(signal.SIGTERM, 0)
    assert terminated.returncode == 130
    first_stop = saved_step(checkpoint)
    assert first_stop >= STEPS_PER_EPOCH and (out / "runs" / "dwconv" / "seed0" / "result.json").is_file()
    # SIGKILL, in the resumed command: only the last epoch-end checkpoint is left.
    killed = start_and_signal(signal.SIGKILL, first_stop)
    assert killed.returncode == -signal.SIGKILL
    second_stop = saved_step(checkpoint)
    assert second_stop > first_stop and second_stop % STEPS_PER_EPOCH == 0
    assert not (out / "runs" / "odconv" / "seed0" / "result.json").exists()

    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert re.search(r"dwconv seed 0: top-1 \S+ \(done earlier\)", finished.stdout), finished.stdout
    assert f"odconv seed 0: resuming from step {second_stop}" in finished.stdout
    # Two interruptions later, the weights are those of the uninterrupted command.
    for run in ("dwconv", "odconv"):
        got = load_file(str(out / "runs" / run / "seed0" / "model.safetensors"))
        want = load_file(str(uninterrupted / "runs" / run / "seed0" / "model.safetensors"))
        assert all(torch.equal(got[k], want[k]) for k in want), run


def test_a_resumed_run_must_have_the_same_configuration(tmp_path: Path, tiny_data: Splits) -> None:
    _shootout(tmp_path, tiny_data, ["dwconv"])
    longer = Recipe(**{**RECIPE.to_dict(), "epochs": 4})
    with pytest.raises(ValueError, match=r"another configuration \(differing in \['recipe'\]\)"):
        _shootout(tmp_path, tiny_data, ["dwconv"], recipe=longer)


# -- DDP ------------------------------------------------------------------------------------------------------------

DDP_ARGS = ["--mixers", "odconv", "--seeds", "0", "--epochs", "2", "--batch-size", "32", "--img-size", "16"]


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo on CPU is tested on Linux")
def test_torchrun_two_processes_equal_one(tmp_path: Path) -> None:
    # ODConv's attention has BatchNorm: the two processes only match one through SyncBatchNorm.
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(tiny_spec().to_dict()))
    args = [*DDP_ARGS, "--spec", str(spec), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "unifiedops.cli", "shootout", *args, "--out", str(tmp_path / "ddp")]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("| odconv |") == 1  # rank 0 prints the table, rank 1 nothing

    assert main(["shootout", *args, "--out", str(tmp_path / "single")]) == 0
    runs = {}
    for name in ("ddp", "single"):
        run = tmp_path / name / "runs" / "odconv" / "seed0"
        runs[name] = (json.loads((run / "result.json").read_text()), load_file(str(run / "model.safetensors")))
    (ddp, ddp_weights), (single, single_weights) = runs["ddp"], runs["single"]
    assert (ddp["world_size"], single["world_size"]) == (2, 1)
    assert ddp["steps"] == single["steps"] == 2 * (1437 // 32)
    assert ddp["top1"] == single["top1"]
    assert ddp["epoch_losses"] == pytest.approx(single["epoch_losses"], rel=1e-5)
    assert ddp_weights.keys() == single_weights.keys()
    for key, value in single_weights.items():
        torch.testing.assert_close(ddp_weights[key], value, rtol=1e-4, atol=1e-5, msg=key)


# -- bad input ------------------------------------------------------------------------------------------------------


def _no_training(step: int) -> None:
    raise AssertionError("training started before the input was checked")


@pytest.mark.parametrize(
    ("mixers", "message"),
    [
        (["dwconv", "window_atention"], r"unknown mixer 'window_atention' \(did you mean 'window_attention'\?\)"),
        (["dwconv", MixerEntry("wide_window", "window_attention", {"head_dim": 3})], "head_dim=3 does not divide"),
        (["dwconv", MixerEntry("late", "dwconv", stages=(5,))], r"stages \[5\] do not exist"),
        (["dwconv", "dwconv"], "more than once"),
    ],
)
def test_bad_mixers_fail_before_training(tmp_path: Path, tiny_data: Splits, mixers: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _shootout(tmp_path, tiny_data, mixers, on_step=_no_training)
    assert not (tmp_path / "runs").exists()


def test_a_mixer_that_changes_the_width_cannot_fill_the_slot(tmp_path: Path, tiny_data: Splits) -> None:
    register_mixer("test_dense_widening_conv", lambda dim, site: nn.Conv2d(dim, 2 * dim, 3, padding=1))
    try:
        with pytest.raises(ValueError, match=r"maps \(2, 16, 4, 4\) to \(2, 32, 4, 4\): the slot needs a token mixer"):
            _shootout(tmp_path, tiny_data, ["dwconv", "test_dense_widening_conv"], on_step=_no_training)
        # The control: a dense conv that keeps the width fills it.
        register_mixer("test_dense_widening_conv", lambda dim, site: nn.Conv2d(dim, dim, 3, padding=1), overwrite=True)
        check_slot(tiny_spec(), MixerEntry("dense", "test_dense_widening_conv"))
    finally:
        MIXERS.pop("test_dense_widening_conv")
    assert not (tmp_path / "runs").exists()


def test_every_default_mixer_fills_the_default_slot() -> None:
    assert len(DEFAULT_MIXERS) == 11
    for entry in DEFAULT_MIXERS:
        check_slot(default_backbone(), entry)


def _image(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (40, 80, 120)).save(path)


def test_image_folder_layout_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--data: .* is not a folder"):
        image_folder_splits(tmp_path / "missing", argument="--data")
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            _image(tmp_path / split / label / "0.png")
    splits = image_folder_splits(tmp_path, 32)
    assert (len(splits.train), len(splits.test), splits.num_classes) == (2, 2, 2)
    assert splits.train[0][0].shape == (3, 32, 32)
    # A shoot-out on it runs end to end, with a data-loading worker process.
    recipe = Recipe(epochs=1, batch_size=2, warmup_epochs=0, eval_batch_size=2)
    run = run_shootout(
        tiny_spec(), ["dwconv"], splits, recipe, (0,), tmp_path / "out", progress=False, workers=1, log=None
    )
    assert run.runs[0]["steps"] == 1
    _image(tmp_path / "val" / "bird" / "0.png")
    with pytest.raises(ValueError, match=r"same classes; they differ in \['bird'\]"):
        image_folder_splits(tmp_path)
    (tmp_path / "val" / "bird" / "0.png").unlink()
    with pytest.raises(ValueError, match=r"class folders without images .*\['bird'\]"):
        image_folder_splits(tmp_path)
    (tmp_path / "val" / "bird").rmdir()
    for f in (tmp_path / "val").rglob("*.png"):
        f.unlink()
    for d in (tmp_path / "val").iterdir():
        d.rmdir()
    with pytest.raises(ValueError, match="has no class sub-folders"):
        image_folder_splits(tmp_path)
    (tmp_path / "val").rmdir()
    with pytest.raises(ValueError, match="val is missing; the folder needs train/ and val/"):
        image_folder_splits(tmp_path)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mixers", "dwconv,nope"], "unknown mixer 'nope'"),
        (["--data", "/nonexistent/folder"], "--data: /nonexistent/folder is not a folder"),
        (["--seeds", "0,x"], "seeds must be comma-separated ints"),
    ],
)
def test_the_command_reports_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["shootout", *argv, "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_digits_are_a_fixed_stratified_split() -> None:
    a, b = digits_splits(), digits_splits()
    assert (len(a.train), len(a.test), a.in_chans, a.img_size) == (1437, 360, 1, (32, 32))
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    assert torch.bincount(a.test.tensors[1]).tolist() == torch.bincount(b.test.tensors[1]).tolist()
    assert torch.bincount(a.test.tensors[1]).min() >= 35  # every class held out in proportion (~36 each)
    # Standardised with the training set's statistics.
    assert abs(float(a.train.tensors[0].mean())) < 1e-5 and abs(float(a.train.tensors[0].std()) - 1) < 1e-5


def test_recipe_rejects_bad_values() -> None:
    assert Recipe.quick().epochs < Recipe().epochs
    with pytest.raises(ValueError, match=r"epochs must be >= 1, got epochs=0"):
        Recipe(epochs=0)
    with pytest.raises(ValueError, match="label_smoothing and drop_path_rate must be below 1"):
        Recipe(label_smoothing=1.0)
    with pytest.raises(ValueError, match="batch_size=30 does not split over 4 processes"):
        from zoo.shootout.runner import RunContext, run_one

        run_one(
            tiny_spec(),
            DEFAULT_MIXERS[0],
            digits_splits(16),
            Recipe(batch_size=30),
            0,
            "unused",
            RunContext(torch.device("cpu"), 0, 4),
        )
