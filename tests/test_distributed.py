"""Data-parallel training in 2 processes (gloo, CPU) equals training in one process on the whole batch.

Issue 7, point 3. One fixture starts 2 worker processes (this file run as a script, ``OMP_NUM_THREADS=1``,
joined through a file store, so no port is needed) and they run, in the same process group:

* the BatchNorm layers that [`convert_sync_batchnorm`][zoo.blocks.sync_batchnorm.convert_sync_batchnorm]
  synchronises (2-D, 1-D, DWNet's channels-last one, timm's ``BatchNormAct2d``), forward and backward on
  an uneven split of one batch (3 and 4 samples), two iterations;
* ``STEPS`` steps of SGD with momentum under ``DistributedDataParallel`` on a small KernelWarehouse ResNet
  (one warehouse per stage; the first three serve 4, 3 and 3 layers) with the temperature schedule stepped on every
  rank, and on a small DWNet, both with their BatchNorms synchronised, each rank on its half of a fixed
  global batch; and once more on the DWNet with its BatchNorms left per-process (to show the check bites).

The parent process meanwhile trains the same models (same seed, same initial weights, plain BatchNorm) in
one process on the concatenated batch, with the loss averaged over the global batch, which is what DDP's
averaging of the per-rank mean gradients gives. Everything runs in float64, so the only differences are
the order of floating-point sums (all-reduces, batch statistics over two halves), ~1e-16 relative per
operation: after 3 steps the measured differences are below 1e-13, and the tolerance is 1e-9 (more than
1e4 times that, and more than 1e6 times below what per-process BatchNorm statistics give).

Reduced models keep the properties tested: the KW ResNet keeps the official sharing (a stage's warehouse
serves its own block and the next stage's first ``conv1`` and ``downsample``) at widths 16-128 and one block
per stage; the DWNet keeps its block (three BatchNorm2d and a channels-last BatchNorm) at widths 32-256 and
one block per stage. Neither property depends on width, depth or the 32x32 input.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.layers import BatchNormAct2d
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import zoo  # noqa: F401  (registers the models)
from unifiedops import TemperatureSchedule
from unifiedops.testing import randomize_
from unifiedops.warehouse import WarehouseAttention
from zoo.blocks import BatchNormChannelsLast
from zoo.blocks.sync_batchnorm import (
    SyncBatchNorm,
    SyncBatchNormAct2d,
    SyncBatchNormChannelsLast,
    convert_sync_batchnorm,
)
from zoo.builder import SpecBackbone
from zoo.dwnet import DWNET_TINY
from zoo.kw_resnet import KWResNet

ROOT = Path(__file__).resolve().parent.parent
WORLD = 2
STEPS = 3
GLOBAL_BATCH = 8  # 4 per rank
IMG = 32
CLASSES = 10
LR = 0.1
TIMEOUT_S = 240  # a hang fails the test instead of blocking CI
TOL = 1e-9  # float64; see the module docstring

# --- what both sides build ---------------------------------------------------------------------------


def build_model(name: str) -> nn.Module:
    """The model ``name`` with its initial weights (seeded, so every process builds the same), float64."""
    torch.manual_seed(0)
    if name == "kw_resnet":
        model = KWResNet(layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem_width=16, num_classes=CLASSES)
    else:
        stages = tuple(dataclasses.replace(s, depth=1, dim=32 * 2**i) for i, s in enumerate(DWNET_TINY.stages))
        model = SpecBackbone(
            spec=dataclasses.replace(DWNET_TINY, stages=stages, drop_path_rate=0.0), num_classes=CLASSES
        )
    return model.double().train()


def batches() -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(STEPS, GLOBAL_BATCH, 3, IMG, IMG)`` and labels ``(STEPS, GLOBAL_BATCH)``."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(STEPS, GLOBAL_BATCH, 3, IMG, IMG, generator=g, dtype=torch.float64)
    return images, torch.randint(CLASSES, (STEPS, GLOBAL_BATCH), generator=g)


def temperature_schedule(model: nn.Module) -> TemperatureSchedule | None:
    """tau = 1 - t / 6 at step t: 0.83, 0.67, 0.5 over the 3 steps; ``None`` without KW attentions."""
    if not any(isinstance(m, WarehouseAttention) for m in model.modules()):
        return None
    return TemperatureSchedule(iters_per_epoch=STEPS, temp_epochs=2)


def train(model: nn.Module, net: nn.Module, rows: slice) -> list[float]:
    """``STEPS`` steps of SGD on ``rows`` of each global batch; returns the temperatures set."""
    images, labels = batches()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    schedule = temperature_schedule(model)
    taus = []
    for step in range(STEPS):
        if schedule is not None:  # on the unwrapped model, on every rank
            taus.append(schedule.step(model))
        loss = F.cross_entropy(net(images[step, rows]), labels[step, rows])  # the mean over these rows
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return taus


BN_CASES = {
    # name: (layer, input shape without the batch)
    "bn2d": (lambda: nn.BatchNorm2d(6), (6, 5, 4)),
    "bn2d_cumulative": (lambda: nn.BatchNorm2d(6, momentum=None), (6, 5, 4)),
    "bn1d": (lambda: nn.BatchNorm1d(6), (6,)),  # as in the KW attentions, (B, C)
    "channels_last": (lambda: BatchNormChannelsLast(6), (5, 4, 6)),  # DWNet's norm before the MLP
    "bn_act": (lambda: BatchNormAct2d(6, act_layer=nn.ReLU), (6, 5, 4)),  # KW MobileNetV2
}
BN_SPLIT = (3, 4)  # an uneven split: the statistics must weight the ranks by their counts
BN_ITERS = 2


def bn_case(name: str) -> tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]]:
    """A randomised layer, and per iteration an input ``(7, *shape)`` and an upstream gradient."""
    make, shape = BN_CASES[name]
    torch.manual_seed(2)
    layer = randomize_(make().double()).train()
    n = sum(BN_SPLIT)
    xs = [torch.randn(n, *shape, dtype=torch.float64) * 3 + 1 for _ in range(BN_ITERS)]
    gs = [torch.randn(n, *shape, dtype=torch.float64) for _ in range(BN_ITERS)]
    return layer, xs, gs


def run_bn(layer: nn.Module, xs: list[torch.Tensor], gs: list[torch.Tensor], rows: slice) -> dict[str, Any]:
    """Forward and backward of ``layer`` on ``rows`` of each iteration's batch, with ``sum(y * g)`` as loss."""
    outputs, input_grads = [], []
    for x, g in zip(xs, gs, strict=True):
        x = x[rows].clone().requires_grad_()
        y = layer(x)
        (y * g[rows]).sum().backward()
        outputs.append(y.detach())
        input_grads.append(x.grad)
    return {
        "y": outputs,
        "x_grad": input_grads,
        "param_grad": {k: p.grad.clone() for k, p in layer.named_parameters()},
        "state": {k: v.clone() for k, v in layer.state_dict().items()},
    }


def rows_of(rank: int, sizes: tuple[int, ...]) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


# --- the worker processes ----------------------------------------------------------------------------


def worker(rank: int, init_file: str, out: str) -> None:
    """One rank: join the group, run the BatchNorm cases and the DDP training, save what it ends with."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=TIMEOUT_S)
    )
    results: dict[str, Any] = {}
    try:
        nn.SyncBatchNorm(3).train()(torch.randn(4, 3, 2, 2))
        results["torch_sync_bn_error"] = None
    except ValueError as error:
        results["torch_sync_bn_error"] = str(error)

    for name in BN_CASES:
        layer, xs, gs = bn_case(name)
        results[f"bn/{name}"] = run_bn(convert_sync_batchnorm(layer), xs, gs, rows_of(rank, BN_SPLIT))

    half = GLOBAL_BATCH // WORLD
    for name, sync in (("kw_resnet", True), ("dwnet", True), ("dwnet_unsynced", False)):
        model = build_model(name.removesuffix("_unsynced"))
        if sync:
            model = convert_sync_batchnorm(model)
        # Every parameter, a warehouse's cells included (one Parameter however many layers share it),
        # gets a gradient at every step, so find_unused_parameters is not needed.
        net = DistributedDataParallel(model)
        taus = train(model, net, slice(rank * half, (rank + 1) * half))
        results[name] = {
            "state": {k: v.clone() for k, v in model.state_dict().items()},
            "taus": taus,
            "attention_taus": [m.temp_value for m in model.modules() if isinstance(m, WarehouseAttention)],
            "sync_layers": sum(isinstance(m, SyncBatchNorm) for m in model.modules()),
        }
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


# --- the parent --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each rank's results, and the single-process reference computed while the ranks run."""
    tmp = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    command = [sys.executable, __file__, "--init-file", str(tmp / "store"), "--out", str(tmp)]
    logs = [open(tmp / f"rank{rank}.log", "w+") for rank in range(WORLD)]
    procs = [
        subprocess.Popen([*command, "--rank", str(rank)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        for rank, log in enumerate(logs)
    ]
    deadline = time.monotonic() + TIMEOUT_S
    threads = torch.get_num_threads()
    # One thread here while the two workers run: OpenMP threads that wait for a busy core spin, which
    # made the reference 30 times slower on a loaded 2-core machine.
    torch.set_num_threads(1)
    try:
        reference = single_process_reference()
        # Until both exit, one fails (the other would wait for it in a collective), or time runs out.
        while any(p.poll() is None for p in procs) and not any(p.poll() for p in procs):
            if time.monotonic() > deadline:
                pytest.fail(f"the distributed workers did not finish in {TIMEOUT_S} s:\n{_logs(logs)}")
            time.sleep(0.1)
    finally:
        torch.set_num_threads(threads)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    failed = [p.returncode for p in procs] != [0] * WORLD
    message = _logs(logs) if failed else ""
    for log in logs:
        log.close()
    assert not failed, f"a worker failed (exit codes {[p.returncode for p in procs]}):\n{message}"
    ranks = [torch.load(tmp / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD)]
    return {"ranks": ranks, "reference": reference}


def _logs(logs: list) -> str:
    text = []
    for rank, log in enumerate(logs):
        log.flush()
        log.seek(0)
        text.append(f"--- rank {rank} ---\n{log.read()[-4000:]}")
    return "\n".join(text)


def single_process_reference() -> dict[str, Any]:
    """The models and BatchNorm cases run in this process on the whole batch, with plain BatchNorm."""
    reference: dict[str, Any] = {}
    for name in BN_CASES:
        layer, xs, gs = bn_case(name)
        reference[f"bn/{name}"] = run_bn(layer, xs, gs, slice(None))
    for name in ("kw_resnet", "dwnet"):
        model = build_model(name)
        taus = train(model, model, slice(None))
        reference[name] = {"state": {k: v.clone() for k, v in model.state_dict().items()}, "taus": taus}
    return reference


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# --- the tests ---------------------------------------------------------------------------------------


def test_torch_sync_batchnorm_needs_a_gpu(runs: dict[str, Any]) -> None:
    """Why zoo.blocks.sync_batchnorm exists: torch's SyncBatchNorm refuses CPU tensors in training."""
    for result in runs["ranks"]:
        assert result["torch_sync_bn_error"] is not None
        assert "GPU" in result["torch_sync_bn_error"]


@pytest.mark.parametrize("case", sorted(BN_CASES))
def test_sync_batchnorm_equals_batchnorm_on_whole_batch(runs: dict[str, Any], case: str) -> None:
    """Forward, input gradients, parameter gradients (summed over ranks, as DDP does before averaging)
    and running statistics equal one BatchNorm over the concatenated (unevenly split) batch."""
    ranks = [r[f"bn/{case}"] for r in runs["ranks"]]
    ref = runs["reference"][f"bn/{case}"]
    for it in range(BN_ITERS):
        torch.testing.assert_close(torch.cat([r["y"][it] for r in ranks]), ref["y"][it], rtol=0, atol=TOL)
        torch.testing.assert_close(torch.cat([r["x_grad"][it] for r in ranks]), ref["x_grad"][it], rtol=0, atol=TOL)
    for key, grad in ref["param_grad"].items():
        torch.testing.assert_close(sum(r["param_grad"][key] for r in ranks), grad, rtol=0, atol=TOL)
    for r in ranks:
        assert max_diff(r["state"], ref["state"]) < TOL
    assert all(torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]) for k in ref["state"])


@pytest.mark.parametrize("name", ["kw_resnet", "dwnet"])
def test_replicas_stay_identical(runs: dict[str, Any], name: str) -> None:
    """After the steps every parameter and buffer (BatchNorm statistics, KW warehouses) is bit-identical."""
    first, second = (r[name] for r in runs["ranks"])
    assert first["sync_layers"] > 0
    for key, value in first["state"].items():
        assert torch.equal(value, second["state"][key]), key
    assert first["attention_taus"] == second["attention_taus"]


@pytest.mark.parametrize("name", ["kw_resnet", "dwnet"])
def test_ddp_equals_single_process_on_whole_batch(runs: dict[str, Any], name: str) -> None:
    """DDP over 2 ranks with synchronised BatchNorm gives the weights of one process on both halves."""
    reference = runs["reference"][name]
    for result in runs["ranks"]:
        assert result[name]["state"].keys() == reference["state"].keys()
        assert max_diff(result[name]["state"], reference["state"]) < TOL
    initial = build_model(name).named_parameters()
    assert max((p - reference["state"][k]).abs().max().item() for k, p in initial) > 1e-3  # the steps changed them


def test_temperature_schedule_steps_on_every_rank(runs: dict[str, Any]) -> None:
    """Both ranks set the same tau on all 11 KW attentions at every step, as the single process does."""
    expected = [1 - t / (2 * STEPS) for t in range(1, STEPS + 1)]
    assert runs["reference"]["kw_resnet"]["taus"] == pytest.approx(expected)
    for result in runs["ranks"]:
        assert result["kw_resnet"]["taus"] == runs["reference"]["kw_resnet"]["taus"]
        assert result["kw_resnet"]["attention_taus"] == pytest.approx([expected[-1]] * 11)


def test_kw_warehouses_are_shared_across_layers() -> None:
    """The KW ResNet trained here shares each warehouse between layers: one Parameter for several layers."""
    model = build_model("kw_resnet")
    layers_per_warehouse: dict[int, int] = {}
    for module in model.modules():
        if getattr(module, "warehouse_id", None) is not None:
            layers_per_warehouse[module.warehouse_id] = layers_per_warehouse.get(module.warehouse_id, 0) + 1
    # Stage s's warehouse: its block's conv2 and the next stage's conv1 and downsample (and, in stage 0, conv1).
    assert [layers_per_warehouse[i] for i in range(4)] == [4, 3, 3, 1]
    warehouse = [n for n, _ in model.named_parameters() if n.startswith("warehouse_manager.")]
    assert warehouse == [f"warehouse_manager.weights.{i}" for i in range(4)]


def test_per_process_batchnorm_breaks_equality(runs: dict[str, Any]) -> None:
    """The check bites: with each rank's own BatchNorm statistics the DWNet's weights differ from the
    single process's by far more than the tolerance."""
    reference = runs["reference"]["dwnet"]["state"]
    for result in runs["ranks"]:
        assert max_diff(result["dwnet_unsynced"]["state"], reference) > 1e6 * TOL


# --- conversion, in this process -------------------------------------------------------------------


def test_convert_sync_batchnorm_replaces_every_batchnorm() -> None:
    """Every BatchNorm of the DWNet and the KW ResNet is replaced, parameters and buffers are the same
    tensors, channels-last and BatchNormAct2d keep their layout and activation, and outside a process
    group (or in eval mode) the converted model computes what the original does."""
    x = torch.randn(2, 3, IMG, IMG, dtype=torch.float64)
    counts = {
        "dwnet": {"SyncBatchNorm": 12, "SyncBatchNormChannelsLast": 4},
        "kw_resnet": {"SyncBatchNorm": 23},  # 12 BatchNorm2d, and the BatchNorm1d of the 11 KW attentions
    }
    for name, expected_counts in counts.items():
        torch.manual_seed(3)
        model = randomize_(build_model(name), scale=0.1)
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        expected = [model.eval()(x), model.train()(x)]  # the train-mode pass updates the running statistics
        model.load_state_dict(initial)  # in place: the tensors stay the same objects
        tensors = {k: v.data_ptr() for k, v in model.state_dict().items()}
        synced = convert_sync_batchnorm(model)
        norms = [type(m).__name__ for m in synced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert {n: norms.count(n) for n in set(norms)} == expected_counts
        assert {k: v.data_ptr() for k, v in synced.state_dict().items()} == tensors
        actual = [synced.eval()(x), synced.train()(x)]
        for a, e in zip(actual, expected, strict=True):
            torch.testing.assert_close(a, e, rtol=0, atol=1e-12)

    act = BatchNormAct2d(4, act_layer=nn.ReLU6)
    converted = convert_sync_batchnorm(nn.Sequential(act, BatchNormChannelsLast(4)))
    assert type(converted[0]) is SyncBatchNormAct2d and converted[0].act is act.act
    assert type(converted[1]) is SyncBatchNormChannelsLast
    with pytest.raises(TypeError, match="module"):
        convert_sync_batchnorm("not a module")  # type: ignore[arg-type]


def test_torch_conversion_drops_batchnormact_activation() -> None:
    """Why the zoo's converter handles BatchNormAct2d: torch's turns it into a SyncBatchNorm without the ReLU6
    (the KW MobileNetV2s), so its output goes negative."""
    torch.manual_seed(0)
    layer = nn.Sequential(BatchNormAct2d(4, act_layer=nn.ReLU6)).eval()
    x = torch.randn(2, 4, 3, 3)
    assert layer(x).min() >= 0
    assert convert_sync_batchnorm(copy.deepcopy(layer))(x).min() >= 0
    assert nn.SyncBatchNorm.convert_sync_batchnorm(layer)(x).min() < 0  # (converts in place)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one rank of tests/test_distributed.py")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--init-file", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    worker(args.rank, args.init_file, args.out)
