"""Many users on one server: eight browser sessions choose their own image at the same moment, and every page
shows its own image, as a lone session shows it (sessions share the store's arrays and the model, never a
selection or a view)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest
from proc_helpers import stop, wait_for_line
from test_browser import ARGS, CHROMIUM, free_port, model, text_of, until

sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright

SESSIONS = 8


@pytest.fixture(scope="module")
def store(demo16):
    """16 demo images: conftest's `demo16`, built once a session (the servers and `lone_view` only read it; the
    `vitscope demo` command that also makes such a store is test_build.py's and test_demo.py's)."""
    return demo16


@pytest.fixture(scope="module", params=["0", "4"], ids=["event-loop", "4-threads"])
def server(store, request):
    """`vitscope serve` as a lab runs it: callbacks on the event loop (the default), or on Panel's thread pool."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vitscope.cli", "serve", str(store), "--port", str(port),
                             "--threads", request.param],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    wait_for_line(proc, f"http://localhost:{port}/", timeout=120)
    yield f"http://localhost:{port}/"
    stop(proc)


@functools.cache
def lone_view(store, image: int) -> dict:
    """What one session shows for `image`: its pattern info line and the two-axes title (from its attention).
    Computed once per store and image (an Explorer of its own each, ~0.3-1 s), for both servers and both checks."""
    from vitscope.app import Explorer

    ex = Explorer(store)
    ex.overview.select(image)
    return {"info": ex.pattern.info.text, "axes": ex.pattern.matrix.axes.title.text,
            "marker": [float(ex.data.image_xy[image, 0])]}


def same_axes(got: str | None, want: str) -> bool:
    """The two-axes title ("two axes: N lines > T") of the same attention: the server computes it in a batch of the
    sessions' images on one thread, this process alone on its own, so a last float bit may move a line across the
    cut; the count within 2 lines and the cut within 1 %."""
    import math
    import re

    parse = lambda title: re.fullmatch(r"two axes: (\d+) lines > (\S+)", title or "")  # noqa: E731
    a, b = parse(got), parse(want)
    return bool(a and b) and abs(int(a[1]) - int(b[1])) <= 2 and math.isclose(float(a[2]), float(b[2]), rel_tol=0.01)


def test_eight_sessions_choose_at_once_and_each_sees_its_own_image(server, store):
    import html
    import re

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            pages = []
            for _ in range(SESSIONS):  # a context each: its own cookies, its own server session
                page = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
                page.errors = []
                page.on("pageerror", lambda e, page=page: page.errors.append(str(e)))
                page.goto(server, wait_until="networkidle")
                pages.append(page)
            for page in pages:
                page.wait_for_selector("text=Select an image to see its top-5", timeout=120_000)
            images = model(pages[0], "vs-overview-points", "data.image")
            chosen = [images[(3 * k + 1) % len(images)] for k in range(SESSIONS)]
            assert len(set(chosen)) == SESSIONS
            boxes = [page.locator(".vs-image-id input").first for page in pages]
            for box, image in zip(boxes, chosen, strict=True):
                box.fill(str(image))
            for box in boxes:  # the eight Enters go out together; the server handles them side by side
                box.press("Enter")

            plain = lambda h: re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", h))).strip()  # noqa: E731
            for page, image in zip(pages, chosen, strict=True):
                want = lone_view(store, image)
                until(lambda page=page, want=want: model(page, "vs-overview-marker", "data.x") == want["marker"],
                      timeout=120, what=f"image {image} chosen")
                until(lambda page=page, want=want: plain(text_of(page, ".vs-pattern-info")) == plain(want["info"]),
                      timeout=120, what=f"pattern info of image {image}")
                until(lambda page=page, want=want: same_axes(model(page, "vs-axes-fig", "title.text"), want["axes"]),
                      timeout=120, what=f"attention of image {image}")
            for page, image in zip(pages, chosen, strict=True):  # and stays so once all have settled
                assert model(page, "vs-overview-marker", "data.x") == lone_view(store, image)["marker"]
                assert not page.errors, page.errors
                assert "Traceback" not in page.content()
        finally:
            browser.close()
