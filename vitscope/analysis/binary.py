"""Binarised patch attention (docs/architecture.md, Definitions) and the compact form the store keeps it in: the flat
indices of each map's 1s. The per-image analysis binarises and packs, the autoencoder pools and unpacks,
the app's default threshold is the same cut.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

_POOL_CHUNK = 2048  # maps pooled at once: bounds the float copy of a [..., 196, 196] input


def top_count(top: float, n: int) -> int:
    """Entries `binarise` sets in an N × N map: k = ceil(top·N²), at least one. One place, so that the store's
    index width (`store.Shape.binary_ones`) is always the k the maps have."""
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


def downsample_binary(binary: Tensor, size: int = 32) -> Tensor:
    """Max-pool binary maps [..., N, N] to float32 [..., S, S], S = min(N, size).

    Adaptive max-pooling keeps a 1 anywhere in a cell, so sparse top-1 % patterns survive; the fixed
    size lets one autoencoder serve every model and keeps a ViT-B's 196×196 maps small.
    """
    binary = torch.as_tensor(binary)
    if binary.ndim < 2 or binary.shape[-1] != binary.shape[-2]:
        raise ValueError(f"downsample_binary expects square maps [..., N, N], got shape {tuple(binary.shape)}")
    if size < 1:
        raise ValueError(f"downsample_binary: size must be >= 1, got {size}")
    n = binary.shape[-1]
    s = min(n, size)
    lead = binary.shape[:-2]
    flat = binary.reshape(-1, n, n)  # [B, N, N]
    out = torch.empty((flat.shape[0], s, s), dtype=torch.float32, device=flat.device)  # [B, S, S]
    for start in range(0, flat.shape[0], _POOL_CHUNK):  # chunked: a float copy of all maps may not fit
        chunk = flat[start : start + _POOL_CHUNK].to(torch.float32)
        out[start : start + chunk.shape[0]] = chunk if s == n else F.adaptive_max_pool2d(chunk, s)
    return out.reshape(*lead, s, s)


def pack_binary(binary: Tensor, size: int, ones: int) -> np.ndarray:
    """Binary maps [..., N, N] → uint16 [..., ones]: the sorted flat indices of their 1s in the S × S map.

    Maps larger than `size` (S ≤ 256, so that indices fit uint16) are max-pooled to S × S first; a map
    with fewer than `ones` 1s (pooling merges cells) repeats one of its indices, which `unpack_binary`
    ignores. A top-1 % map of a ViT-B (196 × 196, 385 ones) takes 770 bytes instead of 4.8 kB of bits.
    """
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
