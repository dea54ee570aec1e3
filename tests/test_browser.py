"""The served app in real headless Chromium: tap the Image Overview, the other views follow."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true":
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright


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
    url = f"http://localhost:{port}/"
    lines = []
    for line in proc.stdout:  # the URL is printed once the port is bound
        lines.append(line)
        if url in line:
            break
    assert url in "".join(lines), "".join(lines)
    urllib.request.urlopen(url, timeout=60)
    yield url, cache / "demo-24.zarr"
    proc.terminate()
    proc.wait(timeout=30)


def click_plot(page, css: str, fx: float = 0.5, fy: float = 0.5) -> None:
    """Click at a fraction of a plot pane's box (the panes carry these CSS classes for tests)."""
    pane = page.locator(css).first
    pane.scroll_into_view_if_needed()
    box = pane.bounding_box()
    page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])


def text_of(page, css: str) -> str:
    """Text of a Panel pane (rendered inside the element's shadow root)."""
    js = "e => Array.from((e.shadowRoot || e).children).filter(c => c.tagName !== 'STYLE').map(c => c.innerText)"
    return " ".join(page.locator(css).first.evaluate(js))


def settled(page, css: str, differs_from: str | None = None, timeout: float = 60.0, quiet: float = 1.5) -> str:
    """The pane's text once it differs from `differs_from` and has not changed for `quiet` seconds: one tap
    can update a pane more than once (the engine call, then the redraw), so a first change is not the end."""
    deadline = time.time() + timeout
    last, since = None, time.time()
    while time.time() < deadline:
        now = text_of(page, css)
        if now != last:
            last, since = now, time.time()
        elif now != differs_from and time.time() - since >= quiet:
            return now
        time.sleep(0.2)
    raise AssertionError(f"{css} did not settle on a new text after {timeout} s (last: {last!r})")


def test_taps_in_every_view_update_the_others(demo, tmp_path):
    url, _ = demo
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url, wait_until="networkidle")
        page.wait_for_selector("text=Select an image to see its top-5 predictions", timeout=60_000)
        assert "Traceback" not in page.content()
        info = ".vs-pattern-info"
        assert "Select an image" in text_of(page, info)

        # Image Overview → detail, Head Importance top-5, and the Attention Pattern View (engine call).
        click_plot(page, ".vs-image-overview")
        page.wait_for_selector("text=true label", timeout=60_000)
        page.wait_for_selector("text=pruned, mode 1", timeout=60_000)
        page.wait_for_selector("text=mean attention distance", timeout=60_000)
        assert page.locator("text=Select an image to see its top-5 predictions").count() == 0
        before = settled(page, info)
        assert "layer 0 · head 0" in before

        # Head Importance View: a tap on the line picks a head (the right end: the last layer).
        click_plot(page, ".vs-importance-line", 0.9, 0.5)
        after = settled(page, info, before)
        assert "layer 0 · head 0" not in after
        page.wait_for_selector("text=pruned, mode 1", timeout=60_000)

        # Attention Strength View: a tap on the left of the scatter picks a head of layer 0.
        click_plot(page, ".vs-strength-scatter", 0.15, 0.5)
        after2 = settled(page, info, after)
        assert "layer 0 ·" in after2

        # Attention Pattern View: a tap on the map picks the nearest head of any image.
        click_plot(page, ".vs-pattern-map", 0.3, 0.7)
        settled(page, info, after2)

        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        assert (tmp_path / "app.png").stat().st_size > 10_000
        assert not errors, errors
        browser.close()


def test_exported_snapshot_opens_from_disk_without_network(demo, tmp_path):
    _, store = demo
    out = tmp_path / "snap.html"
    res = subprocess.run([sys.executable, "-m", "vitscope.cli", "export", str(store), "--image", "3", "--heads", "0:1",
                          "5:3", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    text = out.read_text()
    assert "<script src=" not in text and "cdn.bokeh.org" not in text  # inline resources only
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
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
        browser.close()


def test_notebook_cells_run_on_a_store(demo, tmp_path, monkeypatch):
    """apps/explore.ipynb as written (its STORE pointed at the test's store): no Jupyter is needed to check it."""
    import json
    from pathlib import Path

    import panel as pn

    _, store = demo
    monkeypatch.chdir(tmp_path)
    nb = json.loads((Path(__file__).parents[1] / "apps" / "explore.ipynb").read_text())
    scope: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            src = "".join(cell["source"]).replace('cache_root() / "demo.zarr"', repr(str(store)))
            exec(compile(src, "explore.ipynb", "exec"), scope)
    app = scope["app"]
    assert (app.selection.image, app.selection.layer, app.selection.head) == (3, 2, 1)
    pn.panel(app).get_root()
    assert (tmp_path / "snapshot.html").stat().st_size > 100_000
