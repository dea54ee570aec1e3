"""The slow, obviously-correct reference: one full timm forward per (layer, head, mode).

The ablated layer's attention is recomputed explicitly with the mode's region of `A` set to
0; everything else is timm's own `model(x)` (fused attention or not). Tests and the
benchmark compare the engine against this.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from vitscope.engine.metrics import importance_metrics, region_mask
from vitscope.models.adapter import ViTAdapter
from vitscope.vocab import ABLATION_MODES, METRICS


def _explicit_forward(attn, x: Tensor, head: int | None, zero: Tensor | None) -> Tensor:
    """timm Attention.forward written out, with A[:, head][zero] = 0 (head None and zero [H,P,P]: A[:, zero] = 0)."""
    B, N, C = x.shape
    gate = attn.gate(x).sigmoid() if attn.gate is not None else None
    q, k, v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    a = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    if head is not None:
        a = a.clone()
        a[:, head] = a[:, head].masked_fill(zero, 0.0)
    elif zero is not None:
        a = a.masked_fill(zero, 0.0)
    y = (a @ v).transpose(1, 2).reshape(B, N, attn.num_heads * attn.head_dim)
    y = attn.norm(y)
    if gate is not None:
        y = y * gate
    return attn.proj(y)


@contextlib.contextmanager
def ablated(adapter: ViTAdapter, layer: int, head: int | None, mode: int) -> Iterator[list[Tensor]]:
    """Within the block, `adapter.model(x)` runs with (layer, head) pruned in `mode`; the
    yielded list receives that layer's attention output z."""
    attn = adapter.blocks[layer].attn
    zero = region_mask(mode, adapter.num_tokens, adapter.num_prefix, adapter.device)
    captured: list[Tensor] = []

    def forward(x, attn_mask=None, is_causal=False):
        out = _explicit_forward(attn, x, head, zero)
        captured.append(out)
        return out

    attn.forward = forward
    try:
        yield captured
    finally:
        del attn.forward  # back to the class's forward


@contextlib.contextmanager
def pruned(adapter: ViTAdapter, zero: dict[int, Tensor]) -> Iterator[dict[int, list[Tensor]]]:
    """Within the block, `adapter.model(x)` runs with A[:, zero[layer]] = 0 in each listed layer
    (zero[layer]: bool [H,P,P]); the yielded dict receives each listed layer's attention output z."""
    captured: dict[int, list[Tensor]] = {i: [] for i in zero}

    def patch(i: int) -> None:
        attn = adapter.blocks[i].attn

        def forward(x, attn_mask=None, is_causal=False):
            out = _explicit_forward(attn, x, None, zero[i].to(x.device))
            captured[i].append(out)
            return out

        attn.forward = forward

    for i in zero:
        patch(i)
    try:
        yield captured
    finally:
        for i in zero:
            del adapter.blocks[i].attn.forward


@torch.no_grad()
def reference_importance(
    adapter: ViTAdapter, images: Tensor, labels: Tensor, modes: Sequence[int] = ABLATION_MODES, topk: int = 5
) -> tuple[Tensor, Tensor, Tensor]:
    """(importance [B,L,H,M,4], topk_prob, topk_idx) with mode 0 first, one forward per ablation."""
    model, n = adapter.model, adapter.num_prefix
    L, H = adapter.num_layers, adapter.num_heads
    images = images.to(adapter.device, adapter.dtype)
    labels = torch.as_tensor(labels, device=adapter.device).long()
    p = model(images).float().softmax(-1)
    z_base = []
    for i in range(L):
        with ablated(adapter, i, None, 0) as cap:
            model(images)
        z_base.append(cap[0])
    modes = (0, *modes)
    B = images.shape[0]
    k = min(topk, p.shape[-1])
    imp = torch.zeros(B, L, H, len(modes), len(METRICS))
    tp = torch.zeros(B, L, H, len(modes), k)
    ti = torch.zeros(B, L, H, len(modes), k, dtype=torch.long)
    for i in range(L):
        for h in range(H):
            for mi, m in enumerate(modes):
                with ablated(adapter, i, h, m) as cap:
                    p_new = model(images).float().softmax(-1)
                imp[:, i, h, mi] = importance_metrics(p, p_new, labels, z_base[i], cap[0], n).cpu()
                t = p_new.topk(k, dim=-1)
                tp[:, i, h, mi], ti[:, i, h, mi] = t.values.cpu(), t.indices.cpu()
    return imp, tp, ti
