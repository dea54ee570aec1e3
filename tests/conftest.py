"""Small random-init timm ViTs with peaky attention, built locally (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

# Under CI=true a skipped, xfailed or xpassed test fails, quoting the skip's reason (tests/ci_skips.py).
from ci_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401

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
# The real stores of the tests, built once a session and shared by test_real_model.py, test_real_deit.py and
# test_real_compare.py: the ViT-Ti over REAL_PHOTOS photos sampled with REAL_SEED, DeiT-Ti over REAL_DEIT_PHOTOS of
# those (each photo is ~3.6 CPU-s a build: every head pruned in every mode).
REAL_PHOTOS = 16
REAL_DEIT_PHOTOS = 8
REAL_SEED = 0


def build_real(cfg):
    """Build with one torch thread (on 2 shared cores a second one only adds barrier stalls: engine 3.6 vs 5.5 CPU-s
    an image) and open the store; its path in `attrs["store_path"]` (in memory only) for the CLI and the app."""
    from vitscope.build import build
    from vitscope.store import open_store

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = build(cfg)
    finally:
        torch.set_num_threads(threads)
    ds = open_store(path)
    ds.attrs["store_path"] = str(path)
    return ds


@pytest.fixture(scope="session")
def real_photos(tmp_path_factory) -> Path:
    """REAL_PHOTOS photos sampled from REAL_IMAGES (seed REAL_SEED), linked into a folder of their own with the same
    class sub-folders and image ids: one image set for both real stores, which `vitscope compare` needs (it refuses
    stores built over different folders)."""
    from vitscope.imagesets.folders import image_folder

    root = tmp_path_factory.mktemp("real_photos") / "imagenet-sample"
    for image_id in image_folder(REAL_IMAGES, 1000, limit=REAL_PHOTOS, seed=REAL_SEED).ids:
        (root / image_id).parent.mkdir(parents=True, exist_ok=True)
        (root / image_id).symlink_to(REAL_IMAGES / image_id)
    return root


@pytest.fixture(scope="session")
def real_vit_store(real_photos, tmp_path_factory):
    """The real ViT-Ti over every photo of `real_photos` (ae_epochs=1: the autoencoder is not what is checked)."""
    from vitscope.build import BuildConfig

    cfg = BuildConfig(model=f"timm:{REAL_VIT_ARCH}", checkpoint=REAL_VIT, images=str(real_photos),
                      out=tmp_path_factory.mktemp("real") / "vit_tiny.zarr", ae_epochs=1, progress=False)
    return build_real(cfg)


@pytest.fixture(scope="session")
def real_deit_store(real_photos, tmp_path_factory):
    """The real DeiT-Ti over REAL_DEIT_PHOTOS of the ViT-Ti's photos (sampled with REAL_SEED), the classifier."""
    from vitscope.build import BuildConfig

    cfg = BuildConfig(model=f"timm:{REAL_DEIT_ARCH}", checkpoint=REAL_DEIT, images=str(real_photos),
                      out=tmp_path_factory.mktemp("deit") / "deit.zarr", limit=REAL_DEIT_PHOTOS, seed=REAL_SEED,
                      ae_epochs=1, progress=False)
    return build_real(cfg)


@pytest.fixture(scope="session")
def demo16(tmp_path_factory) -> Path:
    """A small store of the demo model (16 images), which the service can reload."""
    from vitscope.build import BuildConfig, build

    out = tmp_path_factory.mktemp("demo16") / "demo16.zarr"
    build(BuildConfig(model="demo", images="demo", out=out, limit=16, chunk=8, ae_epochs=1, progress=False))
    return out


@pytest.fixture(scope="session")
def compare_stores(tmp_path_factory) -> dict:
    """test_compare's tiny stores of random-init demo-architecture models over six demo images and one unreadable
    file (listed last, so images 0..5 are the readable ones): `a` (4 layers × 4 heads), `swap` (the same model with
    two heads of a layer swapped: SWAPPED) and `small` (2 × 2). Built once a session: test_compare, test_compare_view,
    test_compare_export, test_browser_compare, test_report and test_cli_options all read them, none writes them."""
    from test_compare import SWAPPED, build_store, demo_arch, demo_images, swap_heads

    tmp = tmp_path_factory.mktemp("compare_stores")
    _, labels = demo_images(tmp / "imgs")
    (tmp / "imgs" / str(max(labels)) / "broken.png").write_bytes(b"\x89PNG garbage")  # sorts after "<digit>.png"
    base = demo_arch(4, 4, seed=0)
    return {"a": build_store(tmp, "a", base, tmp / "imgs", 4, 4),
            "swap": build_store(tmp, "swap", swap_heads(base, *SWAPPED, heads=4), tmp / "imgs", 4, 4),
            "small": build_store(tmp, "small", demo_arch(2, 2, seed=1), tmp / "imgs", 2, 2)}
