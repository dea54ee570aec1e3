"""The first tap in JupyterLab: apps/explore.ipynb's app cell in a real JupyterLab and headless Chromium, offline.

    python benchmarks/jupyter_browser.py                     # a 16-image demo store, built first (~10 s)
    python benchmarks/jupyter_browser.py --store cache/demo.zarr --taps 5
    python benchmarks/jupyter_browser.py --cold              # no warm-up at open (how the app cell once ran)

Runs the notebook's app cell (`Explorer.open(STORE)`; with `--cold`, `Explorer(STORE)` after
`pn.extension(inline=True)`: the model loads at the first tap), waits until the Image Overview is in the page,
then taps an image at once, as a user would, and times tap → the page shows that image (the Image Overview's
marker on it, the Attention Strength View's title naming it, the masks' title naming a token: all set in one
document change, after the attention of the image is computed). The baseline, in the same run: `--taps` later
taps on other images, timed the same way. Prints the first tap's settle time, the median of the later ones and
the ratio, and how many comm messages each tap sent each way (counted in the page, from the click to the next
click, the page's echo of the kernel's changes included). Goal: the first tap ≤ 1 s. Wall-clock from
the test's side (Playwright polls every 20 ms); not a test: timings are noisy (2 cores shared with the browser and
the kernel), compare ratios of one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from jupyter_helpers import ARGS, Lab, external, notebook_copy, open_notebook, run_cell  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from test_browser import CHROMIUM, MODEL_JS, SCREEN_JS  # noqa: E402

MASKS_BLANK = "image · source mask · target mask"
# JupyterLab's kernel connection reports every message it sends or receives (`anyMessage`); count the comm messages.
COUNT_JS = """() => { const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  window.vsComm = {send: 0, recv: 0};
  k.anyMessage.connect((_, a) => { if (a.msg.header.msg_type === 'comm_msg') window.vsComm[a.direction] += 1; }); }"""
TAKE_JS = "() => { const c = {...window.vsComm}; window.vsComm.send = window.vsComm.recv = 0; return c; }"


def model(page, name: str, attr: str):
    return page.evaluate(MODEL_JS, [name, attr])


def timed_tap(page, k: int, timeout: float = 60) -> float:
    """Tap the k-th point of the Image Overview; seconds until the page shows that image's attention."""
    xs, ys = model(page, "vs-overview-points", "data.x"), model(page, "vs-overview-points", "data.y")
    image = model(page, "vs-overview-points", "data.image")[k]
    page.mouse.click(*page.evaluate(SCREEN_JS, ["vs-overview-fig", xs[k], ys[k]]))
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if (model(page, "vs-overview-marker", "data.x") == [xs[k]] and model(page, "vs-masks-fig", "title.text") !=
                MASKS_BLANK and model(page, "vs-strength-fig", "title.text").endswith(f"image {image}")):
            return time.perf_counter() - t0
        page.wait_for_timeout(20)
    raise SystemExit(f"tap {k} did not settle within {timeout:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, help="a store (default: a 16-image demo store, built in a temp dir)")
    ap.add_argument("--taps", type=int, default=4, help="later taps, the baseline (default 4)")
    ap.add_argument("--cold", action="store_true", help="no warm-up at open (the app cell without its warm-up thread)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = args.store
        if store is None:
            from vitscope.build import BuildConfig, build

            store = tmp / "demo16.zarr"
            build(BuildConfig(model="demo", images="demo", out=store, limit=16, chunk=8, ae_epochs=1, progress=False))
        _, code = notebook_copy(store.resolve(), tmp / "root")
        lab = Lab(tmp / "root", tmp / "home")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page(viewport={"width": 1800, "height": 1400})
                requests: list[str] = []
                page.on("request", lambda r: requests.append(r.url))
                open_notebook(page, lab.url("explore.ipynb"))
                cold = (f"import panel as pn\nfrom vitscope.app import Explorer\npn.extension(inline=True)\n"
                        f"app = Explorer({str(store.resolve())!r})\napp")
                t0 = time.perf_counter()
                run_cell(page, code[0], cold if args.cold else None)
                page.wait_for_function("() => window.Bokeh && Bokeh.documents.some(d => "
                                       "d.get_model_by_name('vs-overview-fig'))", timeout=120_000)
                shown = time.perf_counter() - t0
                page.locator(".vs-image-overview").first.scroll_into_view_if_needed()
                page.evaluate(COUNT_JS)
                first = timed_tap(page, 3)
                counts = []
                later = []
                for k in (5, 8, 11, 2, 14, 6, 9)[: args.taps]:
                    counts.append(page.evaluate(TAKE_JS))  # the previous tap's, until this click
                    later.append(timed_tap(page, k))
                page.wait_for_timeout(2000)
                counts.append(page.evaluate(TAKE_JS))
                browser.close()
        finally:
            lab.close()
    base = statistics.median(later)
    print(f"{'cold' if args.cold else 'warm'} open: app cell → views in the page {shown:.2f} s")
    print(f"first tap settles in {first:.2f} s; later taps (baseline, median of {len(later)}) {base:.2f} s; "
          f"ratio {first / base:.1f}×; goal: first ≤ 1 s")
    print("each later tap: " + " ".join(f"{t:.2f}" for t in later) + " s")
    print("comm messages per tap, page → kernel / kernel → page: " +
          " ".join(f"{c['send']}/{c['recv']}" for c in counts) + " (first tap first)")
    print(f"requests that left the machine: {len(external(requests))} {external(requests)[:3]}")


if __name__ == "__main__":
    main()
