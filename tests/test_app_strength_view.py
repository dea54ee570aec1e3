"""Attention Strength View: the data behind its three plots, pinned heads and taps, without a browser.

Each check compares a ColumnDataSource after `update` with a slow reference computed here with plain loops.
"""

from __future__ import annotations

import math

import numpy as np
import panel as pn
import pytest
from app_helpers import make_store
from bokeh.events import Tap
from bokeh.model import Model

from vitscope.app.strength import AttentionStrengthView
from vitscope.readout.palette import PIN_COLOURS, SELECTED
from vitscope.readout.selection import MAX_PINNED, Selection
from vitscope.readout.store_data import ENTROPY_BINS, StoreData
from vitscope.readout.strength import entropy_steps

N, L, H, GRID = 30, 3, 4, 4
UNREADABLE = (2, 5)  # images the build could not read (NaN rows, valid False)
READABLE = [i for i in range(N) if i not in UNREADABLE]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> StoreData:
    return StoreData(make_store(tmp_path_factory.mktemp("strength") / "s.zarr", N, L, H, GRID, 6, UNREADABLE))


def view_of(data: StoreData, **selection) -> tuple[AttentionStrengthView, Selection]:
    sel = Selection(**selection)
    return AttentionStrengthView(data, sel), sel


def readable_mean(values: np.ndarray) -> float:
    """Mean of values[i] over the readable images (values indexed by image)."""
    return sum(float(values[i]) for i in READABLE) / len(READABLE)


def bars_of(view: AttentionStrengthView) -> dict[str, tuple[list[float], set[str]]]:
    """The bar source grouped by head name: (heights in hop order, colours)."""
    out: dict[str, tuple[list[float], set[str]]] = {}
    src = view.bar_source.data
    for name, top, colour, _x in sorted(zip(src["name"], src["top"], src["colour"], src["x"], strict=True),
                                       key=lambda r: (r[0], r[3])):
        heights, colours = out.setdefault(name, ([], set()))
        heights.append(top)
        colours.add(colour)
    return out


def test_points_are_the_image_entropies_or_the_readable_mean(data):
    view, sel = view_of(data, image=7)
    src = view.source.data
    assert len(src["y"]) == L * H
    for k in range(L * H):
        layer, head = src["layer"][k], src["head"][k]
        assert (layer, head) == divmod(k, H)
        assert src["y"][k] == data.strength_entropy[7, layer, head]
        assert src["distance"][k] == data.attention_distance[7, layer, head]
        assert abs(src["x"][k] - layer) < 0.5  # a layer's heads stay in its column
    for layer in range(L):
        xs = [src["x"][k] for k in range(L * H) if src["layer"][k] == layer]
        assert len(set(xs)) == H  # and never overlap
    assert "image 7" in view.figure.title.text
    for image in (None, UNREADABLE[0]):  # no image, or an unreadable one: the mean over readable images
        sel.image = image
        view.update({"image"})
        want = [readable_mean(data.strength_entropy[:, k // H, k % H]) for k in range(L * H)]
        np.testing.assert_allclose(view.source.data["y"], want, rtol=1e-6)
        want = [readable_mean(data.attention_distance[:, k // H, k % H]) for k in range(L * H)]
        np.testing.assert_allclose(view.source.data["distance"], want, rtol=1e-6)
        assert "mean of all images" in view.figure.title.text


def test_tap_picks_the_nearest_head_on_screen(data):
    view, sel = view_of(data, image=3)
    src, f = view.source.data, view.figure
    px = f.width / (f.x_range.end - f.x_range.start)  # pixels per unit: a layer is narrow, entropy tall
    py = f.height / (f.y_range.end - f.y_range.start)
    rng = np.random.default_rng(0)
    for x, y in zip(rng.uniform(-0.5, L - 0.5, 20), rng.uniform(0, 1, 20), strict=True):
        k = min(range(L * H), key=lambda k: (px * (src["x"][k] - x)) ** 2 + (py * (src["y"][k] - y)) ** 2)
        assert view.pick(x, y) == (src["layer"][k], src["head"][k]) == (sel.layer, sel.head)
    assert view.pick(None, 0.5) is None
    k = 2 * H + 1
    view.figure._trigger_event(Tap(view.figure, x=float(src["x"][k]) + 0.01, y=float(src["y"][k])))  # a click
    assert (sel.layer, sel.head) == (2, 1)


def test_bars_are_the_strength_vector_and_follow_the_selection(data):
    view, sel = view_of(data, image=4, layer=1, head=2)
    assert bars_of(view) == {"L1H2": ([float(v) for v in data.strength[4, 1, 2]], {SELECTED})}
    assert len(view.bar_source.data["x"]) == GRID
    assert all(abs(x - hop) <= 0.4 for hop, x in enumerate(view.bar_source.data["x"]))  # each bar on its hop
    sel.param.update(layer=0, head=3)
    view.update({"layer", "head"})
    assert bars_of(view) == {"L0H3": ([float(v) for v in data.strength[4, 0, 3]], {SELECTED})}
    ring = view.marks.data
    assert ring["x"] == [view.source.data["x"][3]] and ring["y"] == [float(data.strength_entropy[4, 0, 3])]
    sel.image = None
    view.update({"image"})
    heights, _ = bars_of(view)["L0H3"]
    np.testing.assert_allclose(heights, [readable_mean(data.strength[:, 0, 3, hop]) for hop in range(GRID)],
                               rtol=1e-5)


def test_pins_keep_at_most_four_heads_oldest_dropped_and_toggle_off():
    sel = Selection()
    for flat in (3, 7, 1, 9, 4):
        sel.toggle_pin(flat)
    assert sel.pinned == [7, 1, 9, 4] and len(sel.pinned) == MAX_PINNED  # 3 made room
    sel.toggle_pin(1)
    assert sel.pinned == [7, 9, 4]
    sel.toggle_pin(1)
    assert sel.pinned == [7, 9, 4, 1]
    for flat in (7, 9, 4, 1):
        sel.toggle_pin(flat)
    assert sel.pinned == []


def test_pinned_heads_are_drawn_beside_the_selected_one_in_their_colours(data):
    view, sel = view_of(data, image=6, layer=0, head=1)
    for flat in (2 * H + 3, 1 * H + 0, 0 * H + 1):  # the last is the selected head itself: drawn once
        sel.toggle_pin(flat)
    view.update({"pinned"})
    want = {"L0H1": SELECTED, "L2H3": PIN_COLOURS[0], "L1H0": PIN_COLOURS[1]}
    bars = bars_of(view)
    assert {name: colours for name, (_, colours) in bars.items()} == {n: {c} for n, c in want.items()}
    for name in want:
        layer, head = int(name[1]), int(name[3])
        assert bars[name][0] == [float(v) for v in data.strength[6, layer, head]]
    widths = set(view.bar_source.data["width"])
    assert len(widths) == 1 and widths.pop() * len(want) <= 0.8 + 1e-9  # side by side within a hop
    steps = view.step_source.data
    assert dict(zip(steps["name"], steps["colour"], strict=True)) == want
    marks = view.marks.data
    assert marks["colour"] == [SELECTED, PIN_COLOURS[0], PIN_COLOURS[1]]
    assert marks["y"] == [float(data.strength_entropy[6, layer, head]) for layer, head in ((0, 1), (2, 3), (1, 0))]
    sel.pinned = []
    view.update({"pinned"})
    assert list(bars_of(view)) == ["L0H1"] and view.step_source.data["name"] == ["L0H1"]


def test_entropy_steps_are_the_share_of_readable_images_per_bin(data):
    bins = list(ENTROPY_BINS)
    for layer, head in ((0, 0), (2, 3), (1, 2)):
        counts = [0] * (len(bins) - 1)
        for i in READABLE:  # bins [a, b), the last one [a, b]
            v = float(data.strength_entropy[i, layer, head])
            k = next(k for k in range(len(counts)) if bins[k] <= v < bins[k + 1] or (k == len(counts) - 1
                                                                                     and v == bins[-1]))
            counts[k] += 1
        values = data.strength_entropy[READABLE, layer, head]
        assert counts == list(np.histogram(values, bins=ENTROPY_BINS)[0])
        steps = entropy_steps(data, [(layer, head, "#000000")])
        xs, ys = steps["xs"][0], steps["ys"][0]
        assert len(xs) == len(ys) == 2 * len(bins)
        shares = [c / len(READABLE) for c in counts]
        for k, share in enumerate(shares):  # the outline of bin k: up at its left edge, across, down
            assert (xs[2 * k + 1], ys[2 * k + 1]) == (bins[k], pytest.approx(share))
            assert (xs[2 * k + 2], ys[2 * k + 2]) == (bins[k + 1], pytest.approx(share))
        assert ys[0] == ys[-1] == 0 and xs[0] == bins[0] and xs[-1] == bins[-1]
        assert sum(ys[1:-1:2]) == pytest.approx(1.0)  # shares of images sum to one
    view, sel = view_of(data, layer=2, head=3)
    assert view.step_source.data == entropy_steps(data, [(2, 3, SELECTED)])
    assert view.hist.y_range.end >= max(view.step_source.data["ys"][0])


def test_current_image_span_sits_at_its_entropy(data):
    view, sel = view_of(data, image=9, layer=2, head=0)
    assert view.current.visible and view.current.location == float(data.strength_entropy[9, 2, 0])
    sel.param.update(image=12, head=3)
    view.update({"image", "head"})
    assert view.current.visible and view.current.location == float(data.strength_entropy[12, 2, 3])
    title = view.hist.title.text
    assert "image 12" in title and f"{float(data.strength_entropy[12, 2, 3]):.2f}" in title
    for image in (None, UNREADABLE[1], N + 3):
        sel.image = image
        view.update({"image"})
        assert not view.current.visible
        assert all(math.isfinite(y) for y in view.source.data["y"])


def test_renders_with_titles_named_after_the_paper(data):
    view, sel = view_of(data)
    assert view.figure.title.text.startswith("Attention Strength View")
    assert "mean of all images" in view.figure.title.text
    assert isinstance(pn.panel(view.bokeh()).get_root(), Model)


def test_a_chosen_class_gives_its_own_means(data):
    """With a class chosen and no image, C1 and C2 are means over that class's readable images (as the Head
    Importance band), not over all images."""
    cls = int(data.label[READABLE[0]])
    mine = [i for i in READABLE if int(data.label[i]) == cls]
    view, sel = view_of(data, cls=cls, layer=1, head=2)
    for k in range(L * H):
        layer, head = divmod(k, H)
        want = sum(float(data.strength_entropy[i, layer, head]) for i in mine) / len(mine)
        assert view.source.data["y"][k] == pytest.approx(want, rel=1e-5)
    hops = [sum(float(data.strength[i, 1, 2, h]) for i in mine) / len(mine) for h in range(GRID)]
    assert view.bar_source.data["top"] == pytest.approx(hops, rel=1e-5)
    assert "class" in view.figure.title.text
    sel.cls = None
    view.update({"cls"})
    assert view.source.data["y"][0] == pytest.approx(readable_mean(data.strength_entropy[:, 0, 0]), rel=1e-5)
