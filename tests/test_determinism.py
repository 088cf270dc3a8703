"""Determinism: under ``torch.use_deterministic_algorithms(True)`` every preset runs, and two runs agree bit for bit.

Every preset (its catalog example and input) runs forward and backward on its automatic fast path
and on the reference path, twice from the same state; the outputs, the input gradient and every
parameter gradient must be identical (``torch.equal``). Deterministic mode also makes PyTorch raise
on any operation that has no deterministic implementation, and fill uninitialised memory
(``torch.empty``) with NaN, so a read of memory that a path never wrote would show in the output.
The reference path's gather (``values[:, :, index]``, an ``index_put`` with accumulation in the
backward), the halo path's ``index_select`` and every SDPA backward are among the operations run.
"""

from __future__ import annotations

import copy

import pytest
import torch

from unifiedops import Aggregation, DWConv
from unifiedops.catalog import PRESETS


@pytest.fixture
def deterministic():
    """``torch.use_deterministic_algorithms(True)`` for one test; the previous setting is restored after."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def forward_backward(module: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
    """The output, the input gradient and every parameter gradient of one step on a copy of ``module``."""
    module = copy.deepcopy(module)
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    y = module(x)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)))
    return [y.detach(), x.grad, *(p.grad for p in module.parameters() if p.grad is not None)]


@pytest.mark.usefixtures("deterministic")
@pytest.mark.parametrize("path", ["auto", "reference"])
@pytest.mark.parametrize("entry", PRESETS, ids=lambda e: e.name)
def test_two_runs_are_identical(entry, path):
    torch.manual_seed(0)
    module = entry.build()
    for agg in module.modules():
        if isinstance(agg, Aggregation):  # parents first: a composite's setter runs before its parts'
            agg.path = path
    x = torch.randn(entry.input_shape)
    first, second = forward_backward(module, x), forward_backward(module, x)
    assert len(first) == len(second) > 2  # output, input gradient and at least one parameter gradient
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        assert torch.isfinite(a).all(), f"tensor {i} is not finite"
        assert torch.equal(a, b), f"tensor {i} differs between two runs: {(a - b).abs().max().item():.3g}"


def test_the_mode_is_live_under_the_fixture(deterministic):
    """The check can fail: under the fixture an operation without a deterministic CPU kernel raises, and
    uninitialised memory reads as NaN (which the finiteness check above would catch)."""
    assert torch.are_deterministic_algorithms_enabled()
    with pytest.raises(RuntimeError, match="deterministic"):
        torch.zeros(4).put_(torch.tensor([0, 0]), torch.ones(2), accumulate=False)
    assert torch.isnan(torch.empty(3)).all()
    DWConv(4, 3)(torch.randn(1, 4, 5, 5)).sum().backward()


def test_the_fixture_restores_the_mode():
    assert not torch.are_deterministic_algorithms_enabled()
