"""Exact, batched leave-one-out ablation of every head in every pruning mode.

One baseline pass caches each block's input. For layer i, all (image, head, mode)
ablations share that input: a mode changes a head's output by −(A⊙R)V, so the layer output
z' is recomputed from the modified head outputs, and only blocks i+1.. run again, many
ablations per forward (one sequence per ablation). Nothing before layer i runs twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vitscope.engine.explain import attention_gradients
from vitscope.engine.metrics import importance_metrics, region_mask
from vitscope.errors import VitscopeError
from vitscope.models.adapter import ViTAdapter, merge_heads
from vitscope.vocab import ABLATION_MODES, METRICS, PRECISIONS, WHOLE_HEAD


@dataclass
class EngineResult:
    """Engine output for a batch of B images; L layers, H heads, M = len(modes), K = top-k.

    `importance[b, l, h, m]` holds METRICS for mode `modes[m]` (mode 0 first: the unpruned
    model, identical for every head); modes > 0 of layers not evaluated are NaN.
    """

    modes: tuple[int, ...]
    labels: Tensor  # [B] int64
    probs: Tensor  # [B, C] unpruned softmax
    topk_idx: Tensor  # [B, L, H, M, K] int64
    topk_prob: Tensor  # [B, L, H, M, K]
    importance: Tensor  # [B, L, H, M, 4]
    attention: Tensor | None = None  # [B, S, P, P] for attention_heads
    attention_heads: tuple[tuple[int, int], ...] = ()
    grad_importance: Tensor | None = None  # [B, L, H] |dLoss/dgate|
    total_effect: Tensor | None = None  # [B, L, H] s_y − s'_y: the label's logit lost by pruning the whole head
    token_norm: Tensor | None = None  # [B, L, P] ‖x‖ of each block's output tokens (high-norm tokens, sinks)

    @property
    def metrics(self) -> tuple[str, ...]:
        return METRICS

    def metric(self, name: str, mode: int) -> Tensor:
        """[B, L, H] values of one metric in one mode."""
        return self.importance[:, :, :, self.modes.index(mode), METRICS.index(name)]


def run(
    adapter: ViTAdapter,
    images: Tensor,
    labels: Tensor | None = None,
    *,
    modes: Sequence[int] = ABLATION_MODES,
    layers: Sequence[int] | None = None,
    attention: str | Sequence[tuple[int, int]] | None = None,
    grad: bool = False,
    topk: int = 5,
    max_batch: int = 256,
    precision: str = "float32",
) -> EngineResult:
    """Baseline, optional attention maps, and the four metrics + top-k for every
    layer × head × mode on `images` [B,3,h,w] (already preprocessed).

    `labels` default to the unpruned prediction. `attention` is "all" or (layer, head)
    pairs. `max_batch` bounds the ablated sequences per forward (memory). `precision`
    "bfloat16"/"tf32" speed up the blocks after the ablated layer; logits, softmax and
    the metrics stay float32.
    """
    L, H, n = adapter.num_layers, adapter.num_heads, adapter.num_prefix
    modes = tuple(sorted(set(modes) - {0}))
    if any(m not in ABLATION_MODES for m in modes):
        raise VitscopeError(f"pruning modes must be in {ABLATION_MODES[0]}..{ABLATION_MODES[-1]}, got {modes}")
    layers = range(L) if layers is None else sorted(set(layers))
    if any(i not in range(L) for i in layers):
        raise VitscopeError(f"layers must be in 0..{L - 1}, got {list(layers)}")
    if precision not in PRECISIONS:
        raise VitscopeError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    wanted = _attention_heads(attention, L, H)
    device = adapter.device
    images = images.to(device, adapter.dtype)
    B = images.shape[0]

    with torch.inference_mode():
        inputs, outputs, maps, norms = [], [], {}, []
        x = adapter.embed(images)
        for i in range(L):
            parts = adapter.attention(i, x)
            z = adapter.project(i, merge_heads(parts.attn @ parts.v), parts.gate)
            inputs.append(x)
            outputs.append(z)
            maps |= {(li, h): parts.attn[:, h].float().cpu() for (li, h) in wanted if li == i}
            x = adapter.finish_block(i, x, z)
            norms.append(x.float().norm(dim=-1))
        logits = adapter.head(x).float()
        probs = logits.softmax(-1)  # [B, C]
        labels = probs.argmax(-1) if labels is None else torch.as_tensor(labels, device=device).long()
        if labels.shape != (B,) or labels.min() < 0 or labels.max() >= probs.shape[-1]:
            raise VitscopeError(f"labels must be {B} class indices in 0..{probs.shape[-1] - 1}")

        M, C = len(modes) + 1, probs.shape[-1]
        k = min(topk, C)
        importance = torch.full((B, L, H, M, len(METRICS)), float("nan"), device=device)
        top_p = torch.full((B, L, H, M, k), float("nan"), device=device)
        top_i = torch.full((B, L, H, M, k), -1, dtype=torch.long, device=device)
        total = torch.full((B, L, H), float("nan"), device=device)
        base_metrics = importance_metrics(probs, probs, labels, outputs[0], outputs[0], n)  # exact zeros
        base_top = probs.topk(k, dim=-1)
        importance[:, :, :, 0] = base_metrics[:, None, None]
        top_p[:, :, :, 0], top_i[:, :, :, 0] = base_top.values[:, None, None], base_top.indices[:, None, None]

        keep = torch.stack([~region_mask(m, adapter.num_tokens, n, device) for m in modes]) if modes else None
        for i in layers if modes else ():
            _ablate_layer(adapter, i, inputs[i], outputs[i], probs, labels, keep, max_batch, precision,
                          importance, top_p, top_i, (modes.index(WHOLE_HEAD) if WHOLE_HEAD in modes else None,
                                                     logits.gather(1, labels[:, None])[:, 0], total))

    result = EngineResult(
        modes=(0, *modes), labels=labels.cpu(), probs=probs.cpu(), topk_idx=top_i.cpu(),
        topk_prob=top_p.cpu(), importance=importance.cpu(),
        attention=torch.stack([maps[w] for w in wanted], 1) if wanted else None, attention_heads=tuple(wanted),
        token_norm=torch.stack(norms, 1).cpu(), total_effect=total.cpu(),
    )
    if grad:
        result.grad_importance = gradient_importance(adapter, images, labels)
    return result


def _ablate_layer(adapter, i, x_in, z, probs, labels, keep, max_batch, precision, importance, top_p, top_i, effect):
    """All (image, head, mode) ablations of layer i, `max_batch` sequences per forward. `effect` is (the whole-head
    mode's index in `keep` or None, the unpruned label logits [B], total [B, L, H] to fill with the logit lost)."""
    B, P, _ = x_in.shape
    H, dh, n = adapter.num_heads, adapter.head_dim, adapter.num_prefix
    nm = keep.shape[0]
    # Recomputed rather than kept from the baseline pass: one layer's attention per layer is cheap, keeping
    # every layer's A for the batch is not (ViT-B, 16 images: 0.7 GB).
    parts = adapter.attention(i, x_in)
    heads_out = (parts.attn @ parts.v).transpose(1, 2)  # [B, P, H, dh]
    # Head outputs with the mode's region of A zeroed: (A⊙keep)V.  [B, H, M-1, P, dh]
    pruned = (parts.attn[:, :, None] * keep) @ parts.v[:, :, None]
    rows = adapter.head_rows if i == adapter.num_layers - 1 else None
    total = B * H * nm
    for start in range(0, total, max_batch):
        j = torch.arange(start, min(start + max_batch, total), device=x_in.device)
        b, h, m = j // (H * nm), (j // nm) % H, j % nm
        o = heads_out[b].clone()  # [c, P, H, dh]
        o[torch.arange(len(j)), :, h] = pruned[b, h, m]
        z_new = adapter.project(i, o.reshape(len(j), P, H * dh), None if parts.gate is None else parts.gate[b])
        with _precision(precision, x_in.device):
            x = adapter.finish_block(i, x_in[b, :rows], z_new[:, :rows])
            x = adapter.run_blocks(x, i + 1)
        logits = adapter.head(x.float()).float()
        p_new = logits.softmax(-1)
        whole, base_logit, lost = effect
        if whole is not None:
            w = m == whole
            lost[b[w], i, h[w]] = base_logit[b[w]] - logits[w].gather(1, labels[b[w], None])[:, 0]
        importance[b, i, h, m + 1] = importance_metrics(probs[b], p_new, labels[b], z[b], z_new, n)
        t = p_new.topk(top_p.shape[-1], dim=-1)
        top_p[b, i, h, m + 1], top_i[b, i, h, m + 1] = t.values, t.indices


@contextlib.contextmanager
def _precision(precision: str, device: torch.device) -> Iterator[None]:
    if precision == "bfloat16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    elif precision == "tf32" and device.type == "cuda":
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    else:
        yield


def _attention_heads(attention, L: int, H: int) -> list[tuple[int, int]]:
    if attention is None:
        return []
    if attention == "all":
        return [(i, h) for i in range(L) for h in range(H)]
    pairs = [(int(i), int(h)) for i, h in attention]
    bad = [p for p in pairs if not (0 <= p[0] < L and 0 <= p[1] < H)]
    if bad:
        raise VitscopeError(f"attention heads {bad} out of range: layers 0..{L - 1}, heads 0..{H - 1}")
    return pairs


def gradient_importance(adapter: ViTAdapter, images: Tensor, labels: Tensor) -> Tensor:
    """First-order head importance (Michel et al. 2019): |∂CE/∂gate| per image, gate = 1 on
    each head's output; one forward + backward for all heads. Returns [B, L, H] on CPU."""
    return attention_gradients(adapter, images, labels, with_ce=True).head_ce
