"""The compare view (`vitscope serve A B`), without a browser: on tiny stores of random-init demo-architecture models
(test_compare's), a model against a copy with two heads swapped and against another model.

Each check compares the view's Bokeh sources with numbers computed here from the stores or from `compare()`.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
from app_helpers import make_store
from bokeh.events import Tap
from test_compare import SWAPPED

from vitscope import store
from vitscope.app.compare_view import SIDES, TRENDS, CompareView
from vitscope.cli import main
from vitscope.compare import compare
from vitscope.readout.comparison import comparison, trend_lines
from vitscope.readout.palette import SELECTED

HOSTILE = "<img src=x onerror=alert(1)>\u202etxt.exe"


@pytest.fixture(scope="module")
def stores(compare_stores) -> dict:
    return compare_stores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tap(view: CompareView, side: str, layer: int, head: int) -> None:
    """A tap on the head's cell of `side`'s grid, through the figure's own Tap callbacks."""
    fig = view.grid[side]
    for callback in fig._event_callbacks["tap"]:
        callback(Tap(fig, x=head + 0.1, y=layer - 0.2))


def ringed(view: CompareView, side: str) -> tuple[int, int] | None:
    ring = view.ring[side].data
    return (int(ring["y"][0]), int(ring["x"][0])) if len(ring["x"]) else None


def test_tapping_a_head_of_a_rings_its_swapped_partner_in_b(stores):
    view = CompareView(stores["a"], stores["swap"])
    layer, h1, h2 = SWAPPED
    tap(view, "a", layer, h1)
    assert (view.selection.side, view.selection.layer, view.selection.head) == ("a", layer, h1)
    assert ringed(view, "a") == (layer, h1) and ringed(view, "b") == (layer, h2)  # crosswise
    assert view.ring["a"].data["colour"] == [SELECTED]
    assert f"A L{layer}H{h1} ↔ B L{layer}H{h2}" in view.pair_info.text
    tap(view, "b", layer, h1)  # and from B's side back to A's
    assert ringed(view, "b") == (layer, h1) and ringed(view, "a") == (layer, h2)
    tap(view, "a", 0, 3)  # an unswapped head: itself
    assert ringed(view, "b") == (0, 3)


def test_image_selection_recolours_both_grids_with_each_stores_importance(stores):
    view = CompareView(stores["a"], stores["small"])
    ds = {s: store.open_store(stores[k]) for s, k in zip(SIDES, ("a", "small"), strict=True)}
    view.select_image(2)
    assert view.image_id.value == 2  # the typed number follows a selection made elsewhere (a row tap)
    assert str(ds["a"]["image_id"].values[view.images["a"][2]]) in view.image_name.object
    for side in SIDES:
        i = int(view.images[side][2])
        imp = ds[side]["importance"].isel(image=i).sel(mode=1, metric="prob").transpose("layer", "head").values
        np.testing.assert_allclose(view.grid_source[side].data["value"], imp.reshape(-1), rtol=1e-6)
        ent = ds[side]["strength_entropy"].isel(image=i).transpose("layer", "head").values
        np.testing.assert_allclose(view.strength_source[side].data["y"], ent.reshape(-1), rtol=1e-6)
        assert "image 2" in view.grid[side].title.text
    view.image_id.value = 3  # a typed number drives the selection too
    assert view.selection.image == 3 and "image 3" in view.grid["b"].title.text
    view.image_id.value = None  # emptied: all images
    assert view.selection.image is None and "mean of the images" in view.grid["a"].title.text
    assert "all matched images" in view.image_name.object
    for side in SIDES:  # the mean over the matched images, as compare() reads them
        imp = ds[side]["importance"].isel(image=view.images[side]).sel(mode=1, metric="prob")
        np.testing.assert_allclose(view.grid_source[side].data["value"],
                                   imp.mean("image").transpose("layer", "head").values.reshape(-1), rtol=1e-5)


def test_the_disagreement_list_is_the_images_whose_top1_differ(stores):
    view = CompareView(stores["a"], stores["small"])
    a, b = store.open_store(stores["a"]), store.open_store(stores["small"])
    top = {s: ds["topk_idx"].sel(mode=0).isel(layer=0, head=0, k=0).values for s, ds in (("a", a), ("b", b))}
    ids_b = {str(i): k for k, i in enumerate(b["image_id"].values)}
    expected = [str(i) for k, i in enumerate(a["image_id"].values)
                if a["valid"].values[k] and top["a"][k] != top["b"][ids_b[str(i)]]]
    assert view.table_source.data["image_id"] == expected
    assert expected, "random-init models of different seeds should disagree somewhere"
    view.table_source.selected.indices = [len(expected) - 1]  # a tap on a row selects that image
    k = view.selection.image
    assert str(a["image_id"].values[view.images["a"][k]]) == expected[-1]
    same = CompareView(stores["a"], stores["swap"])  # the same model's output: no disagreement
    assert same.table_source.data["image_id"] == []


def test_layer_trends_are_compares_numbers(stores):
    view = CompareView(stores["a"], stores["small"])  # 4 layers against 2: relative depth
    r = compare(store.open_store(stores["a"]), store.open_store(stores["small"]))
    for key, _ in TRENDS:
        a, b = (view.trend_source[key][s].data for s in SIDES)
        np.testing.assert_allclose(a["y"], [np.nan if row[key][0] is None else row[key][0] for row in r["layers"]])
        np.testing.assert_allclose(a["x"], np.arange(4) / 3)
        assert b["layer"] == [0, 1] and list(b["x"]) == [0.0, 1.0]
        first = {row["layer_b"]: row[key][1] for row in reversed(r["layers"])}
        np.testing.assert_allclose(b["y"], [np.nan if first[j] is None else first[j] for j in (0, 1)])
    assert trend_lines(comparison(*view.paths), "distance")[0] == view.trend_source["distance"]["a"].data


def test_hostile_store_names_stay_text(stores):
    view = CompareView(stores["a"], stores["swap"], names=(HOSTILE, "b"))
    html = view.header().object
    assert "<img" not in html and "&lt;img" in html and "\u202e" not in html
    legend = view.trend["distance"].legend[0].items[0].label.value
    assert "\u202e" not in legend and legend.startswith("A: <img")  # drawn on the canvas: text, not markup
    assert "<img" not in view.pair_info.text


def test_serve_with_two_stores_and_compare_serve_reach_the_compare_view(stores, monkeypatch, capsys):
    import vitscope.app

    calls = []
    monkeypatch.setattr(vitscope.app, "serve", lambda store, **kw: calls.append((str(store), kw)))
    ports = [free_port() for _ in range(3)]  # the CLI binds each to check it is free: ports nobody else holds
    assert main(["serve", str(stores["a"]), str(stores["swap"]), "--port", str(ports[0])]) == 0
    assert main(["compare", str(stores["a"]), str(stores["swap"]), "--serve", "--port", str(ports[1])]) == 0
    assert main(["serve", str(stores["a"]), "--port", str(ports[2])]) == 0
    assert [(s, str(kw["compare_with"]), kw["port"]) for s, kw in calls] == [
        (str(stores["a"]), str(stores["swap"]), ports[0]), (str(stores["a"]), str(stores["swap"]), ports[1]),
        (str(stores["a"]), "None", ports[2])]
    assert main(["serve", *(str(stores[k]) for k in ("a", "swap", "small"))]) == 2
    assert main(["compare", str(stores["a"]), str(stores["swap"]), "--serve", "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not 3" in err[0] and "--serve" in err[1]


def test_serve_refuses_stores_of_other_images_in_one_line(stores, tmp_path, capsys):
    other = make_store(tmp_path / "other.zarr", 6, 2, 2, 4, 3)  # a synthetic store: another image set
    assert main(["serve", str(stores["a"]), str(other), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different image sets" in err[0]
