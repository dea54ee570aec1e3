"""The model runs behind input attributions: attention with the gradient of the target's logit, and batched
forwards with patches occluded at the input.

A gate of ones multiplies each layer's attention inside the explicit forward, so `∂s/∂gate = ∂s/∂A ⊙ A` at gate = 1,
for every layer and head from one backward; summing the images' logits keeps each image's gradient its own. The
gradient proxy (`ablation.gradient_importance`) comes from the same forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from vitscope.models.adapter import ViTAdapter, merge_heads


class Gradients(NamedTuple):
    """One forward and backward of a batch of B images, float32 on the CPU."""

    attention: Tensor  # A [B, L, H, P, P]
    relevance: Tensor  # ∂s/∂A ⊙ A [B, L, H, P, P], s the target's logit
    prob: Tensor  # P[target] [B]
    head_ce: Tensor | None  # the gradient proxy |∂CE/∂gate_h| [B, L, H] (`with_ce`), else None


def attention_gradients(adapter: ViTAdapter, images: Tensor, targets: Tensor, with_ce: bool = False) -> Gradients:
    """Attention and the gradient of each image's target logit `s` from the adapter's head (the classifier, or a
    backbone's probe) for preprocessed `images` [B, 3, h, w].

    `with_ce` also gives the gradient proxy from the same forward: a head's gate scales all of its attention, so
    ∂CE/∂gate_h is the sum of ∂CE/∂A_h ⊙ A_h over its rows and columns (Michel et al.'s first-order importance).
    """
    images = images.to(adapter.device, adapter.dtype)
    targets = torch.as_tensor(targets, device=adapter.device).long().view(-1)
    B, L, H, P = images.shape[0], adapter.num_layers, adapter.num_heads, adapter.num_tokens
    gates = torch.ones(B, L, H, P, P, device=adapter.device, dtype=adapter.dtype, requires_grad=True)
    attn = []
    head_ce = None
    with torch.enable_grad():
        x = adapter.embed(images)
        for i in range(L):
            parts = adapter.attention(i, x)
            attn.append(parts.attn.detach())
            o = (parts.attn * gates[:, i]) @ parts.v
            x = adapter.finish_block(i, x, adapter.project(i, merge_heads(o), parts.gate))
        logits = adapter.head(x).float()
        s = logits.gather(-1, targets[:, None])[:, 0]
        (g,) = torch.autograd.grad(s.sum(), gates, retain_graph=with_ce)
        if with_ce:
            ce = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
            (g_ce,) = torch.autograd.grad(ce, gates)
            head_ce = g_ce.sum((-1, -2)).abs().float().cpu()
    prob = logits.detach().softmax(-1).gather(-1, targets[:, None])[:, 0]
    return Gradients(torch.stack(attn, 1).float().cpu(), g.float().cpu(), prob.cpu(), head_ce)


@torch.inference_mode()
def occluded_probs(adapter: ViTAdapter, image: Tensor, target: int, masks: Tensor, max_batch: int = 64,
                   progress: Callable[[int, int], None] | None = None) -> Tensor:
    """P[target] [M] of one preprocessed image [3, h, w] with each mask's patches occluded: `masks` is bool
    [M, N] over the row-major patch grid (a row with no patch set is the unoccluded image).

    Occluded pixels are set to 0 after normalisation (the data config's mean colour), so a patch keeps its position
    embedding and loses its content. Only the rows the head reads run in the last block (`run_blocks`).
    """
    g, ps = adapter.grid, adapter.patch_size
    image = image.to(adapter.device, adapter.dtype).view(1, *image.shape[-3:])
    masks = torch.as_tensor(masks, dtype=torch.bool).view(-1, g * g)
    out = torch.empty(len(masks))
    for start in range(0, len(masks), max_batch):
        m = masks[start:start + max_batch]
        # each patch's flag spread over its ps × ps pixels; the image beyond the grid (none in timm) is kept
        hidden = m.view(-1, 1, g, g).repeat_interleave(ps, 2).repeat_interleave(ps, 3).to(image.device)
        x = image.repeat(len(m), 1, 1, 1)
        x[:, :, :g * ps, :g * ps] = x[:, :, :g * ps, :g * ps].masked_fill(hidden, 0)
        probs = adapter.head(adapter.run_blocks(adapter.embed(x), 0)).float().softmax(-1)
        out[start:start + len(m)] = probs[:, target].cpu()
        if progress is not None:
            progress(start + len(m), len(masks))
    return out
