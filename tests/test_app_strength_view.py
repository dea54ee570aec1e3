"""Attention Strength View callbacks and rendering, without a browser."""

from __future__ import annotations

import sys
from pathlib import Path

import holoviews as hv
import numpy as np
import panel as pn
import pytest
from bokeh.models import GlyphRenderer, Span, VBar

from vitscope.app.data import StoreData
from vitscope.app.state import Selection
from vitscope.app.strength_view import AttentionStrengthView

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import synthetic_store  # noqa: E402

hv.extension("bokeh", logo=False)
INVALID = (2, 5)  # images marked unreadable, as a build marks them (NaN rows, valid False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> StoreData:
    out = synthetic_store.make(tmp_path_factory.mktemp("s") / "s.zarr", images=30, layers=3, heads=4, grid=4,
                               classes=6, chunk=8)
    d = StoreData(out)
    for i in INVALID:
        d.valid[i] = False
        d.strength[i] = d.strength_entropy[i] = d.attention_distance[i] = np.nan
    return d


def test_points_are_the_store_entropies_of_the_image_or_the_valid_mean(data):
    sel = Selection(image=7)
    view = AttentionStrengthView(data, sel)
    pts = view.head_points()
    assert len(pts) == data.layers * data.heads
    for row in pts.itertuples():
        assert row.y == pytest.approx(data.strength_entropy[7, row.layer, row.head])
        assert row.distance == pytest.approx(data.attention_distance[7, row.layer, row.head])
        assert abs(row.x - row.layer) < 0.5  # jitter stays in the layer's column
    assert pts.groupby("layer")["x"].nunique().eq(data.heads).all()  # heads of a layer do not overlap
    sel.image = None
    mean = data.strength_entropy[data.valid].mean(0)
    np.testing.assert_allclose(view.head_points()["y"], mean.reshape(-1), rtol=1e-6)
    assert np.isfinite(view.head_points()["y"]).all()
    sel.image = INVALID[0]  # an unreadable image shows the mean instead of NaNs
    np.testing.assert_allclose(view.head_points()["y"], mean.reshape(-1), rtol=1e-6)


def test_tap_picks_the_nearest_head_in_data_space(data):
    sel = Selection(image=3)
    view = AttentionStrengthView(data, sel)
    pts = view.head_points()
    rng = np.random.default_rng(0)
    for x, y in zip(rng.uniform(-0.5, data.layers - 0.5, 20), rng.uniform(0, 1, 20), strict=True):
        k = int(np.argmin((pts["x"] - x) ** 2 + (pts["y"] - y) ** 2))
        assert view.pick(x, y) == (pts["layer"][k], pts["head"][k])
    row = pts.iloc[data.head_index(2, 1)]
    view.tap.event(x=row.x + 0.01, y=row.y)  # what a click in the browser sends
    assert (sel.layer, sel.head) == (2, 1)


def test_bars_are_the_strength_vector_and_follow_the_selection(data):
    sel = Selection(image=4, layer=1, head=2)
    view = AttentionStrengthView(data, sel)
    np.testing.assert_array_equal(view.hop_values(), data.strength[4, 1, 2])
    assert len(view.hop_values()) == data.grid
    root = pn.panel(view).get_root()
    source = next(r.data_source for r in root.select({"type": GlyphRenderer}) if isinstance(r.glyph, VBar))
    np.testing.assert_allclose(source.data["strength"], data.strength[4, 1, 2])
    sel.param.update(layer=0, head=3)
    np.testing.assert_allclose(source.data["strength"], data.strength[4, 0, 3])
    np.testing.assert_array_equal(view.bars().dimension_values("strength"), data.strength[4, 0, 3])
    sel.image = None
    np.testing.assert_allclose(view.hop_values(), data.strength[data.valid, 0, 3].mean(0), rtol=1e-6)


def test_area_has_one_value_per_valid_image_and_the_line_is_at_the_image(data):
    sel = Selection(image=9, layer=2, head=0)
    view = AttentionStrengthView(data, sel)
    s = view.entropy_series()
    assert len(s.entropy) == data.valid.sum() and set(s.image) == set(np.flatnonzero(data.valid))
    assert np.all(np.diff(s.entropy) >= 0)  # sorted by value
    np.testing.assert_array_equal(s.entropy, data.strength_entropy[s.image, 2, 0])
    assert s.image[s.current] == 9
    area = view.area().get(0)
    assert [d.name for d in area.vdims] == ["entropy"]  # a second value dimension would be the fill's baseline
    np.testing.assert_array_equal(area.dimension_values("entropy"), s.entropy)
    root = pn.panel(view).get_root()
    span = next(iter(root.select({"type": Span})))
    assert span.location == s.current
    sel.param.update(image=12, head=3)
    s = view.entropy_series()
    assert s.image[s.current] == 12 and span.location == s.current
    np.testing.assert_array_equal(s.entropy, data.strength_entropy[s.image, 2, 3])
    sel.image = None
    assert view.entropy_series().current is None and span.line_alpha == 0


def test_renders_with_titles_named_after_the_paper(data):
    sel = Selection()
    view = AttentionStrengthView(data, sel)
    pn.panel(view).get_root()
    assert view.scatter().opts.get().kwargs["title"].startswith("Attention Strength View")
    assert "mean of all images" in view.scatter().opts.get().kwargs["title"]
    sel.param.update(image=1, layer=9, head=9)  # out-of-store selection is clipped, never an IndexError
    assert view.hop_values().shape == (data.grid,)
    pn.panel(view).get_root()
