"""Positional vs content heads (the paper's content-agnostic vs content-relevant patterns, Sec. 6.3).

A positional head attends the same patch pairs whatever the image shows (a fixed offset, a fixed sink),
so its binarised maps agree across images; a content head's 1s move with the image. Agreement is
measured exactly over all pairs of images, and corrected for chance:

    overlap     = Σ_{i≠j} |B_i ∩ B_j| / ((N − 1) Σ_i |B_i|)   (the share of a map's 1s another map shares)
                = Σ_e c_e (c_e − 1) / ((N − 1) Σ_e c_e),        c_e = number of maps with entry e set
    consistency = (overlap − ρ) / (1 − ρ), clipped to [0, 1],  ρ = mean density (what independent maps share)

so identical maps give 1 and maps scattered independently of each other give 0, whatever the density.
"""

from __future__ import annotations

import numpy as np

from vitscope.vocab import HEAD_KINDS

__all__ = ["CONTENT_BELOW", "POSITIONAL_ABOVE", "head_consistency", "head_kinds"]

# Cuts on consistency. A perfect offset head binarised at the top 1 % of a 14 × 14 grid has only 182 of its
# 385 ones on its diagonal (the rest go wherever the image puts them), so even it agrees at only ≈ 0.5: on
# the real ViT-Ti of docs/models.md the offset heads of layers 0–2 agree at 0.4–0.7, the heads of layers
# 6–7 that follow the object at 0.03–0.1.
POSITIONAL_ABOVE = 0.4
CONTENT_BELOW = 0.2


def head_consistency(index: np.ndarray, size: int) -> np.ndarray:
    """float32 [L, H] in [0, 1] from the stored maps: uint16 indices [N, L, H, ones] (`binary.pack_binary`).

    Repeated indices within a map (the padding of pooled maps) count once. NaN for fewer than two maps.
    """
    n, layers, heads, ones = index.shape
    if n < 2:
        return np.full((layers, heads), np.nan, np.float32)
    flat = np.sort(index.reshape(n, layers * heads, ones).astype(np.int64), axis=-1)  # [N, LH, ones]
    first = np.ones(flat.shape, bool)
    first[..., 1:] = flat[..., 1:] != flat[..., :-1]  # each set entry once per map
    cells = size * size
    keys = (flat + np.arange(layers * heads)[None, :, None] * cells)[first]  # entry of head k → k·S² + e
    c = np.bincount(keys, minlength=layers * heads * cells).reshape(layers * heads, cells).astype(np.float64)
    total = c.sum(-1)  # [LH] Σ_i |B_i|
    overlap = (c * (c - 1)).sum(-1) / ((n - 1) * total)
    rho = total / (n * cells)
    consistency = np.clip((overlap - rho) / np.maximum(1 - rho, 1e-12), 0, 1)
    return consistency.reshape(layers, heads).astype(np.float32)


def head_kinds(consistency: np.ndarray) -> np.ndarray:
    """int8 codes into HEAD_KINDS: positional (≥ POSITIONAL_ABOVE), content (< CONTENT_BELOW), else mixed;
    -1 where consistency is NaN."""
    c = np.asarray(consistency)
    kind = np.full(c.shape, HEAD_KINDS.index("mixed"), np.int8)
    kind[c >= POSITIONAL_ABOVE] = HEAD_KINDS.index("positional")
    kind[c < CONTENT_BELOW] = HEAD_KINDS.index("content")
    kind[np.isnan(c)] = -1
    return kind
