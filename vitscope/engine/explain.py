"""The model runs behind input attributions: attention with the gradient of the target's logit, and batched
forwards with patches occluded at the input.

The gradient comes the way the gradient proxy's does (`ablation.gradient_importance`): a gate of ones multiplies
each layer's attention inside the explicit forward, so `∂s/∂gate = ∂s/∂A ⊙ A` at gate = 1, for every layer and head
from one backward; summing the images' logits keeps each image's gradient its own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vitscope.models.adapter import ViTAdapter, merge_heads


def attention_gradients(adapter: ViTAdapter, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(attention A [B, L, H, P, P], ∂s/∂A ⊙ A [B, L, H, P, P], P[target] [B]), float32 on the CPU, for
    preprocessed `images` [B, 3, h, w], where `s` is the logit of each image's target class from the adapter's
    head (the classifier, or a backbone's probe)."""
    images = images.to(adapter.device, adapter.dtype)
    targets = torch.as_tensor(targets, device=adapter.device).long().view(-1)
    B, L, H, P = images.shape[0], adapter.num_layers, adapter.num_heads, adapter.num_tokens
    gates = torch.ones(B, L, H, P, P, device=adapter.device, dtype=adapter.dtype, requires_grad=True)
    attn = []
    with torch.enable_grad():
        x = adapter.embed(images)
        for i in range(L):
            parts = adapter.attention(i, x)
            attn.append(parts.attn.detach())
            o = (parts.attn * gates[:, i]) @ parts.v
            x = adapter.finish_block(i, x, adapter.project(i, merge_heads(o), parts.gate))
        logits = adapter.head(x).float()
        s = logits.gather(-1, targets[:, None])[:, 0]
        (g,) = torch.autograd.grad(s.sum(), gates)
    prob = logits.detach().softmax(-1).gather(-1, targets[:, None])[:, 0]
    return torch.stack(attn, 1).float().cpu(), g.float().cpu(), prob.cpu()


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
