"""Attention sinks, high-norm tokens and registers (Darcet et al. 2023, "Vision Transformers Need Registers").

A trained ViT without registers repurposes a few patch tokens, the same in every image, as scratch space: their
output norm grows far above the other patches', and late layers send most of their patch attention to them (on the
real ViT-Ti of docs/models.md: the four corner patches, from layer 8 on). Without naming them, such heads read as
"positional" (their maps agree across images) and the patches as content. This module makes them explicit:

- per image and layer, a few numbers (the store's budget is a few hundred bytes per image): the `SINK_RANKS`
  patches that receive the most attention from patch queries, with their shares; the share that goes to each
  prefix token (class, distillation, registers); the patches with the largest block output norm, relative to
  the median patch;
- per layer over all images, the patches that are most often among those (`frequent_tokens`);
- per head over all images, the share of its binarised maps' 1s on its `SINK_RANKS` most-hit target patches
  (`head_sink`); a head with at least `SINK_SHARE` of them there is a `sink` head (`sink_kinds`).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from vitscope.vocab import HEAD_KINDS, SINK_RANKS, SINK_SHARE

__all__ = ["SINK_RANKS", "SINK_SHARE", "frequent_tokens", "head_sink", "image_sinks", "received", "sink_kinds"]


def received(attn: Tensor, num_prefix: int) -> Tensor:
    """[..., H, P, P] → [..., P]: the attention each token receives from the patch queries, averaged over heads and
    queries (so it sums to 1 over the tokens: each token's share of the patches' attention)."""
    return attn[..., num_prefix:, :].float().mean(dim=(-3, -2))


def image_sinks(attn: Tensor, norms: Tensor, num_prefix: int, ranks: int = SINK_RANKS) -> dict[str, Tensor]:
    """Per image and layer: attention `attn` [B, L, H, P, P], block output norms `norms` [B, L, P] →

    - `sink_token` [B, L, r]: the r patches (row-major patch index) that receive the most attention, most first;
    - `sink_share` [B, L, r]: their share of the patch queries' attention (`received`);
    - `prefix_share` [B, L, n]: each prefix token's share;
    - `norm_token` [B, L, r]: the r patches with the largest output norm, largest first;
    - `norm_ratio` [B, L, r]: their norm over the median patch norm of that image and layer.

    r = min(`ranks`, patches).
    """
    n = num_prefix
    got = received(attn, n)  # [B, L, P]
    patches = got.shape[-1] - n
    r = min(ranks, patches)
    sink = got[..., n:].topk(r, dim=-1)
    patch_norms = norms[..., n:].float()
    high = patch_norms.topk(r, dim=-1)
    median = patch_norms.quantile(0.5, dim=-1, keepdim=True)  # the mean of the middle two for an even count
    return {"sink_token": sink.indices, "sink_share": sink.values, "prefix_share": got[..., :n],
            "norm_token": high.indices, "norm_ratio": high.values / median}


def frequent_tokens(tokens: np.ndarray, patches: int, ranks: int = SINK_RANKS) -> tuple[np.ndarray, np.ndarray]:
    """The patches most often among the images' top tokens: `tokens` [M, L, r] (per image and layer, distinct
    patches; entries < 0 are ignored) → (int16 [L, ranks] patches, most frequent first (ties: the lower index),
    float32 [L, ranks] the share of the M images that have each among theirs). -1 / NaN where fewer patches ever
    appear, or M = 0."""
    m, layers, _ = tokens.shape
    out = np.full((layers, ranks), -1, np.int16)
    freq = np.full((layers, ranks), np.nan, np.float32)
    if m == 0:
        return out, freq
    for layer in range(layers):
        t = tokens[:, layer].ravel()
        counts = np.bincount(t[t >= 0].astype(np.int64), minlength=patches)
        order = np.argsort(-counts, kind="stable")[:ranks]
        order = order[counts[order] > 0]
        out[layer, :len(order)] = order
        freq[layer, :len(order)] = counts[order] / m
    return out, freq


def head_sink(index: np.ndarray, size: int, ranks: int = SINK_RANKS) -> tuple[np.ndarray, np.ndarray]:
    """How much of each head's binarised maps sits on a few fixed target tokens: stored maps `index` uint16
    [M, L, H, ones] (flat indices source · S + target into S × S maps) → (float32 [L, H] share of all the 1s of
    the M maps in the `ranks` target columns with the most 1s (NaN for M = 0), int16 [L, H, ranks] those columns,
    most 1s first (ties: the lower column)).

    Pooling the images before picking the columns is what makes the tokens fixed: a head that sends each image's
    1s to different tokens spreads over many columns. Repeated indices within a map (the padding of pooled maps)
    count once; for grids over 16 × 16 a column is a pooled cell of patches.
    """
    m, layers, heads, ones = index.shape
    flat = np.sort(index.reshape(m, layers * heads, ones).astype(np.int64), axis=-1)
    first = np.ones(flat.shape, bool)
    first[..., 1:] = flat[..., 1:] != flat[..., :-1]
    keys = ((flat % size) + np.arange(layers * heads)[None, :, None] * size)[first]  # head k's column t → k·S + t
    counts = np.bincount(keys, minlength=layers * heads * size).reshape(layers * heads, size)
    order = np.argsort(-counts, axis=-1, kind="stable")[:, :ranks]
    top = np.take_along_axis(counts, order, -1).sum(-1)
    share = top / counts.sum(-1) if m else np.full(layers * heads, np.nan)
    return (share.reshape(layers, heads).astype(np.float32),
            order.reshape(layers, heads, -1).astype(np.int16))


def sink_kinds(kind: np.ndarray, share: np.ndarray, threshold: float = SINK_SHARE) -> np.ndarray:
    """`head_kind` codes with `sink` for every head whose `head_sink` share reaches `threshold`: its targets are
    the same few tokens in every image, which is what made it look positional. Undefined kinds (−1) stay so."""
    out = np.array(kind, dtype=np.int8, copy=True)
    with np.errstate(invalid="ignore"):
        out[(out >= 0) & (np.asarray(share) >= threshold)] = HEAD_KINDS.index("sink")
    return out
