"""Many users on one `vitscope serve`: how long each of N browser sessions waits when all choose an image at once,
against one session alone, with and without Panel's thread pool.

    python benchmarks/sessions.py                                 # demo store, 8 sessions, --threads 0 and 4
    python benchmarks/sessions.py --store cache/vit_tiny_in200.zarr --threads 0 2 4 8 --repeat 3

For each --threads value the real command (`vitscope serve STORE --threads T`) runs in a subprocess and N
Playwright contexts (N server sessions) open the app in Debian's headless Chromium. A change is an image typed
into the id box + Enter, timed by app_browser.py's page clock: input event → the page's last websocket frame,
Bokeh model change, paint or text change, once it has been quiet for 1 s (not counted). "one" is one session
changing while the others are idle; "all" is every session pressing Enter together (each to its own image), a
wait per session. A server that handles the sessions one after another makes the mean wait grow like (N + 1) / 2
times one session's and the longest like N times; the browsers share the machine's cores too. Not a test:
timings are noisy (2 shared cores), compare within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from app_browser import CHROMIUM, QUIET_MS, TIMEOUT_MS, ensure_demo, free_port, open_page, quiet
from playwright.sync_api import Page, sync_playwright

from vitscope.build import cache_root
from vitscope.store import open_store


class Serve:
    """`vitscope serve STORE --threads T` in a subprocess, its output in a log file."""

    def __init__(self, store: Path, threads: int) -> None:
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", prefix="sessions-")
        cmd = [sys.executable, "-m", "vitscope.cli", "serve", str(store), "--port", str(self.port),
               "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
        self.url = f"http://localhost:{self.port}/"
        deadline = time.time() + 300
        while self.url not in Path(self.log.name).read_text(errors="replace"):
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"vitscope serve did not start:\n{Path(self.log.name).read_text()[-3000:]}")
            time.sleep(0.2)

    def close(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        text = Path(self.log.name).read_text(errors="replace")
        self.log.close()
        return text


def type_ids(pages: list[Page], ids: list[int]) -> None:
    for page, image in zip(pages, ids, strict=True):
        page.locator(".vs-image-id input").first.fill(str(image))
    for page in pages:
        quiet(page, 300)


def press_all(pages: list[Page]) -> list[float]:
    """Arm every page's clock, press Enter in each (together), then each page's wait in ms (NaN: no settle)."""
    for page in pages:
        page.evaluate("() => window.__vs.arm()")
    for page in pages:
        page.locator(".vs-image-id input").first.press("Enter")
    waits = []
    for page in pages:
        res = page.evaluate("([ms, t]) => window.__vs.settle(ms, t)", [QUIET_MS, TIMEOUT_MS])
        waits.append(res["ms"] if res["ok"] and res["n"]["doc"] else float("nan"))
    return waits


def bench(store: Path, threads: int, sessions: int, repeat: int, viewport: tuple[int, int]) -> dict:
    valid = np.flatnonzero(open_store(store)["valid"].values)
    ids = iter(int(i) for i in np.random.default_rng(0).permutation(np.resize(valid, 4 * sessions * (repeat + 2))))
    server = Serve(store, threads)
    errors: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
            pages = []
            for _ in range(sessions):
                context = browser.new_context(viewport=dict(zip(("width", "height"), viewport, strict=True)))
                pages.append(open_page(context, server.url, errors))
            for page in pages:  # warm-up: each session's first image (cold caches)
                type_ids([page], [next(ids)])
                press_all([page])
            one, every = [], []
            for _ in range(repeat):
                type_ids(pages[:1], [next(ids)])
                one += press_all(pages[:1])
            for _ in range(repeat):
                type_ids(pages, [next(ids) for _ in pages])
                every += press_all(pages)
            browser.close()
    finally:
        log = server.close()
    if "Traceback" in log:
        print(f"server log:\n{log[-3000:]}")
    return {"one": one, "all": every, "errors": errors}


def server_alone(store: Path, threads: int, sessions: int, repeat: int) -> tuple[list[float], list[float]]:
    """The server's part without browsers: `sessions` Explorers (each rendered into its own document, as a served
    session is) select an image at once on a pool of `threads` workers (0: one after another, as on the event
    loop); each one's wait until its views are updated, in ms: (alone, all at once)."""
    from concurrent.futures import ThreadPoolExecutor

    import panel as pn

    from vitscope.app import Explorer

    valid = np.flatnonzero(open_store(store)["valid"].values)
    ids = iter(int(i) for i in np.random.default_rng(1).permutation(np.resize(valid, 4 * sessions * (repeat + 2))))
    explorers = [Explorer(store) for _ in range(sessions)]
    for ex in explorers:
        pn.panel(ex.main()).get_root()
        ex.overview.select(next(ids))  # warm-up

    def select(ex: Explorer, image: int, start: float) -> float:
        ex.overview.select(image)
        return (time.perf_counter() - start) * 1000

    one, every = [], []
    with ThreadPoolExecutor(max(threads, 1)) as pool:
        for _ in range(repeat):
            one.append(select(explorers[0], next(ids), time.perf_counter()))
        for _ in range(repeat):
            start = time.perf_counter()
            every += list(pool.map(select, explorers, [next(ids) for _ in explorers], [start] * sessions))
    return one, every


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=None, help="default: the demo store (built when missing)")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--threads", type=int, nargs="+", default=[0, 4], help="`vitscope serve --threads` values")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--viewport", default="1600x1000")
    ap.add_argument("--no-browser", action="store_true", help="only the server-alone table")
    args = ap.parse_args()
    store = args.store or cache_root() / "demo.zarr"
    if args.store is None:
        ensure_demo(store)
    viewport = tuple(int(v) for v in args.viewport.split("x"))
    n = args.sessions
    print(f"{store}: {n} sessions, image typed + Enter, {args.repeat} rounds, {os.cpu_count()} cores\n")
    print(f"| --threads | one session: wait ms | {n} at once: median ms | {n} at once: max ms | median ratio "
          "| max ratio | not settled |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for t in [] if args.no_browser else args.threads:
        r = bench(store, t, n, args.repeat, viewport)
        one, every = [w for w in r["one"] if w == w], [w for w in r["all"] if w == w]
        failed = len(r["all"]) - len(every) + len(r["one"]) - len(one)
        if not one or not every:
            print(f"| {t} | n/a | n/a | n/a | n/a | n/a | {failed} |")
            continue
        m1, mn, top = statistics.median(one), statistics.median(every), max(every)
        print(f"| {t} | {m1:.0f} | **{mn:.0f}** | {top:.0f} | **{mn / m1:.2f}** | {top / m1:.2f} | {failed} |",
              flush=True)
        for e in sorted({e for e in r["errors"] if "fonts.googleapis" not in e and "ERR_NAME_NOT" not in e})[:5]:
            print(f"  page: {e[:200]}")
    print(f"\nA serial server: median ratio ≈ {(n + 1) / 2:.1f}, max ratio ≈ {n}.")
    print(f"\nThe server alone (no browser, no websocket): {n} sessions' Explorers select an image at once on a pool "
          "of --threads workers\n")
    print(f"| --threads | one session: ms | {n} at once: median ms | {n} at once: max ms | median ratio | max ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for t in args.threads:
        one, every = server_alone(store, t, n, args.repeat)
        m1, mn = statistics.median(one), statistics.median(every)
        print(f"| {t} | {m1:.0f} | **{mn:.0f}** | {max(every):.0f} | **{mn / m1:.2f}** | {max(every) / m1:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
