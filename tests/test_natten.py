"""NeighborhoodAttention with ``border="clamp"`` and no relative-position bias is NATTEN's
neighbourhood attention: the same output as ``natten.functional.na2d`` for the same ``q, k, v``
(odd kernels, dilation, non-square maps), on every path, and the same module output as NATTEN's
``NeighborhoodAttention2D`` given our weights (what the operator benchmark compares against).

NATTEN is optional (CI installs it with ``pip install --no-build-isolation natten``); without it
these tests are skipped. Its CPU form (FlexAttention) takes float32 and head dims that are powers
of two from 8, so the comparison is in float32 to 1e-5.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unifiedops import NeighborhoodAttention

natten = pytest.importorskip("natten")
from natten.functional import na2d  # noqa: E402

EXAMPLES = int(os.environ.get("UNIFIEDOPS_EXAMPLES", "100"))
ATOL = RTOL = 1e-5


def _na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """NATTEN's ``na2d`` on heads-last ``(B, H, W, heads, D)`` tensors, without FlexAttention's
    once-per-process warnings (unfused CPU implementation, deprecated ``return_lse``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return na2d(q, k, v, kernel_size=kernel_size, dilation=dilation)


def _ours(heads: int, head_dim: int, kernel_size: int, dilation: int) -> NeighborhoodAttention:
    """Our module with an identity output projection, so that it returns the attention itself."""
    dim = heads * head_dim
    module = NeighborhoodAttention(dim, heads, kernel_size, dilation=dilation, border="clamp", rel_pos_bias=False)
    with torch.no_grad():
        module.proj.weight.copy_(torch.eye(dim))
        module.proj.bias.zero_()
    return module.eval()


@st.composite
def _problems(draw):
    kernel_size = draw(st.sampled_from([3, 5, 7]))  # NATTEN needs kernel_size >= 2
    dilation = draw(st.integers(1, 3))
    smallest = kernel_size * dilation  # NATTEN needs kernel_size * dilation <= every axis
    height = draw(st.integers(smallest, smallest + 6))
    width = draw(st.integers(smallest, smallest + 6))
    heads = draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from([8, 16]))
    batch = draw(st.integers(1, 2))
    return batch, height, width, heads, head_dim, kernel_size, dilation


@settings(max_examples=max(2, EXAMPLES // 4))
@given(_problems(), st.integers(0, 2**16))
def test_equals_na2d_given_the_same_qkv(problem, seed):
    """q, k and v go straight into the aggregation (``projected=``, as ACmix shares them), on every
    path; the output projection is the identity, so the outputs are the attention itself."""
    batch, height, width, heads, head_dim, kernel_size, dilation = problem
    torch.manual_seed(seed)
    q, k, v = torch.randn(3, batch, height, width, heads, head_dim)
    expected = _na2d(q, k, v, kernel_size, dilation).flatten(-2).permute(0, 3, 1, 2)
    module = _ours(heads, head_dim, kernel_size, dilation)
    x = torch.empty(batch, heads * head_dim, height, width)  # only its shape is read
    assert "halo_sdpa" in module.paths and "reference" in module.paths
    with torch.no_grad():
        for path in module.paths:
            module.path = path
            actual = module._run(module, x, projected=torch.stack([q, k, v]))
            torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL, msg=lambda m, p=path: f"{p}: {m}")


@settings(max_examples=max(2, EXAMPLES // 10))
@given(_problems(), st.integers(0, 2**16))
def test_module_equals_natten_module_with_our_weights(problem, seed):
    """NATTEN's ``NeighborhoodAttention2D`` (qkv Linear, ``na2d``, proj Linear) loads our module's
    state dict as it is: the operator benchmark's comparison computes one function twice."""
    batch, height, width, heads, head_dim, kernel_size, dilation = problem
    torch.manual_seed(seed)
    dim = heads * head_dim
    ours = NeighborhoodAttention(
        dim, heads, kernel_size, dilation=dilation, border="clamp", rel_pos_bias=False, channels_last=True
    ).eval()
    for p in ours.parameters():  # default initialisations hide swapped q/k/v or a dropped bias
        torch.nn.init.normal_(p, std=0.5)
    peer = natten.NeighborhoodAttention2D(dim, heads, kernel_size, dilation=dilation).eval()
    peer.load_state_dict(ours.state_dict())
    x = torch.randn(batch, height, width, dim)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.testing.assert_close(ours(x), peer(x), atol=ATOL, rtol=RTOL)


def test_the_comparison_can_fail():
    """The check is not vacuous: the zero-padded border (a convolution's) is not NATTEN's."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 9, 9, 2, 8)
    expected = _na2d(q, k, v, 5, 1).flatten(-2).permute(0, 3, 1, 2)
    module = NeighborhoodAttention(16, 2, 5, border="zeros", rel_pos_bias=False, qkv_bias=False)
    with torch.no_grad():
        module.proj.weight.copy_(torch.eye(16))
        module.proj.bias.zero_()
        actual = module._run(module, torch.empty(1, 16, 9, 9), projected=torch.stack([q, k, v]))
    assert not torch.allclose(actual, expected, atol=ATOL, rtol=RTOL)
    # the interior, where no window reaches the border, agrees
    torch.testing.assert_close(actual[..., 2:-2, 2:-2], expected[..., 2:-2, 2:-2], atol=ATOL, rtol=RTOL)
