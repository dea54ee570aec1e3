"""Image Overview, Head Importance View and the Explorer's wiring, without a browser.

Every check reads the data behind the plots (the ColumnDataSources after `update`) and compares it with a
slow reference computed here from the store's arrays with plain loops.
"""

from __future__ import annotations

import math
import re
import shutil

import numpy as np
import panel as pn
import pytest
import scipy.stats
from app_helpers import drop_effects, fake_attention, make_store, rgba_bytes
from bokeh.events import SelectionGeometry, Tap
from bokeh.model import Model

from vitscope.app.explorer import Explorer
from vitscope.app.importance import HeadImportanceView
from vitscope.app.overview import ImageOverview, top5_html
from vitscope.app.style import MAX_LEGEND
from vitscope.errors import VitscopeError
from vitscope.readout.palette import CORRECT, VALUE_RAMP, WRONG, class_colours
from vitscope.readout.selection import Selection
from vitscope.readout.store_data import StoreData
from vitscope.vocab import METRIC_LABELS, METRICS, MODES

N, L, H, GRID, CLASSES = 30, 3, 4, 4, 6
UNREADABLE = (2, 5)  # images the build could not read
READABLE = [i for i in range(N) if i not in UNREADABLE]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("views") / "s.zarr", N, L, H, GRID, CLASSES, UNREADABLE)


@pytest.fixture(scope="module")
def data(store) -> StoreData:
    return StoreData(store)


@pytest.fixture(scope="module")
def old(store, tmp_path_factory) -> StoreData:
    """The same store as written before the head effects: the Head Importance View shows the gradient against ΔCE
    (test_app_effects.py checks the proxy selector of a store with effects)."""
    copy = tmp_path_factory.mktemp("old") / "s.zarr"
    shutil.copytree(store, copy)
    return StoreData(drop_effects(copy))


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> StoreData:
    """A tiny store with more than MAX_LEGEND classes present."""
    return StoreData(make_store(tmp_path_factory.mktemp("many") / "m.zarr", 60, 1, 2, 2, 30))


def nearest(data: StoreData, x: float, y: float, images: list[int]) -> int:
    best, best_d = -1, math.inf
    for i in images:
        d = (float(data.image_xy[i, 0]) - x) ** 2 + (float(data.image_xy[i, 1]) - y) ** 2
        if d < best_d:
            best, best_d = i, d
    return best


def trigger(fig, event) -> None:
    """What a browser event does on the server: run the figure's callbacks for it."""
    fig._trigger_event(event)


def one_line(message: str) -> bool:
    return bool(message) and "\n" not in message and "Traceback" not in message


# -- Image Overview ---------------------------------------------------------------------------------------


def test_overview_points_are_the_readable_images(data):
    view = ImageOverview(data, Selection())
    src = view.source.data
    assert list(src["image"]) == READABLE
    for row, i in enumerate(READABLE):
        assert (src["x"][row], src["y"][row]) == (data.image_xy[i, 0], data.image_xy[i, 1])
        assert src["id"][row] == data.image_ids[i]
        assert src["label"][row] == data.class_names[int(data.label[i])]
        assert src["p"][row] == data.baseline_prob[i]
    assert all(len(v) == len(READABLE) for v in src.values())


def test_tap_selects_the_nearest_readable_image_kdtree_vs_brute_force(data):
    sel = Selection()
    view = ImageOverview(data, sel)
    rng = np.random.default_rng(0)
    for x, y in rng.normal(scale=1.5, size=(25, 2)):
        want = nearest(data, x, y, READABLE)
        assert view.pick(x, y) == want and sel.image == want
    assert view.pick(None, 0.0) is None and sel.image == want
    x, y = data.image_xy[11]
    trigger(view.figure, Tap(view.figure, x=float(x) + 1e-6, y=float(y)))  # what a click sends
    assert sel.image == 11
    view.update({"image"})  # what the Explorer does on the change
    assert view.marker.data == {"x": [float(x)], "y": [float(y)]}
    assert "image 11" in view.detail.text and data.image_ids[11].rsplit("/", 1)[-1] in view.detail.text
    thumb = data.thumbnail(11)  # the thumbnail travels as RGBA, opaque, row 0 at the bottom
    got = rgba_bytes(view.thumb_source.data["image"][0])
    assert np.array_equal(got[..., :3], thumb) and (got[..., 3] == 255).all()


def test_ids_are_checked_with_one_line_messages(data):
    sel = Selection()
    view = ImageOverview(data, sel)
    view.select(7)
    assert sel.image == 7 and sel.message == ""
    view.select(99)
    assert sel.image == 7 and "out of range" in sel.message and one_line(sel.message)
    view.select(-1)
    assert sel.image == 7 and "out of range" in sel.message
    view.select(UNREADABLE[0])
    assert sel.image == 7 and "could not be read" in sel.message and one_line(sel.message)
    view.select(3)
    assert sel.image == 3 and sel.message == ""
    view.select(None)
    view.update({"image"})
    assert sel.image is None and view.marker.data == {"x": [], "y": []} and "Tap a point" in view.detail.text


def test_colour_by_class_correct_and_probability(data):
    sel = Selection()
    view = ImageOverview(data, sel)
    present = sorted({int(data.label[i]) for i in READABLE})
    palette = class_colours(len(present))
    for colour_by in ("class", "correct", "P[true]"):
        sel.colour_by = colour_by
        view.update({"colour_by"})
        src = view.source.data
        for row, i in enumerate(READABLE):
            label = int(data.label[i])
            if colour_by == "class":
                want, legend = palette[present.index(label)], data.class_names[label]
            elif colour_by == "correct":
                right = int(data.topk_idx[i, 0, 0, 0, 0]) == label  # unpruned top-1 is the true label
                want, legend = (CORRECT, "top-1 right") if right else (WRONG, "top-1 wrong")
            else:
                p = float(data.baseline_prob[i])
                want, legend = VALUE_RAMP[int(round(p * (len(VALUE_RAMP) - 1)))], ""
            assert (src["colour"][row], src["legend"][row]) == (want, legend), (colour_by, i)
        legend_on = view.figure.legend[0].visible
        assert legend_on == (colour_by != "P[true]") and view.colour_bar.visible == (colour_by == "P[true]")
        assert colour_by in view.figure.title.text
    sel.colour_by = "class"
    view.update({"colour_by"})
    by_class = dict(zip(view.source.data["legend"], view.source.data["colour"], strict=True))
    assert len(set(by_class.values())) == len(present)  # one colour per class, distinct
    right = [int(data.topk_idx[i, 0, 0, 0, 0]) == int(data.label[i]) for i in READABLE]
    assert any(right) and not all(right)  # both colours occur


def test_class_legend_only_up_to_twenty_classes(many):
    assert len({int(c) for c in many.label}) > MAX_LEGEND
    sel = Selection()
    view = ImageOverview(many, sel)
    assert not view.figure.legend[0].visible and not view.colour_bar.visible
    for colour_by, legend in (("correct", True), ("P[true]", False), ("class", False)):
        sel.colour_by = colour_by
        view.update({"colour_by"})
        assert view.figure.legend[0].visible == legend and view.colour_bar.visible == (colour_by == "P[true]")


def test_find_class_exact_substring_case_insensitive(data, many):
    names = many.class_names
    present = sorted({int(c) for c in many.label[many.valid]})
    # an exact name wins though longer names contain it ("class 1" in "class 10".."class 19")
    prefix = next(c for c in present if any(names[c] in n and n != names[c] for n in names))
    assert many.find_class(names[prefix]) == prefix
    assert many.find_class(f"  {names[present[-1]].upper()} ") == present[-1]
    for text in ("ss 2", "S 1", "2"):
        want = next(c for c in present if text.strip().lower() in names[c].lower())
        assert many.find_class(text) == want
    assert many.find_class("zebra") is None and many.find_class("") is None and many.find_class("   ") is None
    absent = [c for c in range(len(names)) if c not in present]
    assert absent and many.find_class(names[absent[0]]) is None  # no readable image: nothing to show
    assert data.find_class(data.class_names[3].upper()) == 3


def test_choosing_a_class_highlights_it_and_only_class_hides_the_rest(data):
    sel = Selection()
    view = ImageOverview(data, sel)
    assert len(set(view.source.data["alpha"])) == 1  # no class chosen: all alike
    cls = int(data.label[READABLE[0]])
    mine = [i for i in READABLE if int(data.label[i]) == cls]
    others = [i for i in READABLE if int(data.label[i]) != cls]
    sel.cls = cls
    view.update({"cls"})
    alpha, size = dict(zip(READABLE, view.source.data["alpha"], strict=True)), dict(
        zip(READABLE, view.source.data["size"], strict=True))
    assert min(alpha[i] for i in mine) > max(alpha[i] for i in others) > 0  # others dimmed, still visible
    assert min(size[i] for i in mine) > max(size[i] for i in others)
    assert repr(data.class_names[cls]) in view.figure.title.text
    rng = np.random.default_rng(1)
    probes = rng.normal(scale=1.5, size=(25, 2))
    assert any(nearest(data, x, y, READABLE) != nearest(data, x, y, mine) for x, y in probes)
    for x, y in probes:  # highlighted only: a tap still picks any image
        assert view.pick(x, y) == nearest(data, x, y, READABLE)
    sel.only_class = True
    view.update({"only_class"})
    alpha = dict(zip(READABLE, view.source.data["alpha"], strict=True))
    assert all(alpha[i] == 0 for i in others) and all(alpha[i] > 0 for i in mine)
    for x, y in probes:  # shown alone: a tap picks only among the class's images
        want = nearest(data, x, y, mine)
        assert view.pick(x, y) == want and sel.image == want
    sel.cls = None
    view.update({"cls"})
    assert len(set(view.source.data["alpha"])) == 1 and min(view.source.data["alpha"]) > 0


# -- Head Importance View ---------------------------------------------------------------------------------


def mean_std(data: StoreData, metric: str, mode: int, images: list[int]) -> tuple[np.ndarray, np.ndarray]:
    m = METRICS.index(metric)
    mean, std = np.zeros(L * H), np.zeros(L * H)
    for k in range(L * H):
        vals = [float(data.importance[i, k // H, k % H, mode, m]) for i in images]
        mean[k] = sum(vals) / len(vals)
        std[k] = math.sqrt(sum((v - mean[k]) ** 2 for v in vals) / len(vals))
    return mean, std


def test_importance_line_is_the_mean_and_std_over_readable_images(data):
    sel = Selection(metric="jsd", mode=3)
    view = HeadImportanceView(data, sel)
    mean, std = mean_std(data, "jsd", 3, READABLE)
    src = view.source.data
    np.testing.assert_allclose(src["y"], mean, rtol=1e-5)
    np.testing.assert_allclose(src["lo"], mean - std, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(src["hi"], mean + std, rtol=1e-5)
    assert view.figure.y_range.start < min(src["lo"]) and view.figure.y_range.end > max(src["hi"])
    assert "all images (mean ± std)" in view.figure.title.text
    for image in (4, 0):
        sel.image = image
        view.update({"image"})
        want = [float(data.importance[image, k // H, k % H, 3, 1]) for k in range(L * H)]
        np.testing.assert_array_equal(view.source.data["y"], want)
        np.testing.assert_array_equal(view.source.data["lo"], want)
        np.testing.assert_array_equal(view.source.data["hi"], want)
    sel.image = UNREADABLE[1]  # an unreadable image shows the mean instead of NaNs
    view.update({"image"})
    np.testing.assert_allclose(view.source.data["y"], mean, rtol=1e-5)


def test_importance_dots_show_each_heads_kind(data):
    from vitscope.vocab import HEAD_KINDS

    view = HeadImportanceView(data, Selection())
    src = view.source.data
    shapes = {"positional": "square", "content": "circle", "mixed": "triangle", "sink": "diamond"}
    for k in range(L * H):
        kind = HEAD_KINDS[int(data.head_kind[k // H, k % H])]
        assert src["kind"][k] == kind and src["marker"][k] == shapes[kind]
        assert src["agree"][k] == pytest.approx(float(data.head_consistency[k // H, k % H]))
        assert src["sink"][k] == pytest.approx(float(data.head_sink_share[k // H, k % H]))
    assert len(set(src["kind"])) > 1  # the random store has several kinds: the test can tell them apart
    assert "■ positional" in view.figure.xaxis[0].axis_label and "◆ sink" in view.figure.xaxis[0].axis_label


def test_class_band_is_the_mean_and_std_over_that_class(data):
    cls = int(data.label[READABLE[3]])
    sel = Selection(metric="prob", mode=1, cls=cls)
    view = HeadImportanceView(data, sel)
    mean, std = mean_std(data, "prob", 1, [i for i in READABLE if int(data.label[i]) == cls])
    np.testing.assert_allclose(view.source.data["y"], mean, rtol=1e-5)
    np.testing.assert_allclose(view.source.data["hi"] - view.source.data["y"], std, rtol=1e-4, atol=1e-7)
    assert repr(data.class_names[cls]) in view.figure.title.text
    all_mean, _ = mean_std(data, "prob", 1, READABLE)
    assert not np.allclose(mean, all_mean)
    sel.image = 8  # an image beats the class
    view.update({"image"})
    np.testing.assert_array_equal(view.source.data["y"], data.importance[8, :, :, 1, METRICS.index("prob")].reshape(-1))


def test_tap_picks_a_head_and_the_mode_bars_and_top5_follow(data):
    sel = Selection(metric="jsd", mode=3, image=4)
    view = HeadImportanceView(data, sel)
    for x in (6.2, -3.0, 1e9, 0.49, 10.51):
        k = min(max(int(math.floor(x + 0.5)), 0), L * H - 1)
        assert view.pick(x) == (k // H, k % H) == (sel.layer, sel.head)
    trigger(view.figure, Tap(view.figure, x=6.2, y=0.0))
    assert (sel.layer, sel.head) == (1, 2)
    view.update({"layer", "head"})
    assert list(view.bar_source.data["x"]) == list(MODES)
    assert list(view.bar_source.data["top"]) == [float(data.importance[4, 1, 2, m, 1]) for m in MODES]
    assert view.ring.data == {"x": [6], "y": [float(data.importance[4, 1, 2, 3, 1])]}
    assert view.top5.text == top5_html(data, 4, 1, 2, 3)
    sel.image = None
    view.update({"image"})
    want = [sum(float(data.importance[i, 1, 2, m, 1]) for i in READABLE) / len(READABLE) for m in MODES]
    np.testing.assert_allclose(view.bar_source.data["top"], want, rtol=1e-5)
    assert "Select an image" in view.top5.text


def test_top5_lists_the_pruned_predictions_with_the_true_label_in_bold(data):
    for image, layer, head, mode in ((4, 1, 2, 3), (0, 0, 0, 0), (7, 2, 3, 5)):
        html = top5_html(data, image, layer, head, mode)
        rows = re.findall(r"<tr><td>(.*?)</td><td[^>]*>(.*?)</td></tr>", html)
        true = int(data.label[image])
        want = []
        for c, p in zip(data.topk_idx[image, layer, head, mode], data.topk_prob[image, layer, head, mode],
                        strict=True):
            name = data.class_names[int(c)]
            want.append((f"<b>{name}</b>" if int(c) == true else name, f"{float(p):.3f}"))
        assert rows == want
        assert ("unpruned" in html) == (mode == 0)


def test_drag_selects_a_range_of_heads_shown_as_a_band(data):
    sel = Selection()
    view = HeadImportanceView(data, sel)
    for x0, x1 in ((2.2, 6.7), (6.7, 2.2), (-5.0, 1.5), (10.5, 40.0), (3.0, 3.0), (3.2, 3.8)):
        before = (sel.layer, sel.head)
        group = [k for k in range(L * H) if min(x0, x1) <= k <= max(x0, x1)]
        assert view.select_range(x0, x1) == group and sel.group == group
        view.update({"group", "layer", "head"})
        box = view.group_box
        if group:
            assert (sel.layer, sel.head) == (group[0] // H, group[0] % H)
            assert box.visible and (box.left, box.right) == (group[0] - 0.5, group[-1] + 0.5)
            assert f"{len(group)} heads" in view.summary.text
        else:
            assert (sel.layer, sel.head) == before and not box.visible
    geometry = {"type": "rect", "x0": 0.6, "x1": 3.4, "y0": 0.0, "y1": 1.0}
    trigger(view.figure, SelectionGeometry(view.figure, geometry=geometry, final=True))  # a drag in the browser
    assert sel.group == [1, 2, 3] and (sel.layer, sel.head) == (0, 1)


def slow_rho(a: list[float], b: list[float]) -> float:
    return float(scipy.stats.spearmanr(a, b).statistic)


def slow_delta_ce(data: StoreData, i: int, layer: int, head: int, signed: bool) -> float:
    d = math.log(float(data.baseline_prob[i])) - math.log(float(data.importance[i, layer, head, 1, 0]))
    return d if signed else abs(d)


def test_proxy_is_drawn_beside_the_metric_on_its_own_axis(old):
    data = old
    sel = Selection(metric="jsd", mode=3)
    view = HeadImportanceView(data, sel)
    for image, metric, cls in ((None, "jsd", None), (4, "jsd", None), (4, "prob", None), (None, "prob", 1)):
        sel.param.update(image=image, metric=metric, cls=cls)
        view.update({"image", "metric", "cls"})
        scope = ([image] if image is not None else
                 [i for i in READABLE if cls is None or int(data.label[i]) == cls])
        want = [sum(float(data.grad_importance[i, k // H, k % H]) for i in scope) / len(scope) for k in range(L * H)]
        src = view.source.data
        np.testing.assert_allclose(src["proxy"], want, rtol=1e-5)
        # the proxy's min..max lies over the line's min..max, upside down for P'[true] (low P' = important)
        y0, y1 = view.figure.y_range.start, view.figure.y_range.end
        rng = view.figure.extra_y_ranges["proxy"]
        lo, hi = (min(src["y"]), max(src["y"])) if metric != "prob" else (max(src["y"]), min(src["y"]))
        for v, at in ((min(want), lo), (max(want), hi)):
            height = y0 + (v - rng.start) / (rng.end - rng.start) * (y1 - y0)
            assert height == pytest.approx(at, rel=1e-6, abs=1e-9)
        assert (rng.start > rng.end) == (metric == "prob")
        ticks = view.proxy_axis.ticker.ticks
        assert ticks[0] == pytest.approx(min(want), rel=1e-6) and ticks[-1] == pytest.approx(max(want), rel=1e-6)
        assert view.metric_axis.axis_label == METRIC_LABELS[metric] and "∂CE/∂gate" in view.proxy_axis.axis_label


def test_proxy_agreement_bars_are_spearman_per_layer(old):
    data = old
    sel = Selection()
    view = HeadImportanceView(data, sel)
    cls = int(data.label[READABLE[2]])
    for image, cls_ in ((None, None), (6, None), (None, cls), (UNREADABLE[0], None)):
        sel.param.update(image=image, cls=cls_)
        view.update({"image", "cls"})
        src = view.agree_source.data
        readable = image is not None and image not in UNREADABLE
        scope = [image] if readable else [i for i in READABLE if cls_ is None or int(data.label[i]) == cls_]
        for signed, key in ((True, "signed"), (False, "abs")):
            for layer in range(L):
                proxy = [float(data.grad_importance[i, layer, h]) for i in scope for h in range(H)]
                exact = [slow_delta_ce(data, i, layer, h, signed) for i in scope for h in range(H)]
                assert src[key][layer] == pytest.approx(slow_rho(proxy, exact), abs=1e-9), (image, cls_, key, layer)
            per_image = [slow_rho([float(data.grad_importance[i, k // H, k % H]) for k in range(L * H)],
                                  [slow_delta_ce(data, i, k // H, k % H, signed) for k in range(L * H)])
                         for i in scope]
            title = view.agreement.title.text.splitlines()[0 if signed else 1]
            name = "ΔCE" if signed else "|ΔCE|"
            if readable:
                assert title == f"ρ(proxy, {name}) image {image}: {per_image[0]:+.2f}"
            else:
                means = slow_rho(
                    [sum(float(data.grad_importance[i, k // H, k % H]) for i in scope) / len(scope)
                     for k in range(L * H)],
                    [sum(slow_delta_ce(data, i, k // H, k % H, signed) for i in scope) / len(scope)
                     for k in range(L * H)])
                assert title == f"ρ(proxy, {name}): {float(np.median(per_image)):+.2f}/image, means {means:+.2f}"


def test_choosing_a_class_switches_the_importance_band_and_the_strength_view(explorer, data):
    """The class search (Image Overview) drives `Selection.cls`; both views then show that class's means."""
    cls = int(data.label[READABLE[4]])
    mine = [i for i in READABLE if int(data.label[i]) == cls]
    explorer.importance.proxy_select.value = "gradient"
    explorer.class_search.value = data.class_names[cls]
    assert explorer.selection.cls == cls
    mean, std = mean_std(data, explorer.selection.metric, explorer.selection.mode, mine)
    np.testing.assert_allclose(explorer.importance.source.data["y"], mean, rtol=1e-5)
    np.testing.assert_allclose(explorer.importance.source.data["hi"], mean + std, rtol=1e-5)
    want = [sum(float(data.strength_entropy[i, k // H, k % H]) for i in mine) / len(mine) for k in range(L * H)]
    np.testing.assert_allclose(explorer.strength.source.data["y"], want, rtol=1e-5)
    proxy = [sum(float(data.grad_importance[i, k // H, k % H]) for i in mine) / len(mine) for k in range(L * H)]
    np.testing.assert_allclose(explorer.importance.source.data["proxy"], proxy, rtol=1e-5)
    assert repr(data.class_names[cls]) in explorer.importance.figure.title.text
    explorer.class_search.value = ""
    assert explorer.selection.cls is None
    all_mean, _ = mean_std(data, explorer.selection.metric, explorer.selection.mode, READABLE)
    np.testing.assert_allclose(explorer.importance.source.data["y"], all_mean, rtol=1e-5)


# -- Explorer ---------------------------------------------------------------------------------------------

DEPENDS = {  # a selection change → the views that draw it
    "colour_by": {"overview"}, "only_class": {"overview"}, "cls": {"overview", "importance", "strength"},
    "metric": {"importance"}, "mode": {"importance"}, "group": {"importance"}, "pinned": {"strength"},
    "layout": {"pattern"}, "density": {"pattern"}, "threshold": {"pattern"}, "source_token": {"pattern"},
    "image": {"overview", "importance", "strength", "pattern"}, "layer": {"importance", "strength", "pattern"},
}


@pytest.fixture
def explorer(store, monkeypatch) -> Explorer:
    fake = fake_attention(L, H, 1 + GRID**2)
    monkeypatch.setattr(Explorer, "attention", lambda self, image, layer: fake(image, layer))
    return Explorer(store)


def count_updates(explorer: Explorer, monkeypatch) -> dict[str, list[set[str]]]:
    calls: dict[str, list[set[str]]] = {}
    for name in ("overview", "importance", "strength", "pattern"):
        view = getattr(explorer, name)
        calls[name] = []

        def counted(changed=None, _update=view.update, _calls=calls[name]):
            _calls.append(set(changed))
            return _update(changed)

        monkeypatch.setattr(view, "update", counted)
    return calls


def test_explorer_renders_and_its_widgets_drive_the_selection(explorer, data):
    root = pn.panel(explorer).get_root()
    assert isinstance(root, Model)
    sel = explorer.selection
    explorer.image_id.value = 7
    assert sel.image == 7 and sel.message == ""
    assert explorer.overview.marker.data == {"x": [float(data.image_xy[7, 0])], "y": [float(data.image_xy[7, 1])]}
    cls = int(data.label[READABLE[0]])
    explorer.class_search.value = data.class_names[cls].upper()
    assert sel.cls == cls
    explorer.class_search.value = "zebra"
    assert sel.cls == cls and "zebra" in sel.message and one_line(sel.message)
    explorer.pin.clicks += 1
    assert sel.pinned == [0]
    pn.panel(explorer).get_root()  # renders with an image, a class and a pin


def test_one_change_updates_each_dependent_view_once(explorer, monkeypatch):
    sel = explorer.selection
    calls = count_updates(explorer, monkeypatch)
    changes = {"colour_by": "correct", "only_class": True, "cls": 1, "metric": "jsd", "mode": 4, "group": [2, 3],
               "pinned": [5], "layout": "patch", "density": True, "threshold": 0.05, "source_token": 3, "image": 4,
               "layer": 2}
    for name, value in changes.items():
        for c in calls.values():
            c.clear()
        setattr(sel, name, value)
        got = {view for view, c in calls.items() if c}
        assert got == DEPENDS[name], name
        # the image change comes after a threshold was set: that threshold is dropped in the same change
        want = {name, "threshold"} if name == "image" else {name}
        assert all(c == [want] for c in calls.values() if c), name
    for c in calls.values():
        c.clear()
    sel.param.update(layer=1, head=3)  # one held change for both
    assert {view: len(c) for view, c in calls.items()} == {"overview": 0, "importance": 1, "strength": 1,
                                                          "pattern": 1}
    assert calls["strength"] == [{"layer", "head"}]
    for c in calls.values():
        c.clear()
    sel.message = "anything"
    assert not any(calls.values())


def test_an_error_in_a_view_becomes_a_one_line_message(explorer, monkeypatch, data):
    sel = explorer.selection

    def broken(changed=None):
        raise ValueError("the importance view broke\n  with a second line")

    update = explorer.importance.update
    monkeypatch.setattr(explorer.importance, "update", broken)
    sel.metric = "jsd"  # does not raise
    assert sel.message == "HeadImportanceView: the importance view broke"
    sel.image = 4  # the other views still follow
    np.testing.assert_array_equal(explorer.strength.source.data["y"], data.strength_entropy[4].reshape(-1))
    assert explorer.overview.marker.data["x"] == [float(data.image_xy[4, 0])]
    monkeypatch.setattr(explorer.importance, "update", update)
    sel.message = ""
    sel.layer = L + 2  # a layer the model does not have: a message, never an exception
    assert one_line(sel.message)


def test_a_new_head_or_image_starts_from_the_stores_threshold(explorer):
    """A threshold the user set is a value of one head's A: on another head it could hide every line."""
    sel, view = explorer.selection, explorer.pattern
    sel.param.update(image=4, layer=0, head=0)
    default = view.threshold()
    sel.threshold = default / 2
    assert view.matrix.threshold_line.location == default / 2
    sel.head = 1
    assert sel.threshold is None and view.threshold() != default / 2
    assert view.matrix.threshold_line.location == view.threshold()
    assert explorer.threshold.value == pytest.approx(view.threshold())


def test_a_model_that_cannot_be_loaded_is_tried_once(monkeypatch):
    from vitscope.service import dispatch as module

    calls = []

    def broken(path, device, scheduler):
        calls.append(path)
        raise VitscopeError("no such model")

    monkeypatch.setattr(module, "make_dispatcher", broken)
    module._dispatcher_or_error.cache_clear()
    try:
        for _ in range(3):
            with pytest.raises(VitscopeError, match="no such model"):
                module.shared_dispatcher("/nowhere.zarr", "cpu")
        assert calls == ["/nowhere.zarr"]
    finally:
        module._dispatcher_or_error.cache_clear()


def test_attention_comes_through_the_dispatcher_and_with_a_scheduler_no_model_loads_here(store, monkeypatch,
                                                                                         capsys):
    """One route to the model: the pattern view's attention is a request to the process's dispatcher, so with
    --scheduler (the model on a Dask worker) the web process loads none."""
    from vitscope.service import core
    from vitscope.service import dispatch as module

    def no_model(*args, **kwargs):
        raise AssertionError("the web process loaded a model")

    class Remote:  # the Dask backend's dispatcher, as this process sees it
        def __init__(self) -> None:
            self.asked: list[dict] = []

        def ask(self, session, request, timeout=None):
            self.asked.append(request)
            return {"kind": "attention", "image": request["image"], "attention": fake_attention(L, H, 1 + GRID**2)(
                request["image"], request.get("layer"))}

    remote = Remote()
    made = []
    monkeypatch.setattr(core, "_model", no_model)
    monkeypatch.setattr(module, "make_dispatcher", lambda path, device, scheduler: made.append(scheduler) or remote)
    module._dispatcher_or_error.cache_clear()
    try:
        module.warm(str(store), "cpu", "tcp://gpu-host:8786")  # what `vitscope serve --scheduler` does first
        ex = Explorer(store, scheduler="tcp://gpu-host:8786")
        ex.selection.param.update(image=READABLE[1], layer=1, head=0)
        assert remote.asked == [{"kind": "attention", "image": READABLE[1], "layer": 1}]
        assert made == ["tcp://gpu-host:8786"]
        np.testing.assert_array_equal(ex.pattern.attention_matrix(), fake_attention(L, H, 1 + GRID**2)(
            READABLE[1])[1, 0])
        module._dispatcher_or_error.cache_clear()

        def unreachable(path, device, scheduler):
            raise VitscopeError(f"cannot reach the Dask scheduler at {scheduler}")

        monkeypatch.setattr(module, "make_dispatcher", unreachable)
        with pytest.raises(VitscopeError, match="cannot reach"):  # serve stops with one line
            module.warm(str(store), "cpu", "tcp://gpu-host:8786")
        module.warm(str(store), "cpu")  # no model here: a warning, and the views still show the store
        assert "on-demand attention is unavailable" in capsys.readouterr().err
    finally:
        module._dispatcher_or_error.cache_clear()


def test_images_are_sent_at_the_size_they_are_shown():
    from vitscope.app.style import SHOWN_SIDE, downsized

    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    small = downsized(big)
    assert small.shape == (SHOWN_SIDE, SHOWN_SIDE, 3) and small.dtype == np.uint8
    # a box filter: each shown pixel is the mean of the pixels it covers (224 → 128: 1.75 × 1.75 each)
    assert abs(float(small.mean()) - float(big.mean())) < 1.0
    s = 224 / SHOWN_SIDE
    for j in range(SHOWN_SIDE):  # within the range of the pixels it covers, rows and columns
        rows = slice(int(np.floor(j * s)), int(np.ceil((j + 1) * s)))
        for k in range(SHOWN_SIDE):
            block = big[rows, int(np.floor(k * s)):int(np.ceil((k + 1) * s))].reshape(-1, 3)
            assert (block.min(0) <= small[j, k]).all() and (small[j, k] <= block.max(0)).all(), (j, k)
    # twice the side: every shown pixel is the mean of its 2 × 2 block (to rounding, once a pass), not one pixel of it
    # (nearest) or a weighting that reaches past it (bilinear, Lanczos)
    double = rng.integers(0, 256, (2 * SHOWN_SIDE, 2 * SHOWN_SIDE, 3), dtype=np.uint8)
    means = double.reshape(SHOWN_SIDE, 2, SHOWN_SIDE, 2, 3).astype(float).mean((1, 3))
    assert np.abs(downsized(double).astype(float) - means).max() <= 1.0
    wide = downsized(rng.integers(0, 256, (100, 300, 3), dtype=np.uint8))
    assert wide.shape[1] == SHOWN_SIDE and wide.shape[0] == round(100 * SHOWN_SIDE / 300)
    tiny = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert downsized(tiny) is tiny


def test_an_error_in_a_browser_event_is_a_page_message(explorer, monkeypatch):
    """A tap whose handler breaks says so in the page (one line) instead of a traceback in the terminal."""
    from bokeh.events import Tap

    def broken(x, y):
        raise RuntimeError("no head there\nsecond line")

    monkeypatch.setattr(explorer.pattern.map, "pick", broken)
    explorer.pattern.map.figure._trigger_event(Tap(explorer.pattern.map.figure, x=0.0, y=0.0))
    assert explorer.selection.message == "head tap: no head there"


def test_served_an_image_reaches_the_page_before_its_attention_and_ends_the_same(store, monkeypatch):
    """Served, an image change draws the views that need only the store at once and asks the model for the image's
    attention without waiting; the plots of A follow when it answers (a second message). The page ends as when
    everything is drawn at once, and an answer for an image no longer selected draws nothing."""
    from concurrent.futures import Future
    from types import SimpleNamespace

    from vitscope.service import dispatch as module

    fake = fake_attention(L, H, 1 + GRID**2)

    class Queue:  # the dispatcher: answers are set by hand
        def __init__(self) -> None:
            self.asked, self.waited = [], 0

        def submit(self, session, request, channel=None, progress=None):
            self.asked.append((request, Future()))
            return self.asked[-1][1]

        def ask(self, session, request, timeout=None):
            self.waited += 1
            return {"kind": "attention", "image": request["image"], "attention": fake(request["image"],
                                                                                          request.get("layer"))}

        def answer(self, image: int, layer: int) -> None:
            for request, future in self.asked:
                if request == {"kind": "attention", "image": image, "layer": layer} and not future.done():
                    future.set_result({"kind": "attention", "image": image, "attention": fake(image, layer)})

    queue = Queue()
    monkeypatch.setattr(module, "make_dispatcher", lambda path, device, scheduler: queue)
    module._dispatcher_or_error.cache_clear()

    def shown(ex: Explorer) -> dict:
        m = ex.pattern.matrix
        return {"heat": m.heat_source.data["image"][0].tolist(),
                "lines": {k: list(v) for k, v in m.segments.data.items()},
                "hist": list(m.hist_source.data["top"]), "axes": m.axes.title.text, "hist_title": m.hist.title.text,
                "masks": [a.tolist() for a in ex.pattern.masks.overlay.data["image"]], "info": ex.pattern.info.text,
                "slider": (ex.threshold.value, ex.threshold.end), "marker": ex.overview.marker.data,
                "strength": list(ex.strength.source.data["y"])}

    try:
        ex, ticks = Explorer(store), []
        ex._doc = SimpleNamespace(session_context=object(), add_next_tick_callback=ticks.append)
        sel, first, second = ex.selection, READABLE[3], READABLE[4]
        blank = shown(ex)["heat"]
        sel.param.update(image=first, layer=1, head=2)
        assert ex.overview.marker.data["x"] == [float(ex.data.image_xy[first, 0])]  # the store's views: drawn
        assert shown(ex)["heat"] == blank and queue.waited == 0 and not ticks  # A: asked, not waited for
        attention_asks = lambda: [r for r, _ in queue.asked if r["kind"] == "attention"]  # noqa: E731
        assert attention_asks() == [{"kind": "attention", "image": first, "layer": 1}]  # the selected layer only
        sel.head = 0  # another head of that layer meanwhile: nothing more asked, still no wait
        assert queue.waited == 0 and not ticks and len(attention_asks()) == 1
        queue.answer(first, 1)
        assert len(ticks) == 1
        ticks.pop()()
        ref = Explorer(store)  # no server loop: everything drawn at once, waiting for the model
        ref.selection.param.update(image=first, layer=1, head=0)
        assert shown(ex) == shown(ref) and queue.waited == 1 and "layer 1 · head 0" in ex.pattern.info.text

        third = READABLE[5]
        sel.image = second  # its answer comes after the next image was chosen: it draws nothing
        sel.image = third
        queue.answer(second, 1)
        while ticks:
            ticks.pop(0)()
        assert ex.pattern.pending == (third, 1) and shown(ex)["heat"] == shown(ref)["heat"]
        queue.answer(third, 1)
        while ticks:
            ticks.pop(0)()
        ref.selection.image = third
        assert ex.pattern.pending is None and shown(ex) == shown(ref)

        sel.param.update(layer=2, head=1)  # another layer: asked without waiting, drawn when it answers
        ref.selection.param.update(layer=2, head=1)
        assert ex.pattern.pending == (third, 2) and attention_asks()[-1] == {"kind": "attention", "image": third,
                                                                             "layer": 2}
        queue.answer(third, 2)
        while ticks:
            ticks.pop(0)()
        assert ex.pattern.pending is None and shown(ex) == shown(ref)
        asked = len(attention_asks())
        sel.param.update(layer=1, head=2)  # a layer of this image already held: drawn at once, nothing asked
        ref.selection.param.update(layer=1, head=2)
        assert ex.pattern.pending is None and shown(ex) == shown(ref) and not ticks and len(attention_asks()) == asked
    finally:
        module._dispatcher_or_error.cache_clear()
