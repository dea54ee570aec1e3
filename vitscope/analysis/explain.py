"""Patch maps of where a decision comes from, and how faithful each map is: pure torch / numpy.

Three maps come from one image's attention `A` [L, H, P, P] (and, for `grad_rollout`, the gradient of the target's
logit `s` with respect to it); the fourth, `occlusion`, from masked forwards (the engine's). Every map is the `N`
patch columns of the class token's row, in its own raw units (nothing is renormalised), so the prefix tokens
(class, distillation, registers) never appear in it. The faithfulness protocol is Chefer et al.'s positive /
negative perturbation, per image: remove patches in a map's order and follow P[target].
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from vitscope.vocab import EXPLAIN_DIRECTIONS as DIRECTIONS
from vitscope.vocab import EXPLAIN_METHODS as METHODS
from vitscope.vocab import STORED_MAPS

FRACTIONS = np.arange(10) / 10  # the share of patches removed at each point of a curve
CLS = 0  # the class token's index: first in every supported model (distillation token and registers follow)


def attention_map(attn: Tensor, num_prefix: int) -> Tensor:
    """The last layer's class-token row over the patches, averaged over heads: `mean_h A_{L-1}[h, c, n:]` → [N]."""
    return attn[-1].double().mean(0)[CLS, num_prefix:]


def rollout(attn: Tensor) -> Tensor:
    """Abnar & Zuidema's rollout `Â_{L-1} ⋯ Â_0` [P, P]: `Â_l = ½·mean_h A_l + ½·I`, each row divided by its sum."""
    a = attn.double().mean(1)  # [L, P, P]
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    r = eye
    for layer in a:
        hat = 0.5 * layer + 0.5 * eye
        r = (hat / hat.sum(-1, keepdim=True)) @ r
    return r


def grad_rollout(attn: Tensor, grad_attn: Tensor) -> Tensor:
    """Chefer et al. 2021's relevance [P, P]: from `R = I`, for each layer from the first, `R ← R + Ā_l R` with
    `Ā_l = mean_h max(0, ∂s/∂A_l ⊙ A_l)`. `grad_attn` is that product, `∂s/∂A ⊙ A` [L, H, P, P]."""
    bar = grad_attn.double().clamp(min=0).mean(1)  # [L, P, P]
    r = torch.eye(bar.shape[-1], dtype=bar.dtype)
    for layer in bar:
        r = r + layer @ r
    return r


def attention_maps(attn: Tensor, grad_attn: Tensor, num_prefix: int) -> dict[str, np.ndarray]:
    """The three maps that come from attention alone: {method: [N] float64}, class-token row, patch columns."""
    return {"attention": attention_map(attn, num_prefix).numpy(),
            "rollout": rollout(attn)[CLS, num_prefix:].numpy(),
            "grad_rollout": grad_rollout(attn, grad_attn)[CLS, num_prefix:].numpy()}


def stored_maps(attn: Tensor, relevance: Tensor, num_prefix: int) -> np.ndarray:
    """`attention_maps` of a batch, [B, len(STORED_MAPS), N] float32: `attn` and `relevance` [B, L, H, P, P]."""
    return np.stack([np.stack([m[k] for k in STORED_MAPS]) for m in
                     (attention_maps(a, r, num_prefix) for a, r in zip(attn, relevance, strict=True))]
                    ).astype(np.float32)


def removal_counts(patches: int) -> list[int]:
    """Patches removed at each fraction: `round(f·N)`, halves to even, computed as `round(k·N/10)` so that a
    fraction's binary rounding never moves a count across a half."""
    return [round(k * patches / 10) for k in range(len(FRACTIONS))]


def removal_order(values: np.ndarray, direction: str) -> np.ndarray:
    """Patch indices in the order they are removed: highest values first (`most_relevant_first`) or lowest first
    (`least_relevant_first`); a stable sort, so tied patches go lowest index first in both directions."""
    values = np.asarray(values, np.float64)
    if direction == "most_relevant_first":
        return np.argsort(-values, kind="stable")
    if direction == "least_relevant_first":
        return np.argsort(values, kind="stable")
    raise ValueError(f"unknown direction {direction!r}: {', '.join(DIRECTIONS)}")


def removal_masks(values: np.ndarray, direction: str) -> np.ndarray:
    """Bool [len(FRACTIONS), N]: row k marks the first `removal_counts(N)[k]` patches of `removal_order`."""
    order = removal_order(values, direction)
    masks = np.zeros((len(FRACTIONS), len(order)), bool)
    for k, count in enumerate(removal_counts(len(order))):
        masks[k, order[:count]] = True
    return masks


def auc(curve: np.ndarray) -> float:
    """The trapezoid area under a curve sampled at FRACTIONS."""
    return float(np.trapezoid(np.asarray(curve, np.float64), FRACTIONS))


def bootstrap_interval(values: np.ndarray, seed: int = 0, resamples: int = 2000, level: float = 0.95
                       ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (images resampled with replacement, seeded)."""
    v = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def most_faithful(mean_auc: dict[str, dict[str, float]]) -> dict[str, str]:
    """Per direction, the method a faithful map would be: the lowest mean AUC when the most relevant patches go
    first, the highest when the least relevant go first (ties: the first in METHODS order)."""
    methods = [m for m in METHODS if m in mean_auc]
    return {"most_relevant_first": min(methods, key=lambda m: mean_auc[m]["most_relevant_first"]),
            "least_relevant_first": max(methods, key=lambda m: mean_auc[m]["least_relevant_first"])}
