"""A store served before its tSNE layouts are in (`vitscope demo`): the views say so, then draw them as they land."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from app_helpers import fake_served_page, make_store
from bokeh.events import Tap

from vitscope import layouts
from vitscope.app.overview import ImageOverview
from vitscope.app.pattern_map import PatternMap
from vitscope.app.session import poll_layouts
from vitscope.readout.selection import Selection
from vitscope.readout.store_data import StoreData

LAYOUTS = ("image_xy", "head_xy_cls", "head_xy_patch")


@pytest.fixture
def pending(tmp_path):
    """A synthetic store whose three layouts are still to come (NaN, named in `layouts_pending`), and the
    layouts it will get."""
    path = make_store(tmp_path / "p.zarr", 40, 3, 2, 4, 5)
    later = {}
    for name in LAYOUTS:
        arr = zarr.open_array(str(path / name), mode="r+")
        later[name] = arr[...]
        arr[...] = np.nan
    zarr.open_group(str(path), mode="r+").attrs["layouts_pending"] = list(LAYOUTS)
    zarr.consolidate_metadata(str(path))
    return path, later


def land(path, later, name) -> None:
    """What the build's background thread does when a layout is done."""
    zarr.open_array(str(path / name), mode="r+")[...] = later[name]
    group = zarr.open_group(str(path), mode="r+")
    group.attrs["layouts_pending"] = [n for n in group.attrs["layouts_pending"] if n != name]


def test_views_say_computing_then_draw_each_layout_as_it_lands(pending, monkeypatch):
    path, later = pending
    data = StoreData(path)
    assert data.layouts_pending == set(LAYOUTS) and np.isnan(data.image_xy).all()
    sel = Selection()
    overview, pmap = ImageOverview(data, sel), PatternMap(data, sel)
    # nothing computes them in this process: the views say how to get them
    assert "not computed yet" in overview.note.text and "not computed yet" in pmap.note.text
    assert len(overview.source.data["x"]) == 0 and overview.pick(0.0, 0.0) is None and pmap.pick(0.0, 0.0) is None
    pmap.figure._trigger_event(Tap(pmap.figure, x=0.0, y=0.0))  # a tap on the empty map is no error
    sel.image = 3
    overview.update({"image"})
    assert overview.marker.data["x"] == []  # no place for the image yet
    assert poll_layouts(data, {"image_xy"}, lambda names: None) is False  # no served session: nothing to poll

    monkeypatch.setattr(layouts, "layouts_status", lambda p: "running")
    assert data.layout_note("image_xy") == "computing layout…"
    pmap.update()  # any change of the selection tells it anew
    assert pmap.note.text == "computing layout…"
    assert data.refresh_layouts() == set()  # nothing landed yet

    land(path, later, "image_xy")
    assert data.refresh_layouts() == {"image_xy"} and data.layouts_pending == {"head_xy_cls", "head_xy_patch"}
    np.testing.assert_array_equal(data.image_xy, later["image_xy"])
    overview.layouts_arrived({"image_xy"})
    assert overview.note.text == "" and len(overview.source.data["x"]) == 40
    assert overview.marker.data["x"] == [float(later["image_xy"][3, 0])]
    assert overview.pick(*later["image_xy"][7]) == 7
    assert pmap.note.text == "computing layout…"

    land(path, later, "head_xy_cls")
    land(path, later, "head_xy_patch")
    assert data.refresh_layouts() == {"head_xy_cls", "head_xy_patch"} and not data.layouts_pending
    pmap.layouts_arrived({"head_xy_cls", "head_xy_patch"})
    assert pmap.note.text == ""
    x0, y0, x1, y1 = data.bounds("cls")
    assert (pmap.figure.x_range.start, pmap.figure.y_range.end) == (x0, y1)
    assert (pmap.raster.data["image"][0] != 0).any()  # all heads drawn
    xy = later["head_xy_cls"][5, 2, 1]
    assert pmap.pick(float(xy[0]), float(xy[1])) == (5, 2, 1)
    assert data.refresh_layouts() == set()


def test_a_failed_background_layout_is_said(pending, monkeypatch):
    data = StoreData(pending[0])
    monkeypatch.setattr(layouts, "layouts_status", lambda p: "failed: out of memory")
    assert data.layout_note("head_xy_patch") == "layout failed (see the terminal)"


def test_a_served_session_polls_until_every_layout_landed(pending, monkeypatch):
    import contextlib

    import panel as pn

    path, later = pending
    data = StoreData(path)

    made, loaded = fake_served_page(monkeypatch)
    monkeypatch.setattr(pn.io, "hold", contextlib.nullcontext)
    told: list[set[str]] = []
    assert poll_layouts(data, {"head_xy_cls", "head_xy_patch"}, told.append)
    assert made == []  # not before the page has loaded
    land(path, later, "head_xy_cls")  # while it loads
    loaded[0]()
    assert told == [{"head_xy_cls"}] and len(made) == 1
    look, periodic = made[0]
    look()
    assert told == [{"head_xy_cls"}] and not periodic.stopped
    land(path, later, "image_xy")  # not one this view waits for
    look()
    assert told == [{"head_xy_cls"}] and data.layouts_pending == {"head_xy_patch"}
    land(path, later, "head_xy_patch")
    look()
    assert told == [{"head_xy_cls"}, {"head_xy_patch"}] and periodic.stopped
