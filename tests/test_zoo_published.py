"""Acceptance figures of the zoo: parameter counts (every model) and FLOPs (one model per family).

Parameters are counted on the ``meta`` device, so even the 162M-parameter models cost nothing.
FLOPs need a real trace; the full table (every model) is produced by ``benchmarks.zoo_table`` and
kept in ``docs/zoo/index.md`` (``unifiedops flops --zoo``).
"""

from __future__ import annotations

import pytest
import timm
import torch

import zoo
from unifiedops.flops import count_flops
from zoo.published import PUBLISHED, rounds_to


def _params(name: str) -> int:
    with torch.device("meta"):
        model = timm.create_model(name)
    return sum(p.numel() for p in model.parameters())


def test_every_published_model_is_registered():
    assert set(PUBLISHED) <= set(zoo.list_models())


@pytest.mark.parametrize("name", sorted(n for n, p in PUBLISHED.items() if p.params or p.official_params))
def test_parameter_count_matches_publication(name):
    published = PUBLISHED[name]
    count = _params(name)
    if published.official_params is not None:
        assert count == published.official_params
    else:
        assert rounds_to(count, published.params), f"{name}: {count:,} does not round to {published.params}"


def test_rounding_can_fail():
    assert not rounds_to(_params("van_b0") * 1.02, PUBLISHED["van_b0"].params)


# One model per family with published FLOPs (DWNet's dynamic form counted apart: its predictor differs).
@pytest.mark.parametrize(
    "name",
    [
        "van_b0",
        "uniformer_small",
        "mixformer_b0",
        "dwnet_tiny",
        "dynamic_dwnet_tiny",
        "acmix_resnet26",
        "acmix_swin_tiny",
        "swin_tiny",
        "uo_convnext_tiny",
    ],
)
def test_flops_within_five_percent(name):
    model = timm.create_model(name)
    flops = count_flops(model, input_size=(1, 3, 224, 224))
    published = PUBLISHED[name].flops_value
    assert abs(flops / published - 1) <= 0.05, f"{name}: {flops / 1e9:.3f}G vs {PUBLISHED[name].flops}"
