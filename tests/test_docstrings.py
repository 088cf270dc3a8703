"""Every public class and function documents its arguments, its result and its tensor shapes.

Docstrings are parsed with griffe, the parser mkdocstrings renders the API reference with, so a
section this test accepts is a section the reference shows.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import typing
from typing import Any

import pytest
from griffe import Docstring, DocstringSectionKind, Parser

from public_api import public_callables

# A shape is a parenthesised tuple of dimension names or sizes: ``(B, C, H, W)``, ``(B, H*W, K)``,
# ``(n, out, in, k, k)``, ``(C,)``, ``(B, num_classes)``. Lower-case single letters count (``k``), and
# snake_case names (``num_classes``); plain words do not, so ``(see above)`` is no shape.
_DIM = r"(?:[A-Z][A-Za-z0-9_']*|[a-z](?:[a-z0-9]*_[a-z0-9_]+)?|\d+|\.\.\.|…)(?:\s*[-+*/×x]\s*(?:[A-Za-z0-9_']+))*"
SHAPE = re.compile(rf"\(\s*{_DIM}\s*,(?:\s*{_DIM}\s*,)*\s*(?:{_DIM})?\s*\)")


def _sections(doc: str) -> dict[DocstringSectionKind, list]:
    parsed = Docstring(doc, parser=Parser.google).parse(warnings=False)
    sections: dict[DocstringSectionKind, list] = {}
    for section in parsed:
        sections.setdefault(section.kind, []).append(section)
    return sections


def _documented_params(sections: dict[DocstringSectionKind, list]) -> set[str]:
    names = set()
    for kind in (DocstringSectionKind.parameters, DocstringSectionKind.other_parameters):
        for section in sections.get(kind, []):
            names.update(p.name.lstrip("*") for p in section.value)
    return names


def _documented_attributes(sections: dict[DocstringSectionKind, list]) -> set[str]:
    return {a.name for s in sections.get(DocstringSectionKind.attributes, []) for a in s.value}


def _params(func: Any) -> list[str]:
    signature = inspect.signature(func)
    return [name for name in signature.parameters if name not in ("self", "cls")]


def _mentions_tensor(func: Any) -> bool:
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # an annotation that only resolves under TYPE_CHECKING
        hints = getattr(func, "__annotations__", {})
    return any("Tensor" in str(hint) for hint in hints.values())


def _returns_something(func: Any) -> bool:
    annotation = inspect.signature(func).return_annotation
    return annotation not in (None, "None", type(None))


def _problems_of_function(func: Any, owner_doc: str = "") -> list[str]:
    doc = inspect.getdoc(func) or ""
    if not doc.strip():
        return ["no docstring"]
    problems = []
    sections = _sections(doc)
    missing = [p for p in _params(func) if p not in _documented_params(sections)]
    if missing:
        problems.append(f"Args misses {missing}")
    if inspect.signature(func).return_annotation is inspect.Signature.empty:
        problems.append("no return annotation")
    elif _returns_something(func) and not (
        sections.get(DocstringSectionKind.returns) or sections.get(DocstringSectionKind.yields)
    ):
        problems.append("no Returns section")
    if _mentions_tensor(func) and not SHAPE.search(doc + owner_doc):
        problems.append("takes or returns tensors but states no shape like (B, C, H, W)")
    return problems


def _problems_of_class(cls: type) -> list[str]:
    doc = inspect.getdoc(cls) or ""
    if cls.__doc__ is None or not doc.strip():
        return ["no docstring"]
    sections = _sections(doc)
    init = cls.__dict__.get("__init__")
    problems = []
    if dataclasses.is_dataclass(cls):
        fields = [f.name for f in dataclasses.fields(cls) if f.init]
        documented = _documented_params(sections) | _documented_attributes(sections)
        if missing := [f for f in fields if f not in documented]:
            problems.append(f"Args/Attributes miss fields {missing}")
    elif init is not None and inspect.isfunction(init):
        init_sections = _sections(inspect.getdoc(init) or "") if init.__doc__ else {}
        documented = _documented_params(sections) | _documented_params(init_sections)
        if missing := [p for p in _params(init) if p not in documented]:
            problems.append(f"Args misses constructor arguments {missing}")
    forward = cls.__dict__.get("forward")
    if forward is not None and not SHAPE.search(doc + (inspect.getdoc(forward) or "")):
        problems.append("a module whose forward states no input/output shape like (B, C, H, W)")
    return problems


def _cases() -> list:
    return [pytest.param(path, obj, id=path) for path, obj in public_callables()]


def test_the_public_api_is_found() -> None:
    paths = {path for path, _ in public_callables()}
    expected = {"unifiedops.aggregation.Aggregation", "unifiedops.flops.count_flops", "zoo.builder.spec.BackboneSpec"}
    assert expected <= paths


@pytest.mark.parametrize(("path", "obj"), _cases())
def test_public_docstring(path: str, obj: Any) -> None:
    if isinstance(obj, (property, functools.cached_property)):
        problems = [] if (obj.__doc__ or "").strip() else ["no docstring"]
    elif inspect.isclass(obj):
        problems = _problems_of_class(obj)
    else:
        owner_doc = ""
        if "." in obj.__qualname__:
            owner = inspect.getmodule(obj).__dict__.get(obj.__qualname__.split(".")[0])
            owner_doc = inspect.getdoc(owner) or ""
        problems = _problems_of_function(obj, owner_doc)
    assert not problems, f"{path}: " + "; ".join(problems)


@pytest.mark.parametrize(
    ("doc", "has_shape"),
    [
        ("x: input (B, C, H, W).", True),
        ("weights (1, C, 1, k*k)", True),
        ("(C,)", True),
        ("logits (B, num_classes)", True),
        ("(see above)", False),
        ("(e.g., this)", False),
    ],
)
def test_shape_pattern(doc: str, has_shape: bool) -> None:
    assert bool(SHAPE.search(doc)) == has_shape
