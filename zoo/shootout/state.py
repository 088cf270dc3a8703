"""A training run's resumable state in one safetensors file: weights, optimizer, random state, progress.

Tensors go into the safetensors body, everything else (the optimizer's hyper-parameters, the step, the losses) into
its string metadata as JSON, so resuming never unpickles anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

__all__ = ["TrainingState", "load_training_state", "save_training_state", "saved_step"]

TrainingState = dict[str, Any]
"""What [`save_training_state`][zoo.shootout.state.save_training_state] stores beside the tensors: ``step`` and any
JSON-serialisable progress (losses, seconds trained)."""

_MODEL, _OPTIM, _RNG = "model.", "optim.", "rng."


def save_training_state(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, progress: TrainingState
) -> None:
    """Write the model, the optimizer and the random-number state to ``path``, atomically.

    Args:
        path: A ``.safetensors`` file; written beside and renamed into place, so a kill mid-write leaves the
            previous checkpoint intact.
        model: The model (unwrapped from DDP).
        optimizer: Its optimizer.
        progress: JSON-serialisable progress, with at least ``"step"``.
    """
    # Clones: safetensors refuses tensors that share memory (KernelWarehouse cells), and loading copies the
    # values back into the model's own, still shared, tensors.
    tensors = {_MODEL + k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    optim = optimizer.state_dict()
    for index, entry in optim["state"].items():
        for name, value in entry.items():
            tensors[f"{_OPTIM}{index}.{name}"] = torch.as_tensor(value).detach().cpu().clone().contiguous()
    tensors[_RNG + "cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors[_RNG + "cuda"] = torch.cuda.get_rng_state()
    metadata = {"progress": json.dumps(progress), "param_groups": json.dumps(optim["param_groups"])}
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)


def load_training_state(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> TrainingState:
    """Restore what [`save_training_state`][zoo.shootout.state.save_training_state] wrote.

    Args:
        path: The checkpoint.
        model: The model to load into (the same architecture).
        optimizer: Its optimizer, freshly built.
        device: Where the optimizer's state goes.

    Returns:
        The progress dict.
    """
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    model.load_state_dict({k[len(_MODEL) :]: v for k, v in tensors.items() if k.startswith(_MODEL)})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(_OPTIM):
            index, name = key[len(_OPTIM) :].split(".", 1)
            # Adam keeps its step count on the CPU unless it is capturable or fused.
            state.setdefault(int(index), {})[name] = value if name == "step" else value.to(device)
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    torch.set_rng_state(tensors[_RNG + "cpu"])
    if _RNG + "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[_RNG + "cuda"])
    return json.loads(metadata["progress"])


def saved_step(path: str | os.PathLike) -> int:
    """The step a checkpoint was written at, read from its metadata without loading the tensors.

    Args:
        path: A checkpoint of [`save_training_state`][zoo.shootout.state.save_training_state].

    Returns:
        The number of optimizer steps taken before it was written.
    """
    with safe_open(str(path), framework="pt") as f:
        return int(json.loads(f.metadata()["progress"])["step"])
