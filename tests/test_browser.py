"""The served app in real headless Chromium: one screen, and every interaction reaches the data behind the plots.

Each step acts as a user would (tap, type, drag, hover, wheel, click, choose) and then reads the Bokeh
models in the page (`Bokeh.documents`), so what is asserted is what the browser draws.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from proc_helpers import stop, wait_for_line

# On PATH, as a user's shell finds it. Under CI=true the skip below fails the run (tests/ci_skips.py).
CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not on PATH (apt-get install chromium)", allow_module_level=True)
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright

VIEWS = {"Image Overview": "vs-overview-fig", "Head Importance View": "vs-importance-fig",
         "Attention Strength View": "vs-strength-fig", "Attention Pattern View": "vs-map-fig"}  # title → figure
ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]

# Page-side readers of the Bokeh document (models are found by the names the app gives them).
MODEL_JS = """([name, attr]) => {
  const seq = v => v && v.length !== undefined && typeof v !== 'string';
  for (const d of Bokeh.documents) {
    const m = d.get_model_by_name(name);
    if (!m) continue;
    const v = attr.split('.').reduce((o, k) => o[k], m);
    return seq(v) ? Array.from(v, x => seq(x) ? x.length : x) : v;
  }
  return null; }"""
SCREEN_JS = """([name, x, y]) => {
  for (const d of Bokeh.documents) {
    const fig = d.get_model_by_name(name);
    if (!fig) continue;
    const view = Bokeh.index.find_one(fig), r = view.canvas_view.el.getBoundingClientRect();
    return [r.left + view.frame.x_scale.compute(x), r.top + view.frame.y_scale.compute(y)];
  }
  return null; }"""
LINES_JS = """() => { for (const d of Bokeh.documents) for (const m of d.all_models)
  if (m.data && m.data.source && m.data.target && m.data.value) return Array.from(m.data.source);
  return []; }"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """README's first command on a small demo: `vitscope demo` builds the store, then serves the app."""
    cache = tmp_path_factory.mktemp("cache")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VITSCOPE_CACHE": str(cache)}
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vitscope.cli", "demo", "--limit", "24", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url, store = f"http://localhost:{port}/", cache / "demo-24.zarr"
    import zarr

    try:
        wait_for_line(proc, url, timeout=600)  # printed once the store is built and the port is bound
        urllib.request.urlopen(url, timeout=60)
        # the demo serves before its layouts are in: the tests start from a whole store
        until(lambda: zarr.open_group(str(store), mode="r").attrs.get("layouts_pending") == [], 300,
              "the demo's layouts")
    except BaseException:
        stop(proc)
        raise
    yield url, store
    stop(proc)


def model(page, name: str, attr: str):
    """A property of the named Bokeh model as the browser holds it (arrays as lists, nested arrays as lengths)."""
    return page.evaluate(MODEL_JS, [name, attr])


def screen(page, fig: str, x: float, y: float) -> tuple[float, float]:
    """Page pixel of data point (x, y) in the named figure."""
    return tuple(page.evaluate(SCREEN_JS, [fig, x, y]))


def mid_y(page, fig: str) -> float:
    """The middle of a figure's y range (a tap there lands inside the plot whatever the data)."""
    return (model(page, fig, "y_range.start") + model(page, fig, "y_range.end")) / 2


def text_of(page, css: str) -> str:
    js = "e => Array.from((e.shadowRoot || e).children).filter(c => c.tagName !== 'STYLE').map(c => c.innerText)"
    return " ".join(page.locator(css).first.evaluate(js))


def until(check, timeout: float = 60.0, what: str = ""):
    """Poll `check()` until it returns a truthy value (one user action can need a server round trip)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what or check}")


def settled(page, css: str, differs_from: str | None = None, quiet: float = 1.0) -> str:
    """The pane's text once it differs from `differs_from` and has not changed for `quiet` seconds."""
    last, since = None, time.time()
    deadline = time.time() + 60
    while time.time() < deadline:
        now = text_of(page, css)
        if now != last:
            last, since = now, time.time()
        elif now != differs_from and time.time() - since >= quiet:
            return now
        time.sleep(0.2)
    raise AssertionError(f"{css} did not settle on a new text (last: {last!r})")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(demo, browser):
    """One page for the interaction tests, in order, as one user's session."""
    pg = browser.new_page(viewport={"width": 1600, "height": 1000})
    pg.errors, pg.requests = [], []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.goto(demo[0], wait_until="networkidle")
    pg.wait_for_selector("text=Select an image to see its top-5", timeout=60_000)
    yield pg
    pg.close()


def test_one_screen_at_1600_by_1000(page):
    """The four views' titles and the head details are inside the viewport without scrolling; the page asked
    nothing of another machine (lab machines are often offline: Panel's Fast theme linked a Google web font)."""
    assert page.requests and not [u for u in page.requests if not u.startswith(("http://localhost", "ws://localhost",
                                                                               "data:", "blob:"))], page.requests
    for title, fig in VIEWS.items():
        assert model(page, fig, "title.text").startswith(title)
    for css in (".vs-image-overview", ".vs-importance-line", ".vs-strength-scatter", ".vs-pattern-map", ".vs-heatmap",
                ".vs-two-axes", ".vs-histogram", ".vs-pattern-info"):
        box = page.locator(css).first.bounding_box()
        assert box and box["x"] >= 0 and box["y"] >= 0, css
        assert box["x"] + box["width"] <= 1600 and box["y"] + box["height"] <= 1000, (css, box)
    assert "Traceback" not in page.content()


def test_tap_and_typed_id_select_an_image(page):
    xs, ys = model(page, "vs-overview-points", "data.x"), model(page, "vs-overview-points", "data.y")
    images = model(page, "vs-overview-points", "data.image")
    page.mouse.click(*screen(page, "vs-overview-fig", xs[3], ys[3]))
    info = settled(page, ".vs-pattern-info")
    assert "layer 0 · head 0" in info and "mean attention distance" in info
    assert model(page, "vs-overview-marker", "data.x") == [xs[3]]
    page.wait_for_selector(f"text=image {images[3]} ", timeout=30_000)  # the detail's title

    box = page.locator(".vs-image-id input").first
    box.fill(str(images[7]))
    box.press("Enter")
    until(lambda: model(page, "vs-overview-marker", "data.x") == [xs[7]], what="typed id")
    assert settled(page, ".vs-pattern-info", info) != info


def test_tap_and_drag_select_heads(page):
    before = settled(page, ".vs-pattern-info")
    y = mid_y(page, "vs-importance-fig")
    page.mouse.click(*screen(page, "vs-importance-fig", 13, y))  # demo: 4 heads per layer → L3H1
    after = settled(page, ".vs-pattern-info", before)
    assert "layer 3 · head 1" in after
    x0, y = screen(page, "vs-importance-fig", 3.6, y)
    x1, _ = screen(page, "vs-importance-fig", 8.4, y)
    page.mouse.move(x0, y)
    page.mouse.down()
    page.mouse.move(x1, y, steps=8)
    page.mouse.up()
    until(lambda: model(page, "vs-group", "visible"), what="group box")
    assert (model(page, "vs-group", "left"), model(page, "vs-group", "right")) == (3.5, 8.5)
    page.wait_for_selector("text=5 heads", timeout=30_000)


def test_heads_pruned_together_on_demand(page):
    """The drag-selected heads are pruned together by the service; a shift-tap adds one; saliency draws."""
    title = lambda: model(page, "vs-joint", "title.text") or ""  # noqa: E731
    until(lambda: title().startswith("5 heads"), what="joint pruning of the dragged heads")
    page.keyboard.down("Shift")
    page.mouse.click(*screen(page, "vs-importance-fig", 20, mid_y(page, "vs-importance-fig")))
    page.keyboard.up("Shift")
    until(lambda: title().startswith("6 heads"), what="shift-tap adds a head")
    page.get_by_role("button", name="patch saliency").click()
    until(lambda: "patch saliency, image" in (model(page, "vs-saliency", "title.text") or ""), what="saliency")
    assert not page.errors


def test_hover_a_token_highlights_its_lines_and_masks_follow(page):
    sources = model(page, "vs-highlight", "data.x0")
    assert sources == []
    segs = page.evaluate(LINES_JS)  # the two-axes lines' source tokens, weakest first
    assert segs, "no line above the threshold"
    token = int(segs[-1])  # the source of the strongest line
    page.mouse.move(*screen(page, "vs-axes-fig", token, 1))
    until(lambda: model(page, "vs-highlight", "data.x0"), what="highlighted lines")
    assert set(model(page, "vs-highlight", "data.x0")) == {float(token)}
    name = "CLS" if token == 0 else f"patch {token - 1}"
    until(lambda: f"source mask of {name} " in model(page, "vs-masks-fig", "title.text"), what="masks follow")


def test_wheel_zoom_reaggregates_the_map(page):
    dw = model(page, "vs-raster", "data.dw")[0]
    x, y = (page.locator(".vs-pattern-map").first.bounding_box()[k] for k in ("x", "y"))
    page.mouse.move(x + 170, y + 200)
    page.mouse.wheel(0, -400)
    until(lambda: model(page, "vs-raster", "data.dw")[0] < 0.9 * dw, what="map re-aggregated at the zoomed range")
    assert model(page, "vs-raster", "data.image") == [340 * 340]  # a fresh raster at the figure's pixel size


def test_pin_compares_heads(page):
    pinned = page.locator(".vs-pin button").first.inner_text().split()[-1]  # "pin L1H0": the selected head
    page.locator(".vs-pin button").first.click()
    until(lambda: "unpin" in page.locator(".vs-pin button").first.inner_text(), what="pinned")
    page.mouse.click(*screen(page, "vs-importance-fig", 2, mid_y(page, "vs-importance-fig")))  # another head: L0H2
    until(lambda: len(set(model(page, "vs-strength-bars", "data.name") or [])) == 2, what="two heads in the bars")
    assert set(model(page, "vs-strength-bars", "data.name")) == {"L0H2", pinned}


def test_colour_by_and_class_search(page):
    from vitscope.readout.palette import CORRECT, WRONG

    page.locator(".vs-colour-by select").first.select_option("correct")
    until(lambda: set(model(page, "vs-overview-points", "data.colour") or [None]) <= {CORRECT, WRONG}, what="colour by")
    box = page.locator(".vs-class-search input").first
    box.fill("7")
    box.press("Enter")
    until(lambda: len(set(model(page, "vs-overview-points", "data.alpha"))) == 2, what="class highlighted")
    labels = model(page, "vs-overview-points", "data.label")
    alpha = model(page, "vs-overview-points", "data.alpha")
    assert all((a > 0.5) == (lab == "7") for lab, a in zip(labels, alpha, strict=True))
    assert not page.errors, page.errors


OVERLAY_JS = """() => { for (const d of Bokeh.documents) {
  const m = d.get_model_by_name('vs-input-overlay');
  if (m) return Array.from(m.data.image[0], v => Number.isNaN(v) ? null : v); }
  return null; }"""


def test_a_map_over_the_image_then_occlusion_and_curves_from_the_model(page, demo):
    """Picking a stored map draws it over the image panel (the canvas changes) with the store's values; picking
    occlusion asks the model, and its map and the image's faithfulness curves arrive in the page."""
    import numpy as np

    from vitscope.readout.store_data import StoreData

    box = page.locator(".vs-image-id input").first
    box.fill("2")
    box.press("Enter")
    until(lambda: "image 0002" in text_of(page, ".vs-pattern-info"), what="image 2 selected")
    page.wait_for_timeout(1000)  # the plots of A arrive after the store's views
    masks = page.locator(".vs-masks").first
    before = masks.screenshot()
    assert model(page, "vs-input-map-glyph", "visible") is False
    page.locator(".vs-input-map select").first.select_option("rollout")
    until(lambda: model(page, "vs-input-map-glyph", "visible"), what="overlay shown")
    want = StoreData(demo[1]).input_maps(2)["rollout"][::-1].ravel()  # the glyph's row 0 is the image's bottom
    until(lambda: np.allclose(page.evaluate(OVERLAY_JS), want, atol=1e-6), what="the stored rollout map")
    until(lambda: masks.screenshot() != before, what="the overlay painted")
    assert "rollout" in text_of(page, ".vs-input-note")

    page.locator(".vs-input-map select").first.select_option(label="occlusion (model)")
    until(lambda: (model(page, "vs-faithfulness", "title.text") or "").startswith("faithfulness, image 2"), 120,
          "the image's faithfulness curves")
    until(lambda: "occlusion" in text_of(page, ".vs-input-note"), what="occlusion drawn")
    assert not np.allclose(np.nan_to_num(np.array(page.evaluate(OVERLAY_JS), float)), want)  # the model's map now
    assert "★" in text_of(page, ".vs-faithfulness-table") and not page.errors


def test_exported_snapshot_opens_from_disk_without_network(demo, browser, tmp_path):
    _, store = demo
    out = tmp_path / "snap.html"
    res = subprocess.run([sys.executable, "-m", "vitscope.cli", "export", str(store), "--image", "3", "--heads", "0:1",
                          "5:3", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    text = out.read_text()
    assert "<script src=" not in text and "cdn.bokeh.org" not in text  # inline resources only
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    errors, requests = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
    page.goto(out.as_uri())
    page.wait_for_selector("text=layer 0 · head 1", timeout=60_000)  # the first tab's pattern info
    page.locator("text=L5H3").first.click()
    page.wait_for_selector("text=layer 5 · head 3", timeout=60_000)
    assert page.locator("canvas").count() > 10
    assert not errors and not requests, (errors, requests)
    page.close()


def test_no_page_error_without_attention_on_a_many_class_store(browser, tmp_path):
    """A store whose attention cannot be computed (its model is unknown here) and that has 300 classes: choosing
    images draws the blank two-axes view without a Bokeh error (its empty line colours were sent as a float array:
    "invalid color array", once per image change); the overview's class colours are CSS colours."""
    import zarr
    from app_helpers import make_store

    path = make_store(tmp_path / "c300.zarr", 40, 2, 2, 4, 300)
    zarr.open_group(str(path), mode="r+").attrs["model_spec"] = "unknown-here"  # attention is unavailable
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vitscope.cli", "serve", str(path), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        wait_for_line(proc, f"http://localhost:{port}/", timeout=300)
        page.goto(f"http://localhost:{port}/", wait_until="networkidle")
        page.wait_for_selector("text=Select an image to see its top-5", timeout=60_000)
        box = page.locator(".vs-image-id input").first
        for image in (3, 5):
            box.fill(str(image))
            box.press("Enter")
            page.wait_for_selector(f"text=image {image} ", timeout=30_000)
            until(lambda: (model(page, "vs-axes-fig", "title.text") or "").startswith("two axes: 0 lines"),
                  what="the blank two-axes view")
        page.wait_for_timeout(1000)  # a late Bokeh error still arrives
        colours = model(page, "vs-overview-points", "data.colour")
        assert colours and all(isinstance(c, str) and c.startswith("#") for c in colours)
        assert not errors, errors
    finally:
        page.close()
        stop(proc)
