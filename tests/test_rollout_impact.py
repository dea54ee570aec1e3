"""Rollout impact against the slow obvious reference: one whole `rollout` per head, with that head left out of its
layer's mean (replaced by the mean of the others, so the layer's mean over all H heads is the others' mean)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitscope.analysis.explain import CLS, rollout, rollout_impact, rollout_impacts


def patch_map(attn: torch.Tensor, num_prefix: int) -> torch.Tensor:
    row = rollout(attn)[CLS, num_prefix:]
    return row / row.sum()


def slow_impact(attn: torch.Tensor, num_prefix: int) -> np.ndarray:
    L, H = attn.shape[:2]
    p = patch_map(attn, num_prefix)
    out = np.zeros((L, H))
    for layer in range(L):
        for head in range(H):
            cut = attn.double().clone()
            others = [h for h in range(H) if h != head]
            cut[layer, head] = cut[layer, others].mean(0)
            out[layer, head] = 0.5 * (p - patch_map(cut, num_prefix)).abs().sum().item()
    return out


def random_attention(seed: int, L: int, H: int, P: int, stochastic: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(L, H, P, P, generator=g) ** 4  # peaky, so heads differ
    return a / a.sum(-1, keepdim=True) if stochastic else a * 3  # rows not summing to 1: the row division matters


@pytest.mark.parametrize(("num_prefix", "stochastic"), [(1, True), (2, True), (5, True), (1, False), (3, False)])
def test_rollout_impact_is_a_rollout_per_head_with_the_head_left_out(num_prefix, stochastic):
    attn = random_attention(num_prefix, L=4, H=3, P=num_prefix + 9, stochastic=stochastic)
    got = rollout_impact(attn, num_prefix)
    assert got.dtype == torch.float32 and got.shape == (4, 3)
    want = slow_impact(attn, num_prefix)
    assert (want > 1e-4).all()  # every head moves the map: the comparison is not of zeros
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-7)


def test_a_head_equal_to_its_layers_mean_has_no_impact_and_one_head_is_nan():
    attn = random_attention(7, L=3, H=4, P=10)
    attn[1, 2] = attn[1, [0, 1, 3]].mean(0)  # leaving it out leaves the mean as it is
    got = rollout_impact(attn, 1)
    assert got[1, 2] < 1e-7 and (got[1, [0, 1, 3]] > 1e-4).all()
    assert torch.isnan(rollout_impact(attn[:, :1], 1)).all() and rollout_impact(attn[:, :1], 1).shape == (3, 1)


def test_the_batch_is_each_image_alone():
    attn = torch.stack([random_attention(s, L=3, H=2, P=11) for s in range(4)])
    got = rollout_impacts(attn.half(), 2)  # a store's attention can be float16: computed in float64 all the same
    assert got.shape == (4, 3, 2) and got.dtype == torch.float32
    for i in range(4):
        np.testing.assert_allclose(got[i].numpy(), rollout_impact(attn[i].half(), 2).numpy(), rtol=1e-6)
        np.testing.assert_allclose(got[i].numpy(), slow_impact(attn[i].half(), 2), rtol=1e-5, atol=1e-7)
