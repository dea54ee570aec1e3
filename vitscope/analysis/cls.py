"""CLS attention vectors and binarised patch attention (docs/architecture.md, Definitions), and the compact form the
store keeps the binarised maps in: the flat indices of their 1s."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def cls_attention_vector(attn: Tensor, num_prefix: int) -> Tensor:
    """[..., P, P] → [..., 2p²+1]: CLS→CLS, CLS→patches, patches→CLS.

    With extra prefix tokens (distillation, registers) their rows and columns are left out,
    so the vector has the same length, and meaning, for every model with this patch grid.
    """
    n = num_prefix
    return torch.cat([attn[..., 0, :1], attn[..., 0, n:], attn[..., n:, 0]], dim=-1)


def top_count(top: float, n: int) -> int:
    """Entries `binarise` sets in an N × N map: k = ceil(top·N²), at least one. One place, so that the store's
    index width (`Layout.binary_ones`) is always the k the maps have."""
    return max(1, math.ceil(top * n * n))


def binarise(patch_attn: Tensor, top: float = 0.01) -> Tensor:
    """[..., N, N] → bool, with the top `top` fraction of each map's values set (at least one entry).

    Exactly k = ceil(top·N²) entries per map are set (ties at the threshold broken by torch.topk).
    """
    *lead, n, _ = patch_attn.shape
    flat = patch_attn.reshape(-1, n * n)
    k = top_count(top, n)
    idx = flat.topk(k, dim=-1, sorted=False).indices
    out = torch.zeros_like(flat, dtype=torch.bool)
    out.scatter_(1, idx, True)
    return out.view(*lead, n, n)


def pack_binary(binary: Tensor, size: int, ones: int) -> np.ndarray:
    """Binary maps [..., N, N] → uint16 [..., ones]: the sorted flat indices of their 1s in the S × S map.

    Maps larger than `size` (S ≤ 256, so that indices fit uint16) are max-pooled to S × S first; a map
    with fewer than `ones` 1s (pooling merges cells) repeats one of its indices, which `unpack_binary`
    ignores. A top-1 % map of a ViT-B (196 × 196, 385 ones) takes 770 bytes instead of 4.8 kB of bits.
    """
    from vitscope.analysis.autoencoder import downsample_binary

    if not 1 <= size <= 256:
        raise ValueError(f"pack_binary: size must be in 1..256 (uint16 indices), got {size}")
    n = binary.shape[-1]
    pooled = downsample_binary(binary, size) > 0.5 if n > size else binary.bool()  # [..., S, S]
    flat = pooled.flatten(-2)  # [..., S²]
    idx = flat.to(torch.float32).topk(min(ones, flat.shape[-1]), dim=-1).indices  # [..., ones]: the 1s first
    idx = torch.where(flat.gather(-1, idx), idx, idx[..., :1])  # padding repeats a 1
    return idx.sort(-1).values.to(torch.int32).numpy().astype(np.uint16)


def unpack_binary(index: np.ndarray | Tensor, size: int) -> Tensor:
    """uint16 [..., ones] indices from `pack_binary` → bool maps [..., S, S]."""
    idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
    out = torch.zeros((*idx.shape[:-1], size * size), dtype=torch.bool)
    out.scatter_(-1, idx, True)
    return out.view(*idx.shape[:-1], size, size)
