"""A timm VisionTransformer seen as layers × heads, with explicit attention.

The adapter re-derives timm's `Attention.forward` with the softmax matrix materialised, so
attention maps are correct whatever timm's fused-attention (SDPA) setting is, and so the
engine can zero any head or region of `A`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block, LayerScale, VisionTransformer
from torch import Tensor

from vitscope.errors import UnsupportedModelError

SUPPORTED_FAMILIES = (
    "timm VisionTransformer models with a class token and standard Attention blocks: "
    "vit_* (incl. *_reg* register variants), deit_* (incl. distilled), deit3_*, *_dinov2"
)


@dataclass
class AttentionParts:
    """One layer's attention on a batch: `q, k, v` [B,H,P,dh], `attn` [B,H,P,P], `gate` [B,P,H*dh]|None."""

    q: Tensor
    k: Tensor
    v: Tensor
    attn: Tensor
    gate: Tensor | None


class AdapterFacts:
    """What every adapter reports the same way; a subclass sets `model`, `spec` and the shape attributes."""

    model: torch.nn.Module
    spec: str
    num_layers: int
    num_heads: int
    head_dim: int
    num_prefix: int
    grid: int
    num_tokens: int
    num_classes: int

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def model_class(self) -> str:
        return type(self.model).__name__

    def describe(self) -> dict:
        """The facts a user checks first."""
        return {
            "spec": self.spec,
            "class": self.model_class(),
            "layers": self.num_layers,
            "heads": self.num_heads,
            "head_dim": self.head_dim,
            "prefix_tokens": self.num_prefix,
            "patch_grid": f"{self.grid}x{self.grid}",
            "tokens": self.num_tokens,
            "classes": self.num_classes,
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }


class ViTAdapter(AdapterFacts):
    """Knows a ViT's layers, heads, prefix tokens and patch grid, and runs it piece by piece."""

    def __init__(self, model: torch.nn.Module, spec: str = "custom") -> None:
        check_supported(model, spec)
        self.model = model.eval().requires_grad_(False)
        self.spec = spec
        self.blocks: list[Block] = list(model.blocks)
        first = self.blocks[0].attn
        self.num_layers = len(self.blocks)
        self.num_heads: int = first.num_heads
        self.head_dim: int = first.head_dim
        self.num_prefix: int = model.num_prefix_tokens
        self.grid: int = model.patch_embed.grid_size[0]
        self.patch_size: int = model.patch_embed.patch_size[0]
        self.num_tokens = self.num_prefix + self.grid**2
        self.num_classes: int = model.num_classes
        # With token pooling the head reads only prefix tokens, so the last block needs no
        # patch-token queries: a large saving per ablation.
        token_pool = getattr(model, "attn_pool", None) is None and model.global_pool == "token"
        self.head_rows: int | None = self.num_prefix if token_pool else None

    # -- pieces of the forward pass -------------------------------------------------------

    def embed(self, images: Tensor) -> Tensor:
        """Images [B,3,h,w] → tokens [B,P,D] entering block 0 (as timm's forward_features)."""
        m = self.model
        x = m.patch_embed(images)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        return m.norm_pre(x)

    def head(self, x: Tensor) -> Tensor:
        """Tokens after the last block (all, or the first `head_rows`) → logits [B,C]."""
        return self.model.forward_head(self.model.norm(x))

    def features(self, x: Tensor) -> Tensor:
        """Tokens after the last block → the pooled representation [B,D] the classifier (or a linear probe) reads."""
        return self.model.forward_head(self.model.norm(x), pre_logits=True)

    def logits(self, images: Tensor) -> Tensor:
        """The unpruned model's logits for preprocessed images [B,3,h,w] (timm's own forward)."""
        return self.model(images.to(self.device, self.dtype))

    def attention(self, layer: int, x: Tensor) -> AttentionParts:
        """Explicit attention of block `layer` on its input `x` [B,P,D] (before norm1)."""
        attn = self.blocks[layer].attn
        h = self.blocks[layer].norm1(x)
        b, n, _ = h.shape
        qkv = attn.qkv(h).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        a = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # [B,H,P,P]
        gate = attn.gate(h).sigmoid() if attn.gate is not None else None
        return AttentionParts(q, k, v, a, gate)

    def project(self, layer: int, heads_out: Tensor, gate: Tensor | None) -> Tensor:
        """Concatenated head outputs [B,P,H*dh] → attention-layer output z [B,P,D]."""
        attn = self.blocks[layer].attn
        y = attn.norm(heads_out)
        if gate is not None:
            y = y * gate
        return attn.proj(y)

    def finish_block(self, layer: int, x: Tensor, z: Tensor) -> Tensor:
        """Residual add of the attention output, then the MLP half of the block."""
        x = x + self.attention_residual(layer, z)
        return x + self.mlp_residual(layer, x)

    def attention_residual(self, layer: int, z: Tensor) -> Tensor:
        """What the attention output z adds to the residual stream (after LayerScale)."""
        return self.blocks[layer].ls1(z)

    def mlp_residual(self, layer: int, x: Tensor) -> Tensor:
        """What the MLP half adds to the residual stream `x` (after the attention's add)."""
        blk = self.blocks[layer]
        return blk.ls2(blk.mlp(blk.norm2(x)))

    def why_not_linear(self) -> str | None:
        """Why a head's share of the logit is not a sum of terms (None when it is): every head's output must reach
        the residual stream linearly, and the head must be affine in the final tokens once its norms' scales are
        fixed."""
        m = self.model
        if any(not isinstance(b.attn.norm, torch.nn.Identity) for b in self.blocks):
            return "its attention normalises the heads' joined output (scale_norm), so a head's share is not linear"
        if any(not isinstance(b.ls1, torch.nn.Identity | LayerScale) for b in self.blocks):
            return "its attention output passes a layer that is not a LayerScale"
        if not hasattr(m, "head_dist") and (m.attn_pool is not None or m.global_pool not in ("token", "avg")):
            return f"its head pools the tokens by {m.global_pool!r}, which is not a linear pooling"
        for name in ("norm", "fc_norm"):
            if not isinstance(getattr(m, name), torch.nn.Identity | torch.nn.LayerNorm):
                return f"its final {name} is a {type(getattr(m, name)).__name__}, not a LayerNorm"
        return None

    def frozen_head(self, x: Tensor, ref: Tensor, pre_logits: bool = False) -> Tensor:
        """`head` (or `features` with `pre_logits`) of tokens `x` [N, R, D] with every norm's scale σ taken from
        the tokens `ref` [1, R, D] instead of from `x`: an affine map of `x`, so the logits of a sum of residual
        components are the sum of their terms plus the map at 0 (`why_not_linear` says when this fails)."""
        m = self.model
        h, r = frozen_norm(m.norm, x, ref), m.norm(ref)
        if hasattr(m, "head_dist"):  # a distilled DeiT: the mean of the class- and distillation-token heads
            h = h[:, :2]
            return h.mean(1) if pre_logits else (m.head(h[:, 0]) + m.head_dist(h[:, 1])) / 2
        h = frozen_norm(m.fc_norm, m.pool(h), m.pool(r))
        return h if pre_logits else m.head(h)

    def run_blocks(self, x: Tensor, start: int) -> Tensor:
        """Blocks `start`.. to the end with timm's own (fused) modules; the last block
        computes only the `head_rows` rows the head reads. Returns the final tokens."""
        for i in range(start, self.num_layers):
            if i == self.num_layers - 1 and self.head_rows is not None:
                x = self._last_block_rows(x)
            else:
                x = self.blocks[i](x)
        return x

    def _last_block_rows(self, x: Tensor) -> Tensor:
        """The last block for the prefix rows only (keys/values still from all tokens)."""
        blk = self.blocks[-1]
        attn = blk.attn
        r = self.head_rows
        h = blk.norm1(x)
        b, n, _ = h.shape
        qkv = attn.qkv(h).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q[:, :, :r]), attn.k_norm(k)
        o = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)  # [B,H,r,dh]
        o = o.transpose(1, 2).reshape(b, r, -1)
        gate = attn.gate(h[:, :r]).sigmoid() if attn.gate is not None else None
        z = attn.proj(attn.norm(o) * gate if gate is not None else attn.norm(o))
        return self.finish_block(len(self.blocks) - 1, x[:, :r], z)


def frozen_norm(norm: torch.nn.Module, x: Tensor, ref: Tensor) -> Tensor:
    """A LayerNorm (or Identity) applied to `x` with the scale σ it has on `ref` (broadcast over x's first axis):
    `γ ⊙ (x − mean x) / σ_ref + β`, affine in x."""
    if isinstance(norm, torch.nn.Identity):
        return x
    sigma = (ref.float().var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt().to(x.dtype)
    y = (x - x.mean(-1, keepdim=True)) / sigma
    y = y if norm.weight is None else y * norm.weight
    return y if norm.bias is None else y + norm.bias


def merge_heads(o: Tensor) -> Tensor:
    """[B,H,P,dh] → [B,P,H*dh]."""
    b, h, p, d = o.shape
    return o.transpose(1, 2).reshape(b, p, h * d)


def check_supported(model: torch.nn.Module, spec: str = "model") -> None:
    """Raise UnsupportedModelError (one line) unless vitscope can ablate this model exactly."""
    name = type(model).__name__
    why = None
    if not isinstance(model, VisionTransformer):
        why = f"it is a {name}, not a timm VisionTransformer"
    elif getattr(model, "cls_token", None) is None:
        why = "it has no class token"
    elif any(type(b) is not Block for b in model.blocks):
        other = next(type(b).__name__ for b in model.blocks if type(b) is not Block)
        why = f"its blocks are {other}, not timm's Block"
    elif any(type(b.attn) is not Attention for b in model.blocks):
        other = next(type(b.attn).__name__ for b in model.blocks if type(b.attn) is not Attention)
        why = f"its attention is {other}, not timm's Attention"
    elif model.patch_embed.grid_size[0] != model.patch_embed.grid_size[1]:
        why = f"its patch grid {tuple(model.patch_embed.grid_size)} is not square"
    if why:
        raise UnsupportedModelError(f"{spec}: {why}. vitscope supports {SUPPORTED_FAMILIES}.")
