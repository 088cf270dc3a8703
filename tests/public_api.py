"""The public API of ``unifiedops`` and ``zoo``: every module and every name its ``__all__`` lists.

Shared by the docstring test and the API-reference coverage test, so both judge the same set.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

PACKAGES = ("unifiedops", "zoo")

# Modules that are entry points, not libraries: nothing in them is imported by users.
ENTRY_POINTS = {"unifiedops.__main__", "unifiedops.cli"}

# nn.Module hooks whose contract is torch's, documented there.
TORCH_HOOKS = {"extra_repr"}


@dataclass(frozen=True)
class PublicName:
    """One public object: ``module.name`` is where it is defined."""

    module: str
    name: str
    obj: Any

    @property
    def path(self) -> str:
        return f"{self.module}.{self.name}"


def public_modules() -> list[ModuleType]:
    """Every module of the packages whose dotted path has no component starting with ``_``."""
    modules = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        modules.append(package)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            if any(part.startswith("_") for part in info.name.split(".")) or info.name in ENTRY_POINTS:
                continue
            modules.append(importlib.import_module(info.name))
    return modules


def _defined_in_packages(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module.split(".")[0] in PACKAGES


def public_names() -> list[PublicName]:
    """Every name listed in a public module's ``__all__``, once, under the module that defines it.

    A class or function re-exported by a package is reported under its defining module (its
    canonical path); constants are reported under the module whose ``__all__`` lists them first
    (the defining module, as every package lists its submodules' names after importing them).
    """
    seen: dict[int, PublicName] = {}
    constants: dict[str, PublicName] = {}
    for module in public_modules():
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                if not _defined_in_packages(obj):
                    continue
                seen.setdefault(id(obj), PublicName(obj.__module__, obj.__qualname__, obj))
            else:
                key = f"{name}:{id(obj)}"
                if key not in constants and not any(c.name == name and c.obj is obj for c in constants.values()):
                    constants[key] = PublicName(module.__name__, name, obj)
    return sorted([*seen.values(), *constants.values()], key=lambda p: p.path)


def public_callables() -> Iterator[tuple[str, Any]]:
    """Every public class and function, and the public methods and properties each class defines."""
    for public in public_names():
        obj = public.obj
        if inspect.isfunction(obj):
            yield public.path, obj
        elif inspect.isclass(obj):
            yield public.path, obj
            for attr, member in vars(obj).items():
                if attr.startswith("_") or attr in TORCH_HOOKS:
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if inspect.isfunction(member) or isinstance(member, (property, functools.cached_property)):
                    yield f"{public.path}.{attr}", member
