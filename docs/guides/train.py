"""Train a zoo model with timm's tools, in one process or in several under ``torchrun``.

An example, not a framework: see docs/guides/training.md. Typical runs:

    python docs/guides/train.py --model kw_resnet18_1x --synthetic --img-size 32 --steps 2
    torchrun --standalone --nproc_per_node=2 docs/guides/train.py --model van_b0 --data /data/imagenette/train
"""

from __future__ import annotations

import argparse
import os

import timm
import torch
import torch.distributed as dist
from timm.data import create_transform
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset
from torchvision.datasets import ImageFolder

from unifiedops import TemperatureSchedule
from unifiedops.warehouse import WarehouseAttention
from zoo.blocks import convert_sync_batchnorm  # importing zoo also registers its models with timm


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="kw_resnet18_1x", help="any timm.create_model name")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data", help="an image folder: one subfolder per class")
    source.add_argument("--synthetic", action="store_true", help="random images, no download (the default)")
    p.add_argument("--num-classes", type=int, default=10, help="classes of the synthetic data")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=4, help="per process")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=2, help="batches per epoch of the synthetic data")
    p.add_argument("--opt", default="adamw")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=int, default=0)
    p.add_argument("--smoothing", type=float, default=0.1)
    p.add_argument("--ema", action="store_true", help="keep an exponential moving average of the weights")
    p.add_argument("--temp-epochs", type=float, default=20, help="KernelWarehouse: epochs of the temperature decay")
    p.add_argument("--workers", type=int, default=0)
    return p.parse_args(argv)


def setup_distributed() -> tuple[int, int, torch.device]:
    """Join the process group when torchrun started us; return (rank, world size, device)."""
    cuda = torch.cuda.is_available()
    if "WORLD_SIZE" not in os.environ:  # plain `python train.py`
        return 0, 1, torch.device("cuda" if cuda else "cpu")
    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local_rank}" if cuda else "cpu")


def make_dataset(args: argparse.Namespace, world_size: int) -> tuple[Dataset, int]:
    """The training set and its number of classes."""
    if args.data:
        dataset = ImageFolder(args.data, transform=create_transform(args.img_size, is_training=True))
        return dataset, len(dataset.classes)
    n = args.batch_size * world_size * args.steps
    generator = torch.Generator().manual_seed(0)  # the same data on every rank
    images = torch.randn(n, 3, args.img_size, args.img_size, generator=generator)
    labels = torch.randint(args.num_classes, (n,), generator=generator)
    return TensorDataset(images, labels), args.num_classes


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rank, world_size, device = setup_distributed()
    torch.manual_seed(0)

    dataset, num_classes = make_dataset(args, world_size)
    sampler = DistributedSampler(dataset, shuffle=True) if world_size > 1 else None
    loader = DataLoader(
        dataset, args.batch_size, shuffle=sampler is None, sampler=sampler, num_workers=args.workers, drop_last=True
    )

    model: nn.Module = timm.create_model(args.model, num_classes=num_classes).to(device)
    if world_size > 1:
        # One set of batch statistics over all processes. The zoo's converter works on CPU (gloo) too,
        # and keeps the activation of timm's BatchNormAct2d, which torch's converter drops.
        model = convert_sync_batchnorm(model)
    ema = ModelEmaV3(model, decay=0.9998) if args.ema else None
    # KernelWarehouse attentions start at temperature 0; the official recipe decays it from 1 to 0.
    kw = any(isinstance(m, WarehouseAttention) for m in model.modules())
    temperature = TemperatureSchedule(len(loader), temp_epochs=args.temp_epochs) if kw else None

    # Weight decay skips biases, norms and the model's no_weight_decay() names.
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay)
    scheduler, epochs = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=args.epochs,
        warmup_epochs=args.warmup_epochs,
        step_on_epochs=False,
        updates_per_epoch=len(loader),
    )
    criterion = LabelSmoothingCrossEntropy(args.smoothing)
    device_ids = [device.index] if device.type == "cuda" else None
    net = DistributedDataParallel(model, device_ids=device_ids) if world_size > 1 else model

    step = 0
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        net.train()
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            tau = temperature.step(model) if temperature else None
            loss = criterion(net(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(num_updates=step)
            if ema is not None:
                ema.update(model, step=step)
            if world_size > 1:  # report the mean over the processes
                loss = loss.detach().clone()
                dist.all_reduce(loss)
                loss /= world_size
            if rank == 0:
                extra = f" tau {tau:.3f}" if tau is not None else ""
                lr = optimizer.param_groups[0]["lr"]
                print(f"epoch {epoch} step {step} loss {loss.item():.4f} lr {lr:.2e}{extra}", flush=True)
        scheduler.step(epoch + 1)

    if world_size > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
