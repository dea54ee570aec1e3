"""Direct effects: each head's share of the label's logit, read through the final norm with the unpruned run's scale.

The final tokens are a sum of residual components: the embedding, every head's output `c_{l,h}` (its slice of the
output projection, then LayerScale), each layer's projection bias, and every MLP. With the final norm's σ fixed at
its unpruned value the head is affine in those tokens (`adapter.frozen_head`), so the logit `s_y` is exactly the sum
of each component's term plus a constant (the norm's β and the classifier bias through the classifier). A head's
term is its direct effect; everything it changes downstream besides is its indirect effect (total − direct).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vitscope.models.adapter import ViTAdapter, merge_heads


@dataclass
class Effects:
    """The logit decomposition of a batch of B images for their labels, float64 on the CPU."""

    logit: Tensor  # s_y [B]
    direct: Tensor  # each head's term [B, L, H]
    embed: Tensor  # the embedding's term [B]
    mlp: Tensor  # each MLP's term [B, L]
    bias: Tensor  # every constant: the projection biases, the final norm's β and the classifier bias [B]
    output_norm: Tensor  # ‖c_{l,h}‖ at the class token [B, L, H] (Kobayashi et al.'s norm of a head's output)

    def total(self) -> Tensor:
        """The components' sum [B]: the logit, up to float32 rounding."""
        return self.direct.sum((1, 2)) + self.embed + self.mlp.sum(1) + self.bias


def why_not(adapter: ViTAdapter) -> str | None:
    """Why this model's heads have no direct effect (one clause), None when they do."""
    check = getattr(adapter, "why_not_linear", None)
    return "its adapter cannot decompose the logit" if check is None else check()


@torch.inference_mode()
def decompose(adapter: ViTAdapter, images: Tensor, labels: Tensor,
              pruned: Sequence[tuple[int, int]] = ()) -> Effects:
    """The decomposition of each image's logit for its label [B], from explicit forwards of `images` [B, 3, h, w]
    (preprocessed): one for the final tokens (whose norm scales every term), one that splits the residual stream.
    `pruned` (layer, head) pairs run pruned whole (their output zero), the norm's scale still the unpruned run's:
    the difference of each component's term without and with them is where their total effect reaches the logit,
    the rest of it (`logit − total()` of the pruned run) comes from the norm's scale. `why_not(adapter)` must be
    None."""
    images = images.to(adapter.device, adapter.dtype)
    labels = torch.as_tensor(labels, device=images.device).long().view(-1)
    L, H = adapter.num_layers, adapter.num_heads
    x0 = adapter.embed(images)
    rows = adapter.head_rows or x0.shape[1]  # the tokens the head reads
    gone = [[h for (layer, h) in pruned if layer == i] for i in range(L)]

    def outputs(i: int, x: Tensor, prune: bool = True) -> tuple[Tensor, Tensor | None]:
        parts = adapter.attention(i, x)
        o = parts.attn @ parts.v  # [B, H, P, dh]
        o[:, gone[i] if prune else []] = 0
        return o, parts.gate

    x = x0
    for i in range(L):
        o, gate = outputs(i, x, prune=False)
        x = adapter.finish_block(i, x, adapter.project(i, merge_heads(o), gate))
    final = x[:, :rows]  # the unpruned run's: every term is read with its norm's scale

    def terms(comps: Tensor) -> tuple[Tensor, Tensor]:
        """Components [B, K, R, D] → (their terms of s_y [B, K], the map at 0 [B])."""
        B, K = comps.shape[:2]
        full = torch.cat([comps, torch.zeros_like(comps[:, :1])], 1).flatten(0, 1)
        s = adapter.frozen_head(full, final.repeat_interleave(K + 1, 0)).double().view(B, K + 1, -1)
        s = s.gather(-1, labels[:, None, None].expand(-1, K + 1, 1))[..., 0]
        return s[:, :-1] - s[:, -1:], s[:, -1]

    embed, const = terms(x0[:, None, :rows])
    direct, mlp, bias, norm = [], [], [], []
    x = x0
    for i in range(L):
        o, gate = outputs(i, x)
        c, zero = _head_outputs(adapter, i, o[:, :, :rows], None if gate is None else gate[:, :rows])
        mid = x + adapter.attention_residual(i, adapter.project(i, merge_heads(o), gate))
        m = adapter.mlp_residual(i, mid)
        t, _ = terms(torch.cat([c, zero[:, None], m[:, None, :rows]], 1))
        direct.append(t[:, :H])
        bias.append(t[:, H])
        mlp.append(t[:, H + 1])
        norm.append(c[:, :, 0].double().norm(dim=-1))  # at the class token, the first row
        x = mid + m
    cpu = lambda t: t.cpu()  # noqa: E731
    return Effects(logit=cpu(adapter.head(x[:, :rows]).double().gather(-1, labels[:, None])[:, 0]),
                   direct=cpu(torch.stack(direct, 1)), embed=cpu(embed[:, 0]), mlp=cpu(torch.stack(mlp, 1)),
                   bias=cpu(torch.stack(bias, 1).sum(1) + const), output_norm=cpu(torch.stack(norm, 1)))


def _head_outputs(adapter: ViTAdapter, layer: int, o: Tensor, gate: Tensor | None) -> tuple[Tensor, Tensor]:
    """Each head's output alone in the residual stream, c_{l,h} [B, H, R, D], and the projection bias's [B, R, D],
    from the heads' outputs `o` [B, H, R, dh]: each head through the projection with zeros in the other heads'
    slices, less the projection of zeros (the bias)."""
    B, H = o.shape[:2]
    eye = torch.eye(H, device=o.device, dtype=o.dtype)
    alone = (o[:, :, :, None, :] * eye[None, :, None, :, None]).flatten(-2)  # [B, H, R, H·dh]
    gates = None if gate is None else gate[:, None].expand(-1, H, -1, -1).flatten(0, 1)
    zero = adapter.project(layer, torch.zeros_like(alone[:, 0]), gate)
    c = adapter.project(layer, alone.flatten(0, 1), gates).unflatten(0, (B, H)) - zero[:, None]
    return adapter.attention_residual(layer, c), adapter.attention_residual(layer, zero)
