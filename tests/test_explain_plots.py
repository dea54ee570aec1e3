"""The figures of `vitscope explain`: one image's patch maps over it, their faithfulness curves and the benchmark over
a sample, checked against the numbers of the dict they draw (made here, or `Service.explain`'s on the demo model);
`vitscope figure` and the app's "save figure" reach them, and a store without a class basis skips them."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import holoviews as hv
import numpy as np
import pytest
from app_helpers import fake_explanation, make_store

import vitscope.plots as vp
from vitscope import store
from vitscope.errors import VitscopeError
from vitscope.readout.store_data import StoreData
from vitscope.vocab import EXPLAIN_DIRECTIONS, EXPLAIN_METHODS

GRID, IMAGE = 4, 3
MOST, LEAST = EXPLAIN_DIRECTIONS


@pytest.fixture(scope="module")
def path(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("explain_plots") / "s.zarr", images=8, layers=2, heads=2, grid=GRID,
                      classes=3)


@pytest.fixture(scope="module")
def data(path) -> StoreData:
    return StoreData(path)


@pytest.fixture(scope="module")
def explanation(data) -> dict:
    return fake_explanation(IMAGE, int(data.label[IMAGE]), GRID)


def option(element, name: str):
    """A plot option of an element, as the print backend (matplotlib) reads it."""
    return hv.Store.lookup_options("matplotlib", element, "plot").kwargs[name]


def clim(element) -> tuple[float, float]:
    return option(element, "clim")


def test_each_map_lies_over_the_image_on_its_patch_grid_row_major(data, explanation):
    """Patch n of a map [N] is drawn at grid row n // p, column n % p over the whole thumbnail, each map on its own
    colour scale (a signed map diverging around 0)."""
    layout = vp.build("explain-maps", data, image=IMAGE, explain=explanation)
    thumb = data.thumbnail(IMAGE)
    assert [p.Image.I.vdims[0].name for p in layout.values()] == list(EXPLAIN_METHODS)
    for panel, m in zip(layout.values(), EXPLAIN_METHODS, strict=True):
        flat = np.asarray(explanation["maps"][m])
        shown = np.flipud(panel.Image.I.dimension_values(m, flat=False))  # hv.Image rows run bottom → top
        np.testing.assert_allclose(shown, flat.reshape(GRID, GRID))
        assert shown[0, 1] == flat[1] and shown[1, 0] == flat[GRID]  # row-major, not column-major
        assert panel.Image.I.bounds.lbrt() == (0, 0, thumb.shape[1], thumb.shape[0])
        np.testing.assert_array_equal(np.flipud(panel.RGB.I.dimension_values("R", flat=False)), thumb[..., 0])
        if m == "occlusion":
            span = np.abs(flat).max()
            assert clim(panel.Image.I) == pytest.approx((-span, span))
        else:
            assert clim(panel.Image.I) == pytest.approx((flat.min(), flat.max()))
        assert f"{m} — image {IMAGE}, target {data.class_names[explanation['target']]}" == option(panel, "title")


def test_one_map_alone_and_a_map_off_its_grid(data, explanation):
    alone = vp.patch_map(data, explanation, "rollout")
    np.testing.assert_allclose(np.flipud(alone.Image.I.dimension_values("rollout", flat=False)).ravel(),
                               explanation["maps"]["rollout"])
    with pytest.raises(VitscopeError, match="has 15 values, not the 4×4 patches"):
        vp.patch_map(data, {**explanation, "maps": {"rollout": list(range(15))}}, "rollout")
    with pytest.raises(VitscopeError, match="no 'occlusion' map"):
        vp.patch_map(data, {**explanation, "maps": {"rollout": explanation["maps"]["rollout"]}}, "occlusion")


def test_the_curves_are_the_explanations_with_each_auc_in_the_legend(data, explanation):
    layout = vp.build("explain-curves", data, image=IMAGE, explain=explanation)
    panels = layout.values()
    assert len(panels) == 2
    for panel, d in zip(panels, EXPLAIN_DIRECTIONS, strict=True):
        assert option(panel, "title").startswith(d.replace("_", " ").replace("first", "removed first"))
        for curve, m in zip(panel.values(), EXPLAIN_METHODS, strict=True):
            np.testing.assert_allclose(curve.dimension_values("removed"), np.arange(10) / 10)
            np.testing.assert_allclose(curve.dimension_values("p_target"), explanation["curves"][m][d])
            auc = np.trapezoid(explanation["curves"][m][d], np.arange(10) / 10)
            assert curve.label == f"{m} (AUC {auc:.3f})"
    with pytest.raises(VitscopeError, match="no faithfulness curves"):
        vp.faithfulness_curves({k: v for k, v in explanation.items() if k != "curves"})


def benchmark(means: dict[str, tuple[float, float]], half: float = 0.01, images: tuple[int, ...] = (0, 2, 5),
              of: int = 8) -> dict:
    """`Service.explain_set`'s dict from {method: (mean most first, mean least first)}, intervals ± `half`."""
    mean = {m: dict(zip(EXPLAIN_DIRECTIONS, v, strict=True)) for m, v in means.items()}
    return {"images": list(images), "of": of, "cls": None, "seed": 0, "mean_auc": mean,
            "interval": {m: {d: [x - half, x + half] for d, x in by.items()} for m, by in mean.items()},
            "most_faithful": {MOST: min(mean, key=lambda m: mean[m][MOST]),
                              LEAST: max(mean, key=lambda m: mean[m][LEAST])}}


def test_the_benchmark_draws_each_mean_with_its_interval_and_stars_the_most_faithful():
    means = {"attention": (0.30, 0.50), "rollout": (0.20, 0.40), "grad_rollout": (0.25, 0.60),
             "occlusion": (0.35, 0.45)}
    r = benchmark(means, half=0.02)
    layout = vp.faithfulness_benchmark(r)
    for k, (panel, d) in enumerate(zip(layout.values(), EXPLAIN_DIRECTIONS, strict=True)):
        bars = panel.ErrorBars.I
        want = np.array([v[k] for v in means.values()])
        np.testing.assert_allclose(bars.dimension_values("mean_auc"), want)
        np.testing.assert_allclose(bars.dimension_values("below"), 0.02)
        np.testing.assert_allclose(bars.dimension_values("above"), 0.02)
        best = int(np.argmin(want)) if d == MOST else int(np.argmax(want))  # rollout, then grad_rollout
        star = next(e for e in panel if e.label == "most faithful")
        assert star.dimension_values(0).tolist() == [best] and star.dimension_values(1).tolist() == [want[best]]
        assert option(panel, "title").endswith(f": {list(means)[best]}")


def test_a_figure_of_an_explanation_needs_one_of_its_image(data, explanation):
    with pytest.raises(VitscopeError, match="needs the image's explanation"):
        vp.build("explain-maps", data, image=IMAGE)
    with pytest.raises(VitscopeError, match=f"was given the explanation of image {IMAGE}"):
        vp.build("explain-curves", data, image=IMAGE + 1, explain=explanation)
    with pytest.raises(VitscopeError, match="shows one image"):
        vp.build("explain-maps", data, explain=explanation)


def test_figure_skips_them_on_a_store_without_a_class_basis(path, tmp_path, capsys):
    """No P[target], no faithfulness: `vitscope figure` writes the other figures and says why these are missing,
    without asking a model (this synthetic store's cannot be loaded)."""
    from vitscope.cli import main

    blind = tmp_path / "blind.zarr"
    shutil.copytree(path, blind)
    store.write_global(blind, {}, {"prob_basis": "none"})
    out = tmp_path / "figs"
    code = main(["figure", str(blind), "--image", "1", "--out", str(out), "--only", "explain-maps", "explain-curves",
                 "importance-matrix", "--quiet"])
    said = capsys.readouterr()
    assert code == 0, said.err
    assert sorted(p.name for p in out.iterdir()) == ["importance-matrix.svg"]
    assert said.out.startswith("1 figures written") and "; explain-maps, explain-curves follow P[target]" in said.out


def svg_text(path: Path) -> str:
    return " ".join(t.text or "" for t in ET.parse(path).iter() if t.tag.endswith("text"))


def test_figure_draws_the_models_explanation_of_the_image(demo16, tmp_path, capsys):
    """`vitscope figure STORE --image I --only explain-maps explain-curves`: the model explains the image once, and
    the curves' legend carries the AUCs that `Service.explain` gives."""
    from vitscope.cli import main
    from vitscope.service.core import Service

    out = tmp_path / "figs"
    assert main(["figure", str(demo16), "--image", "3", "--out", str(out), "--only", "explain-maps",
                 "explain-curves", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == f"2 figures written to {out} (svg)"
    r = Service(demo16).explain(3)
    curves = svg_text(out / "explain-curves.svg")
    for m in EXPLAIN_METHODS:
        for d in EXPLAIN_DIRECTIONS:
            assert f"{m} (AUC {r['auc'][m][d]:.3f})" in curves
        assert re.search(rf"\b{m} — image 3\b", svg_text(out / "explain-maps.svg"))


def test_stored_maps_draw_without_the_model(demo16):
    """The maps a build keeps (`input_map`, [p, p] each) make the same figure as the model's: the figure takes any
    dict with the image, the grid and the maps."""
    data = StoreData(demo16)
    stored = data.input_maps(3)
    assert stored is not None and list(stored) == ["attention", "rollout", "grad_rollout"]
    layout = vp.patch_maps(data, {"image": 3, "grid": [data.grid, data.grid], "maps": stored})
    on_disk = store.open_store(demo16)["input_map"].isel(image=3)
    for panel, m in zip(layout.values(), stored, strict=True):
        want = on_disk.sel(input_method=m).values.reshape(data.grid, data.grid)
        np.testing.assert_allclose(np.flipud(panel.Image.I.dimension_values(m, flat=False)), want)


def test_the_apps_save_figure_asks_the_model_for_the_explanation(demo16, path):
    """The app's "save figure": an explanation figure waits for an image, then is drawn from the model's answer; on
    a store without a class basis it cannot be saved, and says why."""
    from vitscope.app import Explorer
    from vitscope.app.save_figure import SaveFigure
    from vitscope.cli.serve import figure_file
    from vitscope.readout.selection import Selection
    from vitscope.service.core import Service

    ex = Explorer(demo16, figures=figure_file)
    save = ex.save
    save.which.value = "explain-curves"
    assert save.button.disabled and "pick an image" in save.button.label
    ex.selection.param.update(image=5)
    assert not save.button.disabled
    svg = save.file().getvalue().decode()
    r = Service(demo16).explain(5)
    assert f"occlusion (AUC {r['auc']['occlusion']['most_relevant_first']:.3f})" in svg

    blind = StoreData(path)
    blind.prob_basis = "none"
    s = SaveFigure(blind, Selection(image=1), lambda i: None, figure_file, 200, explain=lambda i: {})
    s.which.value = "explain-maps"
    assert s.button.disabled and "needs P[target]" in s.button.label
    s.which.value = "importance-matrix"
    assert not s.button.disabled
    blind.has_effects = False  # a store built before the effects were kept
    s.which.value = "direct-vs-total"
    assert s.button.disabled and "needs a store with head effects" in s.button.label
