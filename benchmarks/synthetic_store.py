"""A synthetic store in the real schema, of any size: for app benchmarks and store-size checks.

    python benchmarks/synthetic_store.py --out /tmp/vitb.zarr             # ViT-B/16 shape, 1000 images
    python benchmarks/synthetic_store.py --out /tmp/s.zarr --images 50 --layers 2 --heads 3 --grid 4
    vitscope serve /tmp/vitb.zarr                                           # the app on it, attention included

Random values with the right types, ranges and normalisations (attention rows sum to 1,
probabilities sum to 1, labels in range), written through vitscope.store exactly as a build
writes them. Random numbers compress worse than real ones, so its size is an upper bound
(the thumbnails excepted: flat patches, which compress far better than photos).

The script's store is servable: beside it (`/tmp/vitb.synthetic/`) a random-init ViT of its shape (seeded; ViT-B:
`timm:vit_base_patch16_224` and a float16 checkpoint) and its images as PNG files, which the store records
(`model_spec`, `model_checkpoint`, `image_source`), so `vitscope serve` computes the attention of any image from
its thumbnail. Only the attention is that model's: every stored number (importance, top-5, patterns, layouts) is
random (attr `synthetic`). `--no-model` writes the store alone (`model_spec: synthetic`: no attention).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from vitscope import store
from vitscope.analysis.binary import top_count
from vitscope.vocab import BASE_PATTERNS, HEAD_KINDS, MODES, OFFSETS, PATTERNS, SINK_SHARE, STORED_MAPS


def chunk_arrays(lay: store.Shape, rng: np.random.Generator, n: int,
                 sink_rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """`sink_rng` draws the sink variables (its own stream: the others stay what they were before sinks)."""
    L, H, p, C = lay.layers, lay.heads, lay.grid, lay.classes
    M, k = len(MODES), lay.topk
    # The top-k classes and their probabilities only (a Dirichlet over all C classes, sorted, cost ~8 s a chunk of
    # ViT-B at C = 1000): k distinct classes (steps of 1..C//k from a random first one), probabilities sorted
    # descending that sum to at most 1 (exactly 1 when k = C), the rest of the mass on the other classes.
    steps = rng.integers(1, max(C // k, 1) + 1, (n, L, H, M, k))
    steps[..., 0] = rng.integers(0, C, (n, L, H, M))
    top = np.cumsum(steps, -1) % C
    w = rng.exponential(size=(n, L, H, M, k + 1)) ** 3  # peaky, like trained classifiers
    w[..., k] *= C > k
    w[..., :k] = -np.sort(-w[..., :k], -1)
    top_prob = (w[..., :k] / w.sum(-1, keepdims=True)).astype(np.float32)
    imp = np.stack([top_prob[..., 0], rng.beta(1, 20, (n, L, H, M)),
                    rng.beta(1, 8, (n, L, H, M)), rng.beta(1, 8, (n, L, H, M))], -1)  # one per METRICS
    imp[:, :, :, 0, 1:] = 0
    strength = rng.dirichlet(np.ones(p), size=(n, L, H)).astype(np.float32)
    cls = rng.dirichlet(np.ones(2 * p * p + 1), size=(n, L, H)).astype(np.float16)
    index = np.sort(rng.integers(0, lay.binary_size**2, (n, L, H, lay.binary_ones)), axis=-1).astype(np.uint16)
    sink_rng = np.random.default_rng(1) if sink_rng is None else sink_rng
    r, patches = lay.sizes()["rank"], p * p
    received = sink_rng.dirichlet(np.full(lay.prefix + patches, 0.3), size=(n, L))  # [n, L, P]: sums to 1
    sink = np.argsort(-received[..., lay.prefix:], axis=-1)[..., :r]
    norms = sink_rng.lognormal(0, 1, (n, L, patches))
    high = np.argsort(-norms, axis=-1)[..., :r]
    # the input maps last in the same stream: a class-token row's share of the patches, in [0, 1] like the real ones
    maps = (sink_rng.dirichlet(np.full(patches, 0.5), size=(n, len(STORED_MAPS))) * sink_rng.uniform(0.3, 1, (n, 1, 1))
            ).astype(np.float32)
    return {
        "label": rng.integers(0, C, n), "valid": np.ones(n, bool), "baseline_prob": rng.random(n),
        "topk_idx": top, "topk_prob": top_prob, "importance": imp,
        "grad_importance": rng.exponential(0.01, (n, L, H)), "strength": strength,
        "strength_entropy": rng.random((n, L, H)), "attention_distance": rng.uniform(0, p, (n, L, H)),
        "cls_attention": cls, "pattern_score": rng.random((n, L, H, len(BASE_PATTERNS))),
        "pattern_label": rng.integers(0, len(PATTERNS), (n, L, H)),
        "pattern_second": rng.integers(0, len(PATTERNS), (n, L, H)),
        "pattern_offset": rng.integers(0, len(OFFSETS), (n, L, H)), "binary_index": index,
        "thumbnail": blocky(rng, n, lay.thumb, p),
        "sink_token": sink, "sink_share": np.take_along_axis(received[..., lay.prefix:], sink, -1),
        "prefix_share": received[..., :lay.prefix], "norm_token": high,
        "norm_ratio": np.take_along_axis(norms, high, -1) / np.median(norms, -1, keepdims=True),
        "input_map": maps,
    }


def effect_arrays(rng: np.random.Generator, n: int, layers: int, heads: int) -> dict[str, np.ndarray]:
    """The heads' effects on the label's logit, from their own stream (the other variables stay what they were before
    effects): each head gets a typical direct and indirect size, so some heads write to the logit directly and others
    act through later layers, as in a trained model; total = direct + indirect, as a build measures them."""
    shape = (n, layers, heads)
    direct = rng.normal(0, 0.3, shape) * rng.exponential(1, (layers, heads))
    indirect = rng.normal(0.1, 0.2, shape) * rng.exponential(1, (layers, heads))
    return {"direct_effect": direct, "total_effect": direct + indirect,
            "output_norm": np.abs(direct) + rng.exponential(0.5, shape), "rollout_impact": rng.exponential(0.1, shape)}


def blocky(rng: np.random.Generator, n: int, thumb: tuple[int, int], grid: int) -> np.ndarray:
    """[n, h, w, 3] uint8 images of grid × grid random flat patches: a ViT sees distinct patches, and they compress
    (a noise thumbnail is 150 kB of a ViT-B store's image and as much again as a PNG)."""
    h, w = thumb
    cells = rng.integers(0, 256, (n, grid, grid, 3), dtype=np.uint8)
    return cells.repeat(-(-h // grid), 1).repeat(-(-w // grid), 2)[:, :h, :w]


# (layers, heads, grid) → the timm ViT of that shape at 224 px: its default config fits the checkpoint as it is.
TIMM_SHAPES = {(12, 12, 14): "vit_base_patch16_224", (12, 6, 14): "vit_small_patch16_224",
               (12, 3, 14): "vit_tiny_patch16_224"}


def side_folder(out: Path) -> Path:
    """Where a servable synthetic store keeps its model and image files: beside the store (`big.zarr` →
    `big.synthetic/`), so the store's own size stays what a build would write."""
    return out.with_name(out.name.removesuffix(".zarr") + ".synthetic")


def random_model(folder: Path, layers: int, heads: int, grid: int, classes: int, seed: int) -> tuple[str, str, str]:
    """A random-init (seeded) ViT of the store's shape saved under `folder`: (model spec, checkpoint, model class).

    The shapes timm names (ViT-B/S/Ti/16 at 224 px) are `timm:<name>` with a float16 safetensors checkpoint (ViT-B:
    170 MB); any other shape is a transformers ViT folder (`hf:<folder>`, config included), as `load_model` reads
    no timm options from a store."""
    import torch

    torch.manual_seed(seed)
    name = TIMM_SHAPES.get((layers, heads, grid))
    if name is not None:
        import timm
        from safetensors.torch import save_file

        model = timm.create_model(name, pretrained=False, num_classes=classes)
        half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
        path = folder / "model.safetensors"
        save_file(half, str(path))
        return f"timm:{name}", str(path.resolve()), type(model).__name__
    import transformers

    cfg = transformers.ViTConfig(hidden_size=16 * heads, num_hidden_layers=layers, num_attention_heads=heads,
                                 intermediate_size=64 * heads, image_size=16 * grid, patch_size=16,
                                 num_labels=classes, architectures=["ViTForImageClassification"])
    model = transformers.ViTForImageClassification(cfg)
    model.save_pretrained(folder / "model")
    transformers.ViTImageProcessor(size={"height": 16 * grid, "width": 16 * grid}, image_mean=[0.5] * 3,
                                   image_std=[0.5] * 3).save_pretrained(folder / "model")
    return f"hf:{(folder / 'model').resolve()}", "", type(model).__name__


def write_pngs(root: Path, ids: list[str], start: int, thumbs: np.ndarray) -> None:
    """The chunk's images as the PNG files its ids name (flat patches: ~2 kB each at 224 px)."""
    from PIL import Image

    for i, pixels in enumerate(thumbs):
        path = root / ids[start + i]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, compress_level=1)


def make(out: Path, images: int, layers: int, heads: int, grid: int, classes: int, chunk: int, seed: int = 0,
         servable: bool = False) -> Path:
    """The store at `out`. `servable`: with a random-init model of its shape and its images as files beside it
    (`side_folder`), so `vitscope serve` computes attention for any of its images; its stored numbers stay random,
    not that model's."""
    lay = store.Shape(images=images, layers=layers, heads=heads, classes=classes, grid=grid, tokens=1 + grid * grid,
                       topk=min(5, classes), latent=16, binary_size=min(256, grid * grid),
                       binary_ones=top_count(0.01, grid * grid),
                       thumb=(grid * 16, grid * 16), chunk=chunk)
    store.remove(out)
    ids = [f"synthetic/{i:06d}.png" for i in range(images)]
    spec, checkpoint, model_class, weights, source = "synthetic", "", "VisionTransformer", "none", "synthetic"
    side = side_folder(out)
    if servable:
        import shutil

        from vitscope.models import load_model, weights_hash

        shutil.rmtree(side, ignore_errors=True)
        side.mkdir(parents=True)
        spec, checkpoint, model_class = random_model(side, layers, heads, grid, classes, seed)
        # the hash of the model as the service loads it (float16 weights in a float32 model)
        weights = weights_hash(load_model(spec, checkpoint=checkpoint or None).model)
        source = str((side / "images").resolve())
    attrs = {"model_spec": spec, "model_class": model_class, "model_pretrained": False,
             "model_checkpoint": checkpoint, "num_prefix_tokens": 1, "patch_grid": grid, "image_source": source,
             "data_config": '{"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}', "params": "{}",
             "synthetic": "stored numbers are random, not the model's"}
    store.create(out, lay, {"model": spec, "weights": weights, "images": f"random-{seed}", "schema":
                            store.SCHEMA_VERSION}, ids, [f"class {c}" for c in range(classes)], attrs)
    rng, sink_rng, effects_rng = (np.random.default_rng(s) for s in (seed, [seed, 1], [seed, 2]))
    for c in range(lay.chunks):
        n = min(chunk, images - c * chunk)
        arrays = chunk_arrays(lay, rng, n, sink_rng) | effect_arrays(effects_rng, n, layers, heads)
        store.write_chunk(out, c, lay, arrays)
        if servable:
            write_pngs(side / "images", ids, c * chunk, arrays["thumbnail"])
    n, L, H, r = images, layers, heads, lay.sizes()["rank"]
    arrays = {
        "pattern_latent": rng.normal(size=(n, L, H, 16)), "image_xy": rng.normal(size=(n, 2)),
        "head_xy_cls": rng.normal(size=(n, L, H, 2)), "head_xy_patch": rng.normal(size=(n, L, H, 2)),
        "head_consistency": rng.random((L, H)), "head_kind": rng.integers(0, len(HEAD_KINDS), (L, H)),
    }
    sink = arrays["head_kind"] == HEAD_KINDS.index("sink")
    frequency = -np.sort(-sink_rng.random((2, L, r)), axis=-1)
    arrays |= {
        "head_sink_share": np.where(sink, sink_rng.uniform(SINK_SHARE, 1, (L, H)),
                                    sink_rng.uniform(0, SINK_SHARE, (L, H))),
        "head_sink_tokens": np.argsort(sink_rng.random((L, H, lay.binary_size)), -1)[..., :r],
        "sink_tokens": np.argsort(sink_rng.random((L, grid * grid)), -1)[:, :r], "sink_frequency": frequency[0],
        "norm_tokens": np.argsort(sink_rng.random((L, grid * grid)), -1)[:, :r], "norm_frequency": frequency[1],
    }
    store.write_global(out, arrays, {"ae_loss": [0.0], "valid_images": n, "layout_metric": "prob"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--grid", type=int, default=14)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-model", action="store_true", help="no model and image files: the store cannot be served "
                                                             "with attention")
    args = ap.parse_args()
    t = time.perf_counter()
    out = make(args.out, args.images, args.layers, args.heads, args.grid, args.classes, args.chunk, args.seed,
               servable=not args.no_model)
    files = [f for f in out.rglob("*") if f.is_file()]
    total = sum(f.stat().st_size for f in files)
    thumbs = sum(f.stat().st_size for f in files if "thumbnail" in f.parts)
    print(f"{out}: {args.images} images × {args.layers * args.heads} heads in {time.perf_counter() - t:.1f} s; "
          f"{(total - thumbs) / args.images / 1e6:.3f} MB per image without thumbnails (random values: an upper "
          f"bound), {total / 1e6:.0f} MB in all"
          + ("" if args.no_model else f"; model and images in {side_folder(out)}"))


if __name__ == "__main__":
    main()
