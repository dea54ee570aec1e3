"""timm ViT → transformers `ViTForImageClassification` folder (weights and preprocessing), for `--model hf:`.

The weights are copied tensor by tensor into the modules `vitscope.models.hf` resolves for the installed
transformers version (timm's fused `qkv` split into query, key and value), so the folder holds the same
network under transformers' names. The image processor written is a `BitImageProcessor`: resize of the shortest
edge to ⌊size / crop_pct⌋, centre crop, rescale, normalise, which is timm's eval transform (a
`ViTImageProcessor` only squashes to a fixed size). One difference remains: transformers floors the crop offset
((d) // 2) where torchvision rounds half to even (round(d / 2)), so an image whose resized long side exceeds
the crop by d ≡ 3 (mod 4) pixels is cropped one pixel further left (or up); every other image gives the
same pixels.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from vitscope.errors import UnsupportedModelError

PIL_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def timm_to_hf(adapter_or_model, folder: str | Path) -> Path:
    """Write a transformers `ViTForImageClassification` + image processor folder equal to a timm ViT classifier
    (a plain one: class token only, no LayerScale, qk-norm or pooling other than the class token)."""
    import transformers
    from timm.data import resolve_data_config
    from timm.models.vision_transformer import VisionTransformer

    from vitscope.models.hf import _VIT_LIKE, HFViTAdapter, _resolve

    model = getattr(adapter_or_model, "model", adapter_or_model)
    if not isinstance(model, VisionTransformer):
        raise UnsupportedModelError(f"timm_to_hf converts timm VisionTransformers, not {type(model).__name__}")
    _check_plain(model)
    blk = model.blocks[0]
    img, ps = model.patch_embed.img_size, model.patch_embed.patch_size
    config = transformers.ViTConfig(
        hidden_size=model.embed_dim, num_hidden_layers=len(model.blocks), num_attention_heads=blk.attn.num_heads,
        intermediate_size=blk.mlp.fc1.out_features, hidden_act="gelu", layer_norm_eps=blk.norm1.eps,
        image_size=img[0], patch_size=ps[0], num_channels=model.patch_embed.proj.in_channels,
        qkv_bias=blk.attn.qkv.bias is not None, num_labels=model.num_classes,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf = transformers.ViTForImageClassification(config).eval()
    ad = HFViTAdapter(hf, "timm_to_hf")  # resolves the modules of this transformers version
    emb = ad._embeddings
    with torch.no_grad():
        emb.cls_token.copy_(model.cls_token)
        emb.position_embeddings.copy_(model.pos_embed)
        _linear(emb.patch_embeddings.projection, model.patch_embed.proj)
        for b, m, layer in zip(model.blocks, ad._layers, ad._layer_modules, strict=True):
            _linear(m["norm1"], b.norm1)
            d = model.embed_dim
            for j, role in enumerate("qkv"):
                m[role].weight.copy_(b.attn.qkv.weight[j * d:(j + 1) * d])
                if b.attn.qkv.bias is not None:
                    m[role].bias.copy_(b.attn.qkv.bias[j * d:(j + 1) * d])
            _linear(m["o"], b.attn.proj)
            _linear(m["norm2"], b.norm2)
            _linear(_resolve(layer, _VIT_LIKE["fc1"], "fc1", "timm_to_hf"), b.mlp.fc1)
            _linear(_resolve(layer, _VIT_LIKE["fc2"], "fc2", "timm_to_hf"), b.mlp.fc2)
        _linear(ad._final_norm, model.norm)
        _linear(hf.classifier, model.head)
    folder = Path(folder)
    hf.save_pretrained(folder)
    cfg = resolve_data_config({}, model=model)
    if cfg.get("crop_mode", "center") != "center":
        raise UnsupportedModelError(f"timm_to_hf: crop mode {cfg['crop_mode']!r}; only 'center' is converted")
    if img[0] != img[1]:
        raise UnsupportedModelError(f"timm_to_hf: input size {tuple(img)} is not square")
    processor = transformers.BitImageProcessor(  # timm: Resize(⌊size / crop_pct⌋) then CenterCrop(size)
        do_resize=True, size={"shortest_edge": math.floor(img[0] / cfg["crop_pct"])},
        resample=PIL_RESAMPLE[cfg["interpolation"]], do_center_crop=True, crop_size={"height": img[0], "width": img[1]},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(cfg["mean"]),
        image_std=list(cfg["std"]), do_convert_rgb=True)
    processor.save_pretrained(folder)
    return folder


def _linear(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """Copy weight and bias (a Linear, Conv2d or LayerNorm) after checking the shapes agree."""
    for name in ("weight", "bias"):
        a, b = getattr(dst, name), getattr(src, name)
        if (a is None) != (b is None) or (a is not None and a.shape != b.shape):
            raise UnsupportedModelError(f"timm_to_hf: {name} of {type(src).__name__} does not fit transformers' "
                                        f"{type(dst).__name__}")
        if a is not None:
            a.copy_(b)


def _check_plain(model) -> None:
    from timm.layers import Mlp

    blk = model.blocks[0]
    why = None
    if model.num_prefix_tokens != 1 or getattr(model, "no_embed_class", False):
        why = "prefix tokens other than one class token with its position embedding"
    elif model.global_pool != "token" or getattr(model, "attn_pool", None) is not None:
        why = f"pooling {model.global_pool!r} (transformers' ViT reads the class token)"
    elif not all(isinstance(m, torch.nn.Identity) for m in (model.norm_pre, model.fc_norm)):
        why = "a pre-norm or fc-norm"
    elif any(not isinstance(getattr(b, n), torch.nn.Identity) for b in model.blocks for n in ("ls1", "ls2")):
        why = "LayerScale"
    elif any(not isinstance(getattr(b.attn, n), torch.nn.Identity) for b in model.blocks
             for n in ("q_norm", "k_norm", "norm")) or getattr(blk.attn, "gate", None) is not None:
        why = "qk-norm, an attention norm or gate"
    elif any(type(b.mlp) is not Mlp or not isinstance(b.mlp.act, torch.nn.GELU) or b.mlp.act.approximate != "none"
             or not isinstance(b.mlp.norm, torch.nn.Identity) for b in model.blocks):
        why = "an MLP other than Linear-GELU-Linear"
    elif not isinstance(model.head, torch.nn.Linear):
        why = "no linear classifier"
    if why:
        raise UnsupportedModelError(f"timm_to_hf: this ViT has {why}, which transformers' ViT does not")

