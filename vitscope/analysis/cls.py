"""CLS attention vectors and binarised patch attention (DESIGN.md, Definitions)."""

from __future__ import annotations

import torch
from torch import Tensor


def cls_attention_vector(attn: Tensor, num_prefix: int) -> Tensor:
    """[..., P, P] → [..., 2p²+1]: CLS→CLS, CLS→patches, patches→CLS.

    With extra prefix tokens (distillation, registers) their rows and columns are left out,
    so the vector has the same length, and meaning, for every model with this patch grid.
    """
    n = num_prefix
    return torch.cat([attn[..., 0, :1], attn[..., 0, n:], attn[..., n:, 0]], dim=-1)


def binarise(patch_attn: Tensor, top: float = 0.01) -> Tensor:
    """[..., N, N] → bool, with the top `top` fraction of each map's values set (at least one entry).

    Exactly k = ceil(top·N²) entries per map are set (ties at the threshold broken by torch.topk).
    """
    *lead, n, _ = patch_attn.shape
    flat = patch_attn.reshape(-1, n * n)
    k = max(1, int(torch.ceil(torch.tensor(top * n * n)).item()))
    idx = flat.topk(k, dim=-1, sorted=False).indices
    out = torch.zeros_like(flat, dtype=torch.bool)
    out.scatter_(1, idx, True)
    return out.view(*lead, n, n)
