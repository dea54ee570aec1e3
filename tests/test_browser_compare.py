"""The compare view served by `vitscope serve A B` in headless Chromium: it loads, an image number typed
reaches both head grids, a tap on a head of A rings its swapped partner in B, a tap on a row of the disagreement
list selects that image. Reads the Bokeh models in the page (what the browser draws)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from proc_helpers import stop, wait_for_line
from test_browser import ARGS, CHROMIUM, MODEL_JS, SCREEN_JS, free_port, until
from test_compare import SWAPPED
from test_compare_view import stores  # noqa: F401 - the module's fixture: tiny stores a, swap, small

from vitscope.app.compare_view import CompareView

sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright


def serve(*paths) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vitscope.cli", "serve", *map(str, paths), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://localhost:{port}/"
    wait_for_line(proc, url, timeout=120)
    return proc, url


def model(page, name: str, attr: str):
    return page.evaluate(MODEL_JS, [name, attr])


def test_served_compare_view_follows_image_head_and_row(stores):  # noqa: F811
    proc, url = serve(stores["a"], stores["swap"])
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, wait_until="load", timeout=120_000)
            until(lambda: model(page, "vs-compare-grid-a", "title.text"), 60, "the grid of A")
            assert "mean of the images" in model(page, "vs-compare-grid-b", "title.text")

            box = page.locator(".vs-compare-image input").first  # a typed number: the 3rd matched image
            box.fill("2")
            box.press("Enter")
            until(lambda: "image 2" in model(page, "vs-compare-grid-b", "title.text"), 30, "B's grid on image 2")

            layer, h1, h2 = SWAPPED
            x, y = page.evaluate(SCREEN_JS, ["vs-compare-grid-a", h1, layer])
            page.mouse.click(x, y)
            until(lambda: model(page, "vs-compare-ring-b", "data.x") == [h2], 30, "B's ring on the partner")
            assert model(page, "vs-compare-ring-b", "data.y") == [layer]
            assert model(page, "vs-compare-ring-a", "data.x") == [h1]

            assert errors == []
            browser.close()
    finally:
        stop(proc)


def test_a_tap_on_a_row_of_the_disagreement_list_selects_its_image(stores):  # noqa: F811
    view = CompareView(stores["a"], stores["small"])
    assert view.disagree, "random-init models of different seeds should disagree somewhere"
    proc, url = serve(stores["a"], stores["small"])
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url, wait_until="load", timeout=120_000)
            until(lambda: model(page, "vs-compare-grid-a", "title.text"), 60, "the grid of A")
            rows = page.locator(".vs-compare-table .slick-row")
            until(lambda: rows.count() == len(view.disagree), 30, "the list's rows")
            rows.nth(len(view.disagree) - 1).locator(".slick-cell").first.click()
            k = view.disagree[-1]
            until(lambda: f"image {k}" in model(page, "vs-compare-grid-a", "title.text"), 30, "the row's image")
            until(lambda: page.locator(".vs-compare-image input").first.input_value() == str(k), 30,
                  "the typed number following")
            browser.close()
    finally:
        stop(proc)
