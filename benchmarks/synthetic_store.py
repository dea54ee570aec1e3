"""A synthetic store in the real schema, of any size: for app benchmarks and store-size checks.

    python benchmarks/synthetic_store.py --out /tmp/vitb.zarr             # ViT-B/16 shape, 1000 images
    python benchmarks/synthetic_store.py --out /tmp/s.zarr --images 50 --layers 2 --heads 3 --grid 4

Random values with the right types, ranges and normalisations (attention rows sum to 1,
probabilities sum to 1, labels in range), written through vitscope.store exactly as a build
writes them. Random numbers compress worse than real ones, so its size is an upper bound.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from vitscope import store
from vitscope.analysis.binary import top_count
from vitscope.vocab import BASE_PATTERNS, HEAD_KINDS, MODES, OFFSETS, PATTERNS, SINK_SHARE


def chunk_arrays(lay: store.Layout, rng: np.random.Generator, n: int,
                 sink_rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """`sink_rng` draws the sink variables (its own stream: the others stay what they were before sinks)."""
    L, H, p, C = lay.layers, lay.heads, lay.grid, lay.classes
    M = len(MODES)
    probs = rng.dirichlet(np.full(C, 0.1), size=(n, L, H, M)).astype(np.float32)  # [n, L, H, M, C]
    top = np.argsort(-probs, axis=-1)[..., : lay.topk]
    imp = np.stack([np.take_along_axis(probs, top[..., :1], -1)[..., 0], rng.beta(1, 20, (n, L, H, M)),
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
    return {
        "label": rng.integers(0, C, n), "valid": np.ones(n, bool), "baseline_prob": rng.random(n),
        "topk_idx": top, "topk_prob": np.take_along_axis(probs, top, -1), "importance": imp,
        "grad_importance": rng.exponential(0.01, (n, L, H)), "strength": strength,
        "strength_entropy": rng.random((n, L, H)), "attention_distance": rng.uniform(0, p, (n, L, H)),
        "cls_attention": cls, "pattern_score": rng.random((n, L, H, len(BASE_PATTERNS))),
        "pattern_label": rng.integers(0, len(PATTERNS), (n, L, H)),
        "pattern_second": rng.integers(0, len(PATTERNS), (n, L, H)),
        "pattern_offset": rng.integers(0, len(OFFSETS), (n, L, H)), "binary_index": index,
        "thumbnail": rng.integers(0, 256, (n, *lay.thumb, 3), dtype=np.uint8),
        "sink_token": sink, "sink_share": np.take_along_axis(received[..., lay.prefix:], sink, -1),
        "prefix_share": received[..., :lay.prefix], "norm_token": high,
        "norm_ratio": np.take_along_axis(norms, high, -1) / np.median(norms, -1, keepdims=True),
    }


def make(out: Path, images: int, layers: int, heads: int, grid: int, classes: int, chunk: int, seed: int = 0) -> Path:
    lay = store.Layout(images=images, layers=layers, heads=heads, classes=classes, grid=grid, tokens=1 + grid * grid,
                       topk=min(5, classes), latent=16, binary_size=min(256, grid * grid),
                       binary_ones=top_count(0.01, grid * grid),
                       thumb=(grid * 16, grid * 16), chunk=chunk)
    store.remove(out)
    attrs = {"model_spec": "synthetic", "model_class": "VisionTransformer", "model_pretrained": False,
             "model_checkpoint": "", "num_prefix_tokens": 1, "patch_grid": grid, "image_source": "synthetic",
             "data_config": '{"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}', "params": "{}"}
    store.create(out, lay, {"model": "synthetic", "weights": "none", "images": f"random-{seed}", "schema":
                            store.SCHEMA_VERSION}, [f"synthetic/{i:06d}.png" for i in range(images)],
                 [f"class {c}" for c in range(classes)], attrs)
    rng, sink_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    for c in range(lay.chunks):
        store.write_chunk(out, c, lay, chunk_arrays(lay, rng, min(chunk, images - c * chunk), sink_rng))
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
    args = ap.parse_args()
    t = time.perf_counter()
    out = make(args.out, args.images, args.layers, args.heads, args.grid, args.classes, args.chunk)
    files = [f for f in out.rglob("*") if f.is_file()]
    total = sum(f.stat().st_size for f in files)
    thumbs = sum(f.stat().st_size for f in files if "thumbnail" in f.parts)
    print(f"{out}: {args.images} images × {args.layers * args.heads} heads in {time.perf_counter() - t:.1f} s; "
          f"{(total - thumbs) / args.images / 1e6:.3f} MB per image without thumbnails (random values: an upper "
          f"bound), {total / 1e6:.0f} MB in all")


if __name__ == "__main__":
    main()
