"""Patch maps of where a decision comes from, and how faithful each map is: pure torch / numpy.

Three maps come from one image's attention `A` [L, H, P, P] (and, for `grad_rollout`, the gradient of the target's
logit `s` with respect to it); the fourth, `occlusion`, from masked forwards (the engine's). Every map is the `N`
patch columns of the class token's row, in its own raw units (nothing is renormalised), so the prefix tokens
(class, distillation, registers) never appear in it. The faithfulness protocol is Chefer et al.'s positive /
negative perturbation, per image: remove patches in a map's order and follow P[target]. `rollout_impact` turns the
rollout into a per-head score: how far leaving one head out moves the rollout map.
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


def rollout_impacts(attn: Tensor, num_prefix: int) -> Tensor:
    """`rollout_impact` of a batch: `attn` [B, L, H, P, P] → [B, L, H] float32.

    Only the class token's row of each perturbed rollout is needed, so with `u_l = e_c^T Â_{L-1} ⋯ Â_{l+1}` (all
    layers, one backward sweep of row vectors) and `M_l = Â_{l-1} ⋯ Â_0` (grown layer by layer) a head's row is
    `u_l Â'_{l,h} M_l`: per layer one [H, P] × [P, P] product and the update of `M`, one rollout in all, instead of
    a full rollout per head."""
    a = attn.double()
    B, L, H, P, _ = a.shape
    if H == 1:  # no other head to take the mean over
        return torch.full((B, L, H), float("nan"), device=attn.device)
    eye = torch.eye(P, dtype=a.dtype, device=a.device)
    mean = a.mean(2)  # [B, L, P, P]
    hat = 0.5 * mean + 0.5 * eye
    hat = hat / hat.sum(-1, keepdim=True)
    u = a.new_zeros(B, L, P)
    row = a.new_zeros(B, P)
    row[:, CLS] = 1
    for layer in reversed(range(L)):
        u[:, layer] = row
        row = torch.einsum("bp,bpq->bq", row, hat[:, layer])
    p = _patch_share(row, num_prefix)  # the unperturbed map: the class token's row of the whole rollout
    out = a.new_empty(B, L, H)
    m = eye.expand(B, P, P)
    for layer in range(L):
        heads, others = a[:, layer], (H * mean[:, layer, None] - a[:, layer]) / (H - 1)  # [B, H, P, P] each
        # u Â' without forming Â' = D⁻¹(½·others + ½·I): with w = u / d (d the rows' sums), u Â' = ½·w·others + ½·w
        d = 0.5 * others.sum(-1) + 0.5  # [B, H, P]
        w = u[:, layer, None] / d
        v = 0.5 * (H * torch.einsum("bhp,bpq->bhq", w, mean[:, layer]) - torch.einsum("bhp,bhpq->bhq", w, heads)
                   ) / (H - 1) + 0.5 * w
        q = _patch_share(torch.einsum("bhp,bpq->bhq", v, m), num_prefix)
        out[:, layer] = 0.5 * (p[:, None] - q).abs().sum(-1)
        m = hat[:, layer] @ m
    return out.float()


def rollout_impact(attn: Tensor, num_prefix: int) -> Tensor:
    """How much each head moves one image's rollout map, `attn` [L, H, P, P] → [L, H] float32: the total-variation
    distance `½·Σ|p − p'|` between `p`, the class token's row of `rollout(attn)` over the patches divided by its sum,
    and `p'`, the same with head `h` left out of layer `l`'s head mean (the mean over the other H−1 heads). NaN
    everywhere when H = 1."""
    return rollout_impacts(attn[None], num_prefix)[0]


def _patch_share(rows: Tensor, num_prefix: int) -> Tensor:
    """The patch columns of rollout rows [..., P], divided by their sum: a distribution over the patches."""
    patches = rows[..., num_prefix:]
    return patches / patches.sum(-1, keepdim=True)


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
