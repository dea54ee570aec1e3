"""`vitscope export A B --image I`: the comparison on one image as one offline HTML file, opened from disk in
headless Chromium. A tap on a head of A rings its swapped partner in B (the page's own script, no server); the file
asks nothing of the network; bad input is one line."""

from __future__ import annotations

import numpy as np
import pytest
from test_compare import SWAPPED
from test_compare_view import stores  # noqa: F401 - the module's fixture: tiny stores a, swap, small
from test_hostile import page_text

from vitscope import store
from vitscope.cli import main


def test_the_exported_comparison_rings_partners_offline(stores, tmp_path, capsys):  # noqa: F811
    # Imported here: test_browser skips where chromium is missing, and the one-line error checks below need no
    # browser.
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    from test_browser import ARGS, CHROMIUM, MODEL_JS, SCREEN_JS, until

    out = tmp_path / "cmp.html"
    assert main(["export", str(stores["a"]), str(stores["swap"]), "--image", "2", "--out", str(out)]) == 0
    assert "comparison written" in capsys.readouterr().out
    ids = [str(i) for i in store.open_store(stores["a"])["image_id"].values]
    layer, h1, h2 = SWAPPED
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        requests, errors = [], []
        page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(out.as_uri(), wait_until="load", timeout=120_000)
        model = lambda name, attr: page.evaluate(MODEL_JS, [name, attr])  # noqa: E731
        until(lambda: model("vs-compare-grid-a", "title.text"), 60, "the grid of A")
        assert "image 2" in model("vs-compare-grid-b", "title.text")
        assert ids[2] in page_text(page)
        for side, key in (("a", "a"), ("b", "swap")):  # each grid: that store's importance of the image
            imp = store.open_store(stores[key])["importance"].isel(image=2).sel(mode=1, metric="prob")
            np.testing.assert_allclose(model(f"vs-compare-grid-source-{side}", "data.value"),
                                       imp.transpose("layer", "head").values.reshape(-1), rtol=1e-6)
        x, y = page.evaluate(SCREEN_JS, ["vs-compare-grid-a", h1, layer])
        page.mouse.click(x, y)
        until(lambda: model("vs-compare-ring-b", "data.x") == [h2], 30, "B's ring on the swapped partner")
        assert model("vs-compare-ring-b", "data.y") == [layer] and model("vs-compare-ring-a", "data.x") == [h1]
        assert f"A L{layer}H{h1} ↔ B L{layer}H{h2}" in model("vs-compare-pair", "text")
        x, y = page.evaluate(SCREEN_JS, ["vs-compare-grid-b", h2, layer])  # and from B's side back to A's
        page.mouse.click(x, y)
        until(lambda: model("vs-compare-ring-a", "data.x") == [h1], 30, "A's ring on the swapped partner")
        assert requests == [] and errors == []
        browser.close()


@pytest.mark.parametrize("argv, says", [
    (["--image", "99"], "image 99 out of range"),
    (["--image", "0", "--heads", "0:0"], "--heads is for one store"),
])
def test_bad_input_is_one_line(stores, tmp_path, capsys, argv, says):  # noqa: F811
    rc = main(["export", str(stores["a"]), str(stores["swap"]), *argv, "--out", str(tmp_path / "x.html")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and says in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "x.html").exists()


def test_an_image_missing_from_b_is_one_line(stores, tmp_path, capsys):  # noqa: F811
    import shutil

    import zarr

    b = tmp_path / "b.zarr"
    shutil.copytree(stores["swap"], b)
    valid = zarr.open_group(str(b))["valid"]
    valid[3] = False  # image 3 could not be read when B was built
    rc = main(["export", str(stores["a"]), str(b), "--image", "3", "--out", str(tmp_path / "x.html")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "of A was not analysed in B" in err and "\n" not in err
