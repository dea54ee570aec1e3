"""Small random-init timm ViTs with peaky attention, built locally (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from vitscope.models import ViTAdapter

SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=10)

# name → (timm architecture, extra kwargs): the families docs/models.md lists.
VARIANTS = {
    "vit": ("vit_tiny_patch16_224", {}),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}),  # 2 prefix tokens
    "registers": ("vit_small_patch14_reg4_dinov2", {"reg_tokens": 4}),  # 5 prefix tokens, LayerScale
    "deit3": ("deit3_small_patch16_224", {}),  # LayerScale, position embedding without the class token
    "qknorm_scalenorm": ("vit_tiny_patch16_224", {"qk_norm": True, "scale_attn_norm": True, "qkv_bias": True}),
    "avgpool": ("vit_tiny_patch16_224", {"global_pool": "avg"}),  # the head reads every token
}


def make_peaky(model: torch.nn.Module, seed: int = 0, qk_scale: float = 3.0) -> torch.nn.Module:
    """Re-draw weights so that activations keep their scale (std 1/sqrt(fan_in)), heads differ
    and attention is peaky (query/key weights scaled up), like a trained ViT."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:  # norm weights, LayerScale gammas, tokens
                p.copy_(1.0 + torch.randn(p.shape, generator=g) * 0.2)
        for blk in model.blocks:
            d = blk.attn.num_heads * blk.attn.head_dim
            blk.attn.qkv.weight[: 2 * d].mul_(qk_scale)
            if not isinstance(blk.attn.q_norm, torch.nn.Identity):  # qk-norm undoes the scaling above
                blk.attn.q_norm.weight.mul_(qk_scale**2)
    return model.eval()


def small_vit(variant: str = "vit", seed: int = 0, fused: bool = True, **overrides) -> ViTAdapter:
    arch, extra = VARIANTS[variant]
    kwargs = {**SMALL, **extra, **overrides}
    if "dinov2" in arch:
        kwargs.update(init_values=0.5, img_size=28, patch_size=7)
    model = make_peaky(timm.create_model(arch, pretrained=False, **kwargs), seed)
    for blk in model.blocks:
        blk.attn.fused_attn = fused
    return ViTAdapter(model, f"test:{variant}")


def images_for(adapter: ViTAdapter, n: int = 3, seed: int = 1) -> torch.Tensor:
    size = adapter.model.patch_embed.img_size
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=list(VARIANTS))
def variant(request) -> str:
    return request.param


# The real pretrained ViT-Ti/16 and 200 ImageNet photos: in CI and on developer machines at
# ../shared, never on a user's machine (tests that need them skip) and never committed.
SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL_VIT_ARCH = "vit_tiny_patch16_224"
REAL_VIT = SHARED / "models" / "vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors"
REAL_IMAGES = SHARED / "data" / "imagenet-sample-200"
# The real DeiT-Ti/16 (DeiT recipe, ImageNet-1k only) of the same shape; its 25 LayerNorm weight/bias pairs are
# rounded to steps of 1/32–1/64, every other tensor is the original.
REAL_DEIT_ARCH = "deit_tiny_patch16_224"
REAL_DEIT = SHARED / "models" / "deit_tiny_patch16_224.fb_in1k.ln-rounded.safetensors"


@pytest.fixture(scope="session")
def demo16(tmp_path_factory) -> Path:
    """A small store of the demo model (16 images), which the service can reload."""
    from vitscope.build import BuildConfig, build

    out = tmp_path_factory.mktemp("demo16") / "demo16.zarr"
    build(BuildConfig(model="demo", images="demo", out=out, limit=16, chunk=8, ae_epochs=1, progress=False))
    return out
