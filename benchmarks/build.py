"""Build time and bytes per image of the demo store, and the store size of a ViT-B-sized model.

    python benchmarks/build.py                 # demo: 1000 images, into a temporary folder
    python benchmarks/build.py --limit 200     # quicker

Prints each stage's time (images: engine + per-image analysis; autoencoder; tSNE) and the
store's bytes per image without thumbnails. For ViT-B/16 (12 × 12 heads, 197 tokens) the
size is estimated from the schema (uncompressed: an upper bound), scaled by the compression
ratio measured on the demo store. Not a test: timings are noisy.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

from vitscope import store
from vitscope.analysis.cls import top_count
from vitscope.build import BuildConfig, build


def raw_bytes_per_image(lay: store.Layout, skip=("thumbnail", "attention")) -> int:
    sizes = lay.sizes()
    total = 0
    for name, (dims, dtype) in lay.variables().items():
        if name in skip:
            continue
        total += int(np.prod([sizes[d] for d in dims if d != "image"])) * np.dtype(dtype).itemsize
    return total


def disk_bytes(path: Path, skip=("thumbnail",)) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not any(s in f.parts for s in skip))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "demo.zarr"
        cfg = BuildConfig(model="demo", images="demo", out=out, limit=args.limit, overwrite=True)
        t = time.perf_counter()
        build(cfg)
        total = time.perf_counter() - t
        lay = store.read_layout(out)
        n = lay.images
        disk = disk_bytes(out)
        raw = raw_bytes_per_image(lay) * n
        print(f"demo store, {n} images: build {total:.1f} s (goal ≤ 300 s for 1000) — "
              + ", ".join(f"{k} {v:.1f} s" for k, v in cfg.timings.items()))
        print(f"  on disk without thumbnails: {disk / n / 1e3:.1f} kB per image "
              f"(uncompressed {raw / n / 1e3:.1f} kB; compression {raw / disk:.2f}x)")
        vitb = store.Layout(images=1000, layers=12, heads=12, classes=1000, grid=14, tokens=197, topk=5,
                            latent=16, binary_size=196, binary_ones=top_count(0.01, 196), thumb=(224, 224), chunk=64)
        est = raw_bytes_per_image(vitb)
        print(f"ViT-B/16 estimate: {est / 1e6:.3f} MB per image uncompressed, "
              f"~{est / (raw / disk) / 1e6:.3f} MB at the demo's compression (goal ≤ 0.3 MB); "
              f"raw attention would be {12 * 12 * 197 * 197 * 2 / 1e6:.1f} MB per image in float16")
        ds = xr.open_zarr(str(out))
        print(f"  autoencoder loss per epoch: {', '.join(f'{v:.4f}' for v in ds.attrs['ae_loss'])}")


if __name__ == "__main__":
    main()
