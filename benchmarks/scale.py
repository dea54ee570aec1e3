"""How each cost grows with the number of images N: synthetic ViT-B stores of 1k, 3k, 10k images, each figure as a
ratio to the smallest size of the same run.

    python benchmarks/scale.py                                       # 1000,3000 images (ViT-B shape), all parts
    python benchmarks/scale.py --sizes 1000,3000,10000 --skip-build  # reuse the stores in --dir
    python benchmarks/scale.py --parts store,server --repeat 5       # some parts only

Parts (`--parts`):
- `store`: the synthetic store (`synthetic_store.py`, servable: a random-init ViT-B beside it): seconds to generate,
  its size on disk and per image (thumbnails apart: flat patches, smaller than photos).
- `build`: the build's own stages after the per-image one, on the store: head kinds (`vitscope.build.finish_heads`),
  then `vitscope.layouts.finish_layouts` (pattern autoencoder, then every tSNE layout the build computes: whatever
  that stage does when this runs). They overwrite the store's random layouts and kinds with computed ones.
- `server`: server-side ms of a selection change without a browser (`app.py`'s method: `Explorer` rendered with
  `get_root()`, every update synchronous), median of `--repeat`: an image change, a head tap (layer/head), a pick on
  the Attention Pattern View's map (its nearest head: image, layer, head) and a zoom of that map (re-aggregation).
  Attention is `app.py`'s fixed array (`SyntheticExplorer`): the engine's time does not grow with N.
- `browser`: `vitscope serve STORE` in a subprocess (the real app, its random ViT-B computing attention on the CPU)
  and headless Chromium (`app_browser.py`'s page clock): page load → settled (ms in the page clock) and the bytes
  the page received (HTTP bodies + websocket frames); settle ms of `image_id`, `head_tap`, `pattern_tap` (median
  of `--repeat`); the server's RSS (with its children) before any session, after 1 session and after 8 sessions
  (7 more pages, each its own session), and per added session.

Not a test: timings are noisy on a shared machine; write down the machine and its load with the figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import psutil

PARTS = ("store", "build", "server", "browser")
BROWSER_KINDS = ("image_id", "head_tap", "pattern_tap")


def dir_bytes(path: Path, skip: str | None = None) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and (skip is None or skip not in f.parts))


def part_store(path: Path, n: int, skip_build: bool) -> dict[str, float]:
    from synthetic_store import make, side_folder

    from vitscope.store import open_store

    out: dict[str, float] = {}
    reuse = skip_build and path.exists()
    if reuse:
        reuse = open_store(path).sizes["image"] == n and side_folder(path).exists()
    if not reuse:
        t = time.perf_counter()
        make(path, n, 12, 12, 14, 1000, 64, servable=True)
        out["generate s"] = time.perf_counter() - t
    total, thumbs = dir_bytes(path), dir_bytes(path / "thumbnail")
    out |= {"store MB": total / 1e6, "kB/image without thumbnails": (total - thumbs) / n / 1e3,
            "thumbnails MB": thumbs / 1e6, "model + PNGs beside MB": dir_bytes(side_folder(path)) / 1e6}
    return out


def part_build(path: Path) -> dict[str, float]:
    from vitscope.build import finish_heads
    from vitscope.config import BuildConfig
    from vitscope.layouts import finish_layouts

    cfg = BuildConfig(model="synthetic", images="synthetic", out=path, progress=False)
    t, c = time.perf_counter(), time.process_time()
    finish_heads(path, cfg)  # also marks every layout pending: finish_layouts computes them all
    heads, heads_cpu = time.perf_counter() - t, time.process_time() - c
    timings: dict[str, float] = {}
    t, c = time.perf_counter(), time.process_time()
    finish_layouts(path, cfg, timings)
    total, total_cpu = time.perf_counter() - t, time.process_time() - c
    # CPU seconds (all of this process's threads) next to wall seconds: on a shared machine they say what the
    # stage costs, whatever else ran
    return {"head kinds s": heads, "head kinds CPU s": heads_cpu, "autoencoder s": timings.get("autoencoder", 0.0),
            "tSNE layouts s": timings.get("tsne", 0.0), "layouts stage s": total, "layouts stage CPU s": total_cpu}


def part_server(path: Path, repeat: int) -> dict[str, float]:
    import panel as pn
    from app import SyntheticExplorer, time_changes

    ex = SyntheticExplorer(path)
    s, d = ex.selection, ex.data
    valid = np.flatnonzero(d.valid)
    s.image = int(valid[0])
    root = pn.panel(ex).get_root()
    images = valid[1::max(len(valid) // (4 * repeat + 4), 1)]
    mp = ex.pattern.map
    rng = np.random.default_rng(0)

    def pick(k: int) -> None:
        x0, x1 = mp.figure.x_range.start, mp.figure.x_range.end
        y0, y1 = mp.figure.y_range.start, mp.figure.y_range.end
        mp.pick(x0 + (x1 - x0) * rng.uniform(0.2, 0.8), y0 + (y1 - y0) * rng.uniform(0.2, 0.8))

    def zoom(k: int) -> None:
        x0, x1 = mp.figure.x_range.start, mp.figure.x_range.end
        y0, y1 = mp.figure.y_range.start, mp.figure.y_range.end
        f = 0.15 + 0.1 * (k % 3)  # a different window each time
        mp.reaggregate((x0 + f * (x1 - x0), x1 - f * (x1 - x0)), (y0 + f * (y1 - y0), y1 - f * (y1 - y0)))

    steps = {"image change": lambda k: setattr(s, "image", int(images[k % len(images)])),
             "head tap": lambda k: s.param.update(layer=(5 * k + 1) % d.layers, head=(7 * k + 1) % d.heads),
             "map pick": pick, "map zoom": zoom}
    out = {}
    for name, apply in steps.items():
        times, _ = time_changes(root, apply, repeat + 1)  # the first (cold caches) is left out
        out[f"server {name} ms"] = statistics.median(times[1:]) * 1e3
    return out


def rss(pid: int) -> float:
    """MB resident of a process and its children (the dispatcher's workers, if any)."""
    p = psutil.Process(pid)
    return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 1e6


def part_browser(path: Path, repeat: int, sessions: int, quiet_ms: float, verbose: int) -> dict[str, float]:
    import app_browser
    from app_browser import CHROMIUM, actions, open_page, quiet, run_kind
    from playwright.sync_api import sync_playwright
    from sessions import Serve

    from vitscope.store import open_store

    # ViT-B's attention on a busy CPU takes seconds with nothing sent meanwhile: a 1 s quiet page is not settled
    app_browser.QUIET_MS = quiet_ms
    valid = np.flatnonzero(open_store(path)["valid"].values)
    server = Serve(path, threads=0)
    out: dict[str, float] = {}
    errors: list[str] = []
    try:
        time.sleep(2)
        out["RSS no session MB"] = rss(server.proc.pid)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            http: list[int] = []
            context.on("requestfinished", lambda r: http.append(sum(r.sizes()[k] for k in (
                "responseBodySize", "responseHeadersSize"))))
            page = open_page(context, server.url, errors)
            out["page load ms"] = page.evaluate("() => Math.max(...Object.values(window.__vs.last))")
            out["page load kB"] = (sum(http) + page.evaluate("() => window.__vs.bytesIn")) / 1e3
            out["RSS 1 session MB"] = rss(server.proc.pid)
            make = actions(page, valid)
            for kind in BROWSER_KINDS:
                res = run_kind(page, make[kind], kind, repeat, verbose)
                out[f"browser {kind} ms"] = statistics.median(res.times) if res.times else float("nan")
                if res.na or res.noops or res.failures:
                    print(f"{path.name} {kind}: {len(res.times)} timed, {res.noops} no-ops, {res.failures} not "
                          f"settled{', n/a: ' + res.na if res.na else ''}")
            out["RSS 1 session, used MB"] = rss(server.proc.pid)
            pages = [page]
            for _ in range(sessions - 1):
                pages.append(open_page(browser.new_context(viewport={"width": 1600, "height": 1000}), server.url,
                                       errors))
            for pg in pages:
                quiet(pg, quiet_ms, 60_000)
            time.sleep(2)
            out[f"RSS {sessions} sessions MB"] = rss(server.proc.pid)
            out["RSS per added session MB"] = (out[f"RSS {sessions} sessions MB"] - out["RSS 1 session, used MB"]) / (
                sessions - 1)
            browser.close()
    finally:
        log = server.close()
    page_errors = [e for e in errors if "fonts" not in e]
    out["page errors"] = len(page_errors)
    if page_errors:
        print(f"{path.name}: {len(page_errors)} page errors, e.g. {page_errors[:3]}")
    if "Traceback" in log:
        print(f"{path.name}: the server's log has a traceback:\n{log[-2000:]}")
    return out


def table(results: dict[int, dict[str, float]]) -> str:
    """Markdown: one row per figure, one column per size with its ratio to the first size."""
    sizes = list(results)
    names = list(dict.fromkeys(k for r in results.values() for k in r))
    rows = ["| figure | " + " | ".join(f"N = {n:,}" for n in sizes) + " |", "| --- " * (len(sizes) + 1) + "|"]
    first = results[sizes[0]]
    for name in names:
        cells = []
        for n in sizes:
            v = results[n].get(name)
            if v is None:
                cells.append("–")
                continue
            base = first.get(name)
            ratio = f" (×{v / base:.2f})" if n != sizes[0] and base and np.isfinite(base) and base > 0 else ""
            cells.append(f"{v:,.1f}{ratio}" if abs(v) < 1e5 else f"{v:,.0f}{ratio}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,3000", help="images per store, comma-separated (the first: the base)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/vitscope-scale"), help="where the stores are")
    ap.add_argument("--skip-build", action="store_true", help="reuse a store of the right size in --dir")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"which of {', '.join(PARTS)}")
    ap.add_argument("--repeat", type=int, default=5, help="timed changes of each kind (after a first one)")
    ap.add_argument("--sessions", type=int, default=8, help="browser sessions for the memory figure")
    ap.add_argument("--quiet-ms", type=float, default=3000.0,
                    help="the page has settled once quiet this long (app_browser.py: 1000; ViT-B on a CPU needs more)")
    ap.add_argument("-v", "--verbose", action="count", default=0, help="every browser change")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    parts = args.parts.split(",")
    if unknown := set(parts) - set(PARTS):
        raise SystemExit(f"unknown parts {sorted(unknown)}: choose from {', '.join(PARTS)}")
    args.dir.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPUs, load {' '.join(f'{v:.2f}' for v in os.getloadavg())}, "
          f"{psutil.virtual_memory().total / 1e9:.0f} GB RAM; {platform.processor() or platform.machine()}")
    results: dict[int, dict[str, float]] = {}
    for n in sizes:
        path = args.dir / f"vitb-{n}.zarr"
        r: dict[str, float] = {}
        t = time.perf_counter()
        if "store" in parts or not path.exists():
            r |= part_store(path, n, args.skip_build)
        if "build" in parts:
            r |= part_build(path)
        if "server" in parts:
            r |= part_server(path, args.repeat)
        if "browser" in parts:
            r |= part_browser(path, args.repeat, args.sessions, args.quiet_ms, args.verbose)
        results[n] = r
        print(f"N = {n}: {time.perf_counter() - t:.0f} s, load now {os.getloadavg()[0]:.2f}", flush=True)
        print(table(results), flush=True)
    print("\n" + table(results))


if __name__ == "__main__":
    main()
