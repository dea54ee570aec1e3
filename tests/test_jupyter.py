"""apps/explore.ipynb in a real JupyterLab and headless Chromium, offline: the notebook runs through a real kernel,
the app renders with nothing fetched from outside the machine, browser events reach the Python selection and
Python's changes reach the page, a cell's output lands in that cell while the app handles a tap, and the model is
loaded before the first tap (benchmarks/jupyter_browser.py times that tap).
"""

from __future__ import annotations

import importlib.util
import json

import pytest
from test_browser import CHROMIUM, MODEL_JS, SCREEN_JS, until  # skips this module too without chromium

if importlib.util.find_spec("jupyterlab") is None or importlib.util.find_spec("jupyter_bokeh") is None:
    pytest.skip("JupyterLab is not installed (pip install -e '.[test]' installs jupyterlab and jupyter_bokeh)",
                allow_module_level=True)
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright

from jupyter_helpers import ARGS, Lab, cell_result, external, notebook_copy, open_notebook, output, run_cell  # noqa: E402
from test_export import check_snapshot  # noqa: E402

# Counts, in the kernel, messages from the page that carry data changes (the page echoes every change the kernel
# sends) and searches of the model graph (Panel's lookup of each echoed data source; vitscope.app.notebook).
COUNT = ("from bokeh.model import Model\nimport panel.viewable as _pv\n_vs = {'echoes': 0, 'searches': 0}\n"
         "_search, _patch = Model.select_one, _pv.patch_cds_msg\n"
         "def _counted_search(self, selector):\n    _vs['searches'] += 1\n    return _search(self, selector)\n"
         "def _counted_patch(root, msg):\n"
         "    _vs['echoes'] += any(e.get('attr') == 'data' for e in msg.get('content', {}).get('events', []))\n"
         "    return _patch(root, msg)\n"
         "Model.select_one, _pv.patch_cds_msg = _counted_search, _counted_patch\nprint('counting')")
UNCOUNT = "Model.select_one, _pv.patch_cds_msg = _search, _patch\nprint('done')"
WARM = ("app.warming.join(120)\nfrom vitscope.service.dispatch import _dispatcher_or_error\n"
        "print('warming' if app.warming.is_alive() else 'warm', 'loads', _dispatcher_or_error.cache_info().misses, "
        "'image', app.selection.image)")


@pytest.fixture(scope="module")
def store(demo16):
    """A small store of the demo model (its model loads in the kernel: the warm-up has work to do): conftest's
    `demo16`, the same build (16 images, chunk 8, ae_epochs 1) shared with the session; the notebook only reads it."""
    return demo16


@pytest.fixture(scope="module")
def lab_root(tmp_path_factory):
    """JupyterLab's folder: the notebook, and what its cells write (the kernel runs there)."""
    return tmp_path_factory.mktemp("lab")


@pytest.fixture(scope="module")
def nb(store, lab_root, tmp_path_factory):
    """JupyterLab on the notebook; the page has run the app's cell only (the other cells are the tests' to run).
    Yields (page, code cell indices, every URL the page requested, console messages)."""
    root = lab_root
    _, code = notebook_copy(store, root)
    lab = Lab(root, tmp_path_factory.mktemp("home"))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1800, "height": 1400})
            requests, console = [], []
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: console.append(m.text))
            open_notebook(page, lab.url("explore.ipynb"))
            run_cell(page, code[0])
            page.wait_for_function("() => window.Bokeh && Bokeh.documents.some(d => "
                                   "d.get_model_by_name('vs-overview-fig'))", timeout=120_000)
            yield page, code, requests, console
            browser.close()
    finally:
        lab.close()


def model(page, name: str, attr: str):
    return page.evaluate(MODEL_JS, [name, attr])


def tap_image(page, k: int) -> int:
    """Tap the k-th point of the Image Overview; returns its image id."""
    page.locator(".vs-image-overview").first.scroll_into_view_if_needed()
    xs, ys = model(page, "vs-overview-points", "data.x"), model(page, "vs-overview-points", "data.y")
    page.mouse.click(*page.evaluate(SCREEN_JS, ["vs-overview-fig", xs[k], ys[k]]))
    return model(page, "vs-overview-points", "data.image")[k]


def test_renders_offline_with_bokeh_and_panel_inline(nb):
    page, _, requests, console = nb
    assert model(page, "vs-overview-fig", "title.text").startswith("Image Overview")
    assert not [m for m in console if "library is missing" in m], console
    assert not external(requests), external(requests)


def test_model_is_loaded_before_the_first_tap(nb):
    """The first tap is quick because `Explorer.open` loads the model in a thread (benchmarks/jupyter_browser.py
    times it): by the time the views are in the page it has loaded once, and the first tap loads nothing."""
    page, code, _, _ = nb
    scratch = code[-1] + 1
    assert cell_result(page, scratch, WARM).split() == ["warm", "loads", "1", "image", "None"]
    image = tap_image(page, 3)
    until(lambda: cell_result(page, scratch, WARM).split() == ["warm", "loads", "1", "image", str(image)], 60,
          "the first tap to reach the Python selection without loading a model")


def test_typed_id_and_tap_reach_python_and_python_reaches_the_page(nb):
    page, code, _, _ = nb
    scratch = code[-1] + 1
    box = page.locator(".vs-image-id input").first
    # A tap's last push (the id box among it) can still be on its way: applied between the typing and the Enter, it
    # replaces the typed id, which then never reaches the kernel. A user sees the box settle first.
    shown = cell_result(page, scratch, "print(app.selection.image)").strip().replace("None", "")
    until(lambda: box.input_value() == shown, 60, "the id box to show the selected image")
    box.fill("5")
    box.press("Enter")
    until(lambda: cell_result(page, scratch, "print(app.selection.image)").strip() == "5", 60, "typed id")
    image = tap_image(page, 7)
    until(lambda: cell_result(page, scratch, "print(app.selection.image)").strip() == str(image), 60, "tap")

    run_cell(page, code[1])  # the notebook's own cell: image 3, layer 2, head 1 from Python
    images = model(page, "vs-overview-points", "data.image")
    x = model(page, "vs-overview-points", "data.x")[images.index(3)]
    until(lambda: model(page, "vs-overview-marker", "data.x") == [x], 60, "the page to mark image 3")
    assert model(page, "vs-strength-fig", "title.text").endswith("image 3")  # the same document change
    until(lambda: "L2H1" in (model(page, "vs-strength-bars", "data.name") or []), 60, "the page to show L2H1")


def test_a_cells_output_lands_in_that_cell_while_the_app_handles_a_tap(nb):
    page, code, _, _ = nb
    marker = code[-1] + 2
    for k, point in enumerate((2, 9, 4)):
        tap_image(page, point)
        text = cell_result(page, marker, f"print('marker-{k}')")
        assert text.strip() == f"marker-{k}", text
        assert f"marker-{k}" not in output(page, code[0])["text"]
    page.wait_for_timeout(2000)  # anything the app's cell would still print
    assert "marker" not in output(page, code[0])["text"]


def test_the_pages_echo_of_a_tap_costs_the_kernel_no_search(nb):
    """What makes a tap settle in about a second rather than 2-4 (benchmarks/jupyter_browser.py): the page sends the
    kernel's changes back and waits for the kernel's ack before it sends the next tap, and the kernel now finds the
    echoed data sources by id (Panel searched the whole model graph for each: 19 searches a tap, ~0.2 s each)."""
    page, code, _, _ = nb
    scratch = code[-1] + 1
    assert cell_result(page, scratch, COUNT).strip() == "counting"
    try:
        tap_image(page, 10)

        def echoed() -> dict | None:
            counts = json.loads(cell_result(page, scratch, "import json\nprint(json.dumps(_vs))"))
            return counts if counts["echoes"] else None

        counts = until(echoed, 60, "the page's echo of the tap to reach the kernel")
        assert counts["searches"] == 0, counts
    finally:
        assert cell_result(page, scratch, UNCOUNT).strip() == "done"


def test_export_cell_writes_the_snapshot_and_still_nothing_fetched_from_outside(nb, store, lab_root):
    page, code, requests, _ = nb
    snapshot = lab_root / "snapshot.html"
    assert not snapshot.exists()
    run_cell(page, code[2])
    until(lambda: output(page, code[2])["done"], 120, "the export cell")
    assert "snapshot.html" in output(page, code[2])["text"]  # the path `export` returns, the cell's value
    check_snapshot(snapshot, store, 3)  # image 3's page, written by the kernel in the notebook's folder
    assert not external(requests), external(requests)
