"""`panel serve apps/vitscope_app.py --args STORE`, the app with Panel's own flags, as a real server process on a
free port of 127.0.0.1. The page is fetched over HTTP and its document pulled over the websocket the browser would
use (the session that page load made), so what is checked is what a browser is sent.

One server serves both cases, in order: the app runs anew for every page load, so its store path first names
nothing (the page is the one-line message) and then the demo16 store (the page is the app for that store)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from proc_helpers import stop, wait_for_line

from vitscope.store import open_store

APP = Path(__file__).resolve().parents[1] / "apps" / "vitscope_app.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The server and the store path it was given (nothing there yet)."""
    store = tmp_path_factory.mktemp("panel") / "store.zarr"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "panel", "serve", str(APP), "--address", "127.0.0.1", "--port",
                             str(port), "--args", str(store)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}/{APP.stem}"
    try:
        wait_for_line(proc, url, timeout=120)
        yield url, store
    finally:
        stop(proc)


def load(url: str):
    """The page as a browser gets it, and the document of the session that page load made (Bokeh's client, on the
    page's session id)."""
    import panel  # noqa: F401 - registers Panel's Bokeh models, which the document holds
    from bokeh.client import pull_session
    from bokeh.util.token import get_session_id

    with urllib.request.urlopen(url, timeout=180) as response:
        assert response.status == 200
        html = response.read().decode()
    token = re.search(r'"token":\s*"([^"]+)"', html).group(1)
    session = pull_session(session_id=get_session_id(token), url=url)
    return html, session


def texts(document) -> list[str]:
    return [t for m in document.models for t in (getattr(m, "text", None), getattr(m, "object", None))
            if isinstance(t, str) and t]


def test_a_missing_store_is_one_line_in_the_page(served):
    url, store = served
    html, session = load(url)
    try:
        shown = texts(session.document)
    finally:
        session.close()
    assert re.search(r"<title>\s*vitscope\s*</title>", html)  # the app's page, with its one line
    assert len(shown) == 1 and "\n" not in shown[0] and "Traceback" not in shown[0] + html, shown
    assert shown[0].startswith(f"vitscope cannot open {store}: store not found")


def test_the_page_is_the_app_for_that_store(served, demo16):
    """The same server once the path holds demo16: the Image Overview's points are the store's placed images at
    their stored layout positions, with their ids and P[true]."""
    url, store = served
    store.symlink_to(demo16, target_is_directory=True)
    html, session = load(url)
    try:
        doc = session.document
        points = {k: list(v) for k, v in doc.get_model_by_name("vs-overview-points").data.items()}
        titles = {name: doc.get_model_by_name(name).title.text for name in ("vs-overview-fig", "vs-importance-fig")}
        shown = texts(doc)
    finally:
        session.close()
    assert re.search(r"<title>\s*vitscope — how this ViT uses attention\s*</title>", html)
    ds = open_store(demo16)
    placed = np.flatnonzero(ds["valid"].values & np.isfinite(ds["image_xy"].values).all(1))
    assert points["image"] == placed.tolist() and len(placed) == ds.sizes["image"] == 16
    assert points["id"] == [str(i) for i in ds["image_id"].values[placed]]
    np.testing.assert_allclose(points["x"], ds["image_xy"].values[placed, 0], rtol=1e-6)
    np.testing.assert_allclose(points["y"], ds["image_xy"].values[placed, 1], rtol=1e-6)
    np.testing.assert_allclose(points["p"], ds["baseline_prob"].values[placed], rtol=1e-6)
    assert titles["vs-overview-fig"].startswith("Image Overview — 16 images")
    assert titles["vs-importance-fig"].startswith("Head Importance View")
    assert any("6 layers × 4 heads" in t and "16 images" in t for t in shown)
    assert not any("cannot open" in t or "Traceback" in t for t in shown)
