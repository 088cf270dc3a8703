"""Save and load model weights safely: safetensors, or a ``.pth`` read with ``weights_only=True``.

[`save`][zoo.checkpoint_io.save] writes a model's ``state_dict`` (parameters and persistent buffers:
BatchNorm statistics and ``num_batches_tracked`` included, non-persistent buffers left out as
``state_dict`` leaves them). [`load`][zoo.checkpoint_io.load] builds a zoo model by name, or takes a
model, and loads a file into it after checking every key and shape. The round trip is exact: every
tensor comes back bit-identical with its dtype.

Formats, chosen by the file's suffix:

* ``.safetensors`` (recommended): no code is run to read it. Tensors that share memory (tied
  weights) are written once and their other names are recorded in the metadata; loading copies
  into the model's own tensors, so whatever the model shares stays shared. A KernelWarehouse
  network holds each warehouse once (its layers reach the cells through the
  [`Warehouse`][unifiedops.Warehouse]), so the cells are written once and, after loading, every
  layer still reads the same tensor.
* ``.pth``, ``.pt``, ``.bin``: a pickle, read with ``torch.load(..., weights_only=True)``, which
  refuses any object that is not a tensor, a number, a string or a container of those: a pickle
  that carries code raises ``pickle.UnpicklingError`` and its code does not run. A plain state dict
  loads, and so does a training checkpoint that keeps it under ``"state_dict"`` or ``"model"`` (as
  timm's and torchvision's do); a ``"module."`` prefix on every key (``DistributedDataParallel``) is
  dropped.

Examples:
    >>> import tempfile, torch, timm
    >>> import zoo
    >>> from zoo.checkpoint_io import load, save
    >>> model = timm.create_model("van_b0", depths=(1, 1, 1, 1))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     save(model, f"{tmp}/van.safetensors")
    ...     copy = load("van_b0", f"{tmp}/van.safetensors", depths=(1, 1, 1, 1))
    >>> all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), copy.state_dict().values()))
    True
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from torch import nn

__all__ = ["PICKLE_SUFFIXES", "SAFETENSORS_SUFFIXES", "load", "read_metadata", "save"]

SAFETENSORS_SUFFIXES = (".safetensors",)
"""File suffixes written and read with safetensors."""

PICKLE_SUFFIXES = (".pth", ".pt", ".bin")
"""File suffixes written with ``torch.save`` and read with ``torch.load(..., weights_only=True)``."""

_ARCHITECTURE = "zoo.architecture"
_ALIASES = "zoo.aliases"
_RESERVED = (_ARCHITECTURE, _ALIASES, "format")
_SHOWN = 10  # names listed in an error message before "... N in all"


def _check_path(path: str | os.PathLike) -> tuple[Path, str]:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return path, "safetensors"
    if suffix in PICKLE_SUFFIXES:
        return path, "pickle"
    known = ", ".join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)
    raise ValueError(f"path must end in one of {known}; got path={str(path)!r}")


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping of str to str, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata must map str to str, got {key!r}: {value!r}")
        if key in _RESERVED:
            raise ValueError(f"metadata key {key!r} is reserved (reserved: {', '.join(_RESERVED)})")
    return dict(metadata)


def _listing(names: list[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_SHOWN])
    return shown if len(names) <= _SHOWN else f"{shown}, ... {len(names)} in all"


def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors safetensors can write (contiguous, no two sharing memory) and the names left out.

    Names that are the same view of the same memory (tied weights) keep one entry; the others are
    returned as ``{alias: kept name}``. A tensor that shares memory with another in a different
    view (a slice) is copied, which keeps its values.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, t in state.items():
        t = t.detach()
        if t.numel() == 0 or t.device.type == "meta":
            tensors[name] = t.contiguous()
            continue
        view = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in views:
            aliases[name] = views[view]
            continue
        storage = t.untyped_storage().data_ptr()
        if storage in storages or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)
        storages.add(t.untyped_storage().data_ptr())
        views[view] = name
        tensors[name] = t
    return tensors, aliases


def save(model: nn.Module, path: str | os.PathLike, *, metadata: Mapping[str, str] | None = None) -> None:
    """Write ``model.state_dict()`` to ``path``, in the format its suffix names.

    The file is written next to ``path`` and renamed into place, so an interrupted save never
    leaves a truncated checkpoint under the final name. The metadata records the model's timm
    architecture (``model.pretrained_cfg["architecture"]``) where it has one, which
    [`read_metadata`][zoo.checkpoint_io.read_metadata] returns.

    Args:
        model: The model; its parameters and persistent buffers are written, on any device, in
            their own dtypes.
        path: Destination ending in ``.safetensors`` (recommended) or ``.pth``/``.pt``/``.bin``.
        metadata: Extra ``str -> str`` entries stored with the tensors (``{"epoch": "90"}``); the
            keys ``"format"``, ``"zoo.architecture"`` and ``"zoo.aliases"`` are reserved.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``, ``path`` not a path, or ``metadata`` not a
            mapping of strings.
        ValueError: If the suffix of ``path`` is not one of the formats, or ``metadata`` uses a
            reserved key.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    path, kind = _check_path(path)
    info = _check_metadata(metadata)
    architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if isinstance(architecture, str):
        info[_ARCHITECTURE] = architecture
    state = model.state_dict()
    partial = path.with_name(path.name + ".partial")
    try:
        if kind == "safetensors":
            from safetensors.torch import save_file

            tensors, aliases = _dedupe(state)
            if aliases:
                info[_ALIASES] = json.dumps(aliases, sort_keys=True)
            save_file({k: v.cpu() for k, v in tensors.items()}, str(partial), metadata={"format": "pt", **info})
        else:
            torch.save({"state_dict": {k: v.detach() for k, v in state.items()}, "metadata": info}, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _read(path: Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict in a file and its metadata (aliases resolved for safetensors)."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at path={str(path)!r}")
    if kind == "safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as f:
            info = dict(f.metadata() or {})
        state = load_file(str(path))
        for alias, kept in json.loads(info.pop(_ALIASES, "{}")).items():
            state[alias] = state[kept]
        return state, info
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise pickle.UnpicklingError(
            f"{str(path)!r} holds objects other than tensors and plain containers, which could run code "
            f"when unpickled; refused (torch.load with weights_only=True). {error}"
        ) from error
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{str(path)!r} must hold a state dict, got a {type(checkpoint).__name__}")
    info: dict[str, str] = {}
    if not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        found = next((key for key in ("state_dict", "model") if isinstance(checkpoint.get(key), Mapping)), None)
        if found is None:
            raise ValueError(
                f"{str(path)!r} is neither a state dict nor a checkpoint with one under 'state_dict' or 'model'; "
                f"its keys: {_listing([str(k) for k in checkpoint])}"
            )
        meta = checkpoint.get("metadata")
        if isinstance(meta, Mapping):
            info = {str(k): str(v) for k, v in meta.items()}
        checkpoint = checkpoint[found]
    state = {}
    for key, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{str(path)!r}: entry {key!r} of the state dict is a {type(value).__name__}, not a tensor"
            )
        state[key] = value
    return state, info


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata stored with a checkpoint written by [`save`][zoo.checkpoint_io.save].

    Args:
        path: A ``.safetensors`` or ``.pth``/``.pt``/``.bin`` file.

    Returns:
        The ``str -> str`` entries: those passed to ``save``, ``"zoo.architecture"`` where the model
        had one, and ``"format"`` for safetensors; ``{}`` for a pickle that has none.

    Raises:
        TypeError: If ``path`` is not a path.
        ValueError: If its suffix is not one of the formats.
        FileNotFoundError: If there is no file at ``path``.
    """
    path, kind = _check_path(path)
    if kind == "safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at path={str(path)!r}")
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            info = dict(f.metadata() or {})
        info.pop(_ALIASES, None)
        return info
    return _read(path, kind)[1]


def load(
    name_or_model: str | nn.Module,
    path: str | os.PathLike,
    *,
    strict: bool = True,
    **create_kwargs: object,
) -> nn.Module:
    """Load a checkpoint into a zoo model built by name, or into a given model.

    Every key and shape is checked before anything is copied, so a failed load leaves the model as it
    was. Values are copied into the model's own tensors (``load_state_dict``): tensors the model
    shares (a KernelWarehouse's cells) stay shared, and each keeps its device and dtype (a checkpoint
    in another dtype is cast, as ``load_state_dict`` casts).

    Args:
        name_or_model: A timm model name (``"van_b0"``), built with ``timm.create_model(name,
            **create_kwargs)``, or an ``nn.Module`` to load into (changed in place).
        path: A ``.safetensors`` or ``.pth``/``.pt``/``.bin`` file.
        strict: Require the checkpoint's keys to be exactly the model's. ``False`` loads the keys both
            have and ignores the rest; shapes must match either way.
        **create_kwargs: Passed to ``timm.create_model`` with a name (``depths=(1, 1, 1, 1)``).

    Returns:
        The model, with the checkpoint's values, in the mode it had (a built model is in train mode).

    Raises:
        TypeError: If ``name_or_model`` is neither a string nor an ``nn.Module``, ``path`` is not a
            path, ``strict`` is not a bool, or ``create_kwargs`` are given with a model.
        ValueError: If ``name_or_model`` names no timm model, the suffix of ``path`` is not one of the
            formats, the file holds no state dict, or keys are missing or unexpected (with
            ``strict``) or shapes differ; the message lists them.
        FileNotFoundError: If there is no file at ``path``.
        pickle.UnpicklingError: If a pickle holds anything but tensors and plain containers (it
            could run code); nothing in it is run.
    """
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {strict!r}")
    if isinstance(name_or_model, str):
        if not timm.is_model(name_or_model):
            raise ValueError(f"name_or_model must be a timm model name, got {name_or_model!r}")
    elif isinstance(name_or_model, nn.Module):
        if create_kwargs:
            raise TypeError(
                f"create_kwargs ({', '.join(create_kwargs)}) apply to a model name only, not to a given model"
            )
    else:
        raise TypeError(f"name_or_model must be a model name or an nn.Module, got {type(name_or_model).__name__}")
    path, kind = _check_path(path)
    state, info = _read(path, kind)
    model = timm.create_model(name_or_model, **create_kwargs) if isinstance(name_or_model, str) else name_or_model
    expected = model.state_dict()
    if state and not any(k in expected for k in state) and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if shapes:
        problems.append(f"shapes differ for {len(shapes)} tensor(s): {'; '.join(shapes[:_SHOWN])}")
    if strict and missing:
        problems.append(f"missing from the checkpoint: {_listing(missing)}")
    if strict and unexpected:
        problems.append(f"not in the model: {_listing(unexpected)}")
    if problems:
        saved = info.get(_ARCHITECTURE)
        origin = f" (saved from {saved!r})" if saved else ""
        raise ValueError(
            f"the checkpoint at path={str(path)!r}{origin} does not fit {type(model).__name__}: " + "; ".join(problems)
        )
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=strict)
    return model
