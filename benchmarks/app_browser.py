"""What a user feels: input event in a real browser → the page has stopped changing, per kind of change.

    python benchmarks/app_browser.py                            # demo store + synthetic ViT-B store, 8 changes each
    python benchmarks/app_browser.py --store cache/demo.zarr --no-synthetic --repeat 3 --kinds image_tap,metric
    python benchmarks/app_browser.py --no-synthetic --screenshot /tmp/app.png -vv   # every change and its frames
    python benchmarks/app_browser.py --no-synthetic --input-map rollout   # image changes with a stored map overlaid
    python benchmarks/app_browser.py --compare cache/vit.zarr cache/deit.zarr   # the compare view (no model)

Each store's app (`Explorer(store).template()`; `SyntheticExplorer` from app.py for the synthetic
store, which has no model) is served by `pn.serve` in a subprocess on 127.0.0.1 and driven by
Playwright in Debian's headless Chromium (/usr/bin/chromium, no GPU). Kinds of change: image by a
tap on the Image Overview (`image_tap`), image by a typed id + Enter (`image_id`), head by a tap on
the Head Importance line (`head_tap`), `metric`, pruning `mode`, `threshold` (the slider, else a tap
on the histogram), Attention Pattern View `layout`, Image Overview `colour_by`; `pattern_tap` (a tap
on the map of all heads) on request. Each kind gets one warm-up change ("first") and `--repeat`
timed ones, each to a different value. A kind whose element (CSS class `vs-…`) is not in the page
is "n/a". `--compare A B` times the compare view (`vitscope serve A B`) instead: the shared image
selector (`compare_image`), a tap on a head of A's grid (`compare_head_tap`), a tap on a row of the
disagreement list (`compare_row`).

Settle, measured in the page's own clock (performance.now()) by an init script: it wraps
window.WebSocket (time of every frame received or sent), registers `doc.on_change` on every
`Bokeh.documents[i]` (time of the last model change, and via two nested requestAnimationFrame the
first paint after it), observes text/child-node mutations of the document and of every shadow root,
and records the input event (capture-phase pointerdown/keydown/input/change listeners). Settle ms =
(last frame, model change, paint after a change or DOM text change) − input event, taken once the
page has been quiet for 1 s (that second is not counted); not quiet within 20 s = a failure. A
change without any Bokeh model change (or, for a selection, without a new `.vs-pattern-info` text)
is reported as a no-op and not timed. Page errors and console errors are printed.

Baseline, in the same run and server: a bare Panel page with one Bokeh figure whose
ColumnDataSource holds as many points as the store has images, and a Select whose change replaces
the data; timed the same way. Goal: median ≤ 500 ms and max ≤ 1000 ms. Not a test: timings are
noisy (2 cores shared with the browser), compare medians of one run. ~4 min per store with the
defaults; missing stores are built first: the demo (`vitscope demo --no-serve`, ~4 min) and the
synthetic one (`app.py`'s `synthetic_store`, ~2 min).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import panel as pn
from app import SyntheticExplorer, synthetic_store
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from vitscope.app.compare_view import CompareView
from vitscope.app.explorer import Explorer
from vitscope.build import cache_root
from vitscope.store import open_store

CHROMIUM = "/usr/bin/chromium"
QUIET_MS = 1000.0
TIMEOUT_MS = 20_000.0
GOAL_MEDIAN_MS, GOAL_MAX_MS = 500.0, 1000.0
KINDS = ["image_tap", "image_id", "head_tap", "metric", "mode", "threshold", "layout", "colour_by"]
EXTRA_KINDS = ["pattern_tap"]
SELECTION_KINDS = {"image_tap", "image_id", "head_tap", "pattern_tap"}  # must change `.vs-pattern-info`
INFO = ".vs-pattern-info"

# Runs before any page script: the page clock of every websocket frame, Bokeh model change, paint after
# a change, DOM text change and input event, plus `quiet`/`settle` promises and plot tap targets.
PAGE_CLOCK = r"""
(() => {
  const now = () => performance.now();
  const vs = window.__vs = {armed: false, t0: 0, input: null, inputType: null,
                            last: {ws: 0, doc: 0, paint: 0, dom: 0}, n: {}, bytesIn: 0, docs: new Set()};
  const zero = () => { vs.n = {wsIn: 0, wsOut: 0, doc: 0, dom: 0}; vs.bytesIn = 0; };
  zero();
  const seen = (k) => { vs.last[k] = now(); };
  vs.log = [];  // (ms since arm, direction, start of a text frame) of every frame since `arm`, for -v
  const note = (dir, d) => vs.log.push([now() - vs.t0, dir, typeof d === "string" ? d.slice(0, 160) : size(d)]);
  const size = (d) => typeof d === "string" ? d.length : (d.byteLength ?? d.size ?? 0);

  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);  // listening before Bokeh sets onmessage: stamped on arrival, before it is handled
      this.addEventListener("message", (e) => {
        seen("ws"); vs.n.wsIn++; vs.bytesIn += size(e.data); note("in", e.data);
      });
    }
    send(data) { seen("ws"); vs.n.wsOut++; note("out", data); return super.send(data); }
  };

  let painting = false, again = false;
  const paint = () => {
    if (painting) { again = true; return; }
    painting = true;
    requestAnimationFrame(() => requestAnimationFrame(() => {
      seen("paint");
      painting = false;
      if (again) { again = false; paint(); }
    }));
  };
  const hook = () => {
    for (const doc of window.Bokeh?.documents ?? []) {
      if (vs.docs.has(doc)) continue;
      vs.docs.add(doc);
      doc.on_change(() => { seen("doc"); vs.n.doc++; paint(); }, true);
    }
  };
  setInterval(hook, 50);

  const mo = new MutationObserver((records) => { seen("dom"); vs.n.dom += records.length; });
  const watch = {subtree: true, childList: true, characterData: true};
  mo.observe(document, watch);
  const onInput = (e) => { if (vs.armed) { vs.armed = false; vs.input = now(); vs.inputType = e.type; } };
  const listen = (target) => {
    for (const type of ["pointerdown", "keydown", "input", "change"]) target.addEventListener(type, onInput, true);
  };
  listen(window);
  const attachShadow = Element.prototype.attachShadow;
  Element.prototype.attachShadow = function (init) {
    const root = attachShadow.call(this, init);
    mo.observe(root, watch);
    listen(root);  // `change` is not composed: it never leaves a shadow root
    return root;
  };

  const lastChange = () => Math.max(...Object.values(vs.last));
  vs.arm = () => { hook(); zero(); vs.log = []; vs.input = null; vs.inputType = null; vs.armed = true; vs.t0 = now(); };
  vs.quiet = (ms, timeout) => new Promise((resolve) => {
    const start = now();
    const tick = () => {
      const t = now();
      if (t - lastChange() >= ms || t - start > timeout) resolve({quiet: t - lastChange() >= ms, last: lastChange()});
      else setTimeout(tick, 20);
    };
    tick();
  });
  vs.settle = (ms, timeout) => new Promise((resolve) => {
    const tick = () => {
      const t = now(), input = vs.input ?? vs.t0, last = Math.max(input, lastChange());
      if (t - last >= ms || t - input > timeout) {
        const by = Object.entries(vs.last).reduce((a, b) => (b[1] > a[1] ? b : a))[0];
        resolve({ok: t - last >= ms, ms: last - input, by: last > input ? by : "none", event: vs.inputType,
                 n: {...vs.n}, bytesIn: vs.bytesIn});
      } else setTimeout(tick, 20);
    };
    tick();
  });

  // The visible Bokeh plot inside the element with CSS class `cls`, scrolled into view.
  vs.plot = (cls) => {
    const owners = new Set();
    for (const doc of window.Bokeh?.documents ?? [])
      for (const m of doc.all_models) if (Array.isArray(m.css_classes) && m.css_classes.includes(cls)) owners.add(m);
    if (!owners.size) return null;
    const inside = (v) => { for (; v != null; v = v.parent) if (owners.has(v.model)) return true; return false; };
    for (const v of window.Bokeh.index.all_views()) {
      if (v.frame == null || v.canvas_view == null || !inside(v)) continue;
      let r = v.canvas_view.el.getBoundingClientRect();
      if (r.width === 0 || r.height === 0) continue;
      if (r.top < 0 || r.bottom > innerHeight) v.el.scrollIntoView({block: "center"});
      return v;
    }
    return null;
  };
  // Viewport (x, y) of the k-th point (mod n) of the plot's largest marker/line renderer, or, with
  // `frac` = [fx, fy], of that fraction of its frame (fy from the top). null: no such plot or point.
  vs.target = (cls, k, frac) => {
    const pv = vs.plot(cls);
    if (pv == null) return null;
    const r = pv.canvas_view.el.getBoundingClientRect(), f = pv.frame.bbox;
    const at = (sx, sy) => ({x: r.left + sx, y: r.top + sy});
    if (frac != null) return at(f.left + frac[0] * f.width, f.top + frac[1] * f.height);
    let best = null;
    for (const v of window.Bokeh.index.all_views()) {
      if (v.plot_view !== pv || v.glyph?.sx == null || v.glyph?.sy == null) continue;
      const n = v.glyph.sx.length, marker = "size" in v.glyph.model;  // markers before lines of as many points
      if (best == null || n > best.n || (n === best.n && marker && !best.marker)) best = {v, n, marker};
    }
    if (best == null || best.n === 0) return null;
    for (let j = 0; j < best.n; j++) {  // the k-th point inside the frame
      const i = (k + j) % best.n, sx = best.v.glyph.sx[i], sy = best.v.glyph.sy[i];
      if (Number.isFinite(sx) && Number.isFinite(sy) && sx > f.left + 2 && sx < f.right - 2 && sy > f.top + 2
          && sy < f.bottom - 2) return at(sx, sy);
    }
    return null;
  };
})();
"""


@dataclass
class Result:
    """The changes of one kind: settle ms of the warm-up and of each timed change, and what went wrong."""

    first: float | None = None
    times: list[float] = field(default_factory=list)
    failures: int = 0  # not quiet within the timeout
    noops: int = 0  # no Bokeh model (or selection text) changed
    kb_in: list[float] = field(default_factory=list)
    by: Counter[str] = field(default_factory=Counter)  # which signal was the last to change
    na: str = ""  # why the kind could not be run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ server side (a subprocess)


def baseline_page(points: int) -> pn.viewable.Viewable:
    """One Bokeh figure of `points` points; each Select change replaces the whole ColumnDataSource data."""
    from bokeh.models import ColumnDataSource, Range1d
    from bokeh.plotting import figure

    rng = np.random.default_rng(0)
    new = lambda: {"x": rng.normal(size=points), "y": rng.normal(size=points)}  # noqa: E731
    source = ColumnDataSource(new())
    fig = figure(width=600, height=400, title=f"baseline: {points} points", tools="tap",
                 x_range=Range1d(-4, 4), y_range=Range1d(-4, 4))
    fig.scatter("x", "y", source=source, size=5)
    select = pn.widgets.Select(options=[f"data {i}" for i in range(10)], css_classes=["vs-baseline"], width=160)
    select.param.watch(lambda _: setattr(source, "data", new()), "value")
    return pn.Column(select, pn.pane.Bokeh(fig))


def serve_compare(a: Path, b: Path, port: int) -> None:
    """The compare view of A and B at /, the baseline at /baseline, like `vitscope serve A B`."""
    points = int(open_store(a).sizes["image"])
    CompareView(a, b).template()  # the stores' arrays and the comparison, once, before the first session
    gc.collect()
    gc.freeze()
    server = pn.serve({"/": lambda: CompareView(a, b).template(), "/baseline": lambda: baseline_page(points)},
                      port=port, address="127.0.0.1", show=False, start=False, title="vitscope benchmark",
                      allow_websocket_origin=[f"127.0.0.1:{port}", f"localhost:{port}"], verbose=False)
    server.start()
    print("ready", flush=True)
    server.io_loop.start()


def figures() -> dict:
    """The "save figure" action, as `vitscope serve` gives it (a checkout from before it has none)."""
    try:
        from vitscope.cli.serve import figure_file
    except ImportError:
        return {}
    return {"figures": figure_file}


def serve(store: Path, port: int, synthetic: bool) -> None:
    """The app at / and the baseline at /baseline, like `vitscope serve` (model and arrays loaded first)."""
    cls = SyntheticExplorer if synthetic else Explorer
    ds = open_store(store)
    points = int(ds.sizes["image"])
    ex = cls(store, device="cpu", **figures())
    ex.template()
    ex.data.prepare()  # as `vitscope serve` does at start
    try:  # the model's first call (loading) is paid by the server's start, as in `vitscope serve`
        ex.attention(int(np.flatnonzero(ds["valid"].values)[0]), 0)
    except Exception as e:  # noqa: BLE001 - the page will say it; the benchmark goes on
        print(f"warning: attention unavailable: {e}", file=sys.stderr)
    del ex
    gc.collect()
    gc.freeze()
    save = figures()
    app = lambda: cls(store, device="cpu", **save).template()  # noqa: E731
    server = pn.serve({"/": app, "/baseline": lambda: baseline_page(points)},
                      port=port, address="127.0.0.1", show=False, start=False, title="vitscope benchmark",
                      allow_websocket_origin=[f"127.0.0.1:{port}", f"localhost:{port}"], verbose=False)
    server.start()
    print("ready", flush=True)
    server.io_loop.start()


class Server:
    """`serve` in a subprocess (so its CPU time is not the browser driver's); its output goes to a log file."""

    def __init__(self, store: Path, synthetic: bool, compare_with: Path | None = None) -> None:
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", prefix="app_browser-")
        cmd = [sys.executable, __file__, "--serve", str(store), "--port", str(self.port)]
        cmd += ["--serve-synthetic"] if synthetic else []
        cmd += ["--serve-compare", str(compare_with)] if compare_with is not None else []
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 300
        while "ready" not in self.output():
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"server for {store} did not start:\n{self.output()[-3000:]}")
            time.sleep(0.2)
        self.url = f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# ------------------------------------------------------------------ browser side


def text_of(page: Page, css: str) -> str | None:
    """Text of the first element with this CSS selector (inside its shadow root), None if there is none."""
    loc = page.locator(css)
    if loc.count() == 0:
        return None
    return loc.first.evaluate("e => (e.shadowRoot ?? e).textContent")


def visible(page: Page, css: str) -> bool:
    loc = page.locator(css)
    return loc.count() > 0 and loc.first.is_visible()


def quiet(page: Page, ms: float = QUIET_MS, timeout: float = 60_000) -> bool:
    return page.evaluate("([ms, t]) => window.__vs.quiet(ms, t)", [ms, timeout])["quiet"]


def golden(k: int, lo: float = 0.1, hi: float = 0.9) -> float:
    """k-th point of a low-discrepancy sequence in [lo, hi]: every value differs from the ones before."""
    return lo + (hi - lo) * ((0.5 + k * (math.sqrt(5) - 1) / 2) % 1.0)


Action = Callable[[], None]


def tap(page: Page, css: str, k: int, frac: tuple[float, float] | None = None) -> Action | None:
    """Move the mouse onto the plot's k-th point (or a fraction of its frame); the action presses it."""
    if not visible(page, css):
        return None
    page.evaluate("([c, k, f]) => window.__vs.target(c, k, f)", [css.lstrip("."), k, frac])  # scrolls into view
    quiet(page, 300)
    xy = page.evaluate("([c, k, f]) => window.__vs.target(c, k, f)", [css.lstrip("."), k, frac])
    if xy is None:
        return None
    page.mouse.move(xy["x"], xy["y"])  # hover effects (tooltips) happen before the input event
    quiet(page, 300)

    def press() -> None:
        page.mouse.down()
        page.mouse.up()

    return press


def pick_option(page: Page, css: str) -> Action | None:
    """Select the option after the current one of a Select widget."""
    sel = page.locator(f"{css} select")
    if sel.count() == 0 or not sel.first.is_visible():
        return None
    values = sel.first.evaluate("s => [...s.options].map(o => o.value)")
    nxt = values[(values.index(sel.first.input_value()) + 1) % len(values)]
    return lambda: sel.first.select_option(nxt)


def press_button(page: Page, css: str) -> Action | None:
    """Click the button after the active one of a RadioButtonGroup."""
    buttons = page.locator(f"{css} button")
    n = buttons.count()
    if n < 2 or not buttons.first.is_visible():
        return None
    active = [i for i in range(n) if "bk-active" in (buttons.nth(i).get_attribute("class") or "")]
    nxt = buttons.nth(((active[0] if active else -1) + 1) % n)
    return lambda: nxt.click()


def type_id(page: Page, image: int, css: str = ".vs-image-id") -> Action | None:
    """Type an image number (the compare view's: k of its matched images)."""
    box = page.locator(f"{css} input")
    if box.count() == 0 or not box.first.is_visible():
        return None
    box.first.fill(str(image))
    quiet(page, 300)
    return lambda: box.first.press("Enter")


def slide(page: Page, k: int) -> Action | None:
    """Tap the threshold slider's track at a new fraction (noUiSlider's tap behaviour), else the histogram."""
    track = page.locator(".vs-threshold .noUi-base")
    if track.count() == 0 or not track.first.is_visible():
        return tap(page, ".vs-histogram", 0, (golden(k), 0.5))
    track.first.scroll_into_view_if_needed()
    box = track.first.bounding_box()
    pos = {"x": golden(k) * box["width"], "y": box["height"] / 2}
    return lambda: track.first.click(position=pos)


def actions(page: Page, valid: np.ndarray) -> dict[str, Callable[[int], Action | None]]:
    """For each kind: k → the k-th change's action (after its preparation), None if its element is missing."""
    ids = np.random.default_rng(1).permutation(valid)
    return {
        "image_tap": lambda k: tap(page, ".vs-image-overview", 11 + 97 * k),
        "image_id": lambda k: type_id(page, int(ids[k % len(ids)])),
        "head_tap": lambda k: tap(page, ".vs-importance-line", 3 + 7 * k),
        "metric": lambda k: pick_option(page, ".vs-metric"),
        "mode": lambda k: press_button(page, ".vs-mode"),
        "threshold": lambda k: slide(page, k),
        "layout": lambda k: press_button(page, ".vs-layout"),
        "colour_by": lambda k: pick_option(page, ".vs-colour-by"),
        "pattern_tap": lambda k: tap(page, ".vs-pattern-map", 0, (golden(k), golden(k + 7))),
    }


def change(page: Page, action: Action, kind: str, verbose: int) -> tuple[str, dict]:
    """Arm the page clock, act, wait until the page is quiet: ("ok" | "timeout" | "noop", settle info)."""
    info = text_of(page, INFO) if kind in SELECTION_KINDS else None
    quiet(page)
    page.evaluate("() => window.__vs.arm()")
    action()
    res = page.evaluate("([ms, t]) => window.__vs.settle(ms, t)", [QUIET_MS, TIMEOUT_MS])
    if not res["ok"]:
        status = "timeout"
        quiet(page, QUIET_MS, TIMEOUT_MS)  # let the page finish before the next change
    elif res["n"]["doc"] == 0 or (info is not None and text_of(page, INFO) == info):
        status = "noop"
    else:
        status = "ok"
    if verbose:
        print(f"  {kind}: {status} {res['ms']:.0f} ms, last {res['by']}, event {res['event']}, {res['n']}, "
              f"{res['bytesIn'] / 1e3:.0f} kB in", flush=True)
    if verbose > 1:  # the frames' timeline: text frames that say something (not buffer headers), binary summed
        start, count, size = 0.0, 0, 0
        for ms, way, what in [*page.evaluate("() => window.__vs.log"), (0.0, "", "")]:
            if not isinstance(what, str) or what.startswith('{"id"'):  # a buffer or its header
                if not isinstance(what, str):
                    start, count, size = (start if count else ms), count + 1, size + what
                continue
            if count:
                print(f"    {start:7.1f} ms in  {count} binary buffers, {size / 1e3:.0f} kB")
                count, size = 0, 0
            if len(what) > 2:
                print(f"    {ms:7.1f} ms {way:3} {what}")
    return status, res


def click_row(page: Page, k: int) -> Action | None:
    """Click the k-th row (cyclically) of the compare view's disagreement list."""
    rows = page.locator(".vs-compare-table .slick-row")
    n = rows.count()
    if n == 0:
        return None
    cell = rows.nth(k % n).locator(".slick-cell").first
    cell.scroll_into_view_if_needed()
    return lambda: cell.click()


def compare_actions(page: Page) -> dict[str, Callable[[int], Action | None]]:
    return {
        "compare_image": lambda k: type_id(page, k + 1, ".vs-compare-image"),  # a new matched image each time
        "compare_head_tap": lambda k: tap(page, ".vs-compare-grid-a", 0, (golden(k), golden(k + 3))),
        "compare_row": lambda k: click_row(page, k),
    }


def run_kind(page: Page, make: Callable[[int], Action | None], kind: str, repeat: int, verbose: int) -> Result:
    out = Result()
    for k in range(repeat + 1):
        action = make(k)
        if action is None:
            out.na = "element missing" if k == 0 else f"element gone after {k} changes"
            if k == 0:
                return out
            break
        status, res = change(page, action, kind, verbose)
        if status == "timeout":
            out.failures += 1
        elif status == "noop":
            out.noops += 1
        elif k == 0:
            out.first = res["ms"]
        else:
            out.times.append(res["ms"])
            out.kb_in.append(res["bytesIn"] / 1e3)
            out.by[res["by"]] += 1
    return out


def open_page(context: BrowserContext, url: str, errors: list[str]) -> Page:
    """A new page at `url` with the page clock, once Bokeh has rendered and the page has been quiet for 1 s."""
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url.split('?')[0]} ({r.failure})"))
    page.add_init_script(PAGE_CLOCK)
    page.goto(url, wait_until="load", timeout=120_000)
    page.wait_for_function("() => window.__vs.docs.size > 0", timeout=120_000)
    quiet(page, QUIET_MS, 120_000)
    return page


def baseline_then_app(browser: Browser, url: str, args: argparse.Namespace, errors: list[str]):
    """Time the baseline page, then open the app: (context, baseline, app page, load ms in the page clock, wall s)."""
    width, height = (int(v) for v in args.viewport.split("x"))
    context = browser.new_context(viewport={"width": width, "height": height})
    page = open_page(context, url + "/baseline", errors)
    base = run_kind(page, lambda k: pick_option(page, ".vs-baseline"), "baseline", args.repeat, args.verbose)
    page.close()
    if not base.times:
        raise SystemExit(f"baseline page gave no timing ({base})")
    t = time.perf_counter()
    page = open_page(context, url + "/", errors)
    load = page.evaluate("() => Math.max(...Object.values(window.__vs.last))")
    return context, base, page, load, time.perf_counter() - t


def show_input_map(page: Page, method: str) -> None:
    """Pick `method` in the image panel's map selector, as a user would, before the timed changes."""
    sel = page.locator(".vs-input-map select")
    if sel.count() == 0:
        raise SystemExit(f"--input-map {method}: this app has no map selector")
    sel.first.select_option(method)
    quiet(page, QUIET_MS, 60_000)


def bench_store(browser: Browser, store: Path, synthetic: bool, args: argparse.Namespace) -> None:
    """Serve one store, time the baseline and every kind, print its table."""
    ds = open_store(store)
    images, valid = int(ds.sizes["image"]), np.flatnonzero(ds["valid"].values)
    shape = f"{ds.sizes['layer']} × {ds.sizes['head']} heads"
    server = Server(store, synthetic)
    errors: list[str] = []
    try:
        context, base, page, load, wall = baseline_then_app(browser, server.url, args, errors)
        make = actions(page, valid)
        kinds = args.kinds
        if args.input_map != "none":
            show_input_map(page, args.input_map)
        if not {"image_tap", "image_id"} & set(kinds):  # the image views show an image's details only
            act = make["image_tap"](0)
            if act is not None:
                change(page, act, "image_tap", args.verbose)
        results = {}
        for kind in kinds:
            if args.verbose:
                print(f"{store.name}: {kind}", flush=True)
            results[kind] = run_kind(page, make[kind], kind, args.repeat, args.verbose)
        if args.screenshot:
            shot = args.screenshot
            if len(args.stores) > 1:
                shot = shot.with_name(f"{shot.stem}-{store.stem}{shot.suffix}")
            page.screenshot(path=str(shot))
            print(f"screenshot: {shot}")
        context.close()
    finally:
        log = server.output()
        server.close()

    name = "SyntheticExplorer" if synthetic else "Explorer"
    print(f"\n### {store.name}: {images} images, {shape} ({name}), viewport {args.viewport}\n")
    report(results, load, wall, images, base, errors, log)


def report(results: dict[str, Result], load: float, wall: float, images: int, base: Result, errors: list[str],
           log: str) -> None:
    """The table of one page's kinds against the baseline, then its page errors and the server's traceback."""
    base_ms = statistics.median(base.times)
    print(f"page load → settled: {load:.0f} ms in the page clock ({wall:.1f} s with navigation)  ")
    print(f"baseline (Bokeh figure of {images} points, Select → new `source.data`): median {base_ms:.0f} ms, "
          f"max {max(base.times):.0f} ms\n")
    print("| kind | first ms | median ms | max ms | median / baseline | goal | kB in (median) | notes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, r in results.items():
        notes = [f"{n} {what}" for n, what in ((r.failures, "not settled in 20 s"), (r.noops, "no-op")) if n]
        if r.na:
            notes.append(r.na)
        if not r.times:
            print(f"| {kind} | n/a | n/a | n/a | n/a | n/a | | {'; '.join(notes)} |")
            continue
        med, top = statistics.median(r.times), max(r.times)
        ok = med <= GOAL_MEDIAN_MS and top <= GOAL_MAX_MS and not r.failures
        first = "–" if r.first is None else f"{r.first:.0f}"
        last = ", ".join(f"{k} {v}" for k, v in r.by.most_common())
        notes.append(f"last signal: {last}")
        print(f"| {kind} | {first} | **{med:.0f}** | {top:.0f} | {med / base_ms:.1f} | {'ok' if ok else 'MISS'} | "
              f"{statistics.median(r.kb_in):.0f} | {'; '.join(notes)} |")
    if errors:  # "request failed" of an external URL: the template's CDN resources (no network here)
        print(f"\n{len(errors)} page errors, console errors and failed requests:")
        for e, n in Counter(errors).most_common(8):
            print(f"- {n} × {e[:300]}")
    if "Traceback" in log or "ERROR" in log:
        print(f"\nserver log (last lines):\n```\n{log[-2000:]}\n```")


def bench_compare(browser: Browser, a: Path, b: Path, args: argparse.Namespace) -> None:
    """Serve the compare view of A and B, time the baseline and the compare kinds, print the table."""
    images = int(open_store(a).sizes["image"])
    server = Server(a, False, compare_with=b)
    errors: list[str] = []
    try:
        context, base, page, load, wall = baseline_then_app(browser, server.url, args, errors)
        results = {kind: run_kind(page, make, kind, args.repeat, args.verbose)
                   for kind, make in compare_actions(page).items()}
        if args.screenshot:
            page.screenshot(path=str(args.screenshot))
            print(f"screenshot: {args.screenshot}")
        context.close()
    finally:
        log = server.output()
        server.close()
    print(f"\n### compare view: {a.name} vs {b.name}, {images} images, viewport {args.viewport}\n")
    report(results, load, wall, images, base, errors, log)


def ensure_demo(path: Path) -> None:
    """Build the default demo store when it is missing (`vitscope demo --no-serve`, ~4 min on 2 cores)."""
    if path.exists():
        return
    print(f"{path} missing: building it with `vitscope demo --no-serve` (~4 min)", flush=True)
    subprocess.run([sys.executable, "-m", "vitscope.cli", "demo", "--no-serve"], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    demo = cache_root() / "demo.zarr"
    ap.add_argument("--store", type=Path, nargs="+", default=[demo], help="built stores with a model")
    ap.add_argument("--synthetic", action=argparse.BooleanOptionalAction, default=True,
                    help="also the synthetic ViT-B-shaped store (app.py's synthetic_store, built once)")
    ap.add_argument("--synthetic-store", type=Path, default=cache_root() / "synthetic_vitb.zarr")
    ap.add_argument("--repeat", type=int, default=8, help="timed changes of each kind (after one first change)")
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help=f"comma-separated, from {','.join(KINDS + EXTRA_KINDS)} (timed in this order)")
    ap.add_argument("--viewport", default="1600x1000")
    ap.add_argument("--input-map", default="none",
                    help="the map overlaid on the pattern view's image panel during the timed changes, picked in the "
                         "page first (attention, rollout, grad_rollout: from the store; default none)")
    ap.add_argument("--screenshot", type=Path, help="viewport screenshot after the last change (per store)")
    ap.add_argument("-v", "--verbose", action="count", default=0,
                    help="print every change (-vv: and its websocket frames, in ms after the input)")
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # internal: the server subprocess
    ap.add_argument("--serve-synthetic", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--serve-compare", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--compare", type=Path, nargs=2, metavar=("A", "B"),
                    help="time the compare view of two stores of the same images instead (vitscope serve A B)")
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.screenshot and args.screenshot.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        # found only at the end of a run otherwise, after its measurements are lost
        ap.error(f"--screenshot {args.screenshot}: name a .png or .jpg file")
    if args.serve and args.serve_compare:
        serve_compare(args.serve, args.serve_compare, args.port)
        return
    if args.serve:
        serve(args.serve, args.port, args.serve_synthetic)
        return
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(args.kinds) - set(KINDS + EXTRA_KINDS)
    if unknown:
        ap.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    if args.compare:
        args.store, args.synthetic = [], False
    if demo in args.store:
        ensure_demo(demo)
    stores = [(p, False) for p in args.store]
    if args.synthetic:
        stores.append((synthetic_store(args.synthetic_store), True))
    args.stores = stores

    import bokeh

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        print(f"chromium {browser.version}, panel {pn.__version__}, bokeh {bokeh.__version__}, {os.cpu_count()} "
              f"cores; ms from the input event until the page has been quiet for 1 s (not counted); goal median ≤ "
              f"{GOAL_MEDIAN_MS:.0f} ms, max ≤ {GOAL_MAX_MS:.0f} ms; {args.repeat} changes per kind after a first",
              flush=True)
        for store, synthetic in stores:
            bench_store(browser, store, synthetic, args)
        if args.compare:
            bench_compare(browser, *args.compare, args)
        browser.close()


if __name__ == "__main__":
    main()
