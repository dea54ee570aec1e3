"""The importance metrics and pruning modes (docs/architecture.md, Definitions), as plain tensor functions."""

from __future__ import annotations

import torch
from torch import Tensor

from vitscope.vocab import MODES

__all__ = ["cosine_distance", "importance_metrics", "jsd", "region_mask"]


def region_mask(mode: int, num_tokens: int, num_prefix: int, device=None) -> Tensor:
    """Boolean [P,P] mask of the attention entries (rows = queries) that mode `mode` sets to 0."""
    if mode not in MODES:
        raise ValueError(f"pruning mode must be {MODES[0]}..{MODES[-1]}, got {mode}")
    prefix = torch.arange(num_tokens, device=device) < num_prefix
    q, k = prefix[:, None], prefix[None, :]
    masks = {
        0: torch.zeros_like(q & k),
        1: torch.ones_like(q & k),
        2: q & k,  # CLS→CLS
        3: q ^ k,  # CLS→patches and patches→CLS
        4: q | k,  # modes 2 and 3
        5: ~(q | k),  # patches→patches
    }
    return masks[mode]


def jsd(p: Tensor, q: Tensor) -> Tensor:
    """Jensen–Shannon divergence (base 2, in [0,1]) between distributions along the last dim."""
    m = 0.5 * (p + q)
    kl_pm = torch.xlogy(p, p) - torch.xlogy(p, m)
    kl_qm = torch.xlogy(q, q) - torch.xlogy(q, m)
    d = 0.5 * (kl_pm + kl_qm).sum(-1) / torch.log(torch.tensor(2.0, dtype=p.dtype, device=p.device))
    return d.clamp(0.0, 1.0)


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """1 − cos(a, b) along the last dim, as ‖â − b̂‖²/2: exactly 0 for equal inputs, no cancellation."""
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return 0.5 * (a - b).pow(2).sum(-1)


def importance_metrics(
    p: Tensor, p_new: Tensor, label: Tensor, z: Tensor, z_new: Tensor, num_prefix: int
) -> Tensor:
    """The four metrics [..., 4] of an ablation: softmax outputs p/p_new [..., C], true labels
    [...], attention-layer outputs z/z_new [..., P, D] (unpruned / pruned)."""
    prob = p_new.gather(-1, label.unsqueeze(-1)).squeeze(-1)
    return torch.stack(
        [
            prob,
            jsd(p, p_new),
            cosine_distance(z[..., 0, :], z_new[..., 0, :]),
            cosine_distance(z[..., num_prefix:, :], z_new[..., num_prefix:, :]).mean(-1),
        ],
        dim=-1,
    )
