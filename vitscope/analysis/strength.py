"""How far patches look: k-hop attention strength, its entropy, and mean attention distance.

All functions take patch-to-patch attention `A[prefix:, prefix:]` as `[..., N, N]` (rows =
source patches, columns = target patches, row-major over a `grid × grid` patch grid, N = grid²)
and reduce every map of a batch with one einsum against a fixed weight tensor, so thousands of
heads are processed in one call with no Python loop over patches or heads.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor


def _check(patch_attn: Tensor, grid: int) -> int:
    n = grid * grid
    if grid < 1 or patch_attn.ndim < 2 or tuple(patch_attn.shape[-2:]) != (n, n):
        raise ValueError(f"expected patch attention of shape [..., {n}, {n}] for grid {grid}, "
                         f"got {tuple(patch_attn.shape)}")
    return n


def _work_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64 (exact references); everything else is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _coords(grid: int, device=None) -> tuple[Tensor, Tensor]:
    idx = torch.arange(grid * grid, device=device)
    return idx // grid, idx % grid  # [N] row, [N] column of each patch (row-major tokens)


def ring_masks(grid: int, device=None) -> Tensor:
    """Bool `[grid, N, N]`: mask k marks targets at Chebyshev distance exactly k from the source (row).

    Chebyshev rings are the paper's "k-hop neighbours" (Fig. 5): the 8-neighbourhood is hop 1.
    """
    r, c = _coords(grid, device)
    cheb = torch.maximum((r[:, None] - r[None]).abs(), (c[:, None] - c[None]).abs())  # [N, N]
    return cheb[None] == torch.arange(grid, device=device)[:, None, None]  # [grid, N, N]


@lru_cache(maxsize=16)
def _strength_weights(grid: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """`[grid, N, N]` weights W with s_k = sum_{s,t} A[s,t] W[k,s,t] (private: never handed out).

    W[k,s,t] = 1 / (|ring k of s| · #sources that have a ring k) on ring k, else 0: the ring mean
    and the mean over sources that have the ring, folded into one linear map.
    """
    masks = ring_masks(grid, device).to(dtype)  # [K, N, N]
    ring_size = masks.sum(-1)  # [K, N]
    has_ring = (ring_size > 0).to(dtype)  # [K, N]
    per_source = has_ring / ring_size.clamp_min(1) / has_ring.sum(-1, keepdim=True)  # [K, N]
    return masks * per_source[..., None]  # [K, N, N]


def attention_strength(patch_attn: Tensor, grid: int) -> Tensor:
    """k-hop attention strength vector `[..., grid]` (float32) of docs/architecture.md, k = 0..grid-1.

    s_k = mean over source patches that have a ring at Chebyshev distance k of the mean
    attention that source pays to its ring-k patches. `patch_attn` is used as is (rows need
    not sum to 1); sources without a ring k (centre patches, far rings) are skipped, not
    counted as 0, as the paper prescribes.
    """
    n = _check(patch_attn, grid)
    dtype = _work_dtype(patch_attn)
    w = _strength_weights(grid, patch_attn.device, dtype)  # [K, N, N]
    a = patch_attn.to(dtype).reshape(-1, n * n)  # [M, N*N]
    s = a @ w.reshape(grid, n * n).T  # [M, K]
    return s.reshape(*patch_attn.shape[:-2], grid).float()


def strength_entropy(strength: Tensor) -> Tensor:
    """Normalised Shannon entropy `[...]` in [0, 1] of `s / sum(s)` over the last dim.

    Divided by log(K), K = len(s) = grid: 0 means one hop takes all the strength (a local or a
    global head), 1 means all hops are equal. 0·log 0 = 0; an all-zero vector (or K = 1) gives 0.
    Negative entries (rounding) are clamped to 0.
    """
    dtype = _work_dtype(strength)
    s = strength.to(dtype).clamp_min(0)  # [..., K]
    k = s.shape[-1]
    total = s.sum(-1, keepdim=True)  # [..., 1]
    p = torch.where(total > 0, s / torch.where(total > 0, total, 1), 0)  # [..., K]
    h = -torch.xlogy(p, p).sum(-1)  # [...]
    if k < 2:
        return torch.zeros_like(h).float()
    return (h / math.log(k)).clamp(0, 1).float()


def attention_distance(patch_attn: Tensor, grid: int) -> Tensor:
    """Mean attention distance `[...]` (float32) in patch units, as in the ViT paper (Fig. 7).

    Each source row is renormalised over the patch targets (so CLS/prefix attention is ignored
    and distance is an average *over patches*), its expected Euclidean distance to the targets
    is taken, and the result is averaged over sources. Rows with no attention mass are skipped
    (all-zero map → 0).
    """
    _check(patch_attn, grid)
    dtype = _work_dtype(patch_attn)
    r, c = _coords(grid, patch_attn.device)
    dist = torch.hypot((r[:, None] - r[None]).to(dtype), (c[:, None] - c[None]).to(dtype))  # [N, N]
    a = patch_attn.to(dtype)  # [..., N, N]
    mass = a.sum(-1)  # [..., N]
    weighted = torch.einsum("...st,st->...s", a, dist)  # [..., N]
    valid = mass > 0
    per_source = torch.where(valid, weighted / torch.where(valid, mass, 1), 0)  # [..., N]
    return (per_source.sum(-1) / valid.sum(-1).clamp_min(1)).float()
