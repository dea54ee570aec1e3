"""Input attributions in the app: the map overlaid on the Attention Pattern View's image panel (from the store, in
raw units, following the image), occlusion and the faithfulness curves once the model answers (the real
dispatcher on the demo16 store), the store-wide benchmark in the side panel, and an older store's one line."""

from __future__ import annotations

import shutil
import time
from concurrent.futures import Future

import numpy as np
import pytest
import zarr
from app_helpers import make_store

from vitscope.analysis.explain import FRACTIONS
from vitscope.app.explorer import Explorer
from vitscope.app.input_maps import REBUILD
from vitscope.readout.input_maps import colour_range, overlay_values
from vitscope.readout.palette import MAP_COLOURS
from vitscope.service import Service
from vitscope.vocab import EXPLAIN_DIRECTIONS, EXPLAIN_METHODS, STORED_MAPS


def wait_for(condition, timeout: float = 120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("the answer was never drawn")


@pytest.fixture(scope="module")
def app(demo16):
    return Explorer(demo16)


def drawn(app) -> np.ndarray:
    """The overlay's map as the image shows it: row 0 the top row (the glyph's row 0 is the bottom)."""
    return np.asarray(app.input_maps.overlay.data["image"][0])[::-1]


def test_a_stored_map_is_drawn_from_the_store_and_follows_the_image(app):
    s, im, d = app.selection, app.input_maps, app.data
    asked = []
    submit, im.asker.submit = im.asker.submit, lambda *a: asked.append(a) or submit(*a)
    try:
        s.image = 3
        assert not im.renderer.visible  # none: the plain image
        for method in STORED_MAPS:
            im.choice.value = method
            want = d.input_maps(3)[method]
            assert im.renderer.visible and drawn(app).shape == (d.grid, d.grid)
            np.testing.assert_array_equal(drawn(app), want)  # raw units: not renormalised
            assert (im.mapper.low, im.mapper.high) == colour_range(method, want)
            assert method in im.note.text
        s.image = 7  # an image change: the chosen map of the new image, at once
        np.testing.assert_array_equal(drawn(app), d.input_maps(7)["grad_rollout"])
        assert not np.array_equal(d.input_maps(7)["grad_rollout"], d.input_maps(3)["grad_rollout"])
        assert not asked  # the stored maps never ask the model
        im.choice.value = "none"
        assert not im.renderer.visible
    finally:
        im.asker.submit = submit


def test_occlusion_and_the_curves_arrive_when_the_model_answers(app, demo16):
    s, im = app.selection, app.input_maps
    s.image = 5
    assert not im.slot.objects and "occlusion (model)" in im.choice.options  # not asked yet: no empty figure
    im.choice.value = "occlusion"  # needs the model: asks it, says so in the selector
    assert im.follow.value and "occlusion (computing…)" in im.choice.options
    assert not im.renderer.visible and "computing" in im.note.text
    want = Service(demo16).explain(5)
    wait_for(lambda: im.renderer.visible)
    assert list(im.choice.options)[-1] == "occlusion" and not im.asker.progress.visible
    np.testing.assert_allclose(drawn(app).ravel(), want["maps"]["occlusion"], atol=1e-6)
    assert im.mapper.low == -im.mapper.high  # signed: no change is the middle colour
    for m in EXPLAIN_METHODS:
        for direction in EXPLAIN_DIRECTIONS:
            src = im.curve_sources[m, direction].data
            assert src["x"] == pytest.approx(FRACTIONS) and src["y"] == pytest.approx(want["curves"][m][direction])
    styles = {(m, direction): (g.glyph.line_color, g.glyph.line_dash) for (m, direction), src in
              im.curve_sources.items() for g in im.curves.renderers if g.data_source is src}
    for m in EXPLAIN_METHODS:  # one colour per method, solid most relevant first, dashed least relevant first
        assert styles[m, "most_relevant_first"] == (MAP_COLOURS[m], [])
        assert styles[m, "least_relevant_first"] == (MAP_COLOURS[m], [6])
    for m in EXPLAIN_METHODS:
        assert f"{want['auc'][m]['most_relevant_first']:.3f}" in im.table.text
    assert im.slot.objects  # the curves joined the page with their answer

    s.image = 6  # the toggle stays on: one request for the new image, and the old curves go
    assert im.curve_sources["attention", "most_relevant_first"].data["y"] == []
    want = Service(demo16).explain(6)
    wait_for(lambda: im.answer is not None and im.answer["image"] == 6)
    np.testing.assert_allclose(drawn(app).ravel(), want["maps"]["occlusion"], atol=1e-6)
    im.follow.value = False
    im.choice.value = "none"


def test_the_latest_image_wins(app, demo16):
    """Answers that come out of order (another session's request, a Dask worker): only the selected image's is drawn,
    and its progress moves the bar; an earlier request's progress does not."""
    s, im = app.selection, app.input_maps
    futures: dict[int, tuple[Future, object]] = {}

    def submit(request, channel, progress):
        assert channel == "explain" and request["kind"] == "explain"
        futures[request["image"]] = (Future(), progress)
        return futures[request["image"]][0]

    real, im.asker.submit = im.asker.submit, submit
    try:
        s.image = 1
        im.follow.value = True
        s.image = 4
        assert sorted(futures) == [1, 4]
        futures[1][1](1, 2)  # the old request's progress: not this bar's
        assert im.asker.progress.value == 0
        futures[4][1](1, 2)
        assert im.asker.progress.value == 25  # of 50 steps
        service = Service(demo16)
        futures[4][0].set_result(service.explain(4))
        futures[1][0].set_result(service.explain(1))  # late: drawn nowhere
        assert im.answer["image"] == 4 and "image 4" in im.curves.title.text
        assert im.curve_sources["rollout", "most_relevant_first"].data["y"] == pytest.approx(
            service.explain(4)["curves"]["rollout"]["most_relevant_first"])
    finally:
        im.asker.submit = real
        im.follow.value = False


def test_the_benchmark_names_the_most_faithful_map(app, demo16):
    b = app.benchmark
    app.selection.cls = None
    b.ask()
    assert b.asker.progress.visible and "computing" in b.asker.status.object
    wait_for(lambda: b.result.object, timeout=300)
    want = Service(demo16).explain_set(20, seed=0)
    assert f"{len(want['images'])} of {want['of']} images" in b.result.object
    for m in EXPLAIN_METHODS:
        lo, hi = want["interval"][m]["most_relevant_first"]
        assert f"<b>{want['mean_auc'][m]['most_relevant_first']:.3f}</b> [{lo:.3f}, {hi:.3f}]" in b.result.object
    for m in EXPLAIN_METHODS:  # ★ in a method's cell of a direction exactly when it is that direction's most faithful
        cells = b.result.object.split(f"<b>{m}</b></td><td>")[1].split("</tr>")[0].split("</td><td>")
        assert ["★" in c for c in cells] == [want["most_faithful"][d] == m for d in EXPLAIN_DIRECTIONS], m
    assert not b.asker.progress.visible


def test_an_older_store_says_its_maps_need_a_rebuild(tmp_path, demo16):
    old = tmp_path / "v3.zarr"
    shutil.copytree(demo16, old)
    for name in ("input_map", "input_method"):
        shutil.rmtree(old / name)
    zarr.consolidate_metadata(str(old))
    ex = Explorer(old)
    assert REBUILD in ex.input_maps.note.text and "\n" not in ex.input_maps.note.text
    ex.selection.image = 2
    ex.input_maps.choice.value = "rollout"
    assert not ex.input_maps.renderer.visible and REBUILD in ex.input_maps.note.text
    assert not ex.selection.message  # said in the panel, not as a view failure


def test_a_store_without_a_model_says_so_in_one_line(tmp_path):
    path = make_store(tmp_path / "s.zarr", images=6, layers=2, heads=2, grid=4, classes=3)
    ex = Explorer(path)
    ex.selection.image = 1
    ex.input_maps.choice.value = "occlusion"
    line = ex.input_maps.note.text
    assert "unknown model spec" in line and "\n" not in line and "Traceback" not in line
    ex.benchmark.ask()
    assert "unknown model spec" in ex.benchmark.asker.status.object
    assert "InputMapPanel" not in ex.selection.message  # said in the panel, not as a view failure


def test_overlay_values_flip_rows_for_the_glyph():
    m = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert overlay_values(m).tolist() == [[3, 4, 5], [0, 1, 2]]
    assert colour_range("rollout", np.array([0.1, 0.3])) == (0.0, 0.3)
    assert colour_range("occlusion", np.array([-0.2, 0.1])) == (-0.2, 0.2)
    assert colour_range("grad_rollout", np.array([np.nan])) == (0.0, 1.0)
