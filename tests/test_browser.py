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
def server(tmp_path_factory):
    out = tmp_path_factory.mktemp("app") / "demo.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    build = subprocess.run([sys.executable, "-m", "vitscope.cli", "build", "--model", "demo", "--images", "demo",
                            "--limit", "24", "--chunk-size", "8", "--ae-epochs", "2", "--out", str(out)],
                           capture_output=True, text=True, timeout=600, env=env)
    assert build.returncode == 0, build.stderr
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vitscope.cli", "serve", str(out), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_tap_in_image_overview_updates_the_other_views(server, tmp_path):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.goto(server, wait_until="networkidle")
        page.wait_for_selector("text=Select an image to see its top-5 predictions", timeout=60_000)
        assert "Traceback" not in page.content()
        canvas = page.locator("canvas").first
        canvas.wait_for(timeout=60_000)
        box = canvas.bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # nearest image is selected
        page.wait_for_selector("text=true label", timeout=60_000)  # the Image Overview's detail
        page.wait_for_selector("text=pruned, mode 1", timeout=60_000)  # the Head Importance View's top-5
        assert page.locator("text=Select an image to see its top-5 predictions").count() == 0
        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        assert (tmp_path / "app.png").stat().st_size > 10_000
        browser.close()
