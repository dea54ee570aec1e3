"""The Attention Pattern View's map: re-aggregation time on zoom and pan at ViT-B scale (goal ≤ 300 ms, server side).

    python benchmarks/pattern_map.py                     # 10,000 images × 12 × 12 heads = 1.44 M points
    python benchmarks/pattern_map.py --images 1000 --repeat 20

Times `vitscope.app.pattern_map.aggregate` (what `PatternMap.reaggregate` runs on every zoom or pan:
datashader's per-layer count, shading and spreading at the map's 340 × 340 pixels) on synthetic head
points: one cluster per (layer, head) plus noise, as the tSNE layouts look, through the real
`StoreData.head_frame` (the store is not built: a stand-in holds the layout array). Ranges: the full
extent (the view's first draw and every "reset"), then zooms to 1/2, 1/5 and 1/20 of each side and
pans at those zooms, each `--repeat` times at different places; and the full extent again, which the map keeps
(the last 16 aggregations are kept for every session). Baseline, in the same run: datashader's
plain `count()` of the same points at the same size (no layers, no shading), the least any
aggregation of them costs. Not a test: compare medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import datashader as ds
import numpy as np

from vitscope.app import pattern_map
from vitscope.app.pattern_map import aggregate
from vitscope.readout.store_data import StoreData

SIZE = 340  # PatternMap's default figure size
GOAL_MS = 300.0


class FakeStore:
    """What `aggregate` reads of a StoreData: the head layout as a frame, the layer count."""

    head_frame = StoreData.head_frame

    def __init__(self, images: int, layers: int, heads: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        centres = rng.uniform(-40, 40, (layers, heads, 2))
        spread = rng.uniform(1, 6, (layers, heads, 1))
        xy = centres[None] + rng.normal(size=(images, layers, heads, 2)) * spread[None]
        self.head_xy_cls = xy.astype(np.float32)
        self.layers, self.heads = layers, heads
        self._frames: dict = {}
        lo, hi = xy.reshape(-1, 2).min(0), xy.reshape(-1, 2).max(0)
        self.extent = (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))


def plain_count(data: FakeStore, kind: str, x_range, y_range, width: int, height: int) -> np.ndarray:
    frame = data.head_frame(kind)
    return ds.Canvas(plot_width=width, plot_height=height, x_range=x_range, y_range=y_range).points(
        frame, "x", "y", ds.count()).values


def ranges(extent, repeat: int, seed: int = 1):
    """(name, x_range, y_range) of each timed aggregation: the full extent, then zooms and pans."""
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = extent
    w, h = x1 - x0, y1 - y0
    out = [("full extent", (x0, x1), (y0, y1))] * repeat
    for zoom in (2, 5, 20):
        for _ in range(repeat):
            cx, cy = rng.uniform(x0 + w / (2 * zoom), x1 - w / (2 * zoom)), rng.uniform(y0 + h / (2 * zoom),
                                                                                          y1 - h / (2 * zoom))
            out.append((f"zoom 1/{zoom}", (cx - w / (2 * zoom), cx + w / (2 * zoom)),
                        (cy - h / (2 * zoom), cy + h / (2 * zoom))))
    return out


def timed(fn, runs) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    for name, xr, yr in runs:
        t = time.perf_counter()
        fn(xr, yr)
        times.setdefault(name, []).append((time.perf_counter() - t) * 1000)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    t = time.perf_counter()
    data = FakeStore(args.images, args.layers, args.heads)
    data.head_frame("cls")
    points = len(data.head_frame("cls"))
    print(f"{points:,} head points ({args.images} images × {args.layers} × {args.heads} heads), frame built in "
          f"{time.perf_counter() - t:.1f} s; map {SIZE} × {SIZE} px")
    runs = ranges(data.extent, args.repeat)
    x0, y0, x1, y1 = data.extent
    first = {}
    for fn in (aggregate, plain_count):  # first calls compile datashader's numba kernels: not in the table
        t = time.perf_counter()
        fn(data, "cls", (x0, x1), (y0, y1), SIZE, SIZE)
        first[fn.__name__] = time.perf_counter() - t
    print(f"first call (compiles datashader's kernels): aggregate {first['aggregate']:.1f} s, plain count "
          f"{first['plain_count']:.1f} s")
    def fresh(xr, yr):  # aggregated, not taken from the last aggregations kept (`pattern_map._recent`)
        pattern_map._recent.clear()
        aggregate(data, "cls", xr, yr, SIZE, SIZE)

    ours = timed(fresh, runs)
    ours["full extent, again (kept)"] = timed(lambda xr, yr: aggregate(data, "cls", xr, yr, SIZE, SIZE),
                                              runs[:args.repeat])["full extent"]
    base = timed(lambda xr, yr: plain_count(data, "cls", xr, yr, SIZE, SIZE), runs)
    print(f"\n| ranges | aggregate median ms | max ms | baseline (plain count) median ms | ratio | "
          f"goal ≤ {GOAL_MS:.0f} ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, ms in ours.items():
        med, b = statistics.median(ms), statistics.median(base[name.removesuffix(", again (kept)")])
        ok = "ok" if max(ms) <= GOAL_MS else "MISS"
        print(f"| {name} | **{med:.0f}** | {max(ms):.0f} | {b:.0f} | {med / b:.1f} | {ok} |")


if __name__ == "__main__":
    main()
