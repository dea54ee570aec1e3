"""Selection change → updated Bokeh models: how long the app takes, per kind of change (goal ≤ 300 ms).

    python benchmarks/app.py                      # demo store + synthetic ViT-B store (built once, ~75 s)
    python benchmarks/app.py --no-synthetic --repeat 5

Server side only; what a user feels in the browser is `app_browser.py`.

For each store the whole app (`Explorer`, the page without the sidebar) is rendered once into a
Bokeh document (`get_root()`: no server, so the models are updated synchronously), then five
kinds of selection change are timed: image, layer/head, metric, threshold, layout cls↔patch.
Each view's own `update` is timed inside the same changes, so the table shows which view costs
what ("–": the view does not depend on the change). Every timed change is checked
to have changed the models' data or text, so no no-op is timed. Times stop once the Bokeh models
are updated: serialising them to the browser and drawing are not included.

The demo store uses its real model, so its image change includes the engine; the engine alone
(`Service.attention`) is printed below the table. The synthetic ViT-B-shaped store
(12 × 12 heads, 14 × 14 patches, 1000 images; `synthetic_store.py`) has no model: its
attention is one fixed row-stochastic array. Baseline, measured in the same run: one bare
Bokeh figure whose ColumnDataSource of as many points as the store has images is replaced. Not a
test: timings are noisy, only medians over `--repeat` changes are worth comparing.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import statistics
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import bokeh
import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource
from bokeh.plotting import figure
from synthetic_store import make

from vitscope.app.explorer import Explorer
from vitscope.build import cache_root
from vitscope.service import Service
from vitscope.store import open_store
from vitscope.vocab import METRICS

GOAL_MS = 300.0
VITB = dict(images=1000, layers=12, heads=12, grid=14, classes=1000, chunk=64)


@lru_cache(maxsize=2)
def fixed_attention(layers: int, heads: int, tokens: int) -> np.ndarray:
    """[L, H, P, P] float32, rows sum to 1, peaked like real attention (softmax of scaled noise)."""
    z = np.random.default_rng(0).normal(scale=3.0, size=(layers, heads, tokens, tokens)).astype(np.float32)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class SyntheticExplorer(Explorer):
    """The app over a store without a model: every image's attention is the same fixed array."""

    def attention(self, image: int, layer: int) -> np.ndarray:
        d = self.data
        return fixed_attention(d.layers, d.heads, d.num_prefix + d.grid**2)[layer]


def _digest(v) -> bytes:
    if isinstance(v, np.ndarray) and v.dtype != object:
        return hashlib.blake2b(v.tobytes(), digest_size=8).digest() + str(v.shape).encode()
    if isinstance(v, list | tuple | np.ndarray):
        return b"[" + b",".join(_digest(x) for x in v) + b"]"
    if isinstance(v, dict):
        return b"{" + b",".join(k.encode() + b":" + _digest(x) for k, x in sorted(v.items())) + b"}"
    return repr(v).encode()


def fingerprint(root) -> dict[str, bytes]:
    """What the browser would see change: data sources, texts, span positions and visibility of every model."""
    out = {}
    for m in root.references():
        props = m.properties()
        out[m.id] = b"|".join(_digest(getattr(m, p)) for p in ("data", "text", "location", "visible") if p in props)
    return out


def changed(before: dict[str, bytes], after: dict[str, bytes]) -> int:
    return sum(before.get(k) != v for k, v in after.items())


def time_changes(root, apply: Callable[[int], None], n: int) -> tuple[list[float], int]:
    """Seconds of `apply(k)` for k = 0..n-1, and how many of the n changes left the models unchanged."""
    times, noops = [], 0
    for k in range(n):
        before = fingerprint(root)
        t = time.perf_counter()
        apply(k)
        times.append(time.perf_counter() - t)
        noops += changed(before, fingerprint(root)) == 0
    return times, noops


def steps(ex: Explorer, thresholds: list[float]) -> dict[str, Callable[[int], None]]:
    s, d = ex.selection, ex.data
    images = np.flatnonzero(d.valid)[1::7]  # never the starting image, all different
    return {
        "image": lambda k: setattr(s, "image", int(images[k % len(images)])),
        "layer/head": lambda k: s.param.update(layer=(5 * k + 1) % d.layers, head=(7 * k + 1) % d.heads),
        "metric": lambda k: setattr(s, "metric", METRICS[(k + 1) % len(METRICS)]),
        "threshold": lambda k: setattr(s, "threshold", thresholds[k % len(thresholds)]),
        "layout": lambda k: setattr(s, "layout", "patch" if s.layout == "cls" else "cls"),
    }


def _timed(update: Callable, log: list[float]) -> Callable:
    """`update`, adding its seconds to the last entry of `log`."""
    def run(changed=None) -> None:
        t = time.perf_counter()
        update(changed)
        log[-1] += time.perf_counter() - t
    return run


def measure(cls: type[Explorer], path: Path, n: int) -> tuple[dict, dict]:
    """({step: (times, noops)} of the whole app, {view: {step: [seconds in its `update` per change]}})."""
    ex = cls(path)
    s = ex.selection
    s.image = int(np.flatnonzero(ex.data.valid)[0])
    root = pn.panel(ex).get_root()
    spent: dict[str, list[float]] = {type(v).__name__: [0.0] for v in ex.views}
    for view in ex.views:  # each view's own share of a change, measured inside the whole app's update
        view.update = _timed(view.update, spent[type(view).__name__])
    gc.collect()
    thresholds: list[float] = []  # quantiles of the head selected when the threshold step starts
    out, per_view = {}, {name: {} for name in spent}
    for name, apply in steps(ex, thresholds).items():
        if name == "threshold":
            A = ex.attention(s.image, s.layer)[s.head]
            thresholds[:] = [float(np.quantile(A, q)) for q in (0.9, 0.95, 0.98, 0.99, 0.995)]
        for v in spent.values():
            v[:] = []

        def apply_counted(k: int, _apply=apply) -> None:
            for v in spent.values():
                v.append(0.0)
            _apply(k)

        out[name] = time_changes(root, apply_counted, n)
        for view, times in spent.items():
            per_view[view][name] = list(times)
    return out, per_view


def baseline(points: int, n: int) -> float:
    """Median seconds of replacing the data of one bare Bokeh figure's ColumnDataSource of `points` points."""
    rng = np.random.default_rng(0)
    frames = [rng.normal(size=(points, 2)) for _ in range(n + 1)]
    source = ColumnDataSource({"x": frames[0][:, 0], "y": frames[0][:, 1]})
    fig = figure(width=300, height=300)
    fig.scatter("x", "y", source=source)
    root = pn.pane.Bokeh(fig).get_root()
    times, noops = time_changes(root, lambda k: setattr(source, "data", {"x": frames[k + 1][:, 0],
                                                                         "y": frames[k + 1][:, 1]}), n)
    assert noops == 0, "baseline update did not reach the Bokeh model"
    return statistics.median(times)


def bench_store(cls: type[Explorer], path: Path, repeat: int) -> None:
    """Print one store's table."""
    ex = cls(path)
    d = ex.data
    base = baseline(d.images, repeat)
    n = repeat + 1  # the first change of each kind is reported apart (cold caches)
    app, views = measure(cls, path, n)

    ms = 1e3
    print(f"\n### {path.name}: {d.images} images, {d.layers} × {d.heads} heads, {d.grid} × {d.grid} patches "
          f"({cls.__name__})\n")
    print(f"baseline (bare Bokeh figure, {d.images} points replaced): {base * ms:.1f} ms\n")
    print("| change | first ms | median ms | max ms | median / 300 ms | median / baseline | "
          + " | ".join(f"{v} ms" for v in views) + " |")
    print("| --- " * (6 + len(views)) + "|")
    for name, (times, noops) in app.items():
        assert noops == 0, f"{name}: {noops} of {n} changes left every Bokeh model unchanged"
        med, top = statistics.median(times[1:]), max(times[1:])
        cells = [f"{statistics.median(v[name][1:]) * ms:.1f}" if any(v[name]) else "–" for v in views.values()]
        print(f"| {name} | {times[0] * ms:.1f} | **{med * ms:.1f}** | {top * ms:.1f} | {med * ms / GOAL_MS:.2f} | "
              f"{med / base:.1f} | " + " | ".join(cells) + " |")


def engine_time(path: Path, repeat: int) -> None:
    svc = Service(path)
    valid = np.flatnonzero(open_store(path)["valid"].values)
    svc.attention(int(valid[0]))  # warm up
    times = []
    for i in valid[1 : repeat + 1]:
        t = time.perf_counter()
        svc.attention(int(i))
        times.append(time.perf_counter() - t)
    print(f"\nengine alone, Service.attention of one image ({path.name}, CPU): median "
          f"{statistics.median(times) * 1e3:.1f} ms, max {max(times) * 1e3:.1f} ms (in the image row above)")


def synthetic_store(path: Path) -> Path:
    """The ViT-B-shaped store at `path`, built if missing or of another shape."""
    want = {"image": VITB["images"], "layer": VITB["layers"], "head": VITB["heads"]}
    try:
        ds = open_store(path)
        if {k: ds.sizes[k] for k in want} == want and int(ds.attrs["patch_grid"]) == VITB["grid"]:
            return path
    except Exception:  # noqa: BLE001 - missing or unreadable: build it
        pass
    t = time.perf_counter()
    make(path, **VITB)
    print(f"built {path} in {time.perf_counter() - t:.0f} s")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=cache_root() / "demo.zarr", help="a built store (real model)")
    ap.add_argument("--synthetic", action=argparse.BooleanOptionalAction, default=True,
                    help="also the synthetic ViT-B-shaped store")
    ap.add_argument("--synthetic-store", type=Path, default=cache_root() / "synthetic_vitb.zarr",
                    help="where the synthetic store is (built there once when missing)")
    ap.add_argument("--repeat", type=int, default=10, help="timed changes of each kind (after one first change)")
    args = ap.parse_args()
    pn.extension()
    print(f"panel {pn.__version__}, bokeh {bokeh.__version__}; times in ms from the selection change to updated "
          f"Bokeh models (no browser); goal ≤ {GOAL_MS:.0f} ms")
    bench_store(Explorer, args.store, args.repeat)
    engine_time(args.store, args.repeat)
    if args.synthetic:
        bench_store(SyntheticExplorer, synthetic_store(args.synthetic_store), args.repeat)


if __name__ == "__main__":
    main()
