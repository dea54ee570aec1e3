"""Image Overview and Head Importance View callbacks, without a browser."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import panel as pn
import pytest

from vitscope.app.data import StoreData
from vitscope.app.overview_views import HeadImportanceView, ImageOverview, top5_html
from vitscope.app.state import Selection

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import synthetic_store  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = synthetic_store.make(tmp_path_factory.mktemp("s") / "s.zarr", images=30, layers=3, heads=4, grid=4,
                               classes=6, chunk=8)
    return StoreData(out)


def test_tap_selects_the_nearest_image_and_ids_are_checked(data):
    sel = Selection()
    view = ImageOverview(data, sel)
    x, y = 0.3, -0.7
    nearest = int(np.argmin(((data.image_xy - [x, y]) ** 2).sum(1)))
    assert view.pick(x, y) == nearest and sel.image == nearest
    view.id_input.value = 7
    assert sel.image == 7 and sel.message == ""
    view.select(99)
    assert sel.image == 7 and "out of range" in sel.message
    assert "image 7" in view.detail().objects[1].objects[0].object
    pn.panel(view).get_root()


def test_head_importance_values_pick_and_top5(data):
    sel = Selection()
    view = HeadImportanceView(data, sel)
    sel.metric, sel.mode = "jsd", 3
    mean, std = view.values()
    v = data.importance[:, :, :, 3, 1].reshape(30, -1)
    np.testing.assert_allclose(mean, v.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, v.std(0), rtol=1e-5)
    sel.image = 4
    values, none = view.values()
    assert none is None and np.array_equal(values, v[4])
    assert view.pick(6.2) == (1, 2) and (sel.layer, sel.head) == (1, 2)
    bars = view.mode_bars()
    assert [round(float(b), 6) for b in bars.dimension_values(1)] == [
        round(float(x), 6) for x in data.importance[4, 1, 2, :, 1]]
    html = top5_html(data, 4, 1, 2, 3)
    true = data.class_names[int(data.label[4])]
    assert html.count("<tr>") == 5 and (f"<b>{true}</b>" in html) == (int(data.label[4]) in data.topk_idx[4, 1, 2, 3])
    pn.panel(view).get_root()
