"""The on-demand service against a plain forward of the same model, measured in one run.

    python benchmarks/service.py [STORE ...]      (default: cache/demo.zarr and cache/vit_tiny_in200.zarr
                                                    or cache/vit_tiny_in48.zarr when they exist)

For each store: one plain `model(x)` of one image (the baseline), then heads pruned together (k = 1, 4,
12, random heads over all layers, whole-head mode), the 12-head pair matrix (78 joint prunings), patch
saliency (one occlusion per patch) and a new image (the build's whole per-image analysis plus its layout
places), each as the median of a few runs through the queue, and as a ratio to the plain forward.
Goals, ViT-Ti on this 2-core CPU: pruning ≤ 100 ms, pair matrix ≤ 2 s, saliency ≤ 5 s.
"""

from __future__ import annotations

import io
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from vitscope.service import Dispatcher, LocalBackend

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"prune k=1": 0.1, "prune k=4": 0.1, "prune k=12": 0.1, "pair matrix (12)": 2.0, "patch saliency": 5.0}


def timed(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(path: Path) -> None:
    d = Dispatcher(LocalBackend(path))
    svc = d.backend.service
    ad = svc.adapter
    L, H = ad.num_layers, ad.num_heads
    rng = random.Random(0)
    image = int(svc.valid.nonzero()[0][0])
    x = svc.input(image)
    with torch.inference_mode():
        ad.model(x)
        plain = timed(lambda: ad.model(x), 20)

    def ask(request: dict) -> dict:
        r = d.ask("bench", request)
        assert "error" not in r, r["error"]
        return r

    rows = []
    for k in (1, 4, 12):
        heads = [f"{rng.randrange(L)}:{rng.randrange(H)}" for _ in range(k)]
        ask({"kind": "prune", "image": image, "heads": heads})  # the image's unpruned pass is then cached
        rows.append((f"prune k={k}", timed(lambda h=heads: ask({"kind": "prune", "image": image, "heads": h}), 10)))
    rows.append(("pair matrix (12)", timed(lambda: ask({"kind": "pairs", "image": image, "k": 12}), 3)))
    rows.append(("patch saliency", timed(lambda: ask({"kind": "saliency", "image": image}), 2)))
    buf = io.BytesIO()
    Image.fromarray(svc.ds["thumbnail"][image].values).save(buf, format="PNG")
    rows.append(("new image", timed(lambda: ask({"kind": "new_image", "data": buf.getvalue()}), 2)))
    d.close()

    print(f"\n{path.name}: {ad.spec}, {L}×{H} heads, {ad.num_tokens} tokens; plain forward of one image "
          f"{plain * 1e3:.1f} ms ({torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f})")
    print(f"  {'request':<18} {'median':>10} {'× forward':>10}  goal (ViT-Ti, 2-core CPU)")
    for name, t in rows:
        goal = f"≤ {GOALS[name] * 1e3:.0f} ms" if name in GOALS else ""
        print(f"  {name:<18} {t * 1e3:>8.1f} ms {t / plain:>10.1f}  {goal}")


def main(argv: list[str]) -> None:
    paths = [Path(p) for p in argv] or [p for p in (ROOT / "cache/demo.zarr", ROOT / "cache/vit_tiny_in200.zarr")
                                         if p.exists()]
    if not paths:
        sys.exit("no store: run `vitscope demo --no-serve` first, or give STORE paths")
    for p in paths:
        bench(p)


if __name__ == "__main__":
    main(sys.argv[1:])
