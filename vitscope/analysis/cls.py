"""CLS attention vectors (docs/architecture.md, Definitions); the binarised maps are `vitscope.analysis.binary`."""

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
