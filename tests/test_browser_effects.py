"""The head effects served, in headless Chromium: another proxy chosen in the Head Importance View redraws the
dashed line and its agreement with exact pruning, and a patch asked in the ablation panel is answered in the page."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from proc_helpers import stop, wait_for_line

from vitscope.readout.effects import best, proxy_scores
from vitscope.readout.store_data import StoreData
from vitscope.vocab import PROXIES, PROXY_LABELS

CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not on PATH (apt-get install chromium)", allow_module_level=True)
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright

from test_browser import ARGS, free_port, model, settled, text_of, until  # noqa: E402 - after the skips above


@pytest.fixture(scope="module")
def page(demo16):
    """One served demo16 and one page, shared by the tests in order, as one user's session."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vitscope.cli", "serve", str(demo16), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://localhost:{port}/"
    try:
        wait_for_line(proc, url, timeout=120)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            pg = browser.new_page(viewport={"width": 1600, "height": 1000})
            pg.goto(url, wait_until="networkidle")
            pg.wait_for_selector("text=Select an image to see its top-5", timeout=60_000)
            yield pg
            browser.close()
    finally:
        stop(proc)


def test_choosing_a_proxy_redraws_the_line_and_its_agreement(page, demo16):
    data = StoreData(demo16)
    first = best(data)
    assert model(page, "vs-proxy-axis", "axis_label") == f"{PROXY_LABELS[first]} (dashed)"
    before = settled(page, ".vs-proxy-text")
    other = next(p for p in PROXIES if p != first)
    page.locator(".vs-proxy select").first.select_option(label=PROXY_LABELS[other])
    until(lambda: model(page, "vs-proxy-axis", "axis_label") == f"{PROXY_LABELS[other]} (dashed)", what="axis")
    np.testing.assert_allclose(model(page, "vs-importance-source", "data.proxy"), proxy_scores(data, other, None),
                               rtol=1e-5)
    assert settled(page, ".vs-proxy-text", before) != before and "★ best here" in text_of(page, ".vs-proxy-text")


def test_a_patch_is_answered_in_the_panel(page, demo16):
    data = StoreData(demo16)
    target, source = 3, next(i for i in range(data.images) if int(data.label[i]) != int(data.label[3]))
    box = page.locator(".vs-image-id input").first
    box.fill(str(target))
    box.press("Enter")
    page.wait_for_selector(f"text=image {target} ", timeout=30_000)
    src = page.locator(".vs-patch-source input").first
    src.fill(str(source))
    src.press("Enter")
    page.locator(".vs-patch button").first.click()
    until(lambda: f"from image {source}" in text_of(page, ".vs-patch-answer"), 120, "the patch answer")
    answer = text_of(page, ".vs-patch-answer")
    assert f"image {target} with 1 head from image {source}" in answer and "top-5:" in answer
    assert "Traceback" not in page.content()
